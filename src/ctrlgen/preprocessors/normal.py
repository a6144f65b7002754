"""Normal maps: BAE (NNET on scannet.pt) and MiDaS (normals from the MiDaS depth gradient).

The colours are upstream's (controlnet_aux's detectors, as sd-webui-controlnet draws them):
BAE maps the unit normal ``n`` to ``(n + 1) / 2`` in RGB; MiDaS builds ``(dx, dy, a)`` from
Sobel gradients of its depth, zeroes the gradient where the normalised depth is below the
background threshold, and writes the normalised vector in BGR order.
"""

from __future__ import annotations

import math

import numpy as np

from ctrlgen.core.images import DETECT_RESOLUTION
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import Param, PreprocessorSpec
from ctrlgen.preprocessors.depth import networks
from ctrlgen.preprocessors.depth.networks import (
    MIDAS,
    NORMAL_BAE,
    detector_input,
    run_detector,
    to_input_size,
)

MIDAS_NORMAL_PARAMS = (
    DETECT_RESOLUTION,
    Param("a", "float", default=2.0 * math.pi, min=0.0, max=5.0 * math.pi, step=0.05,
          description="Flatness: the normal's z component before normalising (larger = flatter "
          "surfaces); 2π as in sd-webui-controlnet"),
    Param("bg_threshold", "float", default=0.4, min=0.0, max=1.0, step=0.01,
          description="Background threshold: where the normalised depth (0 far, 1 near) is below "
          "this, the surface is drawn facing the camera"),
)


def run_normal_bae(image: np.ndarray, mask: np.ndarray | None = None, *,
                   detect_resolution: int) -> np.ndarray:
    from controlnet_aux.normalbae import NormalBaeDetector

    height, width = image.shape[:2]
    detector = NormalBaeDetector(networks.load("normal_bae", NORMAL_BAE, networks.build_normal_bae))
    normal = run_detector(detector, detector_input(image, detect_resolution))
    return to_input_size(normal, width, height)


def run_normal_midas(image: np.ndarray, mask: np.ndarray | None = None, *, detect_resolution: int,
                     a: float, bg_threshold: float) -> np.ndarray:
    from controlnet_aux.midas import MidasDetector

    height, width = image.shape[:2]
    detector = MidasDetector(networks.load("normal_midas", MIDAS, networks.build_midas))
    _, normal = run_detector(detector, detector_input(image, detect_resolution), a=a, bg_th=bg_threshold,
                             depth_and_normal=True)
    return to_input_size(normal, width, height)


@hookimpl
def ctrlgen_preprocessors():
    yield PreprocessorSpec(
        name="normal_bae",
        run=run_normal_bae,
        params=(DETECT_RESOLUTION,),
        family="normal",
        description="Surface normal map from BAE (NNET trained on ScanNet), RGB = (n + 1) / 2",
        weights=(NORMAL_BAE,),
        requires=networks.REQUIRES,
        unload=networks.unload_files(NORMAL_BAE),
    )
    yield PreprocessorSpec(
        name="normal_midas",
        run=run_normal_midas,
        params=MIDAS_NORMAL_PARAMS,
        family="normal",
        description="Normal map from the MiDaS depth gradient (the ControlNet 1.0 normal model's input)",
        weights=(MIDAS,),
        requires=networks.REQUIRES,
        unload=networks.unload_files(MIDAS),
    )
