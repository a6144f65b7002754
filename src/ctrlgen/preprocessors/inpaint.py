"""Inpaint hint for the ControlNet inpaint model (control_v11p_sd15_inpaint and kin).

The model is conditioned on the picture with the pixels to repaint set to **-1.0**, the
rest scaled to [0, 1] — diffusers' ``make_inpaint_condition`` (``image[mask > 0.5] = -1``)
and sd-webui-controlnet's inpaint protocol (``hint = colour * (1 - m) - m``, ``m = mask > 0.5``).

A control map is ``uint8``, which cannot hold -1. So the preprocessor returns the picture
with the masked pixels painted black (what a person sees) and ``data["hint"] =
"masked_minus_one"``; the engine builds the real conditioning with :func:`control_hint`
from that map and the job's mask. Without a mask there is nothing to inpaint: a clear error.
"""

from __future__ import annotations

import numpy as np

from ctrlgen.core.errors import ImageError
from ctrlgen.core.images import resize, to_mask
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import PreprocessorSpec, PreprocessResult

HINT_CONVENTION = "masked_minus_one"
MASK_THRESHOLD = 0.5  # fraction of 255 above which a mask pixel counts as masked (diffusers, sd-webui)


def masked_pixels(mask: np.ndarray) -> np.ndarray:
    """Boolean H×W: the pixels the hint marks, ``mask / 255 > 0.5`` as upstream decides."""
    return mask.astype(np.float32) / 255.0 > MASK_THRESHOLD


def control_hint(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The ControlNet inpaint conditioning: ``float32`` H×W×3, [0, 1] outside the mask, -1 inside.

    ``image`` is the control map (or the picture), ``uint8`` RGB; ``mask`` is ``uint8``
    H×W (255 = repaint), resized to the image when their sizes differ (a map fitted to the
    generation size by the engine).
    """
    height, width = image.shape[:2]
    mask = to_mask(mask)
    if mask.shape != (height, width):
        mask = resize(mask, width, height)
    hint = image.astype(np.float32) / 255.0
    hint[masked_pixels(mask)] = -1.0
    return hint


def run_inpaint(image: np.ndarray, mask: np.ndarray | None = None) -> PreprocessResult:
    if mask is None:
        raise ImageError(
            "inpaint needs a mask: pass mask= (white = the pixels to repaint), e.g. "
            "ctrlgen.preprocess('inpaint', image, mask=mask) or the host's selection"
        )
    selected = masked_pixels(mask)
    hint_map = image.copy()
    hint_map[selected] = 0
    ys, xs = np.nonzero(selected)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None
    return PreprocessResult(hint_map, {
        "hint": HINT_CONVENTION,
        "mask_threshold": MASK_THRESHOLD,
        "masked_fraction": round(float(selected.mean()), 6),
        "mask_bbox": bbox,
    })


@hookimpl
def ctrlgen_preprocessors():
    description = ("ControlNet inpaint hint: the picture with the masked pixels marked (needs a mask; "
                   "the engine turns them into -1)")
    yield PreprocessorSpec(name="inpaint", run=run_inpaint, family="inpaint", description=description,
                           hint_from_job=True)
    # sd-webui-controlnet's name for the same hint, so its job settings carry over
    yield PreprocessorSpec(name="inpaint_only", run=run_inpaint, family="inpaint",
                           description="the same as inpaint (sd-webui-controlnet's name)", hint_from_job=True)
