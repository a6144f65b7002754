"""ctrlgen: controllable generation as a plugin framework for image-editing apps.

Public API (everything else is internal and may move; see docs/architecture.md)::

    # writing plugins
    from ctrlgen import hookimpl, Param, PreprocessorSpec, AdapterSpec, ArchitectureSpec, DetectorSpec, Detection
    from ctrlgen import HostBridgeSpec, ModelSourceSpec, ModelRoot, WeightFile, PreprocessResult
    # running things
    from ctrlgen import preprocess, Engine, Job, parse_job, load_job, ModelStore, Client
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
    "hookimpl",
    "load_job",
    "parse_job",
    "preprocess",
]
