"""docs/adapters.md documents every adapter except ControlNet (jobs.md covers it) with its params."""

from __future__ import annotations

from pathlib import Path

from ctrlgen.core.plugins.manager import get_registry

DOC = Path(__file__).resolve().parents[2] / "docs" / "adapters.md"


def test_every_adapter_and_param_is_documented(fresh_plugins):
    text = DOC.read_text(encoding="utf-8")
    for spec in get_registry("adapters"):
        assert f"`{spec.name}`" in text, spec.name
        for param in spec.params:
            assert f"`{param.name}`" in text, f"{spec.name}.{param.name}"
