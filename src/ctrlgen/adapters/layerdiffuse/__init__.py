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
- ``sharing.py`` — SD1.5 attention sharing as diffusers attention processors: the transparent
  mode (one frame) and the multi-layer modes (``joint``, ``fg_to_bg``, ``bg_to_fg``: 2–3 images
  per seed generated together, each frame with its own prompt).
- ``decoder.py`` — the transparent decoder, run inside ``vae.decode`` by hooks.
- ``encoder.py`` — the transparent encoder: img2img or inpaint of an RGBA picture puts its alpha into the
  starting latent, inside ``vae.encode``.
- ``attach.py`` — one job's attachment: the files (read once per engine), the frames, the hooks.

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
          choices=("foreground", "fg_to_blend", "bg_to_blend", "fg_blend_to_bg", "bg_blend_to_fg", "joint",
                   "fg_to_bg", "bg_to_fg"),
          description="foreground: a transparent layer (RGBA; txt2img, or img2img/inpaint of an RGBA job.image); "
                      "fg_to_blend / bg_to_blend (SDXL): a whole picture around the given foreground / in front "
                      "of the given background; fg_blend_to_bg (SDXL): the background of `blended` behind "
                      "`foreground`; bg_blend_to_fg (SDXL): the transparent foreground of `blended` over "
                      "`background` (RGBA); joint (SD1.5): three images per seed, the transparent foreground, "
                      "the background and their blend; fg_to_bg (SD1.5): the background and the blend for the "
                      "given `foreground`; bg_to_fg (SD1.5): the transparent foreground and the blend for the "
                      "given `background`"),
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
    Param("encoder", "model", category="layer_model",
          description="The transparent VAE encoder for img2img and inpaint of an RGBA job.image (its alpha goes into the "
                      "latent); default: found in the model folders (vae_transparent_encoder.safetensors for "
                      "SDXL, layer_sd15_vae_transparent_encoder for SD1.5)"),
    Param("foreground", "image", description="The foreground layer (RGBA or RGB) for fg_to_blend, fg_blend_to_bg "
                                             "and fg_to_bg"),
    Param("background", "image", description="The background (RGB) for bg_to_blend, bg_blend_to_fg and bg_to_fg"),
    Param("blended", "image", description="The blended picture for fg_blend_to_bg and bg_blend_to_fg"),
    Param("foreground_prompt", "str", default="",
          description="joint and bg_to_fg: what the foreground image shows, put before the job's prompt for it "
                      "(empty: the job's prompt)"),
    Param("background_prompt", "str", default="",
          description="joint and fg_to_bg: what the background image shows, put before the job's prompt for it"),
    Param("blended_prompt", "str", default="",
          description="joint, fg_to_bg and bg_to_fg: what the blended image shows, put before the job's prompt"),
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
    mode = MODES[use["mode"]]
    on_picture = job.task in ("img2img", "inpaint") and use["mode"] == "foreground"
    if (job.task != "txt2img" and not on_picture) or getattr(job, "hires", None) is not None:
        what = "hires fix" if job.task == "txt2img" else f"{job.task} jobs"
        if job.task in ("img2img", "inpaint"):
            what = f"{job.task} in mode {use['mode']!r} ({job.task} works in mode 'foreground')"
        raise JobError(f"layerdiffuse works on txt2img jobs, and img2img and inpaint in mode 'foreground' (without "
                       f"hires fix), not on {what}: generate the layer with txt2img and place it on the host")
    patch_variant(use["mode"], context.architecture, use["method"])
    if mode.frames and any(u.type.strip().lower() == "region" for u in job.adapters):
        raise JobError(f"layerdiffuse mode {use['mode']!r} and regions both replace the UNet's attention; drop one")
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
    find_files(context.store, use, context.architecture, context.job.task)


@contextlib.contextmanager
def attach_layerdiffuse(context, uses):
    """Patch the UNet (and hook the VAE's decode and encode where the mode needs) for this job."""
    from ctrlgen.adapters.layerdiffuse.attach import attached

    with attached(context, _checked_use(context, uses)):
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
