"""ctrlgen: controllable generation as a plugin framework for image-editing apps.

Public API (everything else is internal and may change)::

    from ctrlgen import hookimpl, Param, PreprocessorSpec, AdapterSpec, HostBridgeSpec, ModelSourceSpec
"""

from __future__ import annotations

__version__ = "0.1.0"

from .core.plugins import hookimpl
from .core.specs import (
    AdapterSpec,
    HostBridgeSpec,
    ModelRoot,
    ModelSourceSpec,
    Param,
    PreprocessorSpec,
    PreprocessResult,
    WeightFile,
)

__all__ = [
    "AdapterSpec",
    "HostBridgeSpec",
    "ModelRoot",
    "ModelSourceSpec",
    "Param",
    "PreprocessResult",
    "PreprocessorSpec",
    "WeightFile",
    "__version__",
    "hookimpl",
]
