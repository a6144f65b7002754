"""ctrlgen: controllable generation as a plugin framework for image-editing apps.

Public API (everything else is internal and may change)::

    from ctrlgen import hookimpl, Param, PreprocessorSpec, AdapterSpec, ArchitectureSpec, HostBridgeSpec, ModelSourceSpec
"""

from __future__ import annotations

__version__ = "0.1.0"

from .core.plugins import hookimpl
from .core.specs import (
    AdapterSpec,
    ArchitectureSpec,
    HostBridgeSpec,
    ModelRoot,
    ModelSourceSpec,
    Param,
    PreprocessorSpec,
    PreprocessResult,
    WeightFile,
)


def __getattr__(name: str):
    # ctrlgen.Client: the standard-library bridge client, imported on first use.
    if name == "Client":
        from .host_bridges.client import Client

        return Client
    raise AttributeError(f"module 'ctrlgen' has no attribute {name!r}")


def preprocess(name: str, image, mask=None, **params) -> PreprocessResult:
    """Run the preprocessor ``name`` on ``image``; see :func:`ctrlgen.core.preprocess.preprocess`."""
    from .core.preprocess import preprocess as _preprocess

    return _preprocess(name, image, mask, **params)


__all__ = [
    "AdapterSpec",
    "ArchitectureSpec",
    "Client",
    "HostBridgeSpec",
    "ModelRoot",
    "ModelSourceSpec",
    "Param",
    "PreprocessResult",
    "PreprocessorSpec",
    "WeightFile",
    "__version__",
    "hookimpl",
    "preprocess",
]
