"""Which LayerDiffuse files a job needs, found in the model store by their headers.

Every mode needs one UNet patch; the modes that end in a transparent layer also need the
transparent VAE decoder. The model store identifies the files (``kind == "layerdiffuse"``,
:func:`ctrlgen.core.models.addon_rules.layerdiffuse_rule`); where a header cannot tell two
released files apart (``layer_xl_fg2ble`` and ``layer_xl_bg2ble`` have the same tensors, as
do the SD1.5 and SDXL decoders), the release's file name breaks the tie, and a job can always
name the file itself (``model``, ``decoder``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ctrlgen.core.errors import JobError, ModelNotFoundError

RELEASE = "huggingface.co/LayerDiffusion/layerdiffusion-v1"
FOLDERS = "models/layer_model (ComfyUI and Forge) or any model folder"


@dataclass(frozen=True)
class Mode:
    """A LayerDiffuse mode: its architectures, the images it reads (in the order their latents
    are stacked), whether its result is a transparent layer (decoded with alpha)."""

    architectures: tuple[str, ...]
    images: tuple[str, ...] = ()
    transparent: bool = False
    variant: str = ""  # the patch's identity variant (foreground: by method, see patch_variant)
    release: str = ""  # the released file's name, for hints and ties
    description: str = ""
    # SD1.5's multi-frame modes: the images each seed gives, in batch order ("foreground" is the
    # transparent one); empty: one image per seed.
    frames: tuple[str, ...] = ()


MODES = {
    "foreground": Mode(("sd15", "sdxl"), (), True, description="a transparent foreground (RGBA)"),
    "fg_to_blend": Mode(("sdxl",), ("foreground",), False, "blend_from_layer", "layer_xl_fg2ble",
                        "a picture around the given foreground"),
    "bg_to_blend": Mode(("sdxl",), ("background",), False, "blend_from_layer", "layer_xl_bg2ble",
                        "a picture with something in front of the given background"),
    "fg_blend_to_bg": Mode(("sdxl",), ("foreground", "blended"), False, "layer_from_blend", "layer_xl_fgble2bg",
                           "the background of a blended picture, given its foreground"),
    "bg_blend_to_fg": Mode(("sdxl",), ("background", "blended"), True, "layer_from_blend", "layer_xl_bgble2fg",
                           "the transparent foreground of a blended picture, given its background (RGBA)"),
    "joint": Mode(("sd15",), (), True, "joint", "layer_sd15_joint",
                  "a transparent foreground, a background and their blend, generated together",
                  frames=("foreground", "background", "blended")),
    "fg_to_bg": Mode(("sd15",), ("foreground",), False, "two_layers", "layer_sd15_fg2bg",
                     "a background (and the blend) for the given foreground", frames=("background", "blended")),
    "bg_to_fg": Mode(("sd15",), ("background",), True, "two_layers", "layer_sd15_bg2fg",
                     "a transparent foreground (and the blend) for the given background",
                     frames=("foreground", "blended")),
}

_FOREGROUND = {("sdxl", "attention"): ("transparent_attn", "layer_xl_transparent_attn"),
               ("sdxl", "conv"): ("transparent_conv", "layer_xl_transparent_conv"),
               ("sd15", "attention"): ("transparent_attn", "layer_sd15_transparent_attn")}
DECODERS = {"sdxl": "vae_transparent_decoder", "sd15": "layer_sd15_vae_transparent_decoder"}
ENCODERS = {"sdxl": "vae_transparent_encoder", "sd15": "layer_sd15_vae_transparent_encoder"}


def patch_variant(mode: str, architecture: str, method: str) -> tuple[str, str]:
    """(identity variant, released file name) of the UNet patch ``mode`` needs."""
    spec = MODES[mode]
    if architecture not in spec.architectures:
        raise JobError(f"layerdiffuse mode {mode!r} exists for {', '.join(spec.architectures)} models only "
                       f"(LayerDiffuse released no {architecture} weights for it); this checkpoint is "
                       f"{architecture}: use a mode made for {architecture} "
                       f"({', '.join(m for m, s in MODES.items() if architecture in s.architectures)})")
    if mode != "foreground":
        return spec.variant, spec.release
    if (architecture, method) not in _FOREGROUND:
        raise JobError(f"layerdiffuse method {method!r} has no {architecture} weights (LayerDiffuse released "
                       "attention injection only for SD1.5); use method 'attention'")
    return _FOREGROUND[(architecture, method)]


def _describe(entry: Any) -> str:
    identity = entry.identity
    return f"{entry.name} ({identity.architecture} {identity.variant or 'unrecognised'})"


def _pick(store: Any, named: str | None, what: str, variant: str, architecture: str, release: str) -> Any:
    """The store entry for ``what``: the one the job named (checked), else the only fitting one in
    the store, else the one with the released name."""
    param = variant if variant in ("decoder", "encoder") else "model"
    if named:
        entry = store.find(named, category="layer_model")
        identity = entry.identity
        if identity.kind != "layerdiffuse" or identity.variant != variant or \
                identity.architecture not in (architecture, "unknown"):
            found = _describe(entry) if identity.kind == "layerdiffuse" else f"a {identity.kind} file"
            raise JobError(f"layerdiffuse.{param} {named!r} is {found}; this job needs the {what}, a "
                           f"{architecture} {variant} file such as {release}.safetensors")
        return entry
    def fitting_entries():
        return [e for e in store.entries("layer_model") if e.identity.kind == "layerdiffuse"
                and e.identity.variant == variant and e.identity.architecture in (architecture, "unknown")]

    fitting = fitting_entries()
    if not fitting:  # files added since the store last looked (a long-running server)
        store.scan(refresh=True)
        fitting = fitting_entries()
    if len(fitting) > 1:
        fitting = [e for e in fitting if e.path.stem == release] or fitting
    if len(fitting) == 1:
        return fitting[0]
    if fitting:
        names = ", ".join(sorted(e.name for e in fitting))
        raise JobError(f"several LayerDiffuse files could be the {what} ({names}); name one with layerdiffuse.{param}")
    raise ModelNotFoundError(f"this layerdiffuse job needs the {what}: {release}.safetensors from {RELEASE}; no "
                             f"model folder holds a {architecture} {variant} file. Put it into {FOLDERS} "
                             f"(or name a file with layerdiffuse.{param})")


@dataclass(frozen=True)
class Files:
    patch: Any
    decoder: Any = None
    encoder: Any = None


def find_files(store: Any, use: dict[str, Any], architecture: str, task: str = "txt2img") -> Files:
    """The UNet patch, (for transparent results) the decoder and (img2img and inpaint of a
    transparent layer) the encoder a use needs."""
    mode = use["mode"]
    variant, release = patch_variant(mode, architecture, use["method"])
    patch = _pick(store, use["model"], f"model (UNet patch) for mode {mode!r}", variant, architecture, release)
    decoder = encoder = None
    if MODES[mode].transparent:
        decoder = _pick(store, use["decoder"], "decoder (transparent VAE decoder)", "decoder", architecture,
                        DECODERS[architecture])
    if task in ("img2img", "inpaint"):
        encoder = _pick(store, use.get("encoder"), "encoder (transparent VAE encoder, for an RGBA job.image)",
                        "encoder", architecture, ENCODERS[architecture])
    return Files(patch, decoder, encoder)


def layer_pixels(pixels: Any, width: int, height: int):
    """A mode's image as LayerDiffuse reads it: transparent pixels over mid-grey, cropped and
    resized to the generation size; a 1×3×H×W float tensor in [-1, 1]."""
    import numpy as np
    import torch

    from ctrlgen.core.images import fit, to_rgb

    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:  # 16-bit or float pictures: as RGB
        pixels = to_rgb(pixels, "layerdiffuse image")
    array = pixels.astype(np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] in (2, 4):  # grey+alpha or RGBA: over mid-grey, as LayerDiffuse trained
        colour, alpha = array[:, :, :-1], array[:, :, -1:]
        array = 0.5 + (colour - 0.5) * alpha
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    fitted = fit((array * 255 + 0.5).astype(np.uint8), width, height, "crop_and_resize")
    return torch.from_numpy(fitted.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


def condition_latents(pipeline: Any, layers: list[Any], width: int, height: int):
    """The mode's images as latents, stacked on the channel axis (1×4n×h×w), as the blending
    patches read them: transparent pixels over mid-grey, cropped to the generation size, VAE
    means scaled by the VAE's scaling factor."""
    import torch

    tensors = [layer_pixels(pixels, width, height) for pixels in layers]
    vae = pipeline.vae
    device = vae.device  # where its weights are now: adapters attach before offloading hooks exist
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:  # SDXL's VAE overflows in float16, as the pipelines know
        vae.to(torch.float32)
    try:
        with torch.no_grad():
            latents = [vae.encode(t.to(device=device, dtype=vae.dtype)).latent_dist.mode() for t in tensors]
    finally:
        if upcast:
            vae.to(torch.float16)
    return torch.cat(latents, dim=1) * vae.config.scaling_factor
