"""A region's mask, read and brought to the generation: the picture's size checked, feathered at
the picture's scale, then fitted the way the task fits its picture (img2img: the job's resize
mode; inpaint: placed on the outpainted canvas and cropped to the frame's region)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ctrlgen.core.errors import ImageError, JobError


def picture_size(context: Any) -> tuple[int, int]:
    """``(width, height)`` a region mask must have: the job's image (img2img, inpaint, upscale)
    or the asked size (txt2img, with or without hires fix)."""
    job = context.job
    if job.task in ("img2img", "inpaint", "upscale") and job.image:
        from ctrlgen.core.engine.engine import load_image_file, read_pixels

        pixels = read_pixels(job.image, "job.image", context.image_source or load_image_file)
        return pixels.shape[1], pixels.shape[0]
    return job.width, job.height


def read_region_mask(context: Any, reference: str, owner: str, size: tuple[int, int]) -> np.ndarray:
    """The mask as uint8 H×W (white = the region; RGBA: alpha), checked against ``size``."""
    from ctrlgen.core.engine.engine import load_image_file
    from ctrlgen.core.images import to_mask

    load = context.image_source or load_image_file
    try:
        mask = to_mask(load(reference, f"{owner}.mask"), what=f"{owner}.mask")
    except ImageError as exc:
        raise JobError(str(exc)) from None
    if (mask.shape[1], mask.shape[0]) != tuple(size):
        raise JobError(f"{owner}.mask is {mask.shape[1]}×{mask.shape[0]} but the picture is {size[0]}×{size[1]} "
                       "(txt2img: width×height; img2img, inpaint and upscale: job.image's size); give a mask of that size "
                       "(hires fix and upscale resize it for their enlarged passes)")
    if not mask.any():
        raise JobError(f"{owner}.mask selects nothing (it is black); paint the region white")
    return mask


def fitted(context: Any, mask: np.ndarray, feather_px: float) -> np.ndarray:
    """The region's share of each generated pixel: float32 H×W in [0, 1] at
    ``context.width``×``context.height``, with a feathered edge."""
    from ctrlgen.core.engine.masks import feather
    from ctrlgen.core.images import fit, resize

    soft = feather(mask, feather_px)  # grey levels are partial weights (a layer's opacity)
    scaled = np.round(soft * 255.0).astype(np.uint8)  # the image helpers fit uint8
    job, frame = context.job, context.inpaint_frame
    if frame is not None:
        canvas = frame.expansion.place(scaled)
        scaled = np.ascontiguousarray(frame.region.crop(canvas))
        result = resize(scaled, context.width, context.height)
    elif job.task == "img2img":
        result = fit(np.dstack([scaled] * 3), context.width, context.height, job.resize_mode)[..., 0]
    else:
        result = resize(scaled, context.width, context.height)
    return result.astype(np.float32) / 255.0
