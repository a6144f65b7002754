"""ctrlgen: controllable generation as a plugin framework for image-editing apps.

Public API (everything else is internal and may move; see docs/architecture.md)::

    # writing plugins
    from ctrlgen import hookimpl, Param, PreprocessorSpec, AdapterSpec, ArchitectureSpec, DetectorSpec, Detection
    from ctrlgen import HostBridgeSpec, ModelSourceSpec, ModelRoot, WeightFile, PreprocessResult
    # running things
    from ctrlgen import preprocess, detect, Engine, Job, parse_job, load_job, ModelStore, Client
    from ctrlgen import CtrlgenError, JobError, ModelNotFoundError

Engine, Job, parse_job, load_job, ModelStore and Client are imported on first use, so
``import ctrlgen`` stays light (no torch, no diffusers).
"""

from __future__ import annotations

from ctrlgen import _moved
from ctrlgen._version import __version__
from ctrlgen.core.errors import CtrlgenError, JobError, ModelNotFoundError
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import (
    AdapterSpec,
    ArchitectureSpec,
    Detection,
    DetectorSpec,
    HostBridgeSpec,
    ModelRoot,
    ModelSourceSpec,
    Param,
    PreprocessorSpec,
    PreprocessResult,
    WeightFile,
)

_moved.install()  # old module paths (before the wave-2 layout) keep importing

_LAZY = {
    "Client": "ctrlgen.host_bridges.client",
    "Engine": "ctrlgen.core.engine.engine",
    "JobResult": "ctrlgen.core.engine.engine",
    "Job": "ctrlgen.core.engine.jobs",
    "parse_job": "ctrlgen.core.engine.jobs",
    "load_job": "ctrlgen.core.engine.jobs",
    "ModelStore": "ctrlgen.core.models.store",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ctrlgen' has no attribute {name!r}")


def preprocess(name: str, image, mask=None, **params) -> PreprocessResult:
    """Run the preprocessor ``name`` on ``image``; see :func:`ctrlgen.core.engine.preprocess.preprocess`."""
    from ctrlgen.core.engine.preprocess import preprocess as _preprocess

    return _preprocess(name, image, mask, **params)


def fix(image, passes, model: str | None = None, **options):
    """Fix faces, hands, ... in an existing image without regenerating it: run the fix
    ``passes`` (each a :class:`~ctrlgen.core.engine.jobs.DetailPass`, a dict of its fields or
    a detector name) on ``image`` (a path, a PIL image or a uint8 array) with checkpoint
    ``model``, and return the :class:`JobResult` (``images[0]`` the fixed picture, ``data[0]``
    what each pass found and repainted). ``options`` are other job fields (``prompt``,
    ``seed``, ``steps``, ``sampler``, ...) plus ``engine=`` (an :class:`Engine`; default: one
    shared engine from the settings), ``on_event=`` and ``cancel=``. See docs/fixing.md."""
    from ctrlgen.core.engine.scripting import fix as _fix

    return _fix(image, passes, model, **options)


def detect(name: str, image, **params) -> list[Detection]:
    """Run the detector ``name`` on ``image``: the faces, hands or people it finds, most confident first.

    ``image`` is a numpy array (RGB/RGBA/grey) or a PIL image; ``params`` are the detector's
    (``ctrlgen plugins --all`` lists each detector's schema), checked before anything runs.
    Each :class:`Detection` has a box ``(x0, y0, x1, y1)`` in pixels, a confidence, a label
    and, where the detector has them, a mask and keypoints::

        faces = ctrlgen.detect("mediapipe_face_full", photo, confidence=0.5)

    See docs/detectors.md and :func:`ctrlgen.core.engine.detect.detect`.
    """
    from ctrlgen.core.engine.detect import detect as _detect

    return _detect(name, image, **params)


__all__ = [
    "AdapterSpec",
    "ArchitectureSpec",
    "Client",
    "CtrlgenError",
    "Detection",
    "DetectorSpec",
    "Engine",
    "HostBridgeSpec",
    "Job",
    "JobError",
    "JobResult",
    "ModelNotFoundError",
    "ModelRoot",
    "ModelSourceSpec",
    "ModelStore",
    "Param",
    "PreprocessResult",
    "PreprocessorSpec",
    "WeightFile",
    "__version__",
    "detect",
    "hookimpl",
    "load_job",
    "parse_job",
    "preprocess",
]
