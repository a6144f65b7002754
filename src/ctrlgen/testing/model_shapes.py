"""Real tensor names and shapes of Stable Diffusion, FLUX and adapter models, without weights.

- UNets, VAEs, ControlNets and FLUX/SD3 transformers come from diffusers' own classes built
  on the ``meta`` device from the real configs below (:func:`diffusers_shapes`), renamed to
  original single-file names by :mod:`ctrlgen.testing.ldm_keys` (:func:`original_names`).
- CLIP/T5 encoders, BFL's FLUX layout, Stability's MMDiT layout, IP-Adapter projections
  and LoRA pairs are written out by hand with their published names and shapes.

Used by :mod:`ctrlgen.testing.headers` to write header-only safetensors files.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

Shape = tuple[int, ...]


# -- real configs (from the published model repos' config.json files) ------------------

SD15_UNET = {
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "layers_per_block": 2,
    "sample_size": 64,
}
SD2_UNET = {**SD15_UNET, "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20)}
SD2_UNET.update(use_linear_projection=True, sample_size=96)
SDXL_UNET = {
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "layers_per_block": 2,
    "sample_size": 128,
}
SDXL_REFINER_UNET = {
    **SDXL_UNET,
    "block_out_channels": (384, 768, 1536, 1536),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (6, 12, 24, 24),
    "transformer_layers_per_block": 4,
    "cross_attention_dim": 1280,
    "projection_class_embeddings_input_dim": 2560,
}
SD_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "sample_size": 512,
}
FLUX_VAE = {**SD_VAE, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False}
_CONTROLNET_HINT = {"conditioning_embedding_out_channels": (16, 32, 96, 256)}
SD15_CONTROLNET = {**{k: v for k, v in SD15_UNET.items() if k not in ("up_block_types", "sample_size")}}
SD15_CONTROLNET.update(_CONTROLNET_HINT)
SD2_CONTROLNET = {**SD15_CONTROLNET, "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20)}
SD2_CONTROLNET["use_linear_projection"] = True
SDXL_CONTROLNET = {k: v for k, v in SDXL_UNET.items() if k not in ("up_block_types", "sample_size")}
SDXL_CONTROLNET.update(_CONTROLNET_HINT)
FLUX_TRANSFORMER = {
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
SD3_TRANSFORMER = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 192,
}

_CLASSES = {
    "unet": "UNet2DConditionModel",
    "vae": "AutoencoderKL",
    "controlnet": "ControlNetModel",
    "union": "ControlNetUnionModel",
    "flux": "FluxTransformer2DModel",
    "sd3": "SD3Transformer2DModel",
}


@functools.cache
def _meta_shapes(model: str, config_json: str) -> dict[str, Shape]:
    """Parameter shapes of a diffusers model built on the meta device (no memory, no weights)."""
    import diffusers
    import torch

    with torch.device("meta"):
        instance = getattr(diffusers, _CLASSES[model])(**json.loads(config_json))
    return {name: tuple(t.shape) for name, t in instance.state_dict().items()}


def diffusers_shapes(model: str, config: Mapping[str, Any]) -> dict[str, Shape]:
    """Shapes of diffusers model ``model`` (``unet``, ``vae``, ``controlnet``, ``union``,
    ``flux``, ``sd3``) built from ``config``, in diffusers' key names."""
    return dict(_meta_shapes(model, json.dumps(dict(config), sort_keys=True)))


def _metas(shapes: Mapping[str, Shape]) -> dict[str, Any]:
    import torch

    return {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}


def _to_ldm(converter: str, shapes: Mapping[str, Shape], prefix: str) -> dict[str, Shape]:
    from ctrlgen.testing import ldm_keys

    converted = getattr(ldm_keys, converter)(_metas(shapes), prefix)
    return {name: tuple(t.shape) for name, t in converted.items()}


def ldm_module_names(shapes: Mapping[str, Shape]) -> dict[str, str]:
    """diffusers UNet parameter name -> original (``input_blocks``) name, no prefix."""
    converted = _to_ldm("unet_to_ldm", shapes, "")
    return dict(zip(shapes, converted, strict=True))


# -- hand-written families ----------------------------------------------------------


def clip_text_shapes(prefix: str, width: int, layers: int, projection: int | None = None) -> dict[str, Shape]:
    """A Hugging Face CLIP text tower (``text_model.*``) as SD checkpoints store it."""
    shapes: dict[str, Shape] = {
        f"{prefix}text_model.embeddings.token_embedding.weight": (49408, width),
        f"{prefix}text_model.embeddings.position_embedding.weight": (77, width),
    }
    for i in range(layers):
        layer = f"{prefix}text_model.encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes.update(
                {f"{layer}self_attn.{proj}.weight": (width, width), f"{layer}self_attn.{proj}.bias": (width,)}
            )
        for norm in ("layer_norm1", "layer_norm2"):
            shapes.update({f"{layer}{norm}.weight": (width,), f"{layer}{norm}.bias": (width,)})
        shapes.update({f"{layer}mlp.fc1.weight": (4 * width, width), f"{layer}mlp.fc1.bias": (4 * width,)})
        shapes.update({f"{layer}mlp.fc2.weight": (width, 4 * width), f"{layer}mlp.fc2.bias": (width,)})
    shapes.update(
        {
            f"{prefix}text_model.final_layer_norm.weight": (width,),
            f"{prefix}text_model.final_layer_norm.bias": (width,),
        }
    )
    if projection:
        shapes[f"{prefix}text_projection.weight"] = (projection, width)
    return shapes


def clip_vision_shapes(
    width: int, layers: int, intermediate: int, projection: int, patch: int = 14
) -> dict[str, Shape]:
    """A ``CLIPVisionModelWithProjection`` (h94's ``image_encoder``, ComfyUI's clip_vision)."""
    positions = (224 // patch) ** 2 + 1
    shapes: dict[str, Shape] = {
        "vision_model.embeddings.class_embedding": (width,),
        "vision_model.embeddings.patch_embedding.weight": (width, 3, patch, patch),
        "vision_model.embeddings.position_embedding.weight": (positions, width),
        "vision_model.pre_layrnorm.weight": (width,),  # sic: transformers' spelling
        "vision_model.pre_layrnorm.bias": (width,),
    }
    for i in range(layers):
        layer = f"vision_model.encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes.update(
                {f"{layer}self_attn.{proj}.weight": (width, width), f"{layer}self_attn.{proj}.bias": (width,)}
            )
        for norm in ("layer_norm1", "layer_norm2"):
            shapes.update({f"{layer}{norm}.weight": (width,), f"{layer}{norm}.bias": (width,)})
        shapes.update(
            {f"{layer}mlp.fc1.weight": (intermediate, width), f"{layer}mlp.fc1.bias": (intermediate,)}
        )
        shapes.update({f"{layer}mlp.fc2.weight": (width, intermediate), f"{layer}mlp.fc2.bias": (width,)})
    shapes.update(
        {"vision_model.post_layernorm.weight": (width,), "vision_model.post_layernorm.bias": (width,)}
    )
    shapes["visual_projection.weight"] = (projection, width)
    return shapes


def t5xxl_shapes(prefix: str = "") -> dict[str, Shape]:
    """google/t5-v1_1-xxl's encoder (FLUX's and SD3's third text encoder)."""
    shapes: dict[str, Shape] = {f"{prefix}shared.weight": (32128, 4096)}
    for i in range(24):
        block = f"{prefix}encoder.block.{i}.layer."
        for name in "qkvo":
            shapes[f"{block}0.SelfAttention.{name}.weight"] = (4096, 4096)
        if i == 0:
            shapes[f"{block}0.SelfAttention.relative_attention_bias.weight"] = (32, 64)
        shapes[f"{block}0.layer_norm.weight"] = (4096,)
        shapes.update(
            {
                f"{block}1.DenseReluDense.wi_0.weight": (10240, 4096),
                f"{block}1.DenseReluDense.wi_1.weight": (10240, 4096),
            }
        )
        shapes.update(
            {f"{block}1.DenseReluDense.wo.weight": (4096, 10240), f"{block}1.layer_norm.weight": (4096,)}
        )
    shapes[f"{prefix}encoder.final_layer_norm.weight"] = (4096,)
    return shapes


def linear(shapes: dict[str, Shape], name: str, out: int, inp: int, bias: bool = True) -> None:
    shapes[f"{name}.weight"] = (out, inp)
    if bias:
        shapes[f"{name}.bias"] = (out,)


def flux_shapes(prefix: str = "", in_channels: int = 64, guidance: bool = True) -> dict[str, Shape]:
    """FLUX.1 [dev] in Black Forest Labs' layout (``flux1-dev.safetensors``)."""
    h, mlp, shapes = 3072, 12288, {}
    linear(shapes, f"{prefix}img_in", h, in_channels)
    linear(shapes, f"{prefix}txt_in", h, 4096)
    embedders = [("time_in", 256), ("vector_in", 768)] + ([("guidance_in", 256)] if guidance else [])
    for name, width in embedders:
        linear(shapes, f"{prefix}{name}.in_layer", h, width)
        linear(shapes, f"{prefix}{name}.out_layer", h, h)
    for i in range(19):
        for stream in ("img", "txt"):
            block = f"{prefix}double_blocks.{i}.{stream}_"
            linear(shapes, f"{block}mod.lin", 6 * h, h)
            linear(shapes, f"{block}attn.qkv", 3 * h, h)
            shapes[f"{block}attn.norm.query_norm.scale"] = (128,)
            shapes[f"{block}attn.norm.key_norm.scale"] = (128,)
            linear(shapes, f"{block}attn.proj", h, h)
            linear(shapes, f"{block}mlp.0", mlp, h)
            linear(shapes, f"{block}mlp.2", h, mlp)
    for i in range(38):
        block = f"{prefix}single_blocks.{i}."
        linear(shapes, f"{block}linear1", 3 * h + mlp, h)
        linear(shapes, f"{block}linear2", h, h + mlp)
        shapes[f"{block}norm.query_norm.scale"] = (128,)
        shapes[f"{block}norm.key_norm.scale"] = (128,)
        linear(shapes, f"{block}modulation.lin", 3 * h, h)
    linear(shapes, f"{prefix}final_layer.adaLN_modulation.1", 2 * h, h)
    linear(shapes, f"{prefix}final_layer.linear", 64, h)
    return shapes


def sd3_shapes(prefix: str = "model.diffusion_model.") -> dict[str, Shape]:
    """SD3 Medium's MMDiT (depth 24) in Stability's layout (``sd3_medium.safetensors``)."""
    h, depth, shapes = 1536, 24, {}
    shapes[f"{prefix}pos_embed"] = (1, 192 * 192, h)
    shapes.update({f"{prefix}x_embedder.proj.weight": (h, 16, 2, 2), f"{prefix}x_embedder.proj.bias": (h,)})
    for name, width in (("t_embedder", 256), ("y_embedder", 2048)):
        linear(shapes, f"{prefix}{name}.mlp.0", h, width)
        linear(shapes, f"{prefix}{name}.mlp.2", h, h)
    linear(shapes, f"{prefix}context_embedder", h, 4096)
    for i in range(depth):
        for stream in ("context_block", "x_block"):
            block = f"{prefix}joint_blocks.{i}.{stream}."
            pre_only = stream == "context_block" and i == depth - 1
            linear(shapes, f"{block}adaLN_modulation.1", (2 if pre_only else 6) * h, h)
            linear(shapes, f"{block}attn.qkv", 3 * h, h)
            if not pre_only:
                linear(shapes, f"{block}attn.proj", h, h)
                linear(shapes, f"{block}mlp.fc1", 4 * h, h)
                linear(shapes, f"{block}mlp.fc2", h, 4 * h)
    linear(shapes, f"{prefix}final_layer.adaLN_modulation.1", 2 * h, h)
    linear(shapes, f"{prefix}final_layer.linear", 64, h)
    return shapes


def original_names(component: str, shapes: Mapping[str, Shape], prefix: str) -> dict[str, Shape]:
    """Rename diffusers shapes to a single file's original names.

    ``component`` is ``unet``, ``vae``, ``controlnet`` or ``openclip`` (a CLIP text tower in
    OpenCLIP's fused layout, as SD2/SDXL checkpoints store it).
    """
    converters = {"unet": "unet_to_ldm", "vae": "vae_to_ldm", "controlnet": "controlnet_to_ldm"}
    converters["openclip"] = "openclip_to_ldm"
    return _to_ldm(converters[component], shapes, prefix)


def openclip_shapes(prefix: str, width: int, layers: int) -> dict[str, Shape]:
    shapes = original_names("openclip", clip_text_shapes("", width, layers, projection=width), prefix)
    shapes[f"{prefix}logit_scale"] = ()
    return shapes


def lora_pair(shapes: dict[str, Shape], module: str, weight: Shape, rank: int, down: str, up: str) -> None:
    out, inp, *kernel = weight
    shapes[f"{module}.{down}"] = (rank, inp, *kernel)
    shapes[f"{module}.{up}"] = (out, rank, *kernel)


def clip_lora_targets(width: int, layers: int) -> dict[str, Shape]:
    targets = {}
    for i in range(layers):
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            targets[f"text_model_encoder_layers_{i}_self_attn_{proj}"] = (width, width)
        targets[f"text_model_encoder_layers_{i}_mlp_fc1"] = (4 * width, width)
        targets[f"text_model_encoder_layers_{i}_mlp_fc2"] = (width, 4 * width)
    return targets


def attention_layers(unet: Mapping[str, Shape]) -> list[tuple[bool, int, int, int]]:
    """Per attention layer, in ``unet.attn_processors`` order: (cross?, query, hidden, kv)."""
    layers = []
    for key, shape in unet.items():
        if match := re.fullmatch(r"(.+\.attn([12]))\.to_k\.weight", key):
            query = unet[f"{match[1]}.to_q.weight"][1]
            layers.append((match[2] == "2", query, shape[0], shape[1]))
    return layers


def resampler_shapes(
    prefix: str, dim: int, heads: int, queries: int, embed: int, out: int, latents: bool = True
) -> dict:
    """IP-Adapter's Perceiver resampler (depth 4, 64-wide heads, 4x feed-forward)."""
    inner, shapes = heads * 64, {}
    if latents:
        shapes[f"{prefix}latents"] = (1, queries, dim)
    linear(shapes, f"{prefix}proj_in", dim, embed)
    linear(shapes, f"{prefix}proj_out", out, dim)
    shapes.update({f"{prefix}norm_out.weight": (out,), f"{prefix}norm_out.bias": (out,)})
    for i in range(4):
        attention, feed_forward = f"{prefix}layers.{i}.0.", f"{prefix}layers.{i}.1."
        for norm in ("norm1", "norm2"):
            shapes.update({f"{attention}{norm}.weight": (dim,), f"{attention}{norm}.bias": (dim,)})
        linear(shapes, f"{attention}to_q", inner, dim, bias=False)
        linear(shapes, f"{attention}to_kv", 2 * inner, dim, bias=False)
        linear(shapes, f"{attention}to_out", dim, inner, bias=False)
        shapes.update({f"{feed_forward}0.weight": (dim,), f"{feed_forward}0.bias": (dim,)})
        linear(shapes, f"{feed_forward}1", 4 * dim, dim, bias=False)
        linear(shapes, f"{feed_forward}3", dim, 4 * dim, bias=False)
    return shapes


def mlp_projection_shapes(hidden: int, embed: int, out: int, norm: int) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    linear(shapes, "image_proj.proj.0", hidden, embed)
    linear(shapes, "image_proj.proj.2", out, hidden)
    shapes.update({"image_proj.norm.weight": (norm,), "image_proj.norm.bias": (norm,)})
    return shapes
