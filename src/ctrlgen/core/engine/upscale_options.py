"""The job fields of the upscale task (``job.upscale``) and of hires fix (``job.hires``).

Both are pydantic models like the rest of the job, checked before anything loads; their
fields are also offered to hosts as :class:`~ctrlgen.core.plugins.specs.Param` schemas
(:func:`feature_capabilities`, in the server's ``/v1/capabilities``), so a host builds its
widgets from the same declaration the server validates against. docs/jobs.md ("Upscaling and
hires fix") has the whole story.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ctrlgen.core.images import MAX_SIDE
from ctrlgen.core.plugins.specs import Param

RESAMPLER_NAMES = ("lanczos", "bicubic", "bilinear", "nearest")  # ctrlgen.core.models.upscalers.RESAMPLERS


class UpscaleOptions(BaseModel):
    """The ``upscale`` task: enlarge ``job.image`` with an upscaler model or a resampler, then
    refine it with the checkpoint in overlapping tiles blended in latent space."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    upscaler: str = Field(default="lanczos", description="A resampler (lanczos, bicubic, bilinear, nearest) or an "
                          "upscaler model (ESRGAN, Real-ESRGAN, SwinIR, DAT, ...) from the model store: a name "
                          "`ctrlgen models --category upscale_models` lists, or a path")
    scale: float = Field(default=2.0, ge=1.0, le=8.0, description="Output size as a multiple of the image's")
    width: int | None = Field(default=None, ge=64, le=MAX_SIDE, description="Output width instead of scale "
                              "(with height)")
    height: int | None = Field(default=None, ge=64, le=MAX_SIDE, description="Output height instead of scale")
    denoise: float = Field(default=0.3, ge=0.0, le=1.0, description="Strength of the tiled refine (Krita AI "
                           "Diffusion's 0.3); 0 keeps the upscaler's output and needs no checkpoint")
    tile_size: int | None = Field(default=None, ge=128, le=2048, multiple_of=64, description="Side of a refine "
                                  "tile in pixels (default: the model's native size, 512 SD1.5, 1024 SDXL)")
    overlap: int = Field(default=64, ge=0, le=512, multiple_of=8, description="Pixels neighbouring tiles share "
                         "(blended in latent space)")
    blend: Literal["gaussian", "average", "none"] = Field(
        default="gaussian", description="How overlapping tiles combine: gaussian (Mixture of Diffusers), average "
        "(MultiDiffusion) or none (plain tiling: seams)")

    @model_validator(mode="after")
    def _sizes(self) -> UpscaleOptions:
        if (self.width is None) != (self.height is None):
            raise ValueError("upscale: give both width and height (the output size) or neither (scale)")
        if self.tile_size is not None and self.overlap * 2 >= self.tile_size:
            raise ValueError(f"upscale.overlap {self.overlap} must be under half of tile_size {self.tile_size}; "
                             "lower it or raise tile_size")
        return self


class HiresFix(BaseModel):
    """Hires fix on txt2img (A1111's): generate at the job's size (the model's native size), enlarge
    the result (or its latents), then denoise it again at the target size."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    scale: float = Field(default=2.0, ge=1.0, le=4.0, description="Target size as a multiple of width × height")
    width: int | None = Field(default=None, ge=64, le=MAX_SIDE, description="Target width instead of scale "
                              "(with height)")
    height: int | None = Field(default=None, ge=64, le=MAX_SIDE, description="Target height instead of scale")
    upscaler: str = Field(default="latent", description="'latent' (the first pass's latents, enlarged "
                          "bilinearly), a resampler (lanczos, bicubic, bilinear, nearest) or an upscaler model "
                          "from the store")
    steps: int | None = Field(default=None, ge=1, le=150, description="Steps of the second pass (default: "
                              "job.steps); it runs steps × denoise of them")
    denoise: float = Field(default=0.55, gt=0.0, le=1.0, description="Denoising strength of the second pass "
                           "(latent upscaling needs about 0.5 or more)")
    tile_size: int | None = Field(default=None, ge=128, le=2048, multiple_of=64, description="Run the second "
                                  "pass in tiles of this side (blended like the upscale task); default: whole")
    overlap: int = Field(default=64, ge=0, le=512, multiple_of=8, description="Pixels neighbouring tiles share")

    @model_validator(mode="after")
    def _sizes(self) -> HiresFix:
        if (self.width is None) != (self.height is None):
            raise ValueError("hires: give both width and height (the target size) or neither (scale)")
        if self.tile_size is not None and self.overlap * 2 >= self.tile_size:
            raise ValueError(f"hires.overlap {self.overlap} must be under half of tile_size {self.tile_size}")
        return self


def check_upscale_job(job: Any) -> bool:
    """The ``upscale``/``hires`` rules of a job (raises ``ValueError``, as the Job's validators do).
    True when the job needs a checkpoint (an upscale with denoise 0 does not)."""
    if job.hires is not None and job.task != "txt2img":
        raise ValueError(f"hires fix is a txt2img pass; drop job.hires or the task {job.task!r}")
    if job.task != "upscale":
        if job.upscale is not None:
            raise ValueError(f"job.upscale configures task 'upscale'; drop it or the task {job.task!r}")
        if job.hires is not None and int((job.hires.steps or job.steps) * job.hires.denoise) < 1:
            steps = job.hires.steps or job.steps
            raise ValueError(f"hires: steps={steps} × denoise={job.hires.denoise} leaves no denoising step; raise "
                             f"hires.steps to at least {math.ceil(1 / job.hires.denoise)} or hires.denoise")
        return True
    options = job.upscale if job.upscale is not None else UpscaleOptions()
    job.upscale = options
    if not job.image:
        raise ValueError("task 'upscale' needs job.image (the picture to enlarge)")
    if job.mask or job.outpaint:
        raise ValueError("task 'upscale' enlarges the whole image; drop job.mask and job.outpaint (inpaint the "
                         "result in a job of its own)")
    if getattr(job, "image_offset", None) is not None:
        raise ValueError("task 'upscale' enlarges the whole image; drop job.image_offset and job.canvas_size")
    # job.width/height are not read: the size comes from upscale.scale or upscale.width/height (a
    # dumped and reloaded job carries the defaults, so their presence says nothing).
    if options.denoise == 0:
        if job.control or job.adapters:
            raise ValueError("upscale.denoise is 0 (the upscaler alone): job.control and job.adapters would do "
                             "nothing; drop them or raise upscale.denoise")
        return False
    if int(job.steps * options.denoise) < 1:
        raise ValueError(f"upscale: steps={job.steps} × denoise={options.denoise} leaves no denoising step; raise "
                         f"job.steps to at least {math.ceil(1 / options.denoise)} or upscale.denoise")
    return True


# -- capabilities --------------------------------------------------------------------------------


def _param(name: str, info: Any) -> Param:
    annotation = info.annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    bounds: dict[str, Any] = {}
    for item in info.metadata:
        for attr, key in (("ge", "min"), ("gt", "min"), ("le", "max"), ("lt", "max"), ("multiple_of", "step")):
            if getattr(item, attr, None) is not None:
                bounds[key] = getattr(item, attr)
    if typing.get_origin(annotation) is Literal:
        return Param(name, "choice", info.default, choices=typing.get_args(annotation), description=info.description)
    kind = {float: "float", int: "int", bool: "bool"}.get(annotation, "str")
    if kind == "str":
        bounds.pop("step", None)
    return Param(name, kind, info.default, description=info.description or "", **bounds)


def option_params(model: type[BaseModel]) -> tuple[Param, ...]:
    """A pydantic options model's fields as Param schemas (for hosts' widgets)."""
    return tuple(_param(name, info) for name, info in model.model_fields.items())


def feature_capabilities() -> list[dict[str, Any]]:
    """What ``/v1/capabilities`` says about upscaling and hires fix: the job field each lives in,
    the tasks it applies to, its params, and the resamplers (upscaler models are in ``models``,
    category ``upscale_models``)."""
    return [
        {"name": "upscale", "field": "upscale", "tasks": ["upscale"],
         "description": "Enlarge job.image (upscaler model or resampler), then refine it in tiles blended in "
                        "latent space (task 'upscale')",
         "params": [p.to_json() for p in option_params(UpscaleOptions)], "resamplers": list(RESAMPLER_NAMES)},
        {"name": "hires_fix", "field": "hires", "tasks": ["txt2img"],
         "description": "Generate at the job's size, enlarge, and denoise again at the target size",
         "params": [p.to_json() for p in option_params(HiresFix)],
         "resamplers": ["latent", *RESAMPLER_NAMES]},
    ]
