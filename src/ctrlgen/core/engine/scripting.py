"""The scripting API's one-call helpers (``ctrlgen.fix``): build a job, run it on an engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ctrlgen.core.errors import JobError

_SHARED_ENGINE: list[Any] = []
SCRIPT_IMAGE_REF = "ctrlgen-fix:image"


def shared_engine() -> Any:
    """One :class:`~ctrlgen.core.engine.engine.Engine` from the settings, made on first use and
    kept, so a script's calls share its loaded models."""
    if not _SHARED_ENGINE:
        from ctrlgen.core.engine.engine import Engine

        _SHARED_ENGINE.append(Engine())
    return _SHARED_ENGINE[0]


def fix(image: Any, passes: Any, model: str | None = None, *, engine: Any = None, on_event: Any = None,
        cancel: Any = None, **options: Any) -> Any:
    """:func:`ctrlgen.fix`: a ``fix`` job for ``image`` (a path, a PIL image or a uint8 array)
    with ``passes`` (DetailPass objects, dicts of their fields or detector names), run on
    ``engine`` (default: :func:`shared_engine`). Returns the :class:`JobResult`."""
    from ctrlgen.core.engine.engine import load_image_file
    from ctrlgen.core.engine.jobs import parse_job

    if isinstance(passes, (str, dict)) or hasattr(passes, "model_dump"):
        passes = [passes]
    detail = [{"detector": p} if isinstance(p, str) else (p.model_dump() if hasattr(p, "model_dump") else p)
              for p in passes]
    source = None
    if isinstance(image, (str, Path)):
        reference = str(image)
    else:
        if hasattr(image, "convert"):  # PIL
            pixels = np.asarray(image.convert("RGBA" if image.mode in ("RGBA", "LA", "PA", "P") else "RGB"))
        else:
            pixels = np.asarray(image)
        if pixels.dtype != np.uint8:
            raise JobError(f"fix: the image array is {pixels.dtype}; give uint8 pixels (0-255), a PIL image or a "
                           "path")
        reference = SCRIPT_IMAGE_REF

        def source(ref: str, what: str) -> np.ndarray:
            return pixels if ref == SCRIPT_IMAGE_REF else load_image_file(ref, what)

    job = parse_job({**options, "task": "fix", "model": model, "image": reference, "detail": detail})
    return (engine or shared_engine()).run(job, images=source, on_event=on_event, cancel=cancel)
