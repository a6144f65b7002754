"""Running a registered detector: validation, input normalisation, the output contract."""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import numpy as np

from ctrlgen.core.errors import CtrlgenError, PluginError
from ctrlgen.core.images import to_rgb
from ctrlgen.core.plugins.manager import get_registry
from ctrlgen.core.plugins.specs import Detection, DetectorSpec, validate_params


def check_requirements(spec: DetectorSpec) -> None:
    """Raise a clear error if a module the detector needs is not installed."""
    missing = [module for module in spec.requires if importlib.util.find_spec(module.split(".")[0]) is None]
    if missing:
        raise CtrlgenError(
            f"detector {spec.name!r} needs the Python package(s) {', '.join(missing)}, "
            f"which are not installed; install them with: pip install {' '.join(missing)}"
        )


def _checked_mask(mask: Any, width: int, height: int, owner: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.shape != (height, width):
        raise PluginError(f"detector {owner!r} returned a {mask.shape} mask for a {height}×{width} image; "
                          "the contract is a uint8 H×W mask at the image's size")
    if mask.dtype == bool:
        return mask.astype(np.uint8) * 255
    if mask.dtype != np.uint8:
        raise PluginError(f"detector {owner!r} returned a {mask.dtype} mask; the contract is uint8 (255 = the thing)")
    return np.ascontiguousarray(mask)


def normalize_detections(result: Any, width: int, height: int, owner: str) -> list[Detection]:
    """Hold a detector to the contract: :class:`Detection` s with boxes clipped to the image,
    confidences in [0, 1], masks ``uint8`` H×W, keypoints ``float32`` N×2 or N×3."""
    detections = []
    for item in result or ():
        if not isinstance(item, Detection):
            raise PluginError(f"detector {owner!r} returned {type(item).__name__}, expected ctrlgen.Detection")
        x0, y0, x1, y1 = (float(v) for v in item.box)
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 < x0 or y1 < y0:
            raise PluginError(f"detector {owner!r} returned the box {item.box}; the contract is (x0, y0, x1, y1) "
                              "with x0 <= x1 and y0 <= y1")
        box = (min(max(x0, 0.0), width), min(max(y0, 0.0), height),
               min(max(x1, 0.0), width), min(max(y1, 0.0), height))
        confidence = float(item.confidence)
        if not 0.0 <= confidence <= 1.0:
            raise PluginError(f"detector {owner!r} returned confidence {confidence}; the contract is [0, 1]")
        mask = None if item.mask is None else _checked_mask(item.mask, width, height, owner)
        keypoints = None
        if item.keypoints is not None:
            keypoints = np.asarray(item.keypoints, np.float32)
            if keypoints.ndim != 2 or keypoints.shape[1] not in (2, 3):
                raise PluginError(f"detector {owner!r} returned keypoints of shape {keypoints.shape}; "
                                  "the contract is N×2 or N×3")
        detections.append(Detection(box, confidence, str(item.label), mask, keypoints, dict(item.data)))
    return detections


def detect(name: str, image: Any, **params: Any) -> list[Detection]:
    """Run the detector ``name`` on ``image`` and return what it found, most confident first.

    ``image`` may be RGB/RGBA/grey, 8- or 16-bit, numpy or PIL. Unknown or out-of-range
    params raise :class:`~ctrlgen.core.errors.ParamError` before anything runs; an unknown
    detector raises an error listing the registered ones.
    """
    spec: DetectorSpec = get_registry("detectors").get(name)
    values = validate_params(spec.params, params, spec.name)
    rgb = np.ascontiguousarray(to_rgb(image))
    height, width = rgb.shape[:2]
    check_requirements(spec)
    found = normalize_detections(spec.run(rgb, **values), width, height, spec.name)
    return sorted(found, key=lambda d: d.confidence, reverse=True)


def unload(name: str | None = None) -> None:
    """Free the weights of detector ``name`` (every detector when None)."""
    registry = get_registry("detectors")
    specs = [registry.get(name)] if name is not None else list(registry)
    for spec in specs:
        if spec.unload is not None:
            spec.unload()
