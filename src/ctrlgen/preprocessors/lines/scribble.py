"""Scribbles: binary white strokes on black, for the scribble ControlNet.

``scribble_hed`` / ``scribble_pidinet`` turn a soft edge map into strokes the way
sd-webui-controlnet and controlnet_aux do (non-maximum suppression at 127, a blur of
sigma 3, everything above 4 becomes a stroke). ``scribble_xdog`` needs no weights: a
difference of Gaussians (sigma 0.5 and 5) thresholded, as sd-webui-controlnet's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ctrlgen.core.images import DETECT_RESOLUTION
from ctrlgen.core.models.annotators import unloader
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import Param, PreprocessorSpec
from ctrlgen.preprocessors.lines.common import (
    NETWORK_REQUIRES,
    detector_input,
    network_owner,
    output_map,
    scribble_from_edges,
)
from ctrlgen.preprocessors.lines.softedge_networks import HED_WEIGHT, PIDINET_WEIGHT, hed_edges, pidinet_edges

SAFE = Param("safe", "bool", default=False,
             description="Quantise the soft edges before tracing strokes (fewer strokes from faint texture)")
XDOG_THRESHOLD = Param("threshold", "int", default=32, min=1, max=64, step=1,
                       description="XDoG threshold: a lower value keeps fainter edges as strokes")


def make_network_run(owner: str, edges: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def run(image: np.ndarray, mask: np.ndarray | None = None, *, detect_resolution: int,
            safe: bool) -> np.ndarray:
        height, width = image.shape[:2]
        strokes = scribble_from_edges(edges(owner, image, detect_resolution, safe=safe))
        return output_map(strokes, width, height, binary=True)

    run.__name__ = f"run_{owner}"
    return run


def xdog_strokes(image: np.ndarray, threshold: int) -> np.ndarray:
    """Binary strokes where the fine-minus-coarse blur is darker than ``threshold / 2`` levels."""
    import cv2

    pixels = image.astype(np.float32)
    fine = cv2.GaussianBlur(pixels, (0, 0), 0.5)
    coarse = cv2.GaussianBlur(pixels, (0, 0), 5.0)
    # How much darker than its surroundings each pixel is (weakest channel), rounded as upstream.
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8)
    strength = 255 - dog.astype(np.int32)
    # Upstream computes 2 * strength in uint8, which wraps for strength >= 128; we do not.
    return np.where(2 * strength > threshold, 255, 0).astype(np.uint8)


def run_scribble_xdog(image: np.ndarray, mask: np.ndarray | None = None, *, threshold: int,
                      detect_resolution: int) -> np.ndarray:
    height, width = image.shape[:2]
    strokes = xdog_strokes(detector_input(image, detect_resolution), threshold)
    return output_map(strokes, width, height, binary=True)


@hookimpl
def ctrlgen_preprocessors():
    for name, edges, weight, label in (
        ("scribble_hed", hed_edges, HED_WEIGHT, "HED"),
        ("scribble_pidinet", pidinet_edges, PIDINET_WEIGHT, "PiDiNet"),
    ):
        yield PreprocessorSpec(
            name=name,
            run=make_network_run(name, edges),
            params=(SAFE, DETECT_RESOLUTION),
            family="scribble",
            description=f"Scribble strokes traced from {label} soft edges ({weight.filename})",
            weights=(weight,),
            requires=NETWORK_REQUIRES,
            unload=unloader(network_owner(weight)),
        )
    yield PreprocessorSpec(
        name="scribble_xdog",
        run=run_scribble_xdog,
        params=(XDOG_THRESHOLD, DETECT_RESOLUTION),
        family="scribble",
        description="Scribble strokes from an extended difference of Gaussians (XDoG; no weights)",
        requires=("cv2",),
    )
