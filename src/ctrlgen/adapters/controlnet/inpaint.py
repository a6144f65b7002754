"""ControlNet units' control images at the generation size, and the inpaint hint.

A unit with preprocessor ``inpaint`` (sd-webui-controlnet's ``inpaint_only`` too) in an inpaint
job is conditioned on the job's picture with the pixels to repaint marked, built from the very
image and mask the inpaint pipeline gets (grown, inverted, cropped for only-masked), so hint and
inpainting always agree.
"""

from __future__ import annotations

from typing import Any


def is_inpaint_preprocessor(name: str) -> bool:
    """Whether the unit's preprocessor asks for the hint built from the job's image and mask
    (its spec's ``hint_from_job``: ``inpaint``, ``inpaint_only``)."""
    from ctrlgen.core.plugins.manager import get_registry

    registry = get_registry("preprocessors")
    return name in registry and registry.get(name).hint_from_job


def check_inpaint_unit(job, unit, has_mask: bool = True) -> None:
    """An inpaint unit needs an inpaint job (a mask) and takes the job's own image."""
    from ctrlgen.core.errors import JobError

    label = f"control[{unit.index}]"
    if job.task != "inpaint" or not has_mask:
        raise JobError(
            f"{label}: preprocessor {unit.preprocessor!r} repaints the job's mask; give the job a mask "
            "(job.mask, white = repaint) or use another preprocessor"
        )
    if job.control[unit.index].image is not None:
        raise JobError(f"{label}: an inpaint unit uses the job's image and mask; leave {label}.image unset")


def control_images(context, units, union_kind: bool) -> list[Any]:
    """Each unit's control image at the generation size: PIL maps, or the inpaint hint."""
    from ctrlgen.core.engine.engine import fit_control

    frame = getattr(context, "inpaint_frame", None)
    if frame is not None:  # maps over the picture -> the outpainted canvas / the only-masked crop
        for unit in units:  # (maps the engine made from the region itself are cropped already)
            if not is_inpaint_preprocessor(unit.preprocessor) and not getattr(unit, "in_region", False):
                unit.control_image = frame.to_region(unit.control_image)
    modes = [context.job.control[unit.index].resize_mode for unit in units]
    images = fit_control(units, context.width, context.height, modes)
    for position, unit in enumerate(units):
        if not is_inpaint_preprocessor(unit.preprocessor):
            continue
        check_inpaint_unit(context.job, unit, has_mask="mask_image" in context.call_kwargs)
        images[position] = inpaint_hint(context, unit, tensor=not union_kind)
    return images


def inpaint_hint(context, unit, tensor: bool) -> Any:
    """The inpaint conditioning from the task's image and mask (what the inpaint pipeline gets):
    for a regular inpaint ControlNet a float tensor with -1 under the mask; for a union model's
    ``repaint`` type the picture with the masked pixels black (xinsir's ProMax convention)."""
    import numpy as np
    from PIL import Image

    from ctrlgen.preprocessors.inpaint import control_hint, masked_pixels

    picture = np.asarray(context.call_kwargs["image"].convert("RGB"))
    mask = np.asarray(context.call_kwargs["mask_image"].convert("L"))
    shown = picture.copy()
    shown[masked_pixels(mask)] = 0
    unit.control_image = shown  # the map returned with the result: what the hint marks
    if not tensor:
        return Image.fromarray(shown)
    import torch

    hint = control_hint(picture, mask)
    return torch.from_numpy(np.ascontiguousarray(hint.transpose(2, 0, 1)))[None]
