"""Tiny random LayerDiffuse files for the tiny models, in the released files' layouts and names.

Written for the tiny SD1.5 / SDXL models of :mod:`ctrlgen.testing.tiny` (module names and widths
are read from the built UNets, so they always match), under the names of lllyasviel's release
(``huggingface.co/LayerDiffusion/layerdiffusion-v1``), in a ``layer_model`` folder as ComfyUI
and Forge keep them:

* ``layer_xl_transparent_attn.safetensors`` — ComfyUI/Forge LoRA patches
  ``diffusion_model.<ldm module>.weight::lora::0`` (up) / ``::lora::1`` (down) on every
  attention projection of the SDXL UNet;
* ``layer_xl_transparent_conv.safetensors`` — weight differences ``<ldm key>::diff::0`` on every
  UNet tensor;
* ``layer_xl_fg2ble`` / ``layer_xl_bg2ble`` (first convolution widened to 8 input channels) and
  ``layer_xl_fgble2bg`` / ``layer_xl_bgble2fg`` (12) — the same, for the blending modes;
* ``layer_sd15_transparent_attn.safetensors`` — SD1.5 attention sharing, one frame:
  ``hookers.layers.<n>.to_q_lora.0.down.weight`` ... ``temporal_o.bias`` for each attention;
* ``layer_sd15_joint`` (three frames) and ``layer_sd15_fg2bg`` / ``layer_sd15_bg2fg`` (two
  frames, with the picture encoder ``kwargs_encoder.blocks_0..3`` and each attention's
  ``control_convs.<f>``; narrow: 16 channels where the release has 256);
* ``vae_transparent_decoder.safetensors`` and ``layer_sd15_vae_transparent_decoder.safetensors``
  — the transparent decoder's full layout (seven levels, attention in the last three), narrow;
* ``vae_transparent_encoder`` and ``layer_sd15_vae_transparent_encoder`` — the transparent
  encoder (``blocks.0`` ... ``blocks.16``), narrow, its last layer not zero (a trained one is not).

:func:`write_tiny_layerdiffuse` builds them once per cache folder and links them into a root
(through :mod:`ctrlgen.testing.tiny_files`, the writers' shared file code).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctrlgen.testing.tiny_files import build_once, place, save_tensors

TINY_LAYERDIFFUSE_VERSION = "3"
CONTROL_WIDTH = 16  # the released picture encoder: 256
ENCODER_WIDTHS = (8, 8, 8, 8, 16, 16, 16, 16)  # the released encoder: (32, 32, 64, 64, 128, 128, 256, 256)
RANK = 4
DECODER_WIDTHS = (8, 8, 8, 8, 16, 16, 16)  # the real one: (32, 32, 64, 128, 256, 512, 512)
DECODER_ATTENDS = (False, False, False, False, True, True, True)
_PATCH_STD = 0.05  # differences and low-rank changes large enough to change a tiny image visibly
_DECODER_STD = 0.3
BLENDING = {"layer_xl_fg2ble": 8, "layer_xl_bg2ble": 8, "layer_xl_fgble2bg": 12, "layer_xl_bgble2fg": 12}


def tiny_decoder(seed: int) -> Any:
    """A randomly initialised transparent decoder (narrow widths, the real layout)."""
    import torch

    from ctrlgen.adapters.layerdiffuse.decoder import build_decoder

    torch.manual_seed(seed)
    model = build_decoder({"in_channels": 3, "out_channels": 4, "latent_channels": 4, "widths": DECODER_WIDTHS,
                           "layers_per_block": 2, "attends": DECODER_ATTENDS})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            noise = torch.randn(tensor.shape, generator=generator)
            if tensor.ndim > 1:  # convolutions and projections: variance-keeping, as if trained
                tensor.copy_(noise * (tensor[0].numel() ** -0.5))
            elif name.endswith("weight"):  # norm scales near 1
                tensor.copy_(1.0 + noise * _DECODER_STD)
            else:
                tensor.copy_(noise * _DECODER_STD)
    return model


def _ldm_state_dict(unet: Any) -> dict[str, Any]:
    from ctrlgen.testing.ldm_keys import unet_to_ldm

    return unet_to_ldm(unet.state_dict(), prefix="diffusion_model.")


def attention_lora_patches(unet: Any, seed: int) -> dict[str, Any]:
    """``::lora::`` patches on every attention projection (to_q/k/v, to_out.0) of ``unet``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    patches = {}
    for key, tensor in _ldm_state_dict(unet).items():
        if ".attn" in key and key.endswith((".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight")):
            out_features, in_features = tensor.shape
            patches[f"{key}::lora::0"] = torch.randn(out_features, RANK, generator=generator) * _PATCH_STD * 4
            patches[f"{key}::lora::1"] = torch.randn(RANK, in_features, generator=generator) * in_features**-0.5
    return patches


def diff_patches(unet: Any, seed: int, in_channels: int = 4) -> dict[str, Any]:
    """``::diff::`` patches on every tensor of ``unet``; the first convolution's reads
    ``in_channels`` channels (4: the latent only; 8, 12: with condition latents)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    patches = {}
    for key, tensor in _ldm_state_dict(unet).items():
        shape = tuple(tensor.shape)
        if key == "diffusion_model.input_blocks.0.0.weight":
            shape = (shape[0], in_channels, *shape[2:])
        scale = _PATCH_STD * (float(tensor.float().std()) if tensor.numel() > 1 else 1.0)
        patches[f"{key}::diff::0"] = torch.randn(shape, generator=generator) * max(scale, 1e-3)
    if in_channels > 4:  # the condition channels start from nothing in the base model: give them weight
        key = "diffusion_model.input_blocks.0.0.weight::diff::0"
        patches[key][:, 4:] = torch.randn(patches[key][:, 4:].shape, generator=generator) * 0.3
    return patches


def sharing_state_dict(unet: Any, seed: int, frames: int = 1, control: bool = False) -> dict[str, Any]:
    """SD1.5 attention sharing for ``unet`` (``frames`` frames; ``control``: with the picture
    encoder), random, in the released key layout."""
    import torch

    from ctrlgen.adapters.layerdiffuse.sharing import build_control_encoder, build_processors

    torch.manual_seed(seed)
    processors = build_processors(unet, frames=frames, rank=RANK, control_width=CONTROL_WIDTH if control else None)
    holder = torch.nn.Module()
    holder.hookers = torch.nn.Module()
    holder.hookers.layers = torch.nn.ModuleList(processors)
    if control:
        widths = [(3, 8), (8, 8), (8, 8), (8, 8), (8, 16), (16, 16), (16, CONTROL_WIDTH), (CONTROL_WIDTH, CONTROL_WIDTH)]
        more = [(CONTROL_WIDTH, CONTROL_WIDTH)] * 2
        holder.kwargs_encoder = build_control_encoder({"blocks_0": widths, "blocks_1": more, "blocks_2": more,
                                                       "blocks_3": more})
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for name, tensor in holder.state_dict().items():
        if ".up.weight" in name or ".down.weight" in name:
            value = torch.randn(tensor.shape, generator=generator) * _PATCH_STD * 2
        elif ".temporal_n." in name:
            value = (1.0 if name.endswith("weight") else 0.0) + torch.randn(tensor.shape, generator=generator) * 0.1
        elif tensor.ndim == 4:  # convolutions: variance-keeping
            value = torch.randn(tensor.shape, generator=generator) * (tensor[0].numel() ** -0.5)
        else:
            value = torch.randn(tensor.shape, generator=generator) * (tensor.shape[-1] ** -0.5) * 0.5
        result[name] = value.contiguous()
    return result


def encoder_state_dict(seed: int) -> dict[str, Any]:
    """The transparent encoder's layout (``blocks.0`` ... ``blocks.16``: RGBA in, 4 out), narrow, random."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    channels = (4, *ENCODER_WIDTHS, 4)
    result = {}
    for index in range(len(channels) - 1):
        inputs, outputs = channels[index], channels[index + 1]
        std = (inputs * 9) ** -0.5 * (0.01 if index == len(channels) - 2 else 1.0)  # offsets of a few 0.01 × 300
        result[f"blocks.{2 * index}.weight"] = torch.randn(outputs, inputs, 3, 3, generator=generator) * std
        result[f"blocks.{2 * index}.bias"] = torch.randn(outputs, generator=generator) * 0.01
    return result


def tiny_files(unets: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """File stem -> state dict of every tiny file for the given UNets (``"sd15"``, ``"sdxl"``)."""
    files: dict[str, dict[str, Any]] = {}
    if "sdxl" in unets:
        unet = unets["sdxl"]
        files["layer_xl_transparent_attn"] = attention_lora_patches(unet, 1)
        files["layer_xl_transparent_conv"] = diff_patches(unet, 2)
        for index, (stem, channels) in enumerate(BLENDING.items()):
            files[stem] = diff_patches(unet, 10 + index, channels)
        files["vae_transparent_decoder"] = tiny_decoder(4).state_dict()
        files["vae_transparent_encoder"] = encoder_state_dict(6)
    if "sd15" in unets:
        unet = unets["sd15"]
        files["layer_sd15_transparent_attn"] = sharing_state_dict(unet, 3)
        files["layer_sd15_joint"] = sharing_state_dict(unet, 20, frames=3)
        files["layer_sd15_fg2bg"] = sharing_state_dict(unet, 21, frames=2, control=True)
        files["layer_sd15_bg2fg"] = sharing_state_dict(unet, 22, frames=2, control=True)
        files["layer_sd15_vae_transparent_decoder"] = tiny_decoder(5).state_dict()
        files["layer_sd15_vae_transparent_encoder"] = encoder_state_dict(7)
    return files


def _save(files: dict[str, dict[str, Any]], folder: Path) -> None:
    for stem, state_dict in files.items():
        save_tensors(state_dict, folder / f"{stem}.safetensors")


def _build(folder: Path, cache_dir: Path) -> None:
    import diffusers

    from ctrlgen.testing.tiny import write_tiny_sd15, write_tiny_sdxl

    unets = {}
    for architecture, writer in (("sd15", write_tiny_sd15), ("sdxl", write_tiny_sdxl)):
        tiny = writer(cache_dir)
        unets[architecture] = getattr(diffusers, tiny.pipeline_cls_name).from_pretrained(tiny.pipeline_dir).unet
    _save(tiny_files(unets), folder)


def build_tiny_layerdiffuse(cache_dir: Path) -> Path:
    """Build (once) the tiny LayerDiffuse files under ``cache_dir``; returns their folder."""
    return build_once(cache_dir, "layerdiffuse", TINY_LAYERDIFFUSE_VERSION, lambda tmp: _build(tmp, Path(cache_dir)))


def write_tiny_layerdiffuse(root: Path, cache_dir: Path | None = None, names: tuple[str, ...] | None = None, *,
                            unets: dict[str, Any] | None = None) -> dict[str, Path]:
    """Put the tiny files (all, or the stems in ``names``) into ``root/models/layer_model`` (as
    Forge and ComfyUI keep them); returns stem -> path. They are built once in ``cache_dir`` and
    linked, or, given ``unets`` (``{"sd15": unet, "sdxl": unet}``: loaded tiny UNets), written
    for those directly."""
    target_folder = Path(root) / "models" / "layer_model"
    if unets is not None:
        files = {stem: sd for stem, sd in tiny_files(unets).items() if names is None or stem in names}
        _save(files, target_folder)
        return {stem: target_folder / f"{stem}.safetensors" for stem in files}
    if cache_dir is None:
        raise ValueError("give cache_dir (where the tiny models are built) or unets")
    return place(build_tiny_layerdiffuse(cache_dir).glob("*.safetensors"), target_folder, names)
