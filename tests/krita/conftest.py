"""Run scenarios inside a real Krita (Debian's krita + python3-pyqt5, kritarunner under
xvfb-run) against a real `ctrlgen serve` with the tiny models.

``krita_report`` starts Krita once for all scenarios (Krita's start-up costs seconds) with the
plugin installed by ``ctrlgen install krita`` into a scratch HOME, and returns the JSON that
tests/krita/krita_scenarios.py wrote from inside Krita.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from krita_support import bridge_helpers, krita_missing, run_kritarunner, scenario_config

# "undo" first: Krita's undo action follows the first main window opened in the process.
SCENARIOS = ("undo", "window", "inpaint", "control", "cancel", "server_down", "big_canvas",
             "wrong_document", "reference", "model_resolution",
             # issue 16's bugs (krita_scenarios_bugs.py)
             "closed_document", "reference_whole", "server_status", "hidden_layers", "map_none",
             # the Fix workspace and the history (krita_scenarios_fix.py)
             "fix_faces", "fix_selection", "history",
             # Upscale, regions and selection modes (krita_scenarios_upscale.py)
             "upscale", "regions", "selection_modes",
             # Last, the two that show a document in a view of the main window and leave it open
             # (closing a viewed document from a script unsettles Krita 5.1 for later scenarios):
             # "placement" (krita_scenarios_bugs.py) and the docker docked in a real session.
             "placement", "screenshot")


@pytest.fixture(scope="session")
def krita_home(tmp_path_factory) -> Path:
    """A scratch HOME with the plugin installed the way users install it."""
    from ctrlgen.host_bridges.krita import install

    home = tmp_path_factory.mktemp("krita-home")
    install(home / "data" / "krita" / "pykrita", kritarc=home / "config" / "kritarc")
    # Xvfb has no usable OpenGL: Krita's OpenGL canvas fails to compile its shaders and can crash
    # when a second view opens. The QPainter canvas draws the same.
    (home / "config" / "kritadisplayrc").write_text("[General]\nOpenGLRenderer=none\n", encoding="utf-8")
    return home


@pytest.fixture(scope="session")
def krita_server(request, tmp_path_factory, krita_model_root):
    """The real `ctrlgen serve` the Krita scenarios talk to (one per session)."""
    reason = krita_missing()
    if reason:
        pytest.skip(reason)
    server = bridge_helpers().start_server(tmp_path_factory.mktemp("krita-server"), krita_model_root)
    request.addfinalizer(server.stop)
    return server


def photos(folder: Path) -> dict:
    """The Fix scenarios' photos as raw BGRA files (Krita's byte order): skimage's astronaut and
    insightface's group photo t1.jpg."""
    import importlib.util

    import numpy as np
    from PIL import Image
    from skimage import data

    spec = importlib.util.find_spec("insightface")
    group = np.asarray(Image.open(Path(spec.origin).parent / "data" / "images" / "t1.jpg").convert("RGB"))
    out = {}
    for name, rgb in (("astronaut", data.astronaut()), ("group", group)):
        bgra = np.dstack([rgb[..., 2], rgb[..., 1], rgb[..., 0], np.full(rgb.shape[:2], 255, np.uint8)])
        path = folder / f"{name}.bgra"
        path.write_bytes(np.ascontiguousarray(bgra).tobytes())
        out[name] = {"path": str(path), "width": int(rgb.shape[1]), "height": int(rgb.shape[0])}
    return out


@pytest.fixture(scope="session")
def krita_doomed_server(request, tmp_path_factory, krita_model_root):
    """A second server, which a scenario kills with SIGKILL (the server dying under the docker)."""
    server = bridge_helpers().start_server(tmp_path_factory.mktemp("krita-doomed"), krita_model_root)
    request.addfinalizer(server.stop)
    return server


@pytest.fixture(scope="session")
def krita_report(tmp_path_factory, krita_home, krita_server, krita_doomed_server) -> dict:
    # CTRLGEN_KRITA_SCENARIOS=a,b runs only those (while working on them; the others' tests then fail).
    chosen = [name for name in os.environ.get("CTRLGEN_KRITA_SCENARIOS", "").split(",") if name] or SCENARIOS
    config = scenario_config(krita_server, tmp_path_factory.mktemp("krita-out"), chosen)
    config.update(doomed_url=krita_doomed_server.url, doomed_token=krita_doomed_server.token,
                  doomed_pid=krita_doomed_server.process.pid, kra=str(Path(config["out"]).with_name("history.kra")),
                  **photos(Path(config["out"]).parent))
    report, output = run_kritarunner(krita_home, config)
    if report is None:
        pytest.fail(f"Krita wrote no report. Its output:\n{output[-6000:]}\n"
                    f"Server log:\n{krita_server.log()[-3000:]}")
    report["output"] = output
    report["server_log"] = krita_server.log()
    return report


@pytest.fixture(scope="session")
def bridge_model_root(tiny_model_root) -> Path:
    """The tiny A1111 root (tiny-sd15, tiny-controlnet-sd15), as tests/host_bridges uses."""
    return Path(tiny_model_root.root)


@pytest.fixture(scope="session")
def krita_model_root(tmp_path_factory, tiny_model_cache, tiny_sd15, tiny_sdxl) -> Path:
    """The tiny models plus the tiny IP-Adapters and image encoder, in a root of its own (the
    shared one stays as the bridge tests expect it)."""
    from ctrlgen.testing.tiny import write_model_root
    from ctrlgen.testing.tiny_ip_adapter import add_tiny_ip_adapter_models

    root = write_model_root(tmp_path_factory.mktemp("krita-models"), "a1111", architectures=("sd15", "sdxl"),
                            cache_dir=tiny_model_cache)
    add_tiny_ip_adapter_models(root)
    from ctrlgen.testing.tiny_upscalers import write_tiny_upscaler

    write_tiny_upscaler(root.models_dir / "ESRGAN", "compact", scale=2, name="2x-compact")  # the Upscale scenario's
    return Path(root.root)
