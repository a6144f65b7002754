"""Running a registered preprocessor: validation, input normalisation, output contract."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from ctrlgen.core.errors import CtrlgenError, PluginError
from ctrlgen.core.images import resize, to_mask, to_rgb
from ctrlgen.core.plugins.manager import get_registry
from ctrlgen.core.plugins.specs import PreprocessorSpec, PreprocessResult, validate_params


def check_requirements(spec: PreprocessorSpec) -> None:
    """Raise a clear error if a module the preprocessor needs is not installed."""
    missing = [module for module in spec.requires if importlib.util.find_spec(module.split(".")[0]) is None]
    if missing:
        raise CtrlgenError(
            f"preprocessor {spec.name!r} needs the Python package(s) {', '.join(missing)}, "
            f"which are not installed; install them with: pip install {' '.join(missing)}"
        )


def normalize_output(result: Any, width: int, height: int, owner: str) -> PreprocessResult:
    """Hold a preprocessor to the contract: ``uint8`` H×W×3 at the input's size."""
    if not isinstance(result, PreprocessResult):
        result = PreprocessResult(image=result)
    image = result.image
    if not isinstance(image, np.ndarray):
        raise PluginError(f"preprocessor {owner!r} returned {type(image).__name__}, not a numpy array")
    if image.dtype != np.uint8:
        raise PluginError(f"preprocessor {owner!r} returned dtype {image.dtype}; the contract is uint8")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise PluginError(f"preprocessor {owner!r} returned shape {image.shape}; the contract is H×W×3")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if image.shape[:2] != (height, width):
        image = resize(image, width, height)
    return PreprocessResult(image=np.ascontiguousarray(image), data=dict(result.data))


def preprocess(name: str, image: Any, mask: Any = None, **params: Any) -> PreprocessResult:
    """Run the preprocessor ``name`` on ``image`` and return its control map and data.

    ``image`` may be RGB/RGBA/grey, 8- or 16-bit, numpy or PIL. Unknown or out-of-range
    params raise :class:`~ctrlgen.core.errors.ParamError` before anything runs.
    """
    spec: PreprocessorSpec = get_registry("preprocessors").get(name)
    values = validate_params(spec.params, params, spec.name)
    rgb = to_rgb(image)
    height, width = rgb.shape[:2]
    mask_array = None if mask is None else to_mask(mask, (width, height))
    check_requirements(spec)
    result = spec.run(rgb, mask=mask_array, **values)
    return normalize_output(result, width, height, spec.name)


def unload(name: str | None = None) -> None:
    """Free the weights of preprocessor ``name`` (every preprocessor when None)."""
    registry = get_registry("preprocessors")
    specs = [registry.get(name)] if name is not None else list(registry)
    for spec in specs:
        if spec.unload is not None:
            spec.unload()
