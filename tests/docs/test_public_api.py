"""What plugin authors and scripts were told to import keeps importing.

- every name in ``ctrlgen.__all__`` (the public API);
- every ``import``/``from ... import`` of ctrlgen in docs/ and the README, and every dotted
  ``ctrlgen.x.y`` name they mention;
- the paths the docs gave before the wave-2 layout change, which now answer with the moved
  module and a DeprecationWarning naming the new path.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import ctrlgen

REPO = Path(__file__).resolve().parents[2]
TEXTS = sorted((REPO / "docs").rglob("*.md")) + [REPO / "README.md"]
IMPORT = re.compile(r"^\s*from (ctrlgen[\w.]*) import \(?([\w, \n]+?)\)?\s*(?:#.*)?$|^\s*import (ctrlgen[\w.]*)", re.M)
DOTTED = re.compile(r"`(ctrlgen(?:\.\w+)+)")


def _doc_imports() -> list[tuple[str, str, str]]:
    found = []
    for path in TEXTS:
        text = path.read_text(encoding="utf-8")
        for module, names, plain in IMPORT.findall(text):
            if plain:
                found.append((path.name, plain, ""))
            for name in filter(None, (n.strip() for n in names.replace("\n", ",").split(","))):
                found.append((path.name, module, name))
    return found


def _resolve_dotted(dotted: str):
    """Import the longest module prefix of ``dotted`` and get the rest as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("name", ctrlgen.__all__)
def test_every_public_name_imports_from_ctrlgen(name):
    assert getattr(ctrlgen, name) is not None


def test_the_docs_import_something():
    assert len(_doc_imports()) >= 10


@pytest.mark.parametrize("doc, module, name", _doc_imports(), ids=lambda v: str(v))
def test_every_import_the_docs_show_works(doc, module, name):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the docs use current paths
        imported = importlib.import_module(module)
        if name:
            assert hasattr(imported, name) or importlib.import_module(f"{module}.{name}"), f"{doc}: {module}.{name}"


@pytest.mark.parametrize("dotted", sorted({m for p in TEXTS for m in DOTTED.findall(p.read_text(encoding="utf-8"))}))
def test_every_dotted_name_the_docs_mention_exists(dotted):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        _resolve_dotted(dotted.rstrip("."))


# What docs/ told users to import before the layout change (git show 8606242:docs/...).
OLD_DOCUMENTED = [
    ("ctrlgen.core.preprocess", ["preprocess", "unload"], "ctrlgen.core.engine.preprocess"),
    ("ctrlgen.preprocessors.openpose", ["render_openpose"], "ctrlgen.preprocessors.pose.openpose"),
    ("ctrlgen.core.specs", ["ModelRoot"], "ctrlgen.core.plugins.specs"),
    ("ctrlgen.core.models", ["ModelStore"], None),
    ("ctrlgen.core.jobs", ["parse_job"], "ctrlgen.core.engine.jobs"),
    ("ctrlgen.core.engine", ["Engine"], None),
    ("ctrlgen.core.errors", ["ModelNotFoundError"], None),
    ("ctrlgen.core.architecture", ["identify_file"], "ctrlgen.core.models.identify"),
    ("ctrlgen.core.annotators", ["unload"], "ctrlgen.core.models.annotators"),
    ("ctrlgen.core.builtin_architectures", ["ctrlgen_architectures"], "ctrlgen.core.engine.architectures"),
    ("ctrlgen.core.plugins", ["hookimpl", "get_registry", "reset"], None),
    ("ctrlgen.preprocessors.tile", ["colorfix_x0"], None),
    ("ctrlgen.preprocessors.inpaint", ["control_hint"], None),
    ("ctrlgen.testing.tiny", ["write_model_root"], None),
    ("ctrlgen.testing.contracts", ["PreprocessorContract"], None),
    ("ctrlgen.host_bridges.client", ["Client", "RawImage"], None),
]


@pytest.mark.parametrize("old, names, new", OLD_DOCUMENTED, ids=[o for o, _, _ in OLD_DOCUMENTED])
def test_paths_the_earlier_docs_gave_still_import(old, names, new):
    # a fresh interpreter: the module must not be imported already for the finder to be asked
    code = (
        "import warnings, importlib\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        f"    module = importlib.import_module({old!r})\n"
        f"    values = [getattr(module, n) for n in {names!r}]\n"
        "print(module.__name__)\n"
        "print('|'.join(str(w.message) for w in caught if w.category is DeprecationWarning))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    name, warned = result.stdout.splitlines()[-2:]
    if new is None:
        assert name.startswith(old) and warned == ""
    else:
        assert name == new
        assert f"{old} moved to {new}" in warned


def test_the_moved_module_is_the_same_object(monkeypatch):
    import ctrlgen.core.engine.preprocess as current

    monkeypatch.delitem(sys.modules, "ctrlgen.core.preprocess", raising=False)
    with pytest.warns(DeprecationWarning, match="ctrlgen.core.engine.preprocess"):
        old = importlib.import_module("ctrlgen.core.preprocess")
    assert old is current
    assert current.__spec__.name == "ctrlgen.core.engine.preprocess"  # its own spec is kept


def test_old_builtin_plugin_names_still_block_plugins(monkeypatch, fresh_plugins):
    from ctrlgen.core.plugins import manager

    monkeypatch.setenv("CTRLGEN_DISABLE_PLUGINS", "ctrlgen.preprocessors.openpose")
    manager.reset()
    info = manager.get_host().infos["ctrlgen.preprocessors.pose.openpose"]
    assert info.blocked
    assert "openpose_full" not in manager.get_registry("preprocessors")
