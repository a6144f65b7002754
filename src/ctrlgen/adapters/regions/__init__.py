"""Regional prompts: parts of the picture with their own prompt, through attention masking.

Each use of the ``region`` adapter is one region: a grey mask (white = the region, feathered),
a prompt (A1111 syntax, ``AND`` sub-prompts included) and a negative prompt; the job's own
prompt is the root prompt, seen by the whole canvas. The prompts are encoded side by side
(:mod:`ctrlgen.core.engine.composition`), and :mod:`.attention` masks every cross-attention
layer so each region's tokens reach only the latents under its mask. Works for txt2img, img2img,
inpaint and upscale, with hires fix (the enlarged passes get the masks resized to their size,
and a tiled pass crops them per tile), SD1.5, SD2 and SDXL, with ControlNet units (their cross-attention is masked too)
and the other adapters. A region may bring ControlNet units of its own, whose residuals act
only under its mask (:mod:`.control`), and IP-Adapter images masked by it (:mod:`.ip_adapter`). The hooks are removed after the job, success, error or
cancel.
"""

from __future__ import annotations

import contextlib

from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import AdapterSpec, Param, normalize_name

NAME = "region"


def _control_structure(value):
    from ctrlgen.adapters.regions.control import check_structure

    check_structure(value)


def _ip_adapter_structure(value):
    from ctrlgen.adapters.regions.ip_adapter import check_structure

    check_structure(value)


PARAMS = (
    Param("mask", "image", required=True,
          description="The region: a grey image (path or uploaded image id) of the picture's size, white = the "
                      "region, grey = partly (RGBA: alpha); txt2img: width×height, img2img and inpaint: job.image's size"),
    Param("prompt", "str", required=True,
          description="What the region shows (A1111 syntax; AND sub-prompts combine within the region); the job's "
                      "prompt is the root prompt, seen by the whole canvas"),
    Param("negative_prompt", "str", default="", description="The region's negative prompt"),
    Param("feather_px", "float", default=16.0, min=0.0, max=256.0, step=1.0,
          description="Soft edge of the region (px at the picture's scale): its weight fades over this width"),
    Param("control", "json", validator=_control_structure,
          description="The region's own ControlNet units, written as in job.control (model, preprocessor, "
                      "preprocessor_params, image, resize_mode, pixel_perfect, weight, guidance_start, guidance_end); "
                      "their residuals act only under the region's mask"),
    Param("ip_adapter", "json", validator=_ip_adapter_structure,
          description="The region's own IP-Adapter uses, written as ip_adapter uses in job.adapters without their "
                      "type (model, image, images, scale, ...); the region's mask is their attention mask"),
)


def _owners(context) -> list[str]:
    """``adapters[i] (region)`` for each region use, in order."""
    return [f"adapters[{i}] ({NAME})" for i, use in enumerate(context.job.adapters)
            if normalize_name(use.type) == NAME]


def _check_task(job) -> None:
    from ctrlgen.core.errors import JobError

    if job.task not in ("txt2img", "img2img", "inpaint", "upscale"):
        raise JobError(f"regions work on txt2img, img2img, inpaint and upscale jobs (and with hires fix), not task "
                       f"{job.task!r}; drop the {NAME} uses from job.adapters")


def check_regions(context, uses):
    """The spec's ``check``: a task regions work on, prompts without LoRA tags, masks that read,
    have the picture's size and select something."""
    from ctrlgen.adapters.regions.masks import picture_size, read_region_mask
    from ctrlgen.core.errors import JobError

    _check_task(context.job)
    size = picture_size(context)
    for owner, use in zip(_owners(context), uses, strict=True):
        for name in ("prompt", "negative_prompt"):
            if "<lora:" in use[name]:
                raise JobError(f"{owner}.{name}: LoRA tags act on the whole picture; move them to job.prompt")
        if not use["prompt"].strip():
            raise JobError(f"{owner}.prompt is empty; say what the region shows")
        read_region_mask(context, use["mask"], owner, size)
        if use["control"]:
            from ctrlgen.adapters.regions.control import prepare

            prepare(context, use["control"], owner)
        if use["ip_adapter"]:
            from ctrlgen.adapters.regions.ip_adapter import uses_of

            uses_of(context, use["ip_adapter"], use["mask"], owner)


@contextlib.contextmanager
def attach_regions(context, uses):
    """Give the prompt planner the regions and mask the cross-attention; undo both on exit."""
    from ctrlgen.adapters.regions import ip_adapter
    from ctrlgen.adapters.regions.attention import RegionalAttention
    from ctrlgen.adapters.regions.control import RegionControl, prepare
    from ctrlgen.adapters.regions.masks import fitted, picture_size, read_region_mask
    from ctrlgen.core.engine.composition import PromptRegion
    from ctrlgen.core.engine.tasks import steps_run

    job = context.job
    _check_task(job)
    size = picture_size(context)
    regions, images = [], []
    control = RegionControl(steps_run(job.task, job.steps, job.strength))
    pipeline = context.pipeline
    modules = [m for m in (getattr(pipeline, "unet", None), getattr(pipeline, "controlnet", None)) if m is not None]
    for owner, use in zip(_owners(context), uses, strict=True):
        mask = fitted(context, read_region_mask(context, use["mask"], owner, size), use["feather_px"])
        regions.append(PromptRegion(use["prompt"], use["negative_prompt"], mask))
        if use["control"]:
            region_job, prepared = prepare(context, use["control"], owner, maps=True)
            modules += control.add(context, region_job, prepared, mask)
        if use["ip_adapter"]:
            images.append((owner, *ip_adapter.uses_of(context, use["ip_adapter"], use["mask"], owner)))
    attention = RegionalAttention([r.mask for r in regions], context.height // 8, context.width // 8)
    previous = list(context.regions)
    with contextlib.ExitStack() as stack:
        for owner, spec, ip_uses in images:  # loaded before the hooks: they wrap no processor
            stack.enter_context(ip_adapter.attached(context, spec, ip_uses, owner))
        stack.enter_context(_hooked(context, attention, control, modules, previous + regions))
        yield context


@contextlib.contextmanager
def _hooked(context, attention, control, modules, regions):
    """The attention masks and the regions' ControlNet hooks, on for the job; the prompt
    planner's regions set; all undone on exit."""
    previous = context.regions
    pipeline = context.pipeline
    try:
        attention.attach(modules)
        control.attach(pipeline.unet)
        context.step_callbacks.append(control.on_step_end)
        context.regions = regions
        yield
    finally:
        attention.remove()
        control.remove()
        if control.on_step_end in context.step_callbacks:
            context.step_callbacks.remove(control.on_step_end)
        context.regions = previous


@hookimpl
def ctrlgen_adapters():
    yield AdapterSpec(
        name=NAME,
        attach=attach_regions,
        check=check_regions,
        params=PARAMS,
        description="A part of the picture with its own prompt and negative prompt (one use per region; the job's "
                    "prompt is the root), limited to its mask by attention masking, with a feathered edge",
        architectures=("sd15", "sd2", "sdxl"),
        requires=("diffusers",),
    )
