"""What each task gives the pipeline, and how its output becomes the result.

- ``txt2img``: nothing extra; the result is resized to the asked size.
- ``img2img``: the input image, fitted to the generation size, and ``strength``.
- ``inpaint`` (selected whenever a job has a mask or ``outpaint``): the image and mask —
  grown or shrunk, inverted, optionally pre-filled, and cropped to the mask's bounds plus
  padding in "only masked" mode — at the generation size. With ``outpaint`` the image is
  first put on a bigger canvas (new area: its edge colours, blurred) and the new area (plus
  an overlap into the image) joins the mask. The generated pixels are brought back to the
  crop's size and composited onto the canvas through the feathered mask, so every pixel
  outside it is the original's, bit for bit. The result has the canvas's size.

An RGBA ``image`` is generated from its colours composited on white, and the result keeps its
alpha: img2img gives the input's alpha (fitted like the image), inpaint keeps every pixel outside
the feathered mask as it was (colour and alpha) and makes the repainted area opaque, blending
through the feather; an outpainted area is opaque.

The latent fill modes (``latent_noise``, ``latent_nothing``) change the encoded image
under the mask, before diffusers noises it to the first timestep; see :func:`latent_fill`.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctrlgen.core.engine.masks import (
    LATENT_FILL_MODES,
    Expansion,
    Region,
    composite,
    composite_rgba,
    expand_canvas,
    feather,
    fill,
    masked_region,
    outpaint_mask,
    prepare_mask,
)
from ctrlgen.core.engine.regions import (
    InpaintFrame,
    composite_region,
    fast_path,
    paste,
    read_mask,
    region_frame,
)
from ctrlgen.core.errors import ImageError, JobError
from ctrlgen.core.images import check_size, fit, resize, to_mask, to_rgb


def architecture_spec(architecture: str):
    """The registered :class:`~ctrlgen.core.plugins.specs.ArchitectureSpec` for ``architecture``."""
    from ctrlgen.core.plugins.manager import get_registry

    registry = get_registry("architectures")
    if architecture not in registry:
        raise JobError(
            f"ctrlgen cannot run {architecture} models; it runs {', '.join(sorted(s.name for s in registry))} "
            "(other architectures come as plugins through the ctrlgen_architectures hook)"
        )
    return registry.get(architecture)


def pipeline_class(architecture: str, task: str, controlnet: bool | str = False):
    """The diffusers pipeline class for an architecture, task and ControlNet kind
    (``False``: none, ``True``: regular ControlNets, ``"union"``: SDXL union ControlNets)."""
    return architecture_spec(architecture).pipeline_class(task, controlnet)


def pipeline_view(pipeline_cls: Any, base: Any, **components: Any) -> Any:
    """A job-local ``pipeline_cls`` sharing ``base``'s modules, with ``components`` swapped in.

    What diffusers' ``from_pipe`` does, without its last step: ``from_pipe`` ends with
    ``.to(dtype)`` (float32 unless told otherwise), which casts the SHARED modules of an fp16
    pipeline to fp32 in place and walks every module of the pipeline on every job."""
    expected, optional = pipeline_cls._get_signature_keys(pipeline_cls)
    base_components = base.components
    kwargs: dict[str, Any] = {}
    for name in expected:
        if name in components:
            kwargs[name] = components[name]
        elif name in base_components:
            kwargs[name] = base_components[name]
    config = base.config
    for name in optional:  # pipeline options: requires_safety_checker, force_zeros_for_empty_prompt, ...
        if name in components:
            kwargs[name] = components[name]
        elif name in config:
            kwargs[name] = config[name]
        elif f"_{name}" in config:
            kwargs[name] = config[f"_{name}"]
    view = pipeline_cls(**kwargs)
    # Options the class does not take stay in its config, for the next view made from this one.
    unused = {(k if k.startswith("_") else f"_{k}"): v for k, v in config.items()
              if k not in kwargs and k not in expected and not k.startswith("_name_or_path")}
    if unused:
        view.register_to_config(**unused)
    view.set_progress_bar_config(disable=True)
    return view


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
    # Entered around the pipeline call with the job's final pipeline (after the adapters have
    # swapped in theirs): ``with attach(pipeline): pipeline(**call_kwargs)``. None: nothing to do.
    attach: Callable[[Any], contextlib.AbstractContextManager] | None = None
    # Inpaint jobs: the canvas, mask and region the job works on (None for txt2img/img2img).
    frame: InpaintFrame | None = None
    # Inpaint jobs on a region frame: like ``finish``, but only the composited region (PIL, at
    # ``frame.region``), for callers that paste it themselves (the fix passes).
    finish_region: Callable[[Any], Any] | None = None


def prepare(job: Any, width: int, height: int, load: Callable[[str, str], np.ndarray],
            unet_in_channels: int, frame: InpaintFrame | None = None) -> TaskInputs:
    """Inputs and the finishing step for ``job.task`` at generation size ``width``×``height``.

    ``load(reference, what)`` returns an image reference's pixels (grey, RGB or RGBA uint8).
    ``frame``: an inpaint job's :func:`inpaint_frame`, when the caller has made it already."""
    from PIL import Image

    task = job.task
    if unet_in_channels == 9 and task != "inpaint":
        raise JobError(
            f"model {job.model!r} is an inpainting checkpoint (9-channel UNet); it can only inpaint. "
            "Give a mask (or outpaint), or pick a regular checkpoint for txt2img/img2img"
        )

    def to_size(image):
        return image if image.size == (job.width, job.height) else image.resize(
            (job.width, job.height), Image.Resampling.LANCZOS)

    if task == "txt2img":
        return TaskInputs({}, to_size, job.steps)
    steps = steps_run(task, job.steps, job.strength)
    if task == "inpaint":
        if frame is None:
            frame = inpaint_frame(job, load(job.image, "job.image"), load, aspect=width / height)
        return _inpaint_inputs(job, width, height, steps, frame)
    pixels = load(job.image, "job.image")
    source = _rgb(pixels, "job.image")
    alpha = pixels[..., 3] if pixels.ndim == 3 and pixels.shape[2] == 4 else None
    if task == "img2img":
        init = fit(source, width, height, job.resize_mode)

        def finish_img2img(generated):
            result = to_size(generated)
            if alpha is None or result.mode == "RGBA":  # a generated alpha (LayerDiffuse) is the result's
                return result
            fitted = to_size(Image.fromarray(fit(alpha, width, height, job.resize_mode)))
            result = result.convert("RGBA")
            result.putalpha(fitted)
            return result

        return TaskInputs({"image": Image.fromarray(init), "strength": job.strength}, finish_img2img, steps)
    raise JobError(f"ctrlgen has no inputs for task {task!r}")


def _inpaint_inputs(job: Any, width: int, height: int, steps: int, frame: InpaintFrame) -> TaskInputs:
    """An inpaint job's inputs: the region's picture and mask at the generation size, and the
    composite back onto the input (only the region computed, see :mod:`.regions`)."""
    from PIL import Image

    pixels = frame.picture
    alpha = pixels[..., 3] if pixels is not None and pixels.ndim == 3 and pixels.shape[2] == 4 else None
    region = frame.region
    crop, crop_mask = frame.region_canvas(), frame.region_mask()
    if job.inpaint.fill == "fill":
        crop = fill(crop, crop_mask)
    init = resize(np.ascontiguousarray(crop), width, height)
    model_mask = resize(np.ascontiguousarray(crop_mask), width, height)

    def generated_patch(generated):
        # A generated alpha (LayerDiffuse's transparent decoder) is kept: the patch is then RGBA.
        mode = "RGBA" if generated.mode == "RGBA" else "RGB"
        return resize(np.asarray(generated.convert(mode)), region.width, region.height)

    def finish(generated):
        patch = generated_patch(generated)
        if frame.regional:  # composite the region, copy the rest
            return paste(frame, patch)
        if alpha is None and patch.shape[2] == 3:
            return Image.fromarray(composite(frame.canvas, patch, frame.alpha, region))
        # The input's own colours and alpha (not the white composite the model saw) under the
        # feathered mask; the outpainted area is opaque, in the colours the canvas started with.
        e = frame.expansion
        straight = frame.canvas.copy()
        if alpha is None:
            original = np.dstack([straight, np.full(straight.shape[:2], 255, np.uint8)])
        else:
            height_in, width_in = alpha.shape
            straight[e.top : e.top + height_in, e.left : e.left + width_in] = pixels[..., :3]
            original = np.dstack([straight, e.place(alpha, 255)])
        return Image.fromarray(composite_rgba(original, patch, frame.alpha, region), "RGBA")

    def finish_region(generated):
        return Image.fromarray(composite_region(frame, generated_patch(generated)))

    kwargs = {"image": Image.fromarray(init), "mask_image": Image.fromarray(model_mask), "strength": job.strength}
    attach = None
    if job.inpaint.fill in LATENT_FILL_MODES:
        mode = job.inpaint.fill

        def attach(pipeline):
            return latent_fill(pipeline, mode, model_mask)

    return TaskInputs(kwargs, finish, steps, attach=attach, frame=frame,
                      finish_region=finish_region if frame.regional else None)


def inpaint_frame(job: Any, source: np.ndarray, load: Callable[[str, str], np.ndarray],
                  aspect: float | None = None) -> InpaintFrame:
    """The canvas, mask, feathered alpha and region of inpaint ``job`` on input ``source``
    (the job's image as it came: uint8 RGB, RGBA or grey; other types are converted).

    ``aspect`` (width / height of the generation size) widens an only-masked region to it.
    Without outpaint only boxes around the mask are read (:func:`.regions.region_frame`)."""
    raw_mask = read_mask(job, source, load) if job.mask else None
    if fast_path(source, raw_mask, job):
        return region_frame(job, source, raw_mask, aspect)
    pixels, source = source, _rgb(source, "job.image")
    options = job.inpaint
    original_h, original_w = source.shape[:2]
    if raw_mask is not None:
        try:
            raw_mask = to_mask(raw_mask, (original_w, original_h), "job.mask")
        except ImageError as exc:  # size mismatch and the like
            raise JobError(str(exc)) from None
    else:  # outpaint alone: nothing of the input itself is repainted (unless inverted)
        raw_mask = np.zeros((original_h, original_w), np.uint8)
    mask = prepare_mask(raw_mask, options.grow_px, options.invert)
    canvas, expansion = source, Expansion()
    if job.outpaint is not None:
        out = job.outpaint
        expansion = Expansion(out.left, out.top, out.right, out.bottom)
        canvas_w, canvas_h = expansion.size(original_w, original_h)
        try:
            check_size(canvas_h, canvas_w, f"the outpainted canvas ({original_w}×{original_h} input expanded)")
        except ImageError as exc:
            raise JobError(f"job.outpaint: {exc}") from None
        canvas = expand_canvas(source, expansion)
        mask = np.maximum(expansion.place(mask), outpaint_mask(original_w, original_h, expansion, out.overlap_px))
    if not mask.any():
        raise JobError("job.mask selects nothing (after grow/invert): paint the area to change in white")
    alpha = feather(mask, options.feather_px)
    if options.only_masked:
        region = masked_region(mask, options.padding_px, aspect=aspect)
    else:
        region = Region(0, 0, canvas.shape[1], canvas.shape[0])
    return InpaintFrame(canvas, mask, alpha, region, expansion, picture=pixels)


@contextlib.contextmanager
def latent_fill(pipeline: Any, mode: str, mask: np.ndarray) -> Iterator[Any]:
    """While active, ``pipeline`` (a diffusers inpaint pipeline, job-local) starts from image
    latents whose masked part is replaced, as A1111's "masked content" does: ``latent_noise``
    puts unit Gaussian noise there, drawn from generators seeded like the job's (one per image,
    so a seed gives the same result every time; the job's own generators are not advanced),
    ``latent_nothing`` zeros.

    ``mask`` is the repaint mask at the generation size (uint8; >= 128 repaints, as the
    pipeline binarises it); it is brought to latent size the way the pipeline does (nearest).

    The pipelines take ``image`` as ready-made latents when it has the VAE's latent channels,
    so the encoded and filled latents are handed to ``prepare_latents`` in place of the
    pixels; the same VAE call and generator the pipeline would use encode them. At strength
    1 diffusers starts from pure noise and keeps the image latents only outside the mask, so
    the latent modes then change nothing — as A1111's, they are for strength below 1.
    """
    if mode not in LATENT_FILL_MODES:
        raise JobError(f"latent fill mode {mode!r} is not one of {', '.join(LATENT_FILL_MODES)}")
    original = pipeline.prepare_latents
    signature = inspect.signature(original)

    def prepare_latents(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        values = bound.arguments
        image = values.get("image")
        strength_max = values.get("is_strength_max", True)
        needed = values.get("return_image_latents", False) or (values.get("latents") is None and not strength_max)
        if image is not None and image.shape[1] != pipeline.vae.config.latent_channels and needed:
            values["image"] = _filled_latents(pipeline, image, values, mode, mask)
        return original(*bound.args, **bound.kwargs)

    pipeline.prepare_latents = prepare_latents
    try:
        yield pipeline
    finally:
        if pipeline.__dict__.get("prepare_latents") is prepare_latents:
            del pipeline.__dict__["prepare_latents"]


def _filled_latents(pipeline: Any, image: Any, values: dict[str, Any], mode: str, mask: np.ndarray) -> Any:
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    device, dtype, generator = values["device"], values["dtype"], values["generator"]
    batch_size = values["batch_size"]
    latents = pipeline._encode_vae_image(image=image.to(device=device, dtype=dtype), generator=generator)
    latents = latents.repeat(batch_size // latents.shape[0], 1, 1, 1)
    repaint = torch.from_numpy((mask >= 128).astype(np.float32))[None, None]
    repaint = torch.nn.functional.interpolate(repaint, size=tuple(latents.shape[-2:])).to(device=device, dtype=dtype)
    if mode == "latent_noise":
        replacement = randn_tensor(tuple(latents.shape), generator=_fill_generators(generator),
                                   device=device, dtype=dtype)
    else:
        replacement = torch.zeros_like(latents)
    return latents * (1 - repaint) + replacement * repaint


def _fill_generators(generator: Any) -> Any:
    """Fresh generators seeded like the job's: the fill noise is the seed's, and the job's own
    generators go on exactly as without a fill (the pipeline's noise is unchanged)."""
    import torch

    def fresh(g):
        return torch.Generator(device=g.device).manual_seed(g.initial_seed())

    if generator is None:
        return None
    return [fresh(g) for g in generator] if isinstance(generator, list) else fresh(generator)


def _rgb(pixels: np.ndarray, what: str) -> np.ndarray:
    try:
        return to_rgb(pixels, what)
    except ImageError as exc:
        raise JobError(str(exc)) from None
