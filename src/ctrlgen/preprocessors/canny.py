"""Canny edges (OpenCV): the classic ControlNet edge map, white edges on black."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ctrlgen.core.errors import ParamError
from ctrlgen.core.images import DETECT_RESOLUTION, detection_size, resize
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import Param, PreprocessorSpec

PARAMS = (
    Param("low_threshold", "int", default=100, min=0, max=255, step=1,
          description="Gradient below this is never an edge"),
    Param("high_threshold", "int", default=200, min=0, max=255, step=1,
          description="Gradient above this is always an edge"),
    Param("invert", "bool", default=False, description="Black edges on white (for sketch-style models)"),
    replace(DETECT_RESOLUTION, default=0),
)


def run_canny(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    low_threshold: int,
    high_threshold: int,
    invert: bool,
    detect_resolution: int,
) -> np.ndarray:
    import cv2

    if low_threshold > high_threshold:
        raise ParamError(
            f"canny.low_threshold={low_threshold} is above canny.high_threshold={high_threshold}; "
            "swap them or lower low_threshold"
        )
    height, width = image.shape[:2]
    work = resize(image, *detection_size(width, height, detect_resolution))
    edges = cv2.Canny(work, low_threshold, high_threshold)
    if invert:
        edges = 255 - edges
    edges = resize(edges, width, height) if edges.shape[:2] != (height, width) else edges
    return cv2.cvtColor(edges, cv2.COLOR_GRAY2RGB)  # far cheaper than np.repeat on big images


@hookimpl
def ctrlgen_preprocessors():
    yield PreprocessorSpec(
        name="canny",
        run=run_canny,
        params=PARAMS,
        family="canny",
        description="Canny edge detection (OpenCV, no weights)",
        requires=("cv2",),
    )
