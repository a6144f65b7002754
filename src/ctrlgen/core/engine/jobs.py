"""The job request: one typed, validated description of what to generate.

Jobs are pydantic models so the CLI (JOB.json), the server and Python callers share one
schema and one set of error messages. Validation happens before any model loads.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ctrlgen.core.engine.masks import FillMode
from ctrlgen.core.engine.upscale_options import HiresFix, UpscaleOptions, check_upscale_job
from ctrlgen.core.errors import JobError, ParamError
from ctrlgen.core.images import MAX_SIDE, RESIZE_MODES
from ctrlgen.core.plugins.specs import check_text

Task = Literal["txt2img", "img2img", "inpaint", "preprocess", "fix", "upscale"]


class ControlUnit(BaseModel):
    """One ControlNet unit. Fields beyond those declared here are the ControlNet adapter's
    params (``weight``, ``guidance_start``, ``guidance_end``, ...) and are validated against
    its Param schema (``ctrlgen plugins --json`` lists them)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str | None = Field(
        default=None, description="ControlNet model: name in the model store, or a path (not needed to preprocess)")
    preprocessor: str = Field(
        default="none", description="Preprocessor name, or 'none' when the image is already a control map"
    )
    preprocessor_params: dict[str, Any] = Field(default_factory=dict)
    image: str | None = Field(default=None, description="Control image path (default: the job's image)")
    resize_mode: str = Field(default="crop_and_resize", description=" / ".join(RESIZE_MODES))
    pixel_perfect: bool = Field(
        default=False, description="Run the preprocessor at the resolution that matches the output size"
    )

    @field_validator("resize_mode")
    @classmethod
    def _resize_mode(cls, value: str) -> str:
        if value not in RESIZE_MODES:
            raise ValueError(f"must be one of {', '.join(RESIZE_MODES)}")
        return value

    def adapter_params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class InpaintOptions(BaseModel):
    """How the mask is used (A1111's names in brackets)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    grow_px: int = Field(default=0, ge=-256, le=256, description="Grow (or, negative, shrink) the mask")
    feather_px: float = Field(default=4.0, ge=0, le=256, description="Soft edge width [mask blur]")
    invert: bool = Field(default=False, description="Repaint what is NOT masked [inpaint not masked]")
    fill: FillMode = Field(
        default="original",
        description="What the masked area starts from [masked content]: 'original' pixels, 'fill' (colours "
        "spread in from around), 'latent_noise' (random latents, from the job's seed) or 'latent_nothing' (zero "
        "latents); the latent modes act through strength < 1")
    only_masked: bool = Field(
        default=False, description="Work on the mask's bounds plus padding at full model resolution")
    padding_px: int = Field(default=32, ge=0, le=1024, description="Context around the mask [only masked padding]")


class OutpaintOptions(BaseModel):
    """Outpainting: grow the canvas by these many pixels per side and inpaint the new area.

    The new area starts from the input's edge colours, spread out and blurred; the repainted
    area reaches ``overlap_px`` into the input so the seam blends (plus the feather)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    left: int = Field(default=0, ge=0, le=MAX_SIDE, description="Pixels added on the left")
    top: int = Field(default=0, ge=0, le=MAX_SIDE, description="Pixels added at the top")
    right: int = Field(default=0, ge=0, le=MAX_SIDE, description="Pixels added on the right")
    bottom: int = Field(default=0, ge=0, le=MAX_SIDE, description="Pixels added at the bottom")
    overlap_px: int = Field(
        default=8, ge=0, le=256, description="How far the repainted area reaches into the input on expanded sides")

    @model_validator(mode="after")
    def _expands(self) -> OutpaintOptions:
        if not (self.left or self.top or self.right or self.bottom):
            raise ValueError("outpaint adds no pixels: give left, top, right and/or bottom (pixels, > 0)")
        return self


class AdapterUse(BaseModel):
    """One use of an adapter (IP-Adapter, reference-only, ...): ``type`` names a registered
    adapter; every other field is one of its params (validated against its Param schema)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    type: str = Field(description="Adapter name, as `ctrlgen plugins --all` lists it")

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


DetectionOrder = Literal["none", "left_to_right", "center_to_edge", "area", "confidence"]


class DetailPass(BaseModel):
    """One fix pass (ADetailer's tab, FaceDetailer's node): detect, select, mask, repaint each
    detection. Defaults are ADetailer's; docs/fixing.md has the whole table and the order in
    which the mask operations apply."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # -- detection and selection (in this order) --
    detector: str = Field(description="Detector name, as `ctrlgen plugins --all` lists it")
    detector_params: dict[str, Any] = Field(default_factory=dict, description="The detector's params")
    confidence: float = Field(default=0.3, ge=0.0, le=1.0, description="Drop detections below this confidence")
    min_area_ratio: float = Field(default=0.0, ge=0.0, le=1.0, description="Drop boxes smaller than this share "
                                  "of the image")
    max_area_ratio: float = Field(default=1.0, ge=0.0, le=1.0, description="Drop boxes larger than this share")
    top_k: int = Field(default=0, ge=0, le=1000, description="Keep only the k best by top_k_by (0: all)")
    top_k_by: Literal["area", "confidence"] = "area"
    sort_by: DetectionOrder = Field(default="none", description="The order detections are repainted and "
                                    "numbered in (per-detection prompts, seeds, select)")
    select: list[int] | None = Field(default=None, description="Repaint only these detections (0-based) ...")
    select_by: Literal["order", "size", "confidence"] = Field(
        default="order", description="... counted in the sort order, by size rank or by confidence rank")
    # -- the mask (in this order) --
    x_offset: int = Field(default=0, ge=-4096, le=4096, description="Move the mask right (px)")
    y_offset: int = Field(default=0, ge=-4096, le=4096, description="Move the mask up (px, ADetailer's sign)")
    dilate_erode: int = Field(default=4, ge=-256, le=256, description="Grow (or, negative, shrink) the mask")
    merge: Literal["none", "merge", "merge_invert"] = Field(
        default="none", description="Repaint each mask, or their union once, or everything but the union")
    mask_blur: float = Field(default=4.0, ge=0, le=256, description="Feather of the paste-back (px)")
    # -- the repaint --
    prompt: str = Field(default="", description="Empty: the job's prompt; [PROMPT] inserts it; [SEP] "
                        "separates per-detection prompts; [SKIP] leaves that detection alone")
    negative_prompt: str = ""
    denoise: float = Field(default=0.4, gt=0.0, le=1.0, description="Denoising strength of the repaint")
    dynamic_denoise_power: float = Field(default=0.0, ge=-10, le=10, description="Scale denoise by "
                                         "(1 - box area / image area) ** power (0: off)")
    only_masked: bool = Field(default=True, description="Repaint the mask's bounds plus padding at model resolution")
    padding_px: int = Field(default=32, ge=0, le=1024, description="Context around the mask (only-masked)")
    crop_factor: float | None = Field(default=None, ge=1.0, le=10.0, description="FaceDetailer's crop: the box "
                                      "scaled by this (3 in FaceDetailer) instead of padding_px")
    guide_size: int = Field(default=512, ge=64, le=4096, description="The crop is repainted with its shorter side "
                            "at this size ...")
    max_size: int = Field(default=1024, ge=64, le=4096, description="... and its longer side at most this")
    width: int | None = Field(default=None, ge=64, le=4096, description="Repaint at exactly this size instead")
    height: int | None = Field(default=None, ge=64, le=4096)
    fill: FillMode = Field(default="original", description="Masked content, as job.inpaint.fill")
    cycles: int = Field(default=1, ge=1, le=10, description="Repaint each detection this many times (FaceDetailer)")
    soft_inpainting: bool = Field(default=True, description="Blend the latents toward the original by the "
                                  "feathered mask at every step (soft seams)")
    colour_match: bool = Field(default=True, description="Match the repainted patch's colours to its surroundings")
    control: list[ControlUnit] = Field(default_factory=list, description="ControlNet units for this pass only")
    # -- the hand's structure as one more ControlNet unit (detectors with 21 hand landmarks) --
    hand_structure: Literal["openpose", "depth", "template"] | None = Field(
        default=None, description="Feed hand_model the detected hand's OpenPose skeleton, its depth-like map "
        "(near = bright) or a template open hand's depth map fitted to it, drawn at the repaint's crop")
    hand_model: str | None = Field(default=None, description="The ControlNet the hand map feeds (openpose or depth)")
    hand_weight: float | None = Field(default=None, ge=0.0, le=2.0, description="Its weight (default 1.0; "
                                      "1.5 with the template hand)")
    hand_control_mode: str | None = Field(default=None, description="Its control mode (default balanced; "
                                          "controlnet, 'ControlNet is more important', with the template hand)")
    # -- overrides for this pass only (None: the job's) --
    model: str | None = Field(default=None, description="Checkpoint for this pass")
    vae: str | None = Field(default=None, description="VAE for this pass (a file or folder the store finds)")
    sampler: str | None = None
    steps: int | None = Field(default=None, ge=1, le=150)
    cfg_scale: float | None = Field(default=None, ge=0.0, le=30.0)
    clip_skip: int | None = Field(default=None, ge=1, le=12)
    seed: int | None = Field(default=None, ge=-1, le=2**32 - 1, description="Base seed of this pass (None or -1: "
                             "the image's seed)")

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str | None) -> str | None:
        from ctrlgen.core.engine.samplers import resolve_sampler_name

        return None if value is None else resolve_sampler_name(value)

    @model_validator(mode="after")
    def _sizes(self) -> DetailPass:
        if (self.width is None) != (self.height is None):
            raise ValueError("give both width and height (the repaint size) or neither")
        if self.hand_structure is None and (self.hand_model or self.hand_weight is not None
                                            or self.hand_control_mode):
            raise ValueError("hand_model, hand_weight and hand_control_mode go with hand_structure; set "
                             "hand_structure ('openpose', 'depth' or 'template') or drop them")
        if self.max_size < self.guide_size:
            raise ValueError(f"max_size {self.max_size} is below guide_size {self.guide_size}; raise max_size")
        return self


class Job(BaseModel):
    """A generation request."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    task: Task | None = Field(
        default=None, description="txt2img, img2img, inpaint or preprocess; a mask or outpaint selects inpaint, "
        "an image that no control unit reads selects img2img, otherwise txt2img")
    model: str | None = Field(
        default=None, description="Checkpoint: name in the model store, HF repo id, or a path (not for preprocess)")
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = Field(default=-1, ge=-1, le=2**32 - 1, description="-1 picks a random seed (recorded)")
    steps: int = Field(default=20, ge=1, le=150)
    cfg_scale: float = Field(default=7.0, ge=0.0, le=30.0)
    sampler: str = "Euler a"
    clip_skip: int = Field(default=1, ge=1, le=12, description="A1111 numbering: 1 = last CLIP layer, 2 = penultimate")
    width: int = Field(default=512, ge=64, le=4096)
    height: int = Field(default=512, ge=64, le=4096)
    batch_size: int = Field(default=1, ge=1, le=16)
    image: str | None = Field(default=None, description="Input image path (img2img/inpaint input; control source)")
    mask: str | None = Field(default=None, description="Mask image (white = repaint); selects the inpaint task")
    strength: float = Field(default=0.75, gt=0.0, le=1.0, description="img2img/inpaint denoising strength")
    resize_mode: str = Field(default="just_resize", description="How img2img fits the input to the size")
    inpaint: InpaintOptions = Field(default_factory=InpaintOptions)
    outpaint: OutpaintOptions | None = Field(
        default=None, description="Expand the canvas (px per side) and inpaint the new area; selects inpaint")
    control: list[ControlUnit] = Field(default_factory=list)
    adapters: list[AdapterUse] = Field(default_factory=list)
    detail: list[DetailPass] = Field(
        default_factory=list, description="Fix passes (faces, hands, ...) run on each result, in order; "
        "task 'fix' runs only these on job.image")
    upscale: UpscaleOptions | None = Field(
        default=None, description="Task 'upscale' (selects it): upscaler, scale, denoise and tiles of the "
        "tiled refine (docs/jobs.md, Upscaling and hires fix)")
    hires: HiresFix | None = Field(
        default=None, description="Hires fix on txt2img: enlarge the result and denoise it again at the target size")
    image_offset: tuple[int, int] | None = Field(
        default=None, description="[x, y]: job.image (and job.mask) is a patch at this offset inside a canvas of "
        "canvas_size (the host sent only the region and its context); results are in the patch's frame")
    canvas_size: tuple[int, int] | None = Field(
        default=None, description="[width, height] of the canvas job.image is a patch of (with image_offset)")

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        from ctrlgen.core.engine.samplers import resolve_sampler_name

        return resolve_sampler_name(value)

    @model_validator(mode="after")
    def _task_inputs(self) -> Job:
        # The image is a control unit's source when a unit has no image of its own.
        image_is_control = any(unit.image is None for unit in self.control)
        if self.task is None and self.upscale is not None:
            self.task = "upscale"
        if self.task is None:
            if self.mask or self.outpaint:
                self.task = "inpaint"
            else:  # an image nothing else reads is the picture to change (A1111's img2img tab)
                self.task = "img2img" if self.image and not image_is_control else "txt2img"
        if self.task == "fix":
            if not self.detail:
                raise ValueError("task 'fix' runs fix passes; add at least one to job.detail "
                                 "(e.g. {\"detector\": \"mediapipe_face\"})")
            if not self.image:
                raise ValueError("task 'fix' needs job.image (the picture to fix)")
            if self.mask or self.outpaint or self.control or self.adapters:
                raise ValueError("task 'fix' only runs job.detail on job.image; drop job.mask, job.outpaint, "
                                 "job.control and job.adapters (a pass has its own `control`)")
        elif self.task == "preprocess":
            if not self.control:
                raise ValueError("task 'preprocess' runs the control units' preprocessors; add at least one unit "
                                 "to job.control (e.g. {\"preprocessor\": \"canny\"})")
            if self.outpaint or self.adapters:
                raise ValueError("task 'preprocess' only runs preprocessors; drop job.outpaint and job.adapters")
            if self.detail:
                raise ValueError("task 'preprocess' only runs preprocessors; drop job.detail (fix passes need a "
                                 "model: task 'fix')")
            return self
        if not check_upscale_job(self):
            return self  # an upscale with denoise 0: the upscaler alone, no checkpoint
        if not self.model:
            raise ValueError("job.model is missing: name a checkpoint (`ctrlgen models` lists them)")
        for index, detail in enumerate(self.detail):
            steps = detail.steps or self.steps
            if int(steps * detail.denoise) < 1:
                raise ValueError(f"detail[{index}]: steps={steps} × denoise={detail.denoise} leaves no denoising "
                                 f"step; raise steps to at least {math.ceil(1 / detail.denoise)} or denoise")
            if detail.hand_structure is not None and not detail.hand_model:
                raise ValueError(f"detail[{index}].hand_model is missing: hand_structure "
                                 f"{detail.hand_structure!r} feeds a ControlNet; name one (`ctrlgen models`: an "
                                 f"{'openpose' if detail.hand_structure == 'openpose' else 'depth'} ControlNet)")
            for unit_index, unit in enumerate(detail.control):
                if not unit.model:
                    raise ValueError(f"detail[{index}].control[{unit_index}].model is missing: name a ControlNet "
                                     "(`ctrlgen models`)")
        for index, unit in enumerate(self.control):
            if not unit.model:
                raise ValueError(f"control[{index}].model is missing: name a ControlNet (`ctrlgen models`)")
        if self.mask and self.task != "inpaint":
            raise ValueError(f"a mask means inpainting; drop task={self.task!r} or set task='inpaint'")
        if self.outpaint and self.task != "inpaint":
            raise ValueError(f"outpaint inpaints the expanded canvas; drop task={self.task!r} or set task='inpaint'")
        if self.task in ("img2img", "inpaint") and not self.image:
            raise ValueError(f"task {self.task!r} needs job.image (the picture to change)")
        if self.task == "txt2img" and self.image and not image_is_control:
            raise ValueError(
                "job.image is given but task 'txt2img' does not use it (no control unit reads it): drop "
                "job.image, leave task out or set task 'img2img' to change the image, or add a control unit")
        if self.task == "inpaint" and not self.mask and not self.outpaint:
            raise ValueError("task 'inpaint' needs job.mask (white = the area to repaint) or job.outpaint")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}")
        if self.task in ("img2img", "inpaint") and int(self.steps * self.strength) < 1:
            raise ValueError(
                f"steps={self.steps} × strength={self.strength} leaves no denoising step (img2img and inpaint run "
                f"steps × strength of them); raise steps to at least {math.ceil(1 / self.strength)} or strength")
        return self

    @model_validator(mode="after")
    def _patch_placement(self) -> Job:
        if (self.image_offset is None) != (self.canvas_size is None):
            raise ValueError("give both job.image_offset and job.canvas_size (where the image sits on the canvas, "
                             "and the canvas's size) or neither")
        if self.image_offset is None:
            return self
        x, y = self.image_offset
        width, height = self.canvas_size
        if x < 0 or y < 0:
            raise ValueError(f"job.image_offset {[x, y]} is negative; the patch must lie inside the canvas "
                             f"(job.canvas_size {[width, height]})")
        if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
            raise ValueError(f"job.canvas_size {[width, height]} must be 1..{MAX_SIDE} pixels a side")
        if x >= width or y >= height:
            raise ValueError(f"job.image_offset {[x, y]} lies outside job.canvas_size {[width, height]}; "
                             "the patch must lie inside the canvas")
        if not self.image:
            raise ValueError("job.image_offset and job.canvas_size place job.image on a canvas; give job.image "
                             "or drop them")
        if self.outpaint is not None:
            raise ValueError("job.outpaint expands the whole picture; send the whole canvas (drop job.image_offset "
                             "and job.canvas_size) to outpaint")
        return self

    @model_validator(mode="after")
    def _control_needs_image(self) -> Job:
        for index, unit in enumerate(self.control):
            if unit.image is None and self.image is None:
                raise ValueError(
                    f"control[{index}] has no image and the job has none; set job.image or control[{index}].image"
                )
        return self

    def resolve_paths(self, base: Path) -> Job:
        """Make relative image paths relative to ``base`` (the job file's folder)."""
        def fix(path: str | None) -> str | None:
            if path is None or Path(path).is_absolute():
                return path
            return str((base / path).resolve())

        data = self.model_dump()
        data["image"] = fix(self.image)
        data["mask"] = fix(self.mask)
        for unit in data["control"] + [unit for detail in data["detail"] for unit in detail["control"]]:
            unit["image"] = fix(unit.get("image"))
        for use in data["adapters"]:
            for name in _image_params(use["type"]):
                value = use.get(name)
                if isinstance(value, str):
                    use[name] = fix(value)
                elif isinstance(value, list):
                    use[name] = [fix(v) if isinstance(v, str) else v for v in value]
            units = use.get("control")  # a region's own ControlNet units
            for unit in units if isinstance(units, list) else []:
                if isinstance(unit, dict) and isinstance(unit.get("image"), str):
                    unit["image"] = fix(unit["image"])
        return Job.model_validate(data)


def _image_params(adapter: str) -> list[str]:
    """Names of an adapter's image params (``image`` type, or ``json`` lists of images named
    ``images``); unknown adapters have none here and are reported when the job runs."""
    from ctrlgen.core.plugins.manager import get_registry

    registry = get_registry("adapters")
    if adapter not in registry:
        return []
    return [p.name for p in registry.get(adapter).params
            if p.type == "image" or (p.type == "json" and p.name.endswith("images"))]


def format_validation_error(error: ValidationError, what: str = "job") -> str:
    lines = []
    for item in error.errors():
        location = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        given = item.get("input")
        shown = "" if isinstance(given, (dict, list)) or given is None else f" (got {given!r})"
        if location:
            lines.append(f"{what}{location}: {message}{shown}")
        elif re.match(rf"({re.escape(what)}\.|\w+\[\d+\])", message):  # the message names its field
            lines.append(message)
        else:
            lines.append(f"{what}: {message}")
    return "invalid " + what + ":\n  " + "\n  ".join(lines)


def parse_job(data: Any) -> Job:
    """Validate a JSON-like object as a :class:`Job`, raising :class:`JobError` with readable text."""
    if not isinstance(data, dict):
        raise JobError(f"a job must be a JSON object, got {type(data).__name__}")
    try:
        check_text(data, "job")
    except ParamError as exc:
        raise JobError(f"invalid job:\n  {exc}") from None
    try:
        return Job.model_validate(data)
    except ValidationError as exc:
        raise JobError(format_validation_error(exc)) from None


def load_job(path: Path) -> Job:
    import json

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise JobError(f"cannot read job file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    return parse_job(data).resolve_paths(Path(path).resolve().parent)
