"""Tile/blur hints for the ControlNet tile model, as sd-webui-controlnet defines them.

- ``tile_resample``: the picture down-sampled by ``down_sampling_rate`` (area filter) and
  brought back to the input's size, so the model re-creates the lost detail.
- ``tile_colorfix`` / ``tile_colorfix+sharp``: the hint is the picture itself; the colour
  fix happens while sampling. :func:`colorfix_x0` is that step (sd-webui-controlnet's
  hook and Forge's ``block_proc``): the engine applies it to the predicted clean latent
  at every step, using ``data["colorfix"]`` (variation, sharpness) from the result.
- ``blur_gaussian``: a Gaussian blur with ``sigma``, at ``detect_resolution``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ctrlgen.core.images import DETECT_RESOLUTION, detection_size, resize
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import Param, PreprocessorSpec, PreprocessResult

DOWN_SAMPLING = Param("down_sampling_rate", "float", default=1.0, min=1.0, max=8.0, step=0.01,
                      description="Shrink the picture by this factor before it is used "
                                  "(below 1.1: unchanged)")
VARIATION = Param("variation", "int", default=8, min=3, max=32, step=1,
                  description="Radius in latent pixels of the blur whose colours are held to the input's "
                              "(doubled in a high-res pass)")
SHARPNESS = Param("sharpness", "float", default=1.0, min=0.0, max=2.0, step=0.01,
                  description="How much the negative prediction is blurred to sharpen the result")
SIGMA = Param("sigma", "float", default=9.0, min=0.01, max=64.0, step=0.01,
              description="Standard deviation of the Gaussian blur, in detector pixels")


def run_resample(image: np.ndarray, mask: np.ndarray | None = None, *, down_sampling_rate: float):
    import cv2

    height, width = image.shape[:2]
    if down_sampling_rate < 1.1:
        return PreprocessResult(image.copy(), {"down_sampling_rate": down_sampling_rate,
                                               "sampled_size": [width, height]})
    small_w = max(1, int(float(width) / down_sampling_rate))
    small_h = max(1, int(float(height) / down_sampling_rate))
    small = cv2.resize(image, (small_w, small_h), interpolation=cv2.INTER_AREA)
    return PreprocessResult(resize(small, width, height),
                            {"down_sampling_rate": down_sampling_rate, "sampled_size": [small_w, small_h]})


def run_colorfix(image: np.ndarray, mask: np.ndarray | None = None, *, variation: int,
                 sharpness: float | None = None) -> PreprocessResult:
    return PreprocessResult(image.copy(), {"colorfix": {"variation": variation, "sharpness": sharpness}})


def run_blur(image: np.ndarray, mask: np.ndarray | None = None, *, sigma: float, detect_resolution: int):
    import cv2

    height, width = image.shape[:2]
    work = resize(image, *detection_size(width, height, detect_resolution, multiple=1))
    return resize(cv2.GaussianBlur(work, (0, 0), float(sigma)), width, height)


def box_blur(latent: Any, radius: int) -> Any:
    """Mean over a ``(2r+1)²`` window with replicated borders (upstream's ``blur``)."""
    import torch.nn.functional as F

    padded = F.pad(latent, (radius, radius, radius, radius), mode="replicate")
    return F.avg_pool2d(padded, (radius * 2 + 1, radius * 2 + 1), stride=(1, 1))


def colorfix_x0(x0: Any, reference: Any, variation: int, sharpness: float | None = None,
                uncond: Any = None, high_res_pass: bool = False) -> Any:
    """The tile colour fix on a predicted clean latent ``x0`` (B×C×H×W).

    Its low frequencies are replaced by those of ``reference`` (the VAE latent of the hint
    image); with ``sharpness``, the rows of the batch flagged in ``uncond`` (B bools, the
    unconditional half) are blurred by ``sharpness`` percent, which sharpens the guided result.
    """
    radius = int(variation) * (2 if high_res_pass else 1)
    fixed = x0 - box_blur(x0, radius) + box_blur(reference.to(x0), radius)
    if sharpness is not None and uncond is not None:
        detail_weight = float(sharpness) * 0.01
        negative = detail_weight * box_blur(fixed, radius) + (1 - detail_weight) * fixed
        mark = uncond.to(fixed).reshape(-1, 1, 1, 1)
        fixed = (1 - mark) * fixed + mark * negative
    return fixed


@hookimpl
def ctrlgen_preprocessors():
    yield PreprocessorSpec(
        name="tile_resample", run=run_resample, params=(DOWN_SAMPLING,), family="tile",
        description="Tile hint: the picture, optionally down-sampled (no weights)", requires=("cv2",),
    )
    yield PreprocessorSpec(
        name="tile_colorfix", run=run_colorfix, params=(VARIATION,), family="tile",
        description="Tile hint that holds the result's colours to the input's while sampling (no weights)",
    )
    yield PreprocessorSpec(
        name="tile_colorfix+sharp", run=run_colorfix, params=(VARIATION, SHARPNESS), family="tile",
        description="tile_colorfix plus sharpening through a blurred negative prediction (no weights)",
    )
    yield PreprocessorSpec(
        name="blur_gaussian", run=run_blur, params=(SIGMA, replace(DETECT_RESOLUTION, default=512)),
        family="tile", description="Gaussian-blurred picture, for the tile/blur ControlNet (no weights)",
        requires=("cv2",),
    )
