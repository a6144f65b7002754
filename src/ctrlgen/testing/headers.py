"""Header-only safetensors files with the real tensor names and shapes of real models.

No real weights can be downloaded here, but identifying a model needs only its header.
:func:`write_header_only_safetensors` writes a *valid* safetensors file whose data region
is a sparse hole (``truncate``), so a 6.6 GB SDXL checkpoint costs a few hundred KB of
header, no disk space and milliseconds. :func:`real_header` gives the tensors of a real
model of each case in :data:`REAL_CASES` (names and shapes from
:mod:`ctrlgen.testing.model_shapes`), :func:`real_metadata` the ``__metadata__`` that
matters for it, and :func:`write_real_model` writes both. Each case
``(kind, architecture, variant, layout)`` is what ctrlgen must identify it as.

Example::

    write_real_model(tmp_path / "sdxl.safetensors", "checkpoint", "sdxl")
    write_real_model(tmp_path / "cn.safetensors", "controlnet", "sd15", layout="diffusers")
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .model_shapes import (
    FLUX_TRANSFORMER,
    FLUX_VAE,
    SD2_CONTROLNET,
    SD2_UNET,
    SD3_TRANSFORMER,
    SD15_CONTROLNET,
    SD15_UNET,
    SD_VAE,
    SDXL_CONTROLNET,
    SDXL_REFINER_UNET,
    SDXL_UNET,
    Shape,
    attention_layers,
    clip_lora_targets,
    clip_text_shapes,
    clip_vision_shapes,
    diffusers_shapes,
    flux_shapes,
    ldm_module_names,
    linear,
    lora_pair,
    mlp_projection_shapes,
    openclip_shapes,
    original_names,
    resampler_shapes,
    sd3_shapes,
    t5xxl_shapes,
)

Header = dict[str, tuple[str, Shape]]

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1}
DTYPE_BYTES.update({"BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1})


def write_header_only_safetensors(
    path: str | Path,
    tensors: Mapping[str, tuple[str, Shape]],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a valid safetensors file whose tensor data is a sparse, zero-filled hole."""
    path = Path(path)
    header: dict[str, Any] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes with spaces
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(blob)))
        handle.write(blob)
        handle.truncate(8 + len(blob) + offset)
    return path


_SCHEDULE = (
    "alphas_cumprod alphas_cumprod_prev betas log_one_minus_alphas_cumprod posterior_log_variance_clipped "
    "posterior_mean_coef1 posterior_mean_coef2 posterior_variance sqrt_alphas_cumprod "
    "sqrt_one_minus_alphas_cumprod sqrt_recip_alphas_cumprod sqrt_recipm1_alphas_cumprod"
).split()


def _unet_config(architecture: str, variant: str) -> dict[str, Any]:
    config = dict({"sd15": SD15_UNET, "sd2": SD2_UNET, "sdxl": SDXL_UNET}[architecture])
    if variant == "refiner":
        config = dict(SDXL_REFINER_UNET)
    if variant == "inpaint":
        config["in_channels"] = 9
    return config


def _checkpoint(architecture: str, variant: str) -> dict[str, Shape]:
    if architecture == "sd3":
        return {
            **sd3_shapes(),
            **original_names("vae", diffusers_shapes("vae", FLUX_VAE), "first_stage_model."),
            **clip_text_shapes("text_encoders.clip_l.transformer.", 768, 12),
            **clip_text_shapes("text_encoders.clip_g.transformer.", 1280, 32, projection=1280),
        }
    if architecture == "flux":  # ComfyUI's all-in-one FLUX file
        return {
            **flux_shapes("model.diffusion_model."),
            **original_names("vae", diffusers_shapes("vae", FLUX_VAE), "vae."),
        }
    unet = diffusers_shapes("unet", _unet_config(architecture, variant))
    shapes = {
        **original_names("unet", unet, "model.diffusion_model."),
        **original_names("vae", diffusers_shapes("vae", SD_VAE), "first_stage_model."),
    }
    if architecture == "sd15":
        shapes.update(clip_text_shapes("cond_stage_model.transformer.", 768, 12))
        shapes["cond_stage_model.transformer.text_model.embeddings.position_ids"] = (1, 77)
    elif architecture == "sd2":
        shapes.update(openclip_shapes("cond_stage_model.model.", 1024, 24))
    elif variant == "refiner":
        shapes.update(openclip_shapes("conditioner.embedders.0.model.", 1280, 32))
    else:
        shapes.update(clip_text_shapes("conditioner.embedders.0.transformer.", 768, 12))
        shapes.update(openclip_shapes("conditioner.embedders.1.model.", 1280, 32))
    if architecture in ("sd15", "sd2"):
        shapes.update({name: (1000,) for name in _SCHEDULE})
        shapes.update({"model_ema.decay": (), "model_ema.num_updates": ()})
    if architecture == "sdxl" and variant == "v_prediction":
        shapes["v_pred"] = (0,)  # ComfyUI's marker for v-prediction SDXL checkpoints
    return shapes


def _unet(architecture: str, variant: str, layout: str) -> dict[str, Shape]:
    shapes = diffusers_shapes("unet", _unet_config(architecture, variant))
    return shapes if layout == "diffusers" else original_names("unet", shapes, "model.diffusion_model.")


def _transformer(architecture: str, variant: str, layout: str) -> dict[str, Shape]:
    if architecture == "flux":
        if layout == "diffusers":
            return diffusers_shapes("flux", FLUX_TRANSFORMER)
        return flux_shapes("", in_channels=384 if variant == "inpaint" else 64)
    return diffusers_shapes("sd3", SD3_TRANSFORMER) if layout == "diffusers" else sd3_shapes("")


def _controlnet(architecture: str, variant: str, layout: str) -> dict[str, Shape]:
    config = {"sd15": SD15_CONTROLNET, "sd2": SD2_CONTROLNET, "sdxl": SDXL_CONTROLNET}[architecture]
    shapes = diffusers_shapes("union" if variant == "union" else "controlnet", config)
    if layout == "diffusers":
        return shapes
    return original_names("controlnet", shapes, "" if layout == "original_bare" else "control_model.")


# kohya's LoRA targets: Linear and 1x1 Conv layers inside the UNet's transformer blocks.
_LORA_UNET_TARGETS = re.compile(
    r".*attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)"
    r"|ff\.net\.(0\.proj|2)))\.weight"
)


def _lora(architecture: str, layout: str, rank: int = 16) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    if architecture == "flux":
        if layout == "peft":
            model = diffusers_shapes("flux", FLUX_TRANSFORMER)
            pattern = re.compile(
                r"(single_)?transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_.*|to_add_out)|proj_mlp|proj_out)\.weight"
            )
            for key, weight in model.items():
                if pattern.fullmatch(key):
                    lora_pair(
                        shapes,
                        "transformer." + key[: -len(".weight")],
                        weight,
                        rank,
                        "lora_A.weight",
                        "lora_B.weight",
                    )
            return shapes
        base = flux_shapes("")
        for key, weight in base.items():
            if re.fullmatch(
                r"(double_blocks\.\d+\.(img|txt)_(attn\.(qkv|proj)|mlp\.[02]|mod\.lin)|single_blocks\.\d+\.(linear[12]|modulation\.lin))\.weight",
                key,
            ):
                module = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
                lora_pair(shapes, module, weight, rank, "lora_down.weight", "lora_up.weight")
                shapes[f"{module}.alpha"] = ()
        return shapes
    unet = diffusers_shapes("unet", _unet_config(architecture, ""))
    ldm = ldm_module_names(unet) if architecture == "sdxl" else {}
    for key, weight in unet.items():
        if not _LORA_UNET_TARGETS.fullmatch(key):
            continue
        if layout == "peft":
            if ".attn" in key:
                lora_pair(
                    shapes, "unet." + key[: -len(".weight")], weight, rank, "lora_A.weight", "lora_B.weight"
                )
            continue
        # kohya names SD1/SD2 modules after diffusers, SDXL modules after the original UNet.
        module = "lora_unet_" + ldm.get(key, key)[: -len(".weight")].replace(".", "_")
        lora_pair(shapes, module, weight, rank, "lora_down.weight", "lora_up.weight")
        shapes[f"{module}.alpha"] = ()
    if layout == "peft":
        return shapes
    encoders = {"sd15": [("lora_te_", 768, 12)], "sd2": [("lora_te_", 1024, 23)]}
    encoders["sdxl"] = [("lora_te1_", 768, 12), ("lora_te2_", 1280, 32)]
    for prefix, width, layers in encoders[architecture]:
        for target, weight in clip_lora_targets(width, layers).items():
            lora_pair(shapes, prefix + target, weight, rank, "lora_down.weight", "lora_up.weight")
            shapes[f"{prefix}{target}.alpha"] = ()
    return shapes


def _ip_adapter(architecture: str, variant: str) -> dict[str, Shape]:
    """h94/IP-Adapter (and InstantX/InstantID) files: ``image_proj.*`` + ``ip_adapter.N.*``."""
    cross = 2048 if architecture == "sdxl" else 768
    if variant == "plus":
        dim, heads = (1280, 20) if architecture == "sdxl" else (768, 12)
        shapes = resampler_shapes("image_proj.", dim, heads, 16, 1280, cross)
    elif variant == "instantid":
        shapes = resampler_shapes("image_proj.", 1280, 20, 16, 512, cross)
    elif variant == "full":
        shapes = mlp_projection_shapes(1024, 1024, cross, cross)
    elif variant == "faceid":
        shapes = mlp_projection_shapes(1024, 512, 4 * cross, cross)
    elif variant == "faceid_plus":
        shapes = mlp_projection_shapes(1024, 512, 4 * cross, cross)
        shapes.update(
            resampler_shapes("image_proj.perceiver_resampler.", cross, cross // 64, 4, 1280, cross, False)
        )
    else:
        tokens, embed = 4, 1280 if architecture == "sdxl" else 1024
        shapes = {}
        linear(shapes, "image_proj.proj", tokens * cross, embed)
        shapes.update({"image_proj.norm.weight": (cross,), "image_proj.norm.bias": (cross,)})
    face_lora = variant in ("faceid", "faceid_plus")
    unet = diffusers_shapes("unet", _unet_config(architecture, ""))
    for index, (is_cross, query, hidden, kv) in enumerate(attention_layers(unet)):
        layer = f"ip_adapter.{index}."
        if face_lora:  # FaceID also carries a rank-128 LoRA for every attention layer
            for name, inp, out in (("to_q", query, hidden), ("to_k", kv, hidden), ("to_v", kv, hidden)):
                lora_pair(shapes, f"{layer}{name}_lora", (out, inp), 128, "down.weight", "up.weight")
            lora_pair(shapes, f"{layer}to_out_lora", (query, hidden), 128, "down.weight", "up.weight")
        if is_cross:
            shapes[f"{layer}to_k_ip.weight"] = (hidden, cross)
            shapes[f"{layer}to_v_ip.weight"] = (hidden, cross)
    return shapes


def _vae(architecture: str, layout: str) -> dict[str, Shape]:
    shapes = diffusers_shapes("vae", FLUX_VAE if architecture == "flux" else SD_VAE)
    return shapes if layout == "diffusers" else original_names("vae", shapes, "")


def _embedding(architecture: str) -> dict[str, Shape]:
    if architecture == "sdxl":
        return {"clip_g": (4, 1280), "clip_l": (4, 768)}
    return {"emb_params": (4, 1024 if architecture == "sd2" else 768)}


_VISION = {"vit_h": (1280, 32, 5120, 1024), "vit_g": (1664, 48, 8192, 1280), "vit_l": (1024, 24, 4096, 768)}

# (kind, architecture, variant, layout): each is identified as (kind, architecture, variant).
REAL_CASES: tuple[tuple[str, str, str, str], ...] = (
    ("checkpoint", "sd15", "", "original"),
    ("checkpoint", "sd15", "inpaint", "original"),
    ("checkpoint", "sd2", "", "original"),
    ("checkpoint", "sd2", "inpaint", "original"),
    ("checkpoint", "sd2", "v_prediction", "original"),
    ("checkpoint", "sdxl", "", "original"),
    ("checkpoint", "sdxl", "inpaint", "original"),
    ("checkpoint", "sdxl", "refiner", "original"),
    ("checkpoint", "sdxl", "v_prediction", "original"),
    ("checkpoint", "sd3", "", "original"),
    ("checkpoint", "flux", "", "original"),
    ("unet", "sd15", "", "diffusers"),
    ("unet", "sd15", "", "original"),
    ("unet", "sd15", "inpaint", "diffusers"),
    ("unet", "sd2", "", "diffusers"),
    ("unet", "sdxl", "", "diffusers"),
    ("unet", "sdxl", "", "original"),
    ("unet", "sdxl", "refiner", "diffusers"),
    ("transformer", "flux", "", "original"),
    ("transformer", "flux", "inpaint", "original"),
    ("transformer", "flux", "", "diffusers"),
    ("transformer", "sd3", "", "original"),
    ("transformer", "sd3", "", "diffusers"),
    ("controlnet", "sd15", "", "original"),
    ("controlnet", "sd15", "", "original_bare"),
    ("controlnet", "sd15", "", "diffusers"),
    ("controlnet", "sd2", "", "original"),
    ("controlnet", "sdxl", "", "diffusers"),
    ("controlnet", "sdxl", "union", "diffusers"),
    ("lora", "sd15", "", "kohya"),
    ("lora", "sd2", "", "kohya"),
    ("lora", "sdxl", "", "kohya"),
    ("lora", "sdxl", "", "peft"),
    ("lora", "flux", "", "kohya"),
    ("lora", "flux", "", "peft"),
    ("ip_adapter", "sd15", "", "original"),
    ("ip_adapter", "sd15", "plus", "original"),
    ("ip_adapter", "sd15", "full", "original"),
    ("ip_adapter", "sd15", "faceid", "original"),
    ("ip_adapter", "sd15", "faceid_plus", "original"),
    ("ip_adapter", "sdxl", "", "original"),
    ("ip_adapter", "sdxl", "plus", "original"),
    ("ip_adapter", "sdxl", "instantid", "original"),
    ("vae", "unknown", "", "original"),
    ("vae", "unknown", "", "diffusers"),
    ("vae", "sdxl", "", "original"),
    ("vae", "flux", "", "original"),
    ("embedding", "sd15", "", "a1111"),
    ("embedding", "sd2", "", "a1111"),
    ("embedding", "sdxl", "", "a1111"),
    ("clip_vision", "unknown", "vit_h", "original"),
    ("clip_vision", "unknown", "vit_g", "original"),
    ("text_encoder", "unknown", "clip_l", "original"),
    ("text_encoder", "unknown", "t5xxl", "original"),
)


def _case(kind: str, architecture: str, variant: str, layout: str) -> tuple[str, str, str, str]:
    for case in REAL_CASES:
        if case[:3] == (kind, architecture, variant) and (not layout or case[3] == layout):
            return case
    known = ", ".join("/".join(c) for c in REAL_CASES)
    raise ValueError(f"no real header for {kind}/{architecture}/{variant}/{layout or '*'}; known: {known}")


def real_shapes(kind: str, architecture: str, variant: str = "", layout: str = "") -> dict[str, Shape]:
    """Names and shapes of a real model (see :data:`REAL_CASES`); ``layout`` defaults to the first."""
    kind, architecture, variant, layout = _case(kind, architecture, variant, layout)
    if kind == "checkpoint":
        return _checkpoint(architecture, variant)
    if kind == "unet":
        return _unet(architecture, variant, layout)
    if kind == "transformer":
        return _transformer(architecture, variant, layout)
    if kind == "controlnet":
        return _controlnet(architecture, variant, layout)
    if kind == "lora":
        return _lora(architecture, layout)
    if kind == "ip_adapter":
        return _ip_adapter(architecture, variant)
    if kind == "vae":
        return _vae(architecture, layout)
    if kind == "embedding":
        return _embedding(architecture)
    if kind == "clip_vision":
        return clip_vision_shapes(*_VISION[variant])
    return clip_text_shapes("", 768, 12, projection=768) if variant == "clip_l" else t5xxl_shapes()


_F32 = re.compile(r"(alphas|betas|sqrt_|posterior_|log_one_|model_ema\.decay|v_pred|emb_params|clip_[lg]$).*")


def real_header(kind: str, architecture: str, variant: str = "", layout: str = "") -> Header:
    """:func:`real_shapes` with the dtypes the published files use (mostly ``F16``)."""
    header: Header = {}
    for name, shape in real_shapes(kind, architecture, variant, layout).items():
        dtype = "F16"
        if name.endswith("position_ids"):
            dtype = "I64"
        elif name == "model_ema.num_updates":
            dtype = "I32"
        elif _F32.fullmatch(name):
            dtype = "F32"
        header[name] = (dtype, shape)
    return header


def real_metadata(kind: str, architecture: str, variant: str = "", layout: str = "") -> dict[str, str]:
    """The ``__metadata__`` a published file of this case carries (where it matters)."""
    kind, architecture, variant, layout = _case(kind, architecture, variant, layout)
    if kind == "checkpoint" and variant == "v_prediction" and architecture == "sd2":
        return {"modelspec.architecture": "stable-diffusion-v2-768-v", "modelspec.prediction_type": "v"}
    if kind == "vae" and architecture == "sdxl":
        return {"modelspec.architecture": "stable-diffusion-xl-v1-base/vae"}
    if kind == "vae" and architecture == "flux":
        return {"modelspec.architecture": "flux-1-dev/vae"}
    if kind == "lora" and layout == "kohya":
        return {"ss_network_module": "networks.lora", "ss_network_dim": "16", "ss_network_alpha": "8"}
    return {}


def write_real_model(
    path: str | Path,
    kind: str,
    architecture: str,
    variant: str = "",
    layout: str = "",
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """A header-only safetensors file of a real model (sparse: no disk space, no time)."""
    merged = {**real_metadata(kind, architecture, variant, layout), **(metadata or {})}
    return write_header_only_safetensors(path, real_header(kind, architecture, variant, layout), merged)
