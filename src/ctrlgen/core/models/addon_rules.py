"""Identification rules for add-on files: LoRAs, IP-Adapters, embeddings, image and text encoders.

Like :mod:`ctrlgen.core.models.base_rules`, these read tensor names and structure first;
absolute widths only break ties and are recorded in ``details``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ctrlgen.core.models.base_rules import ModelIdentity, TensorKeys, clean_details

_TEXT_WIDTH_ARCHITECTURES = {768: "sd15", 1024: "sd2"}


# -- IP-Adapter ---------------------------------------------------------------

# CLIP image-encoder widths, to say which encoder an IP-Adapter expects.
_PROJECTED_ENCODERS = {768: "vit_l", 1024: "vit_h", 1280: "vit_g"}
_HIDDEN_ENCODERS = {1024: "vit_l", 1280: "vit_h", 1664: "vit_g"}
# insightface's ArcFace (antelopev2 / buffalo_l) embeds a face in 512 numbers.
_FACE_EMBEDDING_DIM = 512


def ip_adapter_rule(keys: TensorKeys, meta: Mapping[str, str]) -> ModelIdentity | None:
    if not (keys.any_prefix("image_proj.") and keys.any_prefix("ip_adapter.")):
        return None
    to_k = keys.matching(r"ip_adapter\.\d+\.to_k_ip(\.\d+)?\.weight")
    cross = keys.shape(to_k[0])[1] if to_k else None
    details: dict[str, Any] = {"cross_attention_dim": cross, "ip_layers": len(to_k)}
    face_lora = any(".to_q_lora." in name for name in keys.names)
    variant = ""
    if keys.any_prefix("image_proj.perceiver_resampler."):
        variant = "faceid_plus"
        details["image_embed_dim"] = keys.shape("image_proj.proj.0.weight")[1]
    elif keys.has("image_proj.proj.0.weight") and keys.has("image_proj.norm.weight"):
        tokens = keys.shape("image_proj.proj.2.weight")[0] // keys.shape("image_proj.norm.weight")[0]
        embed = keys.shape("image_proj.proj.0.weight")[1]
        variant = "full" if tokens == 1 and not face_lora else "faceid"
        details.update(num_tokens=tokens, image_embed_dim=embed)
    elif keys.has("image_proj.proj_in.weight"):
        embed = keys.shape("image_proj.proj_in.weight")[1]
        # Same resampler as "plus"; only the input differs: a face embedding, not CLIP features.
        variant = "instantid" if embed == _FACE_EMBEDDING_DIM else "plus"
        latents = keys.shape("image_proj.latents")
        details.update(image_embed_dim=embed, num_tokens=latents[-2] if latents else None)
        if variant == "plus" and embed in _HIDDEN_ENCODERS:
            details["image_encoder"] = _HIDDEN_ENCODERS[embed]
    elif keys.has("image_proj.proj.weight") and keys.has("image_proj.norm.weight"):
        embed = keys.shape("image_proj.proj.weight")[1]
        tokens = keys.shape("image_proj.proj.weight")[0] // keys.shape("image_proj.norm.weight")[0]
        details.update(image_embed_dim=embed, num_tokens=tokens)
        if embed in _PROJECTED_ENCODERS:
            details["image_encoder"] = _PROJECTED_ENCODERS[embed]
    if face_lora:
        details["lora"] = True
    # SD1.5/SD2 have 16 cross-attention layers, SDXL 70; the width breaks other ties.
    if len(to_k) == 70 or cross == 2048:
        architecture = "sdxl"
    elif cross == 1024:
        architecture = "sd2"
    elif len(to_k) == 16 or cross == 768:
        architecture = "sd15"
    else:
        architecture = "unknown"
    return ModelIdentity("ip_adapter", architecture, variant, details, "original")


# -- LoRA -----------------------------------------------------------------------

_LORA_DOWN = (
    ".lora_down.weight",
    ".lora_A.weight",
    ".lora.down.weight",
    ".lora_linear_layer.down.weight",
    ".hada_w1_a",
    ".lokr_w1",
    ".lokr_w1_a",
)


def lora_rule(keys: TensorKeys, meta: Mapping[str, str]) -> ModelIdentity | None:
    downs = [name for name in keys.names if name.endswith(_LORA_DOWN)]
    if not downs:
        return None
    if any(name.endswith((".hada_w1_a", ".lokr_w1", ".lokr_w1_a")) for name in downs):
        layout = "lycoris"
    elif any(name.startswith(("lora_unet_", "lora_te")) for name in downs):
        layout = "kohya"
    elif any(name.endswith(".lora_A.weight") for name in downs):
        layout = "peft"
    else:
        layout = "diffusers"
    # One spelling for both "a.b.c" and kohya's "lora_unet_a_b_c".
    modules = {name.replace(".", "_"): keys.shape(name) for name in downs}
    joined = "\n".join(modules)
    details: dict[str, Any] = {"modules": len(downs)}
    ranks = [shape[0] for shape in modules.values() if shape and layout != "lycoris"]
    if ranks:
        details["rank"] = max(ranks)

    def width(pattern: str) -> int | None:
        shape = next((s for n, s in modules.items() if re.search(pattern, n)), None)
        return shape[1] if shape and len(shape) > 1 else None

    cross = width(r"attn2_(processor_)?to_k_")
    if cross:
        details["cross_attention_dim"] = cross
    te_width = width(r"(te1?_|text_encoder_).*self_attn_q_proj")
    proj_in = next((s for n, s in modules.items() if "proj_in" in n and s), None)
    architecture = "unknown"
    if re.search(r"(double_blocks|single_blocks|single_transformer_blocks)_\d", joined):
        architecture = "flux"
    elif "joint_blocks_" in joined or ("transformer_transformer_blocks_" in joined and "attn_add_" in joined):
        architecture = "flux" if width(r"transformer_blocks_\d+_attn_to_q") == 3072 else "sd3"
    elif (
        re.search(r"(lora_te2_|text_encoder_2_|label_emb|add_embedding|transformer_blocks_[1-9])", joined)
        # SDXL has no attention at the first UNet level; SD1/SD2 do.
        or (
            re.search(r"(input_blocks_[4-9]_1_|down_blocks_1_attentions)", joined)
            and not re.search(r"(input_blocks_[12]_1_|down_blocks_0_attentions)", joined)
        )
    ):
        architecture = "sdxl"
    elif proj_in is not None:
        architecture = "sd2" if len(proj_in) == 2 else "sd15"  # SD2 made proj_in a linear layer
    elif cross in (768, 1024, 2048):
        architecture = {768: "sd15", 1024: "sd2", 2048: "sdxl"}[cross]
    elif te_width in _TEXT_WIDTH_ARCHITECTURES:
        architecture = _TEXT_WIDTH_ARCHITECTURES[te_width]
    return ModelIdentity("lora", architecture, "", details, layout)


def embedding_rule(keys: TensorKeys, meta: Mapping[str, str]) -> ModelIdentity | None:
    if keys.has("clip_l") and keys.has("clip_g"):
        vectors = keys.shape("clip_l")[0] if len(keys.shape("clip_l")) > 1 else 1
        return ModelIdentity("embedding", "sdxl", "", {"vectors": vectors}, "a1111")
    name = "emb_params" if keys.has("emb_params") else keys.first(r"string_to_param\..+")
    layout = "a1111"
    if name is None and len(keys.names) == 1:
        only = keys.names[0]
        shape = keys.shape(only)
        # diffusers' textual inversion: one tensor named after its placeholder token.
        if (
            "." not in only
            and 1 <= len(shape) <= 2
            and (only.startswith("<") or shape[-1] in _TEXT_WIDTH_ARCHITECTURES)
        ):
            name, layout = only, "diffusers"
    if name is None:
        return None
    shape = keys.shape(name)
    width = shape[-1] if shape else None
    details = {"vectors": shape[0] if len(shape) > 1 else 1, "width": width}
    return ModelIdentity("embedding", _TEXT_WIDTH_ARCHITECTURES.get(width, "unknown"), "", details, layout)


_VISION_VARIANTS = {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h", (1664, 48): "vit_g"}


def clip_vision_rule(keys: TensorKeys, meta: Mapping[str, str]) -> ModelIdentity | None:
    patch_key = next(
        (n for n in keys.names if n.endswith("vision_model.embeddings.patch_embedding.weight")), None
    )
    if patch_key is None:
        return None
    prefix = patch_key[: -len("vision_model.embeddings.patch_embedding.weight")]
    patch = keys.shape(patch_key)
    layers = len(keys.indices(f"{prefix}vision_model.encoder.layers."))
    projection = keys.shape(f"{prefix}visual_projection.weight")
    details = {
        "hidden_size": patch[0],
        "patch_size": patch[-1],
        "layers": layers,
        "projection_dim": projection[0] if projection else None,
    }
    variant = _VISION_VARIANTS.get((patch[0], layers), "")
    return ModelIdentity("clip_vision", "unknown", variant, clean_details(details), "original")


_TEXT_VARIANTS = {768: "clip_l", 1024: "clip_h", 1280: "clip_g"}


def text_encoder_rule(keys: TensorKeys, meta: Mapping[str, str]) -> ModelIdentity | None:
    q_key = next(
        (n for n in keys.names if n.endswith("text_model.encoder.layers.0.self_attn.q_proj.weight")), None
    )
    if q_key is not None:
        prefix = q_key[: -len("text_model.encoder.layers.0.self_attn.q_proj.weight")]
        width = keys.shape(q_key)[0]
        details = {"hidden_size": width, "layers": len(keys.indices(f"{prefix}text_model.encoder.layers."))}
        return ModelIdentity(
            "text_encoder", "unknown", _TEXT_VARIANTS.get(width, "clip"), details, "original"
        )
    t5_key = next(
        (n for n in keys.names if n.endswith("encoder.block.0.layer.0.SelfAttention.q.weight")), None
    )
    if t5_key is not None:
        prefix = t5_key[: -len("encoder.block.0.layer.0.SelfAttention.q.weight")]
        width = keys.shape(t5_key)[1]
        details = {"hidden_size": width, "layers": len(keys.indices(f"{prefix}encoder.block."))}
        return ModelIdentity(
            "text_encoder", "unknown", "t5xxl" if width == 4096 else "t5", details, "original"
        )
    return None


# -- LayerDiffuse (transparent layers) -------------------------------------------

# Input channels of an SDXL LayerDiffuse patch's first convolution: the latent, plus one or two
# condition latents concatenated to it (fg2ble/bg2ble: one layer; fgble2bg/bgble2fg: a layer and the blend).
_LAYER_PATCH_VARIANTS = {4: "transparent_conv", 8: "blend_from_layer", 12: "layer_from_blend"}
_SHARING_VARIANTS = {1: "transparent_attn", 2: "two_layers", 3: "joint"}


def layerdiffuse_rule(keys: TensorKeys, meta: Mapping[str, str]) -> ModelIdentity | None:
    """lllyasviel's LayerDiffuse files: the transparent VAE decoder and encoder (its latent
    offset: ``blocks.0`` ... ``blocks.16``, RGBA in, 4 channels out), SDXL UNet patches in
    ComfyUI/Forge's patch format (``diffusion_model.<key>::lora::<i>`` or ``::diff::<i>``) and
    SD1.5's attention-sharing modules (``hookers.layers.<n>...``)."""
    from ctrlgen.core.models.base_rules import _unet_architecture, _unet_structure

    if keys.has("latent_conv_in.weight") and keys.has("conv_in.weight") and keys.any_prefix("down_blocks."):
        conv_in, conv_out = keys.shape("conv_in.weight"), keys.shape("conv_out.weight")
        details = {"levels": len(keys.indices("down_blocks.")), "width": conv_in[0] if conv_in else None,
                   "in_channels": conv_in[1] if len(conv_in) > 1 else None,
                   "out_channels": conv_out[0] if conv_out else None}
        variant = "decoder" if details["out_channels"] == 4 else ""
        return ModelIdentity("layerdiffuse", "unknown", variant, clean_details(details), "original")
    if keys.has("blocks.0.weight") and keys.has("blocks.16.weight") and all(n.startswith("blocks.") for n in keys.names):
        first, last = keys.shape("blocks.0.weight"), keys.shape("blocks.16.weight")
        if len(first) == 4 and len(last) == 4 and first[1] == 4 and last[0] == 4:  # RGBA in, a latent offset out
            details = {"width": first[0], "convolutions": len(keys.indices("blocks."))}
            return ModelIdentity("layerdiffuse", "unknown", "encoder", clean_details(details), "original")
    if keys.any_prefix("hookers.layers."):
        frames = len(keys.indices("hookers.layers.0.to_q_lora."))
        details = {"layers": len(keys.indices("hookers.layers.")), "frames": frames,
                   "control": keys.any_prefix("kwargs_encoder.")}
        # Attention sharing exists for SD1.5 only (Forge/ComfyUI patch SD1.5's 16 transformer blocks).
        return ModelIdentity("layerdiffuse", "sd15", _SHARING_VARIANTS.get(frames, ""), details, "original")
    patches = [name for name in keys.names if "::" in name and name.startswith("diffusion_model.")]
    if not patches or len(patches) * 2 < len(keys.names):
        return None
    kinds = {name.split("::")[1] for name in patches}
    # The patched tensors' own names and shapes (a LoRA patch's down matrix [rank, in] stands for
    # its weight's input width), measured like a checkpoint's UNet.
    own: dict[str, tuple[int, ...]] = {}
    for name in patches:
        key, kind, index = name.split("::")[:3]
        if (kind == "diff" and index == "0") or (kind == "lora" and index == "1"):
            own[key] = keys.shape(name)
    unet = TensorKeys(own)
    structure = _unet_structure(unet, "diffusion_model.", False)
    architecture = _unet_architecture(structure)
    if architecture == "unknown" and unet.any_prefix("diffusion_model.input_blocks.4.1.") and not (
            unet.any_prefix("diffusion_model.input_blocks.1.1.", "diffusion_model.input_blocks.2.1.")):
        architecture = "sdxl"  # SDXL has no attention at the first UNet level; SD1/SD2 do
    details = {"patches": len(own), "in_channels": structure["in_channels"]}
    if kinds == {"lora"}:
        ranks = [keys.shape(name)[0] for name in patches if name.endswith("::lora::1") and keys.shape(name)]
        details["rank"] = max(ranks) if ranks else None
        variant = "transparent_attn"
    elif kinds == {"diff"}:
        variant = _LAYER_PATCH_VARIANTS.get(structure["in_channels"] or 4, "")
    else:
        variant = ""
    return ModelIdentity("layerdiffuse", architecture, variant, clean_details(details), "original")
