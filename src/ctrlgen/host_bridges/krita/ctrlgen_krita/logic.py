"""The docker's logic without Qt or Krita: pixel formats, regions, job building, the queue.

Everything here runs in Krita's own Python with only the standard library, and in the
test suite without Krita. Pixel buffers are ``bytes``: Krita hands out BGRA for RGBA/8-bit
documents; the server takes RGB/RGBA/grey, row-major, top to bottom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from .client_import import (
    MIN_SIDE,
    AuthError,
    ClientError,
    JobFailed,
    Rect,
    ServerNotRunning,
    fit_region,
    generation_size,
    model_architecture,
)

TASKS = ("txt2img", "img2img", "inpaint")
NO_PREPROCESSOR = "none"  # the layer already is a control map
LAYER_PREFIX = "[ctrlgen]"


class DocumentError(Exception):
    """The document cannot be used as it is; the message says what to change."""


# -- pixels -----------------------------------------------------------------------------------
def bgra_to_rgb(bgra: bytes | bytearray | memoryview) -> bytes:
    """Krita's BGRA pixels as RGB (alpha dropped), by slicing: no per-pixel Python loop."""
    src = memoryview(bgra).cast("B")
    count = len(src) // 4
    out = bytearray(count * 3)
    out[0::3] = src[2::4]
    out[1::3] = src[1::4]
    out[2::3] = src[0::4]
    return bytes(out)


def bgra_to_rgba(bgra: bytes | bytearray | memoryview) -> bytes:
    """Krita's BGRA pixels as RGBA."""
    src = memoryview(bgra).cast("B")
    out = bytearray(src)
    out[0::4] = src[2::4]
    out[2::4] = src[0::4]
    return bytes(out)


def layer_pixels_for_server(bgra: bytes | bytearray | memoryview) -> tuple[bytes, int]:
    """``(pixels, channels)`` to send for a layer or the canvas: RGB when every pixel is opaque,
    else RGBA, so the server composites transparent areas on white (a sketch on a transparent
    layer arrives as black lines on white, not on black)."""
    if not bgra_alpha(bgra).strip(b"\xff"):
        return bgra_to_rgb(bgra), 3
    return bgra_to_rgba(bgra), 4


def bgra_alpha(bgra: bytes | bytearray | memoryview) -> bytes:
    """The alpha channel of BGRA pixels (one byte per pixel)."""
    return bytes(memoryview(bgra).cast("B")[3::4])


def rgb_to_bgra(rgb: bytes | bytearray | memoryview, alpha: bytes | None = None) -> bytes:
    """RGB result pixels as BGRA for ``setPixelData``; ``alpha`` (one byte per pixel) or opaque."""
    src = memoryview(rgb).cast("B")
    count = len(src) // 3
    out = bytearray(count * 4)
    out[0::4] = src[2::3]
    out[1::4] = src[1::3]
    out[2::4] = src[0::3]
    if alpha is None:
        out[3::4] = b"\xff" * count
    else:
        if len(alpha) != count:
            raise ValueError(f"alpha has {len(alpha)} values for {count} pixels")
        out[3::4] = alpha
    return bytes(out)


def grey_to_bgra(grey: bytes | bytearray | memoryview) -> bytes:
    """One grey byte per pixel as opaque BGRA."""
    src = memoryview(grey).cast("B")
    out = bytearray(len(src) * 4)
    out[0::4] = src
    out[1::4] = src
    out[2::4] = src
    out[3::4] = b"\xff" * len(src)
    return bytes(out)


def to_bgra(data: bytes | bytearray | memoryview, channels: int, alpha: bytes | None = None) -> bytes:
    """A server image (grey, RGB or RGBA) as BGRA; ``alpha`` replaces its own alpha if given."""
    if channels == 3:
        return rgb_to_bgra(data, alpha)
    if channels == 1:
        out = bytearray(grey_to_bgra(data))
    elif channels == 4:
        out = bytearray(bgra_to_rgba(data))  # the swap of R and B is its own inverse
    else:
        raise ValueError(f"images have 1, 3 or 4 channels, not {channels}")
    if alpha is not None:
        out[3::4] = alpha
    return bytes(out)


# Krita's colour-model and depth ids as its menus (Image > Convert Image Color Space) name them.
COLOR_MODEL_NAMES = {"RGBA": "RGB/Alpha", "GRAYA": "Grayscale/Alpha", "CMYKA": "CMYK/Alpha", "LABA": "L*a*b*/Alpha",
                     "XYZA": "XYZ/Alpha", "YCbCrA": "YCbCr/Alpha", "A": "Alpha mask"}
COLOR_DEPTH_NAMES = {"U8": "8-bit integer/channel", "U16": "16-bit integer/channel",
                     "F16": "16-bit float/channel", "F32": "32-bit float/channel"}


def color_space_name(color_model: str, color_depth: str) -> str:
    """``("GRAYA", "U16")`` -> ``"Grayscale/Alpha (16-bit integer/channel)"``, the words of Krita's menus."""
    return (f"{COLOR_MODEL_NAMES.get(color_model, color_model)} "
            f"({COLOR_DEPTH_NAMES.get(color_depth, color_depth)})")


def check_color_space(color_model: str, color_depth: str) -> None:
    """Refuse documents the byte conversions above do not describe."""
    if (color_model, color_depth) != ("RGBA", "U8"):
        raise DocumentError(
            f"This document is {color_space_name(color_model, color_depth)}; ctrlgen works on "
            f"{color_space_name('RGBA', 'U8')} documents. Convert it with Image > Convert Image Color Space… "
            "or work on a copy."
        )


# -- regions (Rect, fit_region, generation_size: host_bridges/hostlogic.py, shared with GIMP) --
def inpaint_region(selection: Rect, canvas: Rect, context_px: int) -> Rect:
    """The part of the canvas an inpaint job works on: the (grown, feathered) selection's
    bounds plus ``context_px`` of surroundings, at least 64×64 where the canvas allows, clamped
    to the canvas. Working on this crop keeps big canvases fast."""
    if selection.empty:
        raise DocumentError("The selection is empty: select the area to repaint, or deselect (Ctrl+Shift+A) "
                            "to generate for the whole canvas.")
    region = fit_region(selection, canvas, context_px)
    if region.empty:
        raise DocumentError("The selection lies outside the canvas: select inside the image.")
    return region


def check_size(region: Rect) -> None:
    if region.width < MIN_SIDE or region.height < MIN_SIDE:
        raise DocumentError(f"The area is {region.width}×{region.height} pixels; ctrlgen needs at least "
                            f"{MIN_SIDE}×{MIN_SIDE}. Enlarge the canvas (Image > Resize Canvas).")


# -- settings and jobs ------------------------------------------------------------------------
@dataclass
class ControlLayer:
    """A layer marked as a control: its pixels go through ``preprocessor`` (``none``: the layer
    already is a control map) and a ControlNet ``model`` steers the generation."""

    layer_id: str
    layer_name: str
    preprocessor: str = "canny"
    model: str = ""
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    enabled: bool = True


REFERENCE_ONLY = "reference-only (no model)"  # the reference choice that needs no IP-Adapter file


@dataclass
class ReferenceLayer:
    """A layer used as a reference image: through an IP-Adapter ``model``, or, with
    :data:`REFERENCE_ONLY`, through reference-only attention (``scale`` is then its weight)."""

    layer_id: str
    layer_name: str
    model: str = ""
    scale: float = 0.6
    enabled: bool = True


@dataclass
class Settings:
    """What the docker's controls hold."""

    model: str = ""
    prompt: str = ""
    negative_prompt: str = ""
    strength: float = 1.0
    seed: int = -1
    steps: int = 20
    cfg_scale: float = 7.0
    sampler: str = "Euler a"
    grow_px: int = 0
    feather_px: int = 8
    context_px: int = 32
    source: str = "visible"  # "visible" (the projection) or "active_layer"
    # Generate at the model's resolution (see generation_size) and scale the result to the area;
    # off: generate at the area's own size.
    scale_to_model: bool = True
    # Ask the server for small previews of the running job (shown in the docker).
    live_preview: bool = True
    # Results go above the active layer, inside its group; on: on top of the whole stack.
    place_on_top: bool = False
    # Off: each result becomes a layer at once (and is listed in the history); on: results only
    # go to the history, to be previewed and applied from there.
    keep_in_history: bool = False
    batch_size: int = 1
    selection_mode: str = "fill"  # one of SELECTION_MODES
    # The group layer whose child layers are regions (its unique id; "" = none); a prompt per child
    # layer id (missing or empty: the layer's name).
    regions_group: str = ""
    region_prompts: dict[str, str] = field(default_factory=dict)
    controls: list[ControlLayer] = field(default_factory=list)
    references: list[ReferenceLayer] = field(default_factory=list)


# What a selection means (Krita AI Diffusion's modes), and each one's tooltip.
SELECTION_MODES = {"fill": "Fill", "expand": "Expand", "add": "Add content", "remove": "Remove content",
                   "replace_background": "Replace background"}
SELECTION_MODE_TIPS = {
    "fill": "Fill: new content in the selection, from the prompt; the surroundings' colours seed it (below 100 % "
            "strength, what is there is refined instead)",
    "expand": "Expand: continue the picture into an empty area or past the edge you enlarged the canvas to "
              "(Image > Resize Canvas): the surroundings spread in, the model sees more of them, always 100 %",
    "add": "Add content: paint what the prompt says into the selection, on fresh noise, keeping the surroundings "
           "(below 100 % the old pixels do not show through)",
    "remove": "Remove content: erase what is selected and fill it from the surroundings; the prompt is ignored",
    "replace_background": "Replace background: the selection marks the subject, everything else is repainted; "
                          "the selected pixels stay as they are",
}
REMOVE_STRENGTH = 0.85  # Remove at 100 %: the surroundings' colours, spread in, must still shape the result


@dataclass(frozen=True)
class SelectionPlan:
    """What a selection mode means in job fields: ``inpaint.fill``, the strength, whether the
    prompt is kept, whether the mask is inverted (``inpaint.invert``) and the context around the
    selection (pixels)."""

    fill: str
    strength: float
    keep_prompt: bool = True
    invert: bool = False
    context_px: int = 32


def selection_plan(mode: str, strength: float, context_px: int, selection: Rect | None = None) -> SelectionPlan:
    """Map a selection mode (:data:`SELECTION_MODES`) onto ctrlgen's inpaint fields.

    * ``fill`` — ``fill`` (colours spread in from around the mask) at 100 %, ``original`` below (refine).
    * ``expand`` — ``fill`` at 100 %, with context as large as the selection (the model continues
      what it sees around it; an empty area counts as nothing to keep).
    * ``add`` — ``latent_noise``: new content from the seed, even below 100 %.
    * ``remove`` — ``fill`` without the prompt, at most :data:`REMOVE_STRENGTH` so the
      surroundings' colours spread into the hole decide what comes.
    * ``replace_background`` — the mask inverted (``inpaint.invert``), the whole canvas, ``latent_noise``
      (the old background does not show through below 100 %)."""
    strength = min(1.0, max(0.01, float(strength)))
    context_px = max(0, int(context_px))
    if mode == "expand":
        reach = max(selection.width, selection.height) if selection is not None else 0
        return SelectionPlan("fill", 1.0, context_px=max(context_px, reach))
    if mode == "add":
        return SelectionPlan("latent_noise", strength, context_px=context_px)
    if mode == "remove":
        return SelectionPlan("fill", min(strength, REMOVE_STRENGTH), keep_prompt=False, context_px=context_px)
    if mode == "replace_background":
        return SelectionPlan("latent_noise", strength, invert=True, context_px=context_px)
    return SelectionPlan("fill" if strength >= 1.0 else "original", strength, context_px=context_px)


def action_label(selected: bool, strength_percent: int, mode: str) -> str:
    """The Generate button's text: what pressing it will do."""
    if not selected:
        return "Generate" if strength_percent >= 100 else "Refine"
    if mode == "fill" or mode not in SELECTION_MODES:
        return "Inpaint selection" if strength_percent >= 100 else "Refine selection"
    return {"expand": "Expand", "add": "Add to selection", "remove": "Remove selection",
            "replace_background": "Replace background"}[mode]


def choose_task(has_selection: bool, strength: float) -> str:
    """A selection means inpaint; without one, full strength generates anew and less refines."""
    if has_selection:
        return "inpaint"
    return "txt2img" if strength >= 1.0 else "img2img"


@dataclass
class Capture:
    """Pixels copied from the document on the GUI thread (Krita's BGRA, cut to ``region``);
    :func:`build_job` converts them on a worker thread."""

    task: str
    region: Rect
    image: bytes | None = None  # the input (visible image or active layer), BGRA
    mask: bytes | None = None  # the grown, feathered selection, one byte per pixel (255 = repaint)
    controls: list[tuple[ControlLayer, bytes]] = field(default_factory=list)  # BGRA of each control layer
    # BGRA of each reference and the part of the canvas it covers: the whole layer, not the region.
    references: list[tuple[ReferenceLayer, bytes, Rect]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # hidden control/reference layers, left out
    # Regions (a group's child layers): (layer name, prompt, grey mask at the region's size).
    regions: list[tuple[str, str, bytes]] = field(default_factory=list)
    # The layer results go above (the active layer when the job was made); None: top of the stack.
    above: Any = None


def check_settings(settings: Settings) -> None:
    if not settings.model:
        raise DocumentError("Choose a model first (connect to the server to fill the list).")
    for control in settings.controls:
        if control.enabled and not control.model:
            raise DocumentError(f"Control layer {control.layer_name!r} has no ControlNet model: pick one "
                                "(put ControlNet weights in a model folder if the list is empty).")
        if control.enabled and not 0 <= control.start < control.end <= 1:
            raise DocumentError(f"Control layer {control.layer_name!r}: start must be below end (0…1).")
    for reference in settings.references:
        if reference.enabled and not reference.model:
            raise DocumentError(f"Reference layer {reference.layer_name!r} has no IP-Adapter model: pick one "
                                f"(or {REFERENCE_ONLY!r}, which needs none).")


def build_job(settings: Settings, capture: Capture, architecture: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """The job JSON and the images to upload for it, keyed by the job field they fill
    (``"image"``, ``"mask"``, ``"control.0.image"``, ``"adapters.0.image"``): the values are
    ``(bytes, width, height, channels)`` tuples (RGB, RGBA where transparent, or grey), turned
    into uploads by the worker.

    ``architecture`` (the model's, from the capabilities) sets the generation size when
    ``settings.scale_to_model`` is on (:func:`generation_size`); images always go at the area's size.

    Converting the pixels costs time on big canvases: call it off the GUI thread."""
    check_settings(settings)
    region = capture.region
    size = (region.width, region.height)
    width, height = size
    if settings.scale_to_model:
        width, height = generation_size(region.width, region.height, architecture)
    job: dict[str, Any] = {
        "model": settings.model,
        "task": capture.task,
        "prompt": settings.prompt,
        "negative_prompt": settings.negative_prompt,
        "seed": int(settings.seed),
        "steps": int(settings.steps),
        "cfg_scale": float(settings.cfg_scale),
        "sampler": settings.sampler,
        "width": width,
        "height": height,
    }
    if settings.batch_size > 1:
        job["batch_size"] = int(settings.batch_size)
    images: dict[str, Any] = {}
    if capture.task in ("img2img", "inpaint"):
        if capture.image is None:
            raise DocumentError(f"{capture.task} needs the canvas pixels")
        pixels, channels = layer_pixels_for_server(capture.image)
        images["image"] = (pixels, *size, channels)
        job["strength"] = min(1.0, max(0.01, float(settings.strength)))
    if capture.task == "inpaint":
        if capture.mask is None:
            raise DocumentError("inpaint needs a selection")
        plan = selection_plan(settings.selection_mode, settings.strength, settings.context_px)
        # The plugin grows and feathers the selection itself (Krita does it natively) and uses
        # that soft mask as the result layer's alpha; the engine repaints where it is >= 50 %.
        # Replace background: capture.mask is already inverted (the layer's alpha); the server gets
        # the selection itself and inverts it (inpaint.invert).
        mask = capture.mask.translate(INVERT) if plan.invert else capture.mask
        images["mask"] = (mask, *size, 1)
        job["inpaint"] = {"grow_px": 0, "feather_px": 0, "fill": plan.fill}
        if plan.invert:
            job["inpaint"]["invert"] = True
        job["strength"] = plan.strength
        if not plan.keep_prompt:
            job["prompt"] = ""
    units = []
    for control, pixels in capture.controls:
        if not control.enabled:
            continue
        data, channels = layer_pixels_for_server(pixels)
        images[f"control.{len(units)}.image"] = (data, *size, channels)
        units.append({"model": control.model, "preprocessor": control.preprocessor or NO_PREPROCESSOR,
                      "weight": float(control.strength), "guidance_start": float(control.start),
                      "guidance_end": float(control.end)})
    if units:
        job["control"] = units
    adapters = []
    for reference, pixels, rect in capture.references:
        if not reference.enabled:
            continue
        data, channels = layer_pixels_for_server(pixels)
        images[f"adapters.{len(adapters)}.image"] = (data, rect.width, rect.height, channels)
        if reference.model == REFERENCE_ONLY:
            adapters.append({"type": "reference", "mode": "reference_adain+attn", "weight": float(reference.scale)})
        else:
            adapters.append({"type": "ip_adapter", "model": reference.model, "scale": float(reference.scale)})
    for _name, prompt, mask in capture.regions:
        # A region's mask has the picture's size: the generation size for txt2img, the image's otherwise.
        if capture.task == "txt2img" and (width, height) != size:
            mask = resize_grey(mask, *size, width, height)
            mask_size = (width, height)
        else:
            mask_size = size
        images[f"adapters.{len(adapters)}.mask"] = (mask, *mask_size, 1)
        adapters.append({"type": "region", "prompt": prompt, "negative_prompt": ""})
    if adapters:
        job["adapters"] = adapters
    return job, images


INVERT = bytes(range(255, -1, -1))  # bytes.translate table: 255 - value


def resize_grey(data: bytes, width: int, height: int, new_width: int, new_height: int) -> bytes:
    """One byte per pixel, resized to ``new_width``×``new_height`` (nearest neighbour)."""
    xs = [min(width - 1, (x * width) // new_width) for x in range(new_width)]
    out = bytearray()
    for y in range(new_height):
        start = ((y * height) // new_height) * width
        row = data[start:start + width]
        out += bytes(row[x] for x in xs)
    return bytes(out)


def region_mask(bgra: bytes, opacity: int) -> bytes:
    """A region layer's mask: its pixels' alpha × the layer's opacity (0–255)."""
    alpha = bgra_alpha(bgra)
    if opacity >= 255:
        return alpha
    opacity = max(0, int(opacity))
    table = bytes((value * opacity + 127) // 255 for value in range(256))
    return alpha.translate(table)


def region_prompt(settings: Settings, layer_id: str, layer_name: str) -> str:
    """A region's prompt: the one set on its row, else the layer's name."""
    return (settings.region_prompts.get(layer_id) or "").strip() or layer_name.strip()


# -- upscaling --------------------------------------------------------------------------------
UPSCALE_FACTORS = (1.5, 2.0, 4.0)
MAX_UPSCALE_SIDE = 4096  # the server's largest image side
RESAMPLERS = ("lanczos", "bicubic", "bilinear", "nearest")  # upscalers that need no model


@dataclass
class UpscaleSettings:
    """The Upscale workspace: the target size (``factor``, or ``width``×``height`` when ``factor``
    is 0), the upscaler, the refine's tiles and strength, and its prompt ("" = the main prompt)."""

    factor: float = 2.0
    width: int = 0
    height: int = 0
    upscaler: str = "lanczos"
    tile_size: int = 0  # 0: the model's native size
    overlap: int = 64
    denoise: float = 0.3  # Krita AI Diffusion's refine strength
    prompt: str = ""


def upscale_target(width: int, height: int, up: UpscaleSettings) -> tuple[int, int]:
    """The document's size after upscaling."""
    if up.factor > 0:
        target = (max(1, round(width * up.factor)), max(1, round(height * up.factor)))
    else:
        target = (int(up.width), int(up.height))
    if target[0] < width or target[1] < height:
        raise DocumentError(f"Upscaling makes the picture larger: {target[0]}×{target[1]} is smaller than the "
                            f"document's {width}×{height}.")
    if max(target) > MAX_UPSCALE_SIDE:
        raise DocumentError(f"{target[0]}×{target[1]} is too large: the server makes images up to "
                            f"{MAX_UPSCALE_SIDE} pixels a side. Choose a smaller factor or size.")
    if min(target) < MIN_SIDE:
        raise DocumentError(f"{target[0]}×{target[1]} is too small: ctrlgen needs at least {MIN_SIDE}×{MIN_SIDE}.")
    return target


def upscalers_of(capabilities: dict[str, Any]) -> list[str]:
    """The server's upscaler models (category ``upscale_models``), then the resamplers."""
    models = sorted(m["name"] for m in capabilities.get("models", [])
                    if m.get("category") == "upscale_models" and m.get("name"))
    resamplers = list(RESAMPLERS)
    for feature in capabilities.get("features", []):
        if feature.get("name") == "upscale" and feature.get("resamplers"):
            resamplers = list(feature["resamplers"])
    return models + resamplers


def build_upscale_job(settings: Settings, up: UpscaleSettings, bgra: bytes, width: int,
                      height: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``upscale`` job for the visible canvas (``bgra``, ``width``×``height``) and its image."""
    target = upscale_target(width, height, up)
    denoise = min(1.0, max(0.0, float(up.denoise)))
    if denoise > 0:
        check_settings(settings)
        if int(settings.steps * denoise) < 1:
            raise DocumentError(f"Refine strength {denoise:.0%} of {settings.steps} steps leaves no step: raise the "
                                f"steps (Settings) to at least {math.ceil(1 / denoise)} or the refine strength.")
    options: dict[str, Any] = {"upscaler": up.upscaler or "lanczos", "width": target[0], "height": target[1],
                               "denoise": denoise}
    overlap = max(0, int(up.overlap)) // 8 * 8
    if up.tile_size:
        tile = max(128, int(up.tile_size)) // 64 * 64
        if overlap * 2 >= tile:
            raise DocumentError(f"The tile overlap ({overlap} px) must be under half the tile size ({tile} px).")
        options["tile_size"] = tile
    options["overlap"] = overlap
    job: dict[str, Any] = {
        "task": "upscale", "model": settings.model, "prompt": up.prompt.strip() or settings.prompt,
        "negative_prompt": settings.negative_prompt, "seed": int(settings.seed), "steps": int(settings.steps),
        "cfg_scale": float(settings.cfg_scale), "sampler": settings.sampler, "upscale": options,
    }
    if denoise == 0:
        job.pop("model")  # the upscaler alone needs no checkpoint
    pixels, channels = layer_pixels_for_server(bgra)
    return job, {"image": (pixels, width, height, channels)}


def set_path(job: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_path(job, "control.0.image", ref)`` sets ``job["control"][0]["image"]``."""
    parts = dotted.split(".")
    target: Any = job
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    target[parts[-1]] = value


def result_layer_name(number: int, task: str, prompt: str, seed: Any = None) -> str:
    words = " ".join(prompt.split())
    if len(words) > 40:
        words = words[:39].rstrip() + "…"
    seed_text = f" (seed {seed})" if seed not in (None, -1) else ""
    return f"{LAYER_PREFIX} #{number} {task}{': ' + words if words else ''}{seed_text}"


# -- capabilities -----------------------------------------------------------------------------
# What each choice lists: a model whose identified kind is one of these, or (kind unknown)
# which sits in one of these folder categories.
MODEL_CHOICES = {
    "checkpoint": ({"checkpoint"}, {"checkpoints", "diffusers"}),
    "controlnet": ({"controlnet"}, {"controlnet"}),
    "ipadapter": ({"ip_adapter", "ipadapter"}, {"ipadapter"}),
}


def models_of(capabilities: dict[str, Any], choice: str) -> list[str]:
    """Names of the server's models for a choice: ``checkpoint``, ``controlnet`` or ``ipadapter``."""
    kinds, categories = MODEL_CHOICES[choice]
    names = []
    for model in capabilities.get("models", []):
        kind = str(model.get("kind") or "unknown").lower()
        category = str(model.get("category", "")).lower()
        if choice == "ipadapter" and model.get("variant") == "instantid":
            continue  # InstantID's adapter works with its own IdentityNet, not as a plain reference
        if model.get("name") and (kind in kinds or (kind == "unknown" and category in categories)):
            names.append(model["name"])
    return names


def preprocessor_names(capabilities: dict[str, Any]) -> list[str]:
    return [NO_PREPROCESSOR] + sorted(p["name"] for p in capabilities.get("preprocessors", []) if p.get("name"))


def matching_models(capabilities: dict[str, Any], choice: str, checkpoint: str) -> list[str]:
    """Models for ``choice`` matching the checkpoint's architecture first, then the others."""
    arch = model_architecture(capabilities, checkpoint)
    names = models_of(capabilities, choice)
    return sorted(names, key=lambda n: (model_architecture(capabilities, n) != arch, n))


# -- messages ---------------------------------------------------------------------------------
def error_message(exc: BaseException, url: str = "") -> str:
    """What went wrong and what to do, for the docker's message line."""
    where = f" at {url}" if url else ""
    if isinstance(exc, ServerNotRunning):
        return (f"The ctrlgen server is not running{where}. Start it in a terminal with `ctrlgen serve`, "
                "then press Connect.")
    if isinstance(exc, AuthError):
        return ("The server refused the token. Leave the token field empty to read it from ctrlgen's config "
                "folder (`ctrlgen config-dir`, file `token`), or paste that file's content.")
    if isinstance(exc, ClientError) and exc.code == "model_not_found":  # at submission (422) or in the job
        return (f"A model is missing: {exc.message} Put the file in one of your model folders "
                "(`ctrlgen models` lists them) and press Connect to refresh the lists.")
    if isinstance(exc, JobFailed):
        if exc.code == "out_of_memory":
            return f"Out of memory: {exc.message} Try a smaller selection or fewer control layers."
        if exc.code == "cancelled":
            return "Cancelled."
        return f"The job failed ({exc.code}): {exc.message}"
    if isinstance(exc, ClientError):
        if exc.code == "queue_full":
            return "The server's queue is full; wait for a job to finish and try again."
        return f"The server answered {exc.code or exc.status}: {exc.message}"
    if isinstance(exc, DocumentError):
        return str(exc)
    return f"Unexpected error: {type(exc).__name__}: {exc}"


def event_error_message(data: dict[str, Any]) -> str:
    """The message for a job's ``error`` event."""
    return error_message(JobFailed(str(data.get("code", "internal_error")), str(data.get("message", ""))))


# -- the job queue ----------------------------------------------------------------------------
ACTIVE = ("sending", "queued", "running")


@dataclass
class QueueEntry:
    key: int
    name: str
    task: str
    status: str = "sending"  # sending, queued, running, finished, error, cancelled
    job_id: str = ""
    step: int = 0
    total: int = 0
    position: int = 0
    message: str = ""

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def label(self) -> str:
        detail = {
            "sending": "sending…",
            "queued": f"queued ({self.position} ahead)" if self.position else "queued",
            "running": f"{self.step}/{self.total}" if self.total else "running",
        }.get(self.status, self.status)
        return f"#{self.key} {self.task} — {detail}"


class JobQueue:
    """The docker's list of jobs, updated from server events (on the GUI thread)."""

    def __init__(self, keep_done: int = 20):
        self.entries: list[QueueEntry] = []
        self.keep_done = keep_done
        self._next = 1

    def add(self, name: str, task: str) -> QueueEntry:
        entry = QueueEntry(self._next, name, task)
        self._next += 1
        self.entries.append(entry)
        self._trim()
        return entry

    def get(self, key: int) -> QueueEntry | None:
        return next((e for e in self.entries if e.key == key), None)

    def active(self) -> list[QueueEntry]:
        return [e for e in self.entries if e.active]

    def submitted(self, key: int, job_id: str) -> None:
        entry = self.get(key)
        if entry is not None:
            entry.job_id = job_id
            if entry.status == "sending":
                entry.status = "queued"

    def apply_event(self, key: int, kind: str, data: dict[str, Any]) -> QueueEntry | None:
        entry = self.get(key)
        if entry is None:
            return None
        if kind == "queued":
            entry.status, entry.position = "queued", int(data.get("position", 0))
        elif kind == "started":
            entry.status = "running"
        elif kind == "progress":
            entry.status = "running"
            entry.step, entry.total = int(data.get("step", 0)), int(data.get("total", 0))
        elif kind in ("finished", "cancelled"):
            entry.status = kind
        elif kind == "error":
            entry.status, entry.message = "error", event_error_message(data)
        self._trim()
        return entry

    def fail(self, key: int, message: str) -> None:
        entry = self.get(key)
        if entry is not None:
            entry.status, entry.message = "error", message

    def progress(self) -> float:
        """Overall progress of the running job, 0…1 (0 when none runs)."""
        running = [e for e in self.entries if e.status == "running" and e.total]
        return running[0].step / running[0].total if running else 0.0

    def _trim(self) -> None:
        done = [e for e in self.entries if not e.active]
        for entry in done[: max(0, len(done) - self.keep_done)]:
            self.entries.remove(entry)


def copy_settings(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, **changes)
