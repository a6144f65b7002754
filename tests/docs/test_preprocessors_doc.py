"""docs/preprocessors.md covers every registered preprocessor and its pictures exist."""

from __future__ import annotations

import re
from pathlib import Path

from ctrlgen.core.plugins.manager import get_registry

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_preprocessor_is_documented_with_its_params(fresh_plugins):
    text = (DOCS / "preprocessors.md").read_text(encoding="utf-8")
    headings = " ".join(re.findall(r"^### (.+)$", text, flags=re.M))
    for spec in get_registry("preprocessors"):
        assert re.search(rf"(?<![\w+]){re.escape(spec.name)}(?![\w+])", headings), f"{spec.name} has no section"
        for param in spec.params:
            assert f"`{param.name}`" in text, f"{spec.name}.{param.name} is not documented"


def test_pictures_exist_and_each_is_a_preprocessor():
    text = (DOCS / "preprocessors.md").read_text(encoding="utf-8")
    pictures = re.findall(r"!\[([^\]]*)\]\((images/[^)]+)\)", text)
    assert len(pictures) > 10
    names = set(get_registry("preprocessors").names()) | {"contact sheet"}
    for label, path in pictures:
        assert (DOCS / path).is_file(), path
        assert label in names, label
