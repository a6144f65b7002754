"""One job's LayerDiffuse attachment: the UNet patch (files read once per engine, by file), the
frames of SD1.5's multi-layer modes, and the transparent decoder's and encoder's VAE hooks.
Everything is undone when the job ends (success, error or cancel); the frames' labels stay on
the job's context for the results."""

from __future__ import annotations

import contextlib

OWNER = "layerdiffuse"


def _read_layers(context, use) -> list:
    from ctrlgen.adapters.layerdiffuse.weights import MODES
    from ctrlgen.core.engine import engine
    from ctrlgen.core.errors import ImageError, JobError

    load = context.image_source or engine.load_image_file  # RGBA kept: a foreground's alpha matters
    layers = []
    for name in MODES[use["mode"]].images:
        try:
            layers.append(load(use[name], f"layerdiffuse.{name}"))
        except ImageError as exc:
            raise JobError(f"layerdiffuse.{name}: {exc}") from None
    return layers


def _read_file(context, entry) -> dict:
    """The file's tensors, read once per engine (cached by path, mtime and size)."""
    from ctrlgen.core.models import identify

    allow = context.store.allow_pickle
    return context.engine.load_file(entry.path, f"layerdiffuse:{allow}",
                                    lambda: identify.load_state_dict(entry.path, allow_pickle=allow))


def _sharing(context, use, entry):
    """SD1.5's attention-sharing patch (all its modes): the cached modules, this job's frames."""
    from ctrlgen.adapters.layerdiffuse.sharing import SharingModules, SharingPatch
    from ctrlgen.adapters.layerdiffuse.weights import MODES, layer_pixels
    from ctrlgen.core.engine.engine import file_signature

    unet = context.pipeline.unet
    shape = (tuple(unet.config.block_out_channels), unet.config.cross_attention_dim, str(unet.device), str(unet.dtype))
    key = ("layerdiffuse:sharing", str(entry.path.resolve()), shape)
    modules = context.engine.cached(key, file_signature(entry.path),
                                    lambda: SharingModules(unet, _read_file(context, entry)))
    mode = MODES[use["mode"]]
    frames = mode.frames or ("foreground",)
    if modules.frames != len(frames):
        from ctrlgen.core.errors import JobError

        raise JobError(f"layerdiffuse.model {entry.name!r} shares attention across {modules.frames} image(s); mode "
                       f"{use['mode']!r} needs {len(frames)} (a file such as {mode.release or 'layer_sd15_transparent_attn'})")
    picture = None
    if mode.images:
        picture = layer_pixels(_read_layers(context, use)[0], context.width, context.height)
    texts = [_frame_text(context, use.get(f"{frame}_prompt", "")) for frame in frames] if mode.frames else None
    rows = context.job.batch_size * len(frames)
    return SharingPatch(unet, modules, use["weight"], rows=rows, texts=texts, picture=picture)


def _frame_text(context, extra: str):
    """A frame's own prompt embedding (its words before the job's prompt), or None: the job's."""
    if not extra.strip():
        return None
    from ctrlgen.core.engine.conditioning import encode

    text = f"{extra.strip()}, {context.prompt}" if context.prompt.strip() else extra.strip()
    return encode(context.pipeline, [text], clip_skip=context.job.clip_skip)[0].embeds


@contextlib.contextmanager
def _frames(context, labels: tuple[str, ...]):
    """Several images per seed, side by side in the batch (``(b f)`` order): their generators,
    the prompts repeated per frame, and which result is which."""
    import torch

    count, kwargs = len(labels), context.call_kwargs
    saved = {k: kwargs.get(k) for k in ("generator", "num_images_per_prompt")}
    generators = kwargs["generator"]
    kwargs["generator"] = [torch.Generator(device="cpu").manual_seed((g.initial_seed() + 104729 * f) % 2**32)
                           for g in generators for f in range(count)]
    kwargs["num_images_per_prompt"] = count
    rows = len(generators) * count

    def per_frame(_pipe, _step, _timestep, tensors):  # prompt editing swaps in one row per seed: repeat them
        update = {}
        for name in ("prompt_embeds", "add_text_embeds"):
            value = tensors.get(name)
            if value is not None and value.shape[0] * count in (rows, 2 * rows):
                update[name] = value.repeat_interleave(count, dim=0)
        return update

    # Kept after the adapters close: step 8 labels the results with it (the context is the job's own).
    context.frames = [(label, label == "foreground") for label in labels]
    context.step_callbacks.append(per_frame)
    try:
        yield
    finally:
        context.step_callbacks.remove(per_frame)
        kwargs.update(saved)


def _patch(context, use, entry, condition):
    """The context manager that puts ``entry``'s UNet patch on the job's UNet."""
    from ctrlgen.adapters.layerdiffuse.patches import DiffPatch, lora_state_dict

    if entry.identity.architecture == "sd15" and entry.identity.details.get("frames"):
        return _sharing(context, use, entry)
    state_dict = _read_file(context, entry)
    layers_per_block = context.pipeline.unet.config.layers_per_block
    if any("::lora::" in key for key in state_dict):
        return _lora(context, use, entry, lora_state_dict(state_dict, layers_per_block))
    return DiffPatch(context.pipeline.unet, state_dict, use["weight"], condition, layers_per_block)


@contextlib.contextmanager
def _lora(context, use, entry, state_dict):
    from ctrlgen.adapters.lora.loading import LoadedLoras
    from ctrlgen.core.errors import JobError

    loaded = LoadedLoras(context.pipeline)  # keeps the job's other LoRAs active beside this one
    name = "ctrlgen_layerdiffuse"  # its own adapter name: the lora adapter numbers its own
    try:
        try:
            loaded.names.append(name)
            loaded.weights[name] = (use["weight"], use["weight"])
            context.pipeline.load_lora_weights(state_dict, adapter_name=name)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise JobError(f"layerdiffuse.model {entry.name!r} does not fit this UNet: {str(exc)[:300]}") from exc
        loaded.activate()
        yield
    finally:
        loaded.restore()


@contextlib.contextmanager
def attached(context, use):
    """Patch the UNet (and, for transparent results, hook the VAE's decode; for img2img, its
    encode) for this job's checked ``use``."""
    from ctrlgen.adapters.layerdiffuse.decoder import DecodeHook, load_decoder
    from ctrlgen.adapters.layerdiffuse.weights import MODES, condition_latents, find_files
    from ctrlgen.core.models.annotators import loaded
    from ctrlgen.core.models.identify import load_state_dict

    mode = MODES[use["mode"]]
    files = find_files(context.store, use, context.architecture, context.job.task)
    condition = None
    if mode.images and not mode.frames:
        condition = condition_latents(context.pipeline, _read_layers(context, use), context.width, context.height)
    with contextlib.ExitStack() as stack:
        if mode.frames:
            stack.enter_context(_frames(context, mode.frames))
        stack.enter_context(_patch(context, use, files.patch, condition))
        if files.decoder is not None:
            path = files.decoder.path

            def load():
                return load_decoder(load_state_dict(path, allow_pickle=context.store.allow_pickle),
                                    context.device, context.dtype)

            model = loaded(OWNER, load, key=(str(path.resolve()), context.device, str(context.dtype)))
            every = len(mode.frames) if mode.frames else 1
            stack.enter_context(DecodeHook(context.pipeline.vae, model, use["augment"], every=every))
        if files.encoder is not None:
            stack.enter_context(_encode_hook(context, files.encoder))
        yield context


def _inpaint_region_rgba(frame, width: int, height: int):
    """The picture an inpaint job's pipeline encodes (the frame's region at the generation size),
    with the input's straight colours and alpha (opaque where the input has none)."""
    import numpy as np

    from ctrlgen.core.images import resize

    picture = frame.picture
    if picture is not None and picture.ndim == 3 and picture.shape[2] == 4 and picture.dtype == np.uint8:
        region = frame.to_region(np.ascontiguousarray(picture))
    else:
        rgb = frame.region_canvas()
        region = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    return resize(np.ascontiguousarray(region), width, height)


def _encode_hook(context, entry):
    """img2img and inpaint: the job's RGBA image (an inpaint's region of it) through the
    transparent encoder (an RGB one: opaque)."""
    import numpy as np

    from ctrlgen.adapters.layerdiffuse.encoder import EncodeHook, build_encoder
    from ctrlgen.core.engine import engine
    from ctrlgen.core.images import fit, to_rgb

    job = context.job
    frame = getattr(context, "inpaint_frame", None)
    if job.task == "inpaint" and frame is not None:
        rgba = _inpaint_region_rgba(frame, context.width, context.height)
    else:
        pixels = np.asarray((context.image_source or engine.load_image_file)(job.image, "job.image"))
        opaque = np.full(pixels.shape[:2], 255, np.uint8)
        alpha = pixels[..., 3] if pixels.ndim == 3 and pixels.shape[2] == 4 else opaque
        rgb = pixels[..., :3] if pixels.ndim == 3 and pixels.shape[2] == 4 else to_rgb(pixels, "job.image")
        rgba = np.dstack([fit(np.ascontiguousarray(rgb), context.width, context.height, job.resize_mode),
                          fit(np.ascontiguousarray(alpha), context.width, context.height, job.resize_mode)])
    model = context.engine.load_file(
        entry.path, f"layerdiffuse-encoder:{context.device}:{context.dtype}",
        lambda: build_encoder(_read_file(context, entry)).to(device=context.device, dtype=context.dtype))
    shown = context.call_kwargs.get("image")  # the RGB picture the pipeline encodes (on white)
    shown = np.asarray(shown.convert("RGB")) if hasattr(shown, "convert") else None
    return EncodeHook(context.pipeline.vae, model, rgba, shown)


