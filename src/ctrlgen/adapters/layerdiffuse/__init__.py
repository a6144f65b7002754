"""LayerDiffuse: transparent layers (RGBA) and layer blending, with lllyasviel's released weights.

A job's ``{"type": "layerdiffuse", "mode": ...}`` patches the UNet for one job and, for the
modes whose result is a transparent layer, decodes with the transparent VAE decoder, so the
result is RGBA (alpha from the decoder). The files are the ones users keep in
``models/layer_model`` (ComfyUI-layerdiffuse, sd-forge-layerdiffuse), found by their headers:

- ``weights.py`` — the modes, and which files each needs (store look-up, ties, clear errors);
  the condition latents of the blending modes.
- ``patches.py`` — SDXL patches: attention injection as a PEFT LoRA (diffusers'
  ``load_lora_weights``), conv injection and the blending patches as weight differences
  (the blending ones widen the first convolution to read condition latents).
- ``sharing.py`` — SD1.5 attention injection as diffusers attention processors.
- ``decoder.py`` — the transparent decoder, run inside ``vae.decode`` by hooks.

Everything is undone when the job ends (success, error or cancel).
"""

from __future__ import annotations

import contextlib
import importlib.util

from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import AdapterSpec, Param

OWNER = "layerdiffuse"

PARAMS = (
    Param("mode", "choice", default="foreground",
          choices=("foreground", "fg_to_blend", "bg_to_blend", "fg_blend_to_bg", "bg_blend_to_fg"),
          description="foreground: a transparent layer (RGBA); fg_to_blend / bg_to_blend: a whole picture around "
                      "the given foreground / in front of the given background; fg_blend_to_bg: the background "
                      "of `blended` behind `foreground`; bg_blend_to_fg: the transparent foreground of `blended` "
                      "over `background` (RGBA). All but foreground exist for SDXL only"),
    Param("method", "choice", default="attention", choices=("attention", "conv"),
          description="foreground mode on SDXL: attention injection (layer_xl_transparent_attn) or conv injection "
                      "(layer_xl_transparent_conv); SD1.5 has attention injection only"),
    Param("weight", "float", default=1.0, min=-1.0, max=3.0, step=0.05,
          description="Strength of the UNet patch (1: as trained; 0: no patch)"),
    Param("model", "model", category="layer_model",
          description="The UNet patch file; default: the one the mode needs, found in the model folders by its "
                      "header (e.g. layer_xl_transparent_attn.safetensors in models/layer_model)"),
    Param("decoder", "model", category="layer_model",
          description="The transparent VAE decoder for RGBA results; default: found in the model folders "
                      "(vae_transparent_decoder.safetensors for SDXL, layer_sd15_vae_transparent_decoder for SD1.5)"),
    Param("foreground", "image", description="The foreground layer (RGBA or RGB) for fg_to_blend and fg_blend_to_bg"),
    Param("background", "image", description="The background (RGB) for bg_to_blend and bg_blend_to_fg"),
    Param("blended", "image", description="The blended picture for fg_blend_to_bg and bg_blend_to_fg"),
    Param("augment", "bool", default=True,
          description="Decode alpha as the median of 8 flipped and turned passes, as LayerDiffuse does "
                      "(cleaner edges); off: one pass, 8× faster"),
)


def _checked_use(context, uses) -> dict:
    """The job's one use, checked against the job (task, architecture, images)."""
    from ctrlgen.adapters.layerdiffuse.weights import MODES, patch_variant
    from ctrlgen.core.errors import JobError

    if len(uses) != 1:
        raise JobError(f"the job lists the layerdiffuse adapter {len(uses)} times; give it once")
    use, job = uses[0], context.job
    if job.task != "txt2img" or getattr(job, "hires", None) is not None:
        what = "hires fix" if job.task == "txt2img" else f"{job.task} jobs"
        raise JobError(f"layerdiffuse works on txt2img jobs (without hires fix), not on {what}: a transparent "
                       "layer is generated whole; paste it into the picture on the host")
    patch_variant(use["mode"], context.architecture, use["method"])
    missing = [name for name in MODES[use["mode"]].images if not use[name]]
    if missing:
        raise JobError(f"layerdiffuse mode {use['mode']!r} needs the image(s) {', '.join(missing)}: give "
                       f"{' and '.join(repr(m) for m in missing)} (a path, or an uploaded image's id)")
    if context.architecture == "sdxl" and use["method"] == "attention" and use["mode"] == "foreground" \
            and importlib.util.find_spec("peft") is None:
        raise JobError("SDXL attention injection loads as a LoRA, which needs the 'peft' package: pip install peft")
    return use


def check_layerdiffuse(context, uses) -> None:
    """The spec's ``check``: one use, a txt2img job on an architecture the mode exists for, the
    mode's images given, and its files found (and of the right kind) by their headers."""
    from ctrlgen.adapters.layerdiffuse.weights import find_files

    use = _checked_use(context, uses)
    find_files(context.store, use, context.architecture)


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


def _patch(context, use, entry, condition):
    """The context manager that puts ``entry``'s UNet patch on the job's UNet."""
    from ctrlgen.adapters.layerdiffuse.patches import DiffPatch, lora_state_dict
    from ctrlgen.adapters.layerdiffuse.sharing import SharingPatch
    from ctrlgen.core.models.identify import load_state_dict

    state_dict = load_state_dict(entry.path, allow_pickle=context.store.allow_pickle)
    unet = context.pipeline.unet
    layers_per_block = unet.config.layers_per_block
    if entry.identity.architecture == "sd15" and entry.identity.details.get("frames"):
        return SharingPatch(unet, state_dict, use["weight"], frames=int(entry.identity.details["frames"]))
    if any("::lora::" in key for key in state_dict):
        return _lora(context, use, entry, lora_state_dict(state_dict, layers_per_block))
    return DiffPatch(unet, state_dict, use["weight"], condition, layers_per_block)


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
def attach_layerdiffuse(context, uses):
    """Patch the UNet (and, for transparent results, hook the VAE's decode) for this job."""
    from ctrlgen.adapters.layerdiffuse.decoder import DecodeHook, load_decoder
    from ctrlgen.adapters.layerdiffuse.weights import MODES, condition_latents, find_files
    from ctrlgen.core.models.annotators import loaded
    from ctrlgen.core.models.identify import load_state_dict

    use = _checked_use(context, uses)
    files = find_files(context.store, use, context.architecture)
    condition = None
    if MODES[use["mode"]].images:
        condition = condition_latents(context.pipeline, _read_layers(context, use), context.width, context.height)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_patch(context, use, files.patch, condition))
        if files.decoder is not None:
            path = files.decoder.path

            def load():
                return load_decoder(load_state_dict(path, allow_pickle=context.store.allow_pickle),
                                    context.device, context.dtype)

            model = loaded(OWNER, load, key=(str(path.resolve()), context.device, str(context.dtype)))
            stack.enter_context(DecodeHook(context.pipeline.vae, model, use["augment"]))
        yield context


@hookimpl
def ctrlgen_adapters():
    yield AdapterSpec(
        name="layerdiffuse",
        attach=attach_layerdiffuse,
        check=check_layerdiffuse,
        params=PARAMS,
        description="LayerDiffuse: transparent layers (RGBA, alpha from the transparent VAE decoder) and "
                    "foreground/background blending, with lllyasviel's released weights",
        architectures=("sd15", "sdxl"),
        requires=("diffusers",),
    )
