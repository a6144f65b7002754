"""Shared test helpers: installable fake distributions for plugin discovery tests."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from ctrlgen.core.plugins import manager as plugins

_SCRATCH = pytest.StashKey[Path]()


def pytest_configure(config):
    """Keep the suite away from the user's own config, caches and any network."""
    import os
    import tempfile

    # `weights` tests compare against real files: keep where the user's models are (their
    # CTRLGEN_MODEL_ROOTS, config.toml roots and HF cache) in CTRLGEN_WEIGHTS_ROOTS before
    # isolating everything else.
    if "CTRLGEN_WEIGHTS_ROOTS" not in os.environ:
        try:
            from ctrlgen.core.config import load_settings
            from ctrlgen.core.models.layouts import hf_cache_dir

            user_roots = [str(root) for root in load_settings().model_roots]
            if hf_cache_dir().is_dir():
                user_roots.append(str(hf_cache_dir()))
        except Exception:  # a broken user config must not stop the test suite
            user_roots = []
        os.environ["CTRLGEN_WEIGHTS_ROOTS"] = os.pathsep.join(user_roots)
    scratch = Path(tempfile.mkdtemp(prefix="ctrlgen-tests-"))
    config.stash[_SCRATCH] = scratch
    os.environ["CTRLGEN_CONFIG_DIR"] = str(scratch / "config")
    os.environ.setdefault("CTRLGEN_CACHE_DIR", str(scratch / "cache"))
    os.environ["HF_HUB_CACHE"] = str(scratch / "hf-cache")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    # Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP's spinning
    # workers make each small op wait for a time slice (seen: 0.1 s vs 8 s for one SDXL run).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for name in ("CTRLGEN_MODEL_ROOTS", "CTRLGEN_DISABLE_PLUGINS", "CTRLGEN_LOAD_PLUGINS",
                 "CTRLGEN_STRICT_PLUGINS", "CTRLGEN_ALLOW_PICKLE", "CTRLGEN_DEVICE"):
        os.environ.pop(name, None)



# With `pytest -n 2` (scripts/dev test) each test file runs whole on one process (its module
# fixtures, such as a served tiny model, are built once and its tests keep their order), and the
# files that drive one heavy shared thing run one after the other on one process: real Krita under
# Xvfb, real GIMP in its chroot, local Ray clusters.
_SERIAL_GROUPS = (
    ("tests/krita/", "krita"),
    ("tests/host_bridges/gimp/", "gimp"),
    ("tests/core/engine/test_ray_runner.py", "ray"),
    ("tests/host_bridges/server/test_workers.py", "ray"),
)


def pytest_collection_modifyitems(config, items):
    """Under xdist, the serial groups first (Krita's is the longest): a long group started last
    would leave the other process idle at the end. Files keep their own order."""
    if not (config.pluginmanager.hasplugin("xdist") and getattr(config.option, "numprocesses", None)):
        return
    root = Path(str(config.rootpath))

    def rank(item) -> int:
        try:
            path = Path(str(item.path)).relative_to(root).as_posix()
        except ValueError:
            return len(_SERIAL_GROUPS)
        return next((index for index, (prefix, _) in enumerate(_SERIAL_GROUPS) if path.startswith(prefix)),
                    len(_SERIAL_GROUPS))

    items.sort(key=rank)


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class FilesAndSerialGroups(LoadScopeScheduling):
        """xdist's per-scope scheduling, a scope being a test file or one of _SERIAL_GROUPS."""

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return next((name for prefix, name in _SERIAL_GROUPS if path.startswith(prefix)), path)

    return FilesAndSerialGroups(config, log)


def pytest_unconfigure(config):
    """Remove the run's scratch folder (config, caches) again."""
    import shutil

    scratch = config.stash.get(_SCRATCH, None)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)

@pytest.fixture
def fresh_plugins():
    """Forget loaded plugins before and after the test (env vars are re-read)."""
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture(scope="module")
def engine(tiny_model_root):
    """An Engine on the tiny models, on the CPU: one per test module (its pipeline cache with it).
    Modules that need another model root or other options define their own ``engine``."""
    from ctrlgen.core.engine.engine import Engine
    from ctrlgen.core.models.store import ModelStore
    from ctrlgen.core.plugins.specs import ModelRoot

    return Engine(store=ModelStore([ModelRoot(tiny_model_root.root)]), device="cpu")


@pytest.fixture
def make_distribution(tmp_path, monkeypatch, fresh_plugins):
    """Install a real distribution (dist-info + module) on ``sys.path`` with ``ctrlgen`` entry points.

    ``make_distribution("ctrlgen-foo", "1.2.3", {"foo": "ctrlgen_foo"}, {"ctrlgen_foo": SOURCE})``
    """
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    created: list[str] = []

    def make(dist_name: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
        for module, source in modules.items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
            created.append(module)
        info = site / f"{dist_name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n")
        lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[ctrlgen]\n{lines}\n")
        plugins.reset()
        return site

    yield make
    for module in created:
        sys.modules.pop(module, None)
