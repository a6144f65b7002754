"""docs/plugin_hooks.md documents every hook under its exact signature."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from ctrlgen.core.plugins import hookspecs
from ctrlgen.core.plugins.manager import get_plugin_manager

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugin_hooks.md"


def signature_text(function) -> str:
    sig = inspect.signature(function)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{function.__name__}({params}) -> {sig.return_annotation}"


def test_every_hook_in_the_manager_is_documented_with_its_signature(fresh_plugins):
    text = DOC.read_text(encoding="utf-8")
    headings = set(re.findall(r"^## `(.+)`$", text, flags=re.M))
    pm = get_plugin_manager()
    hook_names = [name for name in vars(pm.hook) if name.startswith("ctrlgen_")]
    assert len(hook_names) >= 6
    for name in hook_names:
        spec_function = getattr(hookspecs, name)
        assert signature_text(spec_function) in headings, f"{name} is not documented as {signature_text(spec_function)}"


def test_no_documented_hook_is_stale():
    text = DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"^## `(ctrlgen_\w+)\(", text, flags=re.M))
    assert documented == {n for n in dir(hookspecs) if n.startswith("ctrlgen_")}


def test_every_hookspec_has_a_docstring_with_an_example():
    for name in dir(hookspecs):
        if name.startswith("ctrlgen_"):
            doc = getattr(hookspecs, name).__doc__ or ""
            assert "Example::" in doc and "@hookimpl" in doc, name
