"""Model roots for tests: where annotator weights go in an A1111 install, and a context
manager that points the model store at other folders for a while."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

ROOTS_VARIABLE = "CTRLGEN_MODEL_ROOTS"


def annotator_downloads(root: Path, family: str) -> Path:
    """``<root>/extensions/sd-webui-controlnet/annotator/downloads/<family>`` (created)."""
    folder = Path(root) / "extensions" / "sd-webui-controlnet" / "annotator" / "downloads" / family
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def using_model_roots(roots: str | None) -> Iterator[None]:
    """Point the model store at ``roots`` (``CTRLGEN_MODEL_ROOTS``; None: unset) for a while.

    Loaded annotator networks are dropped on entry and exit, so nothing loaded from one set
    of roots is used with another; the variable and the store are restored on exit.
    """
    from ctrlgen.core.models import annotators

    before = os.environ.get(ROOTS_VARIABLE)
    _set_roots(roots)
    annotators.unload()
    annotators.reset_default_store()
    try:
        yield
    finally:
        _set_roots(before)
        annotators.unload()
        annotators.reset_default_store()


def _set_roots(roots: str | None) -> None:
    if roots is None:
        os.environ.pop(ROOTS_VARIABLE, None)
    else:
        os.environ[ROOTS_VARIABLE] = roots
