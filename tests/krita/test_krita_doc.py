"""docs/krita.md describes every control the docker shows (so the guide cannot fall behind)."""

from __future__ import annotations

import ast
from pathlib import Path

from ctrlgen.host_bridges.krita import PLUGIN_NAME

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "src" / "ctrlgen" / "host_bridges" / "krita" / PLUGIN_NAME
WIDGET_MODULES = ("docker.py", "pages.py", "settings_dialog.py", "layer_rows.py")
LABELLED = {"QGroupBox", "QPushButton", "QCheckBox"}


def docker_labels() -> set[str]:
    """Texts of the docker's (and its settings dialog's) group boxes, buttons, check boxes and form rows."""
    labels = set()
    nodes = [node for module in WIDGET_MODULES for node in ast.walk(ast.parse((PLUGIN / module).read_text()))]
    for node in nodes:
        if not isinstance(node, ast.Call) or not node.args:
            continue
        first = node.args[0]
        if not isinstance(first, ast.Constant) or not isinstance(first.value, str) or not first.value:
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name in LABELLED or (name == "addRow" and len(node.args) == 2):
            labels.add(first.value)
    return labels


def test_docs_name_every_docker_control():
    labels = docker_labels()
    assert {"Server", "Generate", "Fix faces", "Fix hands", "Run fix", "Apply", "Discard", "Connect",
            "+ Control", "Results"} <= labels
    text = (ROOT / "docs" / "krita.md").read_text(encoding="utf-8")
    missing = sorted(label for label in labels if f"**{label}**" not in text)
    assert not missing, f"docs/krita.md does not describe (as **label**): {missing}"


def test_docs_images_exist():
    text = (ROOT / "docs" / "krita.md").read_text(encoding="utf-8")
    for name in ("images/krita-window.png", "images/krita-docker.png", "images/krita-fix.png"):
        assert f"({name})" in text and (ROOT / "docs" / name).is_file()


def test_the_style_example_in_the_guide_is_a_valid_style():
    import json
    import re

    from ctrlgen.host_bridges.krita.ctrlgen_krita.styles import parse_style

    text = (ROOT / "docs" / "krita.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```json\n(.*?)```", text, re.S)
    style = parse_style(json.loads(block), "docs/krita.md")
    assert style.name == "Ink sketch" and style.loras == [("ink_style", 0.8)] and "{prompt}" in style.prompt
