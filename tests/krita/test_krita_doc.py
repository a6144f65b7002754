"""docs/krita.md describes every control the docker shows (so the guide cannot fall behind)."""

from __future__ import annotations

import ast
from pathlib import Path

from ctrlgen.host_bridges.krita import PLUGIN_NAME

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "src" / "ctrlgen" / "host_bridges" / "krita" / PLUGIN_NAME / "docker.py"
LABELLED = {"QGroupBox", "QPushButton", "QCheckBox"}


def docker_labels() -> set[str]:
    """Texts of the docker's group boxes, buttons, check boxes and form rows."""
    labels = set()
    for node in ast.walk(ast.parse(DOCKER.read_text())):
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
    assert {"Server", "Model", "Prompt", "Preview control map", "Cancel", "Use in generation"} <= labels
    text = (ROOT / "docs" / "krita.md").read_text(encoding="utf-8")
    missing = sorted(label for label in labels if f"**{label}**" not in text)
    assert not missing, f"docs/krita.md does not describe (as **label**): {missing}"


def test_docs_images_exist():
    text = (ROOT / "docs" / "krita.md").read_text(encoding="utf-8")
    for name in ("images/krita-window.png", "images/krita-docker.png"):
        assert f"({name})" in text and (ROOT / "docs" / name).is_file()
