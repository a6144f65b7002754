"""The ``upscale`` task and hires fix: enlarge, then denoise again in tiles blended in latent space.

- **upscale** (``job.upscale``): ``job.image`` is enlarged with an upscaler model (spandrel, run in
  tiles: :mod:`ctrlgen.core.models.upscalers`) or a resampler, then refined by an img2img pass
  of the checkpoint at ``denoise`` strength over the whole enlarged canvas, in which the UNet and
  any ControlNet only ever see one tile and the VAE encodes and decodes tile by tile
  (:mod:`ctrlgen.core.engine.tiling`). The job's prompt, ControlNet units (a unit without an
  image reads the enlarged image: the tile ControlNet's input) and adapters apply to every tile.
- **hires fix** (``job.hires`` on txt2img): the first pass at the job's size (the model's native
  size), its result (or its latents) enlarged, then a second img2img pass at the target size
  with its own steps and denoise, whole or (``hires.tile_size``) in tiles.

Both run through the engine's own steps 2-8 (:meth:`Engine._generate`) as derived img2img jobs:
nothing here builds a pipeline or encodes a prompt. The engine calls in here (``Engine.check`` and
``Engine._run``) and hands over what this module would otherwise import from it (its image reader,
its result types), so the import goes one way.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from ctrlgen.core.engine.jobs import Job
from ctrlgen.core.errors import CancelledError, CtrlgenError, ImageError, JobError
from ctrlgen.core.images import check_size, to_rgb
from ctrlgen.core.models.upscalers import RESAMPLERS

# The reference under which the enlarged image reaches the refine pass's image source.
ENLARGED = "ctrlgen-upscale:enlarged"
TILE_MULTIPLE = 64  # the canvas is padded to this, so every tile's latent halves cleanly in the UNet
MODEL_TILE = 256  # upscaler models run on this many input pixels a side at a time
Engine = Any  # ctrlgen.core.engine.engine.Engine (not imported: it imports this module)
ImageSource = Callable[[str, str], np.ndarray]


def _at(where: str, exc: CtrlgenError) -> CtrlgenError:
    """``exc``, same type, with the field path ``where`` in front of its message."""
    exc.args = (f"{where}: {exc}",)
    return exc.with_traceback(None)


def _sized(text: str, width: int, height: int) -> str:
    """An infotext with the output's size in its ``Size:`` field."""
    return re.sub(r"Size: \d+x\d+", f"Size: {width}x{height}", text, count=1)


# -- checking ---------------------------------------------------------------------------------


def check_upscaler(engine: Engine, name: str, where: str, latent_ok: bool = False) -> Any:
    """None for a resampler (or ``latent``); else the store entry of an upscaler model, readable."""
    key = name.strip().lower()
    if key in RESAMPLERS or (latent_ok and key == "latent"):
        return None
    try:
        entry = engine.store.find(name, category=("upscale_models",))
    except CtrlgenError as exc:
        options = ", ".join(("latent", *RESAMPLERS) if latent_ok else RESAMPLERS)
        raise _at(where, type(exc)(f"{exc}\nOr use a resampler: {options}")) from None
    problem = entry.identity.details.get("error")
    if problem:
        raise JobError(f"{where}: {name!r} cannot be used: {problem}")
    if entry.identity.kind not in ("upscaler", "unknown"):
        raise JobError(f"{where}: {name!r} ({entry.path}) is a {entry.identity.kind}, not an upscaler model; pick "
                       "one from `ctrlgen models --category upscale_models` or a resampler")
    return entry


def _read(reference: str | None, images: ImageSource) -> np.ndarray:
    """``job.image``'s pixels as stored (grey, RGB or RGBA uint8), within the size limits."""
    if reference is None:
        raise JobError("job.image is missing; give the picture to enlarge")
    pixels = images(reference, "job.image")
    try:
        check_size(pixels.shape[0], pixels.shape[1], "job.image")
        if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
            pixels = to_rgb(pixels, "job.image")
    except ImageError as exc:
        raise JobError(f"job.image: {exc}") from None
    return pixels


def target_size(options: Any, width: int, height: int) -> tuple[int, int]:
    """The output size of an upscale (or hires fix) of a ``width``×``height`` picture."""
    if options.width is not None:
        return options.width, options.height
    return max(round(width * options.scale), 1), max(round(height * options.scale), 1)


def check(engine: Engine, job: Job, images: ImageSource, checked_type: type) -> Any:
    """:meth:`Engine.check` for an upscale or hires-fix job: the size and the upscaler, then the
    refine pass's checkpoint, units and adapters as the img2img (or txt2img) job they run as."""
    if job.task == "upscale":
        options = job.upscale
        pixels = _read(job.image, images)
        width, height = target_size(options, pixels.shape[1], pixels.shape[0])
        try:
            check_size(height, width, f"the upscaled image ({pixels.shape[1]}×{pixels.shape[0]} enlarged)")
        except ImageError as exc:
            raise JobError(f"job.upscale: {exc}; lower upscale.scale") from None
        check_upscaler(engine, options.upscaler, "upscale.upscaler")
        if options.denoise == 0:
            return checked_type(job)
        checked = engine.check(job.model_copy(update={"task": "img2img", "upscale": None,
                                                      "strength": options.denoise}), images)
        return replace(checked, job=job)
    hires = job.hires
    width, height = target_size(hires, job.width, job.height)
    try:
        check_size(height, width, "the hires fix's target size")
    except ImageError as exc:
        raise JobError(f"job.hires: {exc}; lower hires.scale") from None
    check_upscaler(engine, hires.upscaler, "hires.upscaler", latent_ok=True)
    return replace(engine.check(job.model_copy(update={"hires": None}), images), job=job)


# -- enlarging -------------------------------------------------------------------------------------


def enlarge(engine: Engine, pixels: np.ndarray, upscaler: str, width: int, height: int,
            check_cancel: Callable[[], None] | None = None) -> np.ndarray:
    """``pixels`` (uint8 RGB) at ``width``×``height``: through the upscaler model (again while it
    is still too small, at most three times), then resampled to the exact size (lanczos); or
    resampled alone when ``upscaler`` is a resampler."""
    from ctrlgen.core.models.upscalers import load_upscaler, resample, upscale_image

    key = upscaler.strip().lower()
    if key in RESAMPLERS:
        return resample(pixels, width, height, key)
    entry = check_upscaler(engine, upscaler, "upscaler")
    try:
        model = load_upscaler(entry.path, allow_pickle=engine.store.allow_pickle, device=engine.device.device,
                              dtype=engine.device.dtype)
    except CtrlgenError as exc:
        raise _at("upscale.upscaler", exc) from None
    out = pixels
    for _ in range(3):
        if out.shape[1] >= width and out.shape[0] >= height:
            break
        out = upscale_image(model, out, tile=MODEL_TILE, check=check_cancel)
        if model.scale <= 1:
            break
    return resample(out, width, height, "lanczos")


def _source(images: ImageSource, enlarged: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> ImageSource:
    def source(reference: str, what: str) -> np.ndarray:
        if reference == ENLARGED:
            return enlarged
        if extra and reference in extra:
            return extra[reference]
        return images(reference, what)

    return source


def _region_uses(job: Job, images: ImageSource, size: tuple[int, int], target: tuple[int, int],
                 padded: tuple[int, int] | None = None) -> tuple[list[Any], dict[str, np.ndarray]]:
    """The job's adapters for an enlarged pass: each region's mask (made for a ``size`` picture)
    resized to ``target`` (then padded with "not the region" to ``padded``), its feather scaled
    alike; the resized masks by the references the uses now name. Other uses are unchanged (a
    region's ControlNet maps are fitted to the pass's size as the job's own are)."""
    from PIL import Image

    from ctrlgen.core.images import to_mask
    from ctrlgen.core.plugins.specs import normalize_name

    adapters, masks = [], {}
    scale = target[0] / max(size[0], 1)
    for index, use in enumerate(job.adapters):
        params = use.params()
        if normalize_name(use.type) != "region" or not isinstance(params.get("mask"), str):
            adapters.append(use)
            continue
        owner = f"adapters[{index}] (region)"
        try:
            mask = to_mask(images(params["mask"], f"{owner}.mask"), what=f"{owner}.mask")
        except ImageError as exc:
            raise JobError(str(exc)) from None
        if (mask.shape[1], mask.shape[0]) != tuple(size):
            raise JobError(f"{owner}.mask is {mask.shape[1]}×{mask.shape[0]} but the picture is {size[0]}×{size[1]}; "
                           "give a mask of the picture's size (the enlarged passes resize it themselves)")
        if (mask.shape[1], mask.shape[0]) != tuple(target):  # bilinear: no ringing past a hard edge
            mask = np.asarray(Image.fromarray(np.ascontiguousarray(mask)).resize(target, Image.Resampling.BILINEAR))
        if padded is not None:
            mask = np.pad(mask, ((0, padded[1] - target[1]), (0, padded[0] - target[0])))
        reference = f"{ENLARGED}:region{index}"
        masks[reference] = mask
        update = {"mask": reference, "feather_px": float(params.get("feather_px", 16.0)) * scale}
        adapters.append(use.model_copy(update=update))
    return adapters, masks


def _canceller(cancel: Any, job_id: str) -> Callable[[], None]:
    def check() -> None:
        if cancel is not None and cancel.is_set():
            raise CancelledError(f"job {job_id} was cancelled")

    return check


@contextlib.contextmanager
def _tiled(context: Any, tile_px: int, overlap_px: int, blend: str) -> Iterator[Any]:
    from ctrlgen.core.engine.tiling import tiled_denoising, tiled_vae

    factor = int(getattr(context.pipeline, "vae_scale_factor", 8))
    with tiled_denoising(context.pipeline, tile_px // factor, overlap_px // factor, blend) as tiler, \
            tiled_vae(getattr(context.pipeline, "vae", None), tile_px, overlap_px):
        yield tiler


def _tile_px(checked: Any, tile_size: int | None) -> int:
    from ctrlgen.core.engine.tasks import architecture_spec

    return tile_size or architecture_spec(checked.architecture).native_size


# -- the upscale task ---------------------------------------------------------------------------------


def run(engine: Engine, job: Job, checked: Any, job_id: str, emit: Any, cancel: Any, images: ImageSource,
        preview_every: int, result_type: type) -> Any:
    """Run a checked upscale or hires-fix job (:meth:`Engine._run`'s steps 2-8); ``result_type`` is
    the engine's ``JobResult``."""
    if job.task == "upscale":
        return _upscale(engine, job, checked, job_id, emit, cancel, images, preview_every, result_type)
    return _hires(engine, job, checked, job_id, emit, cancel, images, preview_every)


def _upscale(engine: Engine, job: Job, checked: Any, job_id: str, emit: Any, cancel: Any,
             images: ImageSource, preview_every: int, result_type: type) -> Any:
    from PIL import Image

    from ctrlgen.core.models.upscalers import resample

    options = job.upscale
    pixels = _read(job.image, images)
    rgb = to_rgb(pixels, "job.image")
    alpha = pixels[..., 3] if pixels.ndim == 3 and pixels.shape[2] == 4 else None
    width, height = target_size(options, rgb.shape[1], rgb.shape[0])
    # 1. Enlarge (the upscaler model in tiles, or a resampler).
    enlarged = enlarge(engine, rgb, options.upscaler, width, height, _canceller(cancel, job_id))
    method = options.upscaler.strip().lower()  # alpha: the resampler asked for, else lanczos
    big_alpha = None if alpha is None else resample(alpha, width, height, method if method in RESAMPLERS else "lanczos")
    details = f", Upscaler: {options.upscaler}, Upscale: {width}x{height}, Denoising strength: {options.denoise:g}"

    def finish(image: Any) -> Any:
        image = image.crop((0, 0, width, height)) if image.size != (width, height) else image
        if big_alpha is None:
            return image
        image = image.convert("RGBA")
        image.putalpha(Image.fromarray(big_alpha))
        return image

    if options.denoise == 0:  # the upscaler alone
        seed = job.seed if job.seed >= 0 else secrets.randbelow(2**32)
        text = f"Seed: {seed}, Size: {width}x{height}, Generator: ctrlgen" + details
        return result_type(job=job, job_id=job_id, images=[finish(Image.fromarray(enlarged))], seeds=[seed],
                           infotexts=[text])

    # 2. Pad to whole tiles' multiples (edge pixels repeated; cut off again in finish).
    padded_w, padded_h = (-(-width // TILE_MULTIPLE) * TILE_MULTIPLE, -(-height // TILE_MULTIPLE) * TILE_MULTIPLE)
    canvas = np.pad(enlarged, ((0, padded_h - height), (0, padded_w - width), (0, 0)), mode="edge")
    del enlarged
    tile_px = min(_tile_px(checked, options.tile_size), max(padded_w, padded_h))
    overlap_px = min(options.overlap, tile_px // 2 - 8)

    # 3. The refine: an img2img job on the enlarged canvas, denoised in blended tiles.
    adapters, masks = _region_uses(job, images, (rgb.shape[1], rgb.shape[0]), (width, height), (padded_w, padded_h))
    refine = job.model_copy(update={"task": "img2img", "upscale": None, "image": ENLARGED, "width": padded_w,
                                    "height": padded_h, "strength": options.denoise, "resize_mode": "just_resize",
                                    "adapters": adapters})
    source = _source(images, canvas, masks)
    refine_checked = engine.check(refine, source)
    result = engine._generate(refine, refine_checked, job_id, emit, cancel, source, preview_every,
                              customize=lambda context, _inputs: _tiled(context, tile_px, overlap_px, options.blend),
                              work_size=tile_px)
    tiles = f", Tile size: {tile_px}, Tile overlap: {overlap_px}, Tile blend: {options.blend}"
    return replace(result, job=job, images=[finish(image) for image in result.images],
                   infotexts=[_sized(text, width, height) + details + tiles for text in result.infotexts])


# -- hires fix ---------------------------------------------------------------------------------------------


def _hires(engine: Engine, job: Job, checked: Any, job_id: str, emit: Any, cancel: Any,
           images: ImageSource, preview_every: int) -> Any:
    import torch

    hires = job.hires
    latent = hires.upscaler.strip().lower() == "latent"
    width, height = target_size(hires, job.width, job.height)
    width, height = -(-width // 8) * 8, -(-height // 8) * 8

    # 1. The first pass at the job's own size; with the latent upscaler, keep its final latents.
    captured: dict[str, Any] = {}

    @contextlib.contextmanager
    def keep_latents(context: Any, _inputs: Any) -> Iterator[None]:
        def grab(_pipe, _step, _timestep, tensors):
            captured["latents"] = tensors["latents"]

        context.step_callbacks.append(grab)
        try:
            yield
        finally:
            context.step_callbacks.remove(grab)

    first_job = job.model_copy(update={"hires": None})
    first = engine._generate(first_job, replace(checked, job=first_job), job_id, emit, cancel, images, preview_every,
                             customize=keep_latents if latent else None)

    # 2. Each image again at the target size: enlarged, then img2img with the pass's steps and denoise.
    control = [unit.model_copy(update={"image": unit.image or job.image}) for unit in job.control]
    adapters, masks = _region_uses(job, images, (job.width, job.height), (width, height))
    results, control_maps = [], list(first.control_maps)
    for index, (image, seed) in enumerate(zip(first.images, first.seeds, strict=True)):
        rgb = np.asarray(image.convert("RGB"))
        if latent:
            enlarged = np.asarray(image.convert("RGB").resize((width, height)))
            latents = torch.nn.functional.interpolate(captured["latents"][index: index + 1].float(),
                                                      size=(height // 8, width // 8), mode="bilinear")
        else:
            enlarged = enlarge(engine, rgb, hires.upscaler, width, height, _canceller(cancel, job_id))
            latents = None
        second = job.model_copy(update={
            "task": "img2img", "hires": None, "image": ENLARGED, "width": width, "height": height,
            "strength": hires.denoise, "steps": hires.steps or job.steps, "seed": seed, "batch_size": 1,
            "resize_mode": "just_resize", "control": control, "detail": [], "adapters": adapters})
        source = _source(images, enlarged, masks)
        second_checked = engine.check(second, source)

        @contextlib.contextmanager
        def second_pass(context: Any, _inputs: Any, latents: Any = latents) -> Iterator[None]:
            with contextlib.ExitStack() as stack:
                if latents is not None:  # img2img takes latent-channel images as ready latents
                    context.call_kwargs["image"] = latents.to(device=engine.device.device, dtype=engine.device.dtype)
                if hires.tile_size is not None:
                    stack.enter_context(_tiled(context, hires.tile_size, hires.overlap, "gaussian"))
                yield

        result = engine._generate(second, second_checked, job_id, emit, cancel, source, preview_every,
                                  customize=second_pass, work_size=hires.tile_size)
        results.extend(result.images)
    details = (f", Denoising strength: {hires.denoise:g}, Hires upscale: {width}x{height}, Hires steps: "
               f"{hires.steps or job.steps}, Hires upscaler: {hires.upscaler}")
    return replace(first, job=job, images=results, control_maps=control_maps,
                   infotexts=[text + details for text in first.infotexts])
