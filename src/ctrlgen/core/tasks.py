"""What each task gives the pipeline, and how its output becomes the result.

- ``txt2img``: nothing extra; the result is resized to the asked size.
- ``img2img``: the input image, fitted to the generation size, and ``strength``.
- ``inpaint`` (selected whenever a job has a mask): the image and mask — grown or shrunk,
  inverted, optionally pre-filled, and cropped to the mask's bounds plus padding in
  "only masked" mode — at the generation size. The generated pixels are brought back to
  the crop's size and composited onto the ORIGINAL image through the feathered mask, so
  every pixel outside it is the original's, bit for bit. The result has the input's size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ImageError, JobError
from .images import fit, resize, to_mask, to_rgb
from .masks import Region, composite, feather, fill, masked_region, prepare_mask

_CLASSES = {
    # (family, task, controlnet) -> diffusers pipeline class
    ("sd", "txt2img", False): "StableDiffusionPipeline",
    ("sd", "img2img", False): "StableDiffusionImg2ImgPipeline",
    ("sd", "inpaint", False): "StableDiffusionInpaintPipeline",
    ("sd", "txt2img", True): "StableDiffusionControlNetPipeline",
    ("sd", "img2img", True): "StableDiffusionControlNetImg2ImgPipeline",
    ("sd", "inpaint", True): "StableDiffusionControlNetInpaintPipeline",
    ("sdxl", "txt2img", False): "StableDiffusionXLPipeline",
    ("sdxl", "img2img", False): "StableDiffusionXLImg2ImgPipeline",
    ("sdxl", "inpaint", False): "StableDiffusionXLInpaintPipeline",
    ("sdxl", "txt2img", True): "StableDiffusionXLControlNetPipeline",
    ("sdxl", "img2img", True): "StableDiffusionXLControlNetImg2ImgPipeline",
    ("sdxl", "inpaint", True): "StableDiffusionXLControlNetInpaintPipeline",
}


def pipeline_class(architecture: str, task: str, controlnet: bool = False):
    """The diffusers pipeline class for an architecture, task and whether ControlNets run."""
    import diffusers

    family = "sdxl" if architecture == "sdxl" else "sd"
    return getattr(diffusers, _CLASSES[(family, task, controlnet)])


def control_image_key(task: str) -> str:
    """The call argument that carries ControlNet maps (img2img/inpaint use ``image`` for the input)."""
    return "image" if task == "txt2img" else "control_image"


def steps_run(task: str, steps: int, strength: float) -> int:
    """How many denoising steps diffusers runs: img2img/inpaint skip the first (1 - strength)."""
    if task == "txt2img":
        return steps
    return max(1, min(int(steps * strength), steps))


@dataclass
class TaskInputs:
    call_kwargs: dict[str, Any]
    finish: Callable[[Any], Any]  # PIL at generation size -> PIL result
    steps: int


def prepare(job: Any, width: int, height: int, load: Callable[[str, str], np.ndarray],
            unet_in_channels: int) -> TaskInputs:
    """Inputs and the finishing step for ``job.task`` at generation size ``width``×``height``.

    ``load(reference, what)`` returns an image reference's pixels (grey, RGB or RGBA uint8)."""
    from PIL import Image

    task = job.task
    if unet_in_channels == 9 and task != "inpaint":
        raise JobError(
            f"model {job.model!r} is an inpainting checkpoint (9-channel UNet); it can only inpaint. "
            "Give a mask, or pick a regular checkpoint for txt2img/img2img"
        )

    def to_size(image):
        return image if image.size == (job.width, job.height) else image.resize(
            (job.width, job.height), Image.Resampling.LANCZOS)

    if task == "txt2img":
        return TaskInputs({}, to_size, job.steps)
    source = _rgb(load(job.image, "job.image"), "job.image")
    steps = steps_run(task, job.steps, job.strength)
    if task == "img2img":
        init = fit(source, width, height, job.resize_mode)
        return TaskInputs({"image": Image.fromarray(init), "strength": job.strength}, to_size, steps)

    options = job.inpaint
    original_h, original_w = source.shape[:2]
    try:
        raw_mask = to_mask(load(job.mask, "job.mask"), (original_w, original_h), "job.mask")
    except ImageError as exc:  # size mismatch and the like
        raise JobError(str(exc)) from None
    mask = prepare_mask(raw_mask, options.grow_px, options.invert)
    if not mask.any():
        raise JobError("job.mask selects nothing (after grow/invert): paint the area to change in white")
    alpha = feather(mask, options.feather_px)
    if options.only_masked:
        region = masked_region(mask, options.padding_px, aspect=width / height)
    else:
        region = Region(0, 0, original_w, original_h)
    crop, crop_mask = region.crop(source), region.crop(mask)
    if options.fill == "fill":
        crop = fill(crop, crop_mask)
    init = resize(np.ascontiguousarray(crop), width, height)
    model_mask = resize(np.ascontiguousarray(crop_mask), width, height)

    def finish(generated):
        patch = resize(np.asarray(generated.convert("RGB")), region.width, region.height)
        return Image.fromarray(composite(source, patch, alpha, region))

    kwargs = {"image": Image.fromarray(init), "mask_image": Image.fromarray(model_mask), "strength": job.strength}
    return TaskInputs(kwargs, finish, steps)


def _rgb(pixels: np.ndarray, what: str) -> np.ndarray:
    try:
        return to_rgb(pixels, what)
    except ImageError as exc:
        raise JobError(str(exc)) from None
