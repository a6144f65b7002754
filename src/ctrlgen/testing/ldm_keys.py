"""Diffusers state dicts renamed to the ORIGINAL Stable Diffusion (LDM / "ckpt") key layout.

A1111 and ComfyUI users keep single-file checkpoints whose tensor names come from the
CompVis/Stability training code (``model.diffusion_model.input_blocks.1.1.proj_in.weight``),
not diffusers' (``down_blocks.0.attentions.0.proj_in.weight``). To test ctrlgen's loading of
such files without real weights, tiny diffusers models are written in that layout. The
mapping is derived from the two module trees, key by key:

===========================  ====================================================
diffusers                    original (prefix ``model.diffusion_model.`` for UNets)
===========================  ====================================================
conv_in                      input_blocks.0.0
time_embedding.linear_1/2    time_embed.0 / time_embed.2
add_embedding.linear_1/2     label_emb.0.0 / label_emb.0.2 (SDXL)
down_blocks.i.resnets.j      input_blocks.n.0 (n counts levels' layers + downsamplers)
down_blocks.i.attentions.j   input_blocks.n.1
down_blocks.i.downsamplers   input_blocks.n.0.op
mid_block.resnets.0/1        middle_block.0 / middle_block.2
mid_block.attentions.0       middle_block.1
up_blocks.i.resnets.j        output_blocks.n.0
up_blocks.i.attentions.j     output_blocks.n.1
up_blocks.i.upsamplers       output_blocks.n.1 or .2 (after the attention), ``.conv``
conv_norm_out / conv_out     out.0 / out.2
===========================  ====================================================

Resnet layers rename ``norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut`` to
``in_layers.0, in_layers.2, emb_layers.1, out_layers.0, out_layers.3, skip_connection``;
transformer blocks keep their names. The VAE (prefix ``first_stage_model.``) has
``encoder.down.i.block.j``, ``decoder.up.k`` in reversed order, ``mid.block_1/2``,
``mid.attn_1.{norm,q,k,v,proj_out}`` as 1x1-conv 4-D weights and ``nin_shortcut``.
OpenAI CLIP keeps Hugging Face names under ``cond_stage_model.transformer.text_model``
(SDXL: ``conditioner.embedders.0.transformer.text_model``); OpenCLIP (SDXL's second
encoder, ``conditioner.embedders.1.model``) fuses q/k/v into ``in_proj_weight``/``bias`` and
stores ``text_projection`` transposed. ControlNets (``control_model.``) add
``input_hint_block.{0,2,..}``, ``zero_convs.N.0`` and ``middle_block_out.0``.

A key this module does not know raises ``ValueError`` rather than being dropped, so a
change in diffusers' module layout shows up as a clear failure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."
CONTROLNET_PREFIX = "control_model."

StateDict = Mapping[str, Any]

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def _as_state_dict(model_or_state_dict: Any) -> StateDict:
    if hasattr(model_or_state_dict, "state_dict"):
        return model_or_state_dict.state_dict()
    return model_or_state_dict


def _split_param(key: str) -> tuple[str, str]:
    """``"a.b.weight"`` -> ``("a.b", "weight")``."""
    module, _, param = key.rpartition(".")
    return module, param


def _rename(module: str, table: Mapping[str, str], key: str) -> str:
    if module not in table:
        raise ValueError(
            f"no original-layout name for {key!r} (module {module!r} is not one of {sorted(table)})"
        )
    return table[module]


def _count(state_dict: StateDict, pattern: str) -> dict[int, int]:
    """For ``pattern`` like ``down_blocks\\.(\\d+)\\.resnets\\.(\\d+)\\.``: block -> number of layers."""
    counts: dict[int, int] = {}
    regex = re.compile(pattern)
    for key in state_dict:
        match = regex.match(key)
        if match:
            block, layer = int(match.group(1)), int(match.group(2))
            counts[block] = max(counts.get(block, 0), layer + 1)
    return counts


def _has(state_dict: StateDict, prefix: str) -> bool:
    return any(key.startswith(prefix) for key in state_dict)


class _UNetLayout:
    """Where each diffusers down/up layer sits in the flat ``input_blocks``/``output_blocks`` lists."""

    def __init__(self, state_dict: StateDict) -> None:
        down = _count(state_dict, r"down_blocks\.(\d+)\.resnets\.(\d+)\.")
        up = _count(state_dict, r"up_blocks\.(\d+)\.resnets\.(\d+)\.")
        self.down_start: dict[int, int] = {}
        index = 1  # input_blocks.0 is conv_in
        for block in sorted(down):
            self.down_start[block] = index
            # each level has its layers, then (except the last) one downsampler entry
            index += down[block] + (1 if _has(state_dict, f"down_blocks.{block}.downsamplers.") else 0)
        self.down_layers = down
        self.up_start: dict[int, int] = {}
        index = 0
        for block in sorted(up):
            self.up_start[block] = index
            index += up[block]
        self.up_layers = up
        self.up_has_attention = {b: _has(state_dict, f"up_blocks.{b}.attentions.") for b in up}


def _unet_body_key(key: str, layout: _UNetLayout) -> str | None:
    """Map keys shared by UNets and ControlNets (down path and middle block); None if not one."""
    if match := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
        block, layer, rest = int(match[1]), int(match[2]), match[3]
        module, param = _split_param(rest)
        return (
            f"input_blocks.{layout.down_start[block] + layer}.0.{_rename(module, _UNET_RESNET, key)}.{param}"
        )
    if match := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$", key):
        block, layer, rest = int(match[1]), int(match[2]), match[3]
        return f"input_blocks.{layout.down_start[block] + layer}.1.{rest}"
    if match := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)$", key):
        block = int(match[1])
        return f"input_blocks.{layout.down_start[block] + layout.down_layers[block]}.0.op.{match[2]}"
    if match := re.match(r"mid_block\.resnets\.(\d+)\.(.+)$", key):
        module, param = _split_param(match[2])
        return f"middle_block.{2 * int(match[1])}.{_rename(module, _UNET_RESNET, key)}.{param}"
    if match := re.match(r"mid_block\.attentions\.0\.(.+)$", key):
        return f"middle_block.1.{match[1]}"
    module, param = _split_param(key)
    if module in _TOP_LEVEL:
        return f"{_TOP_LEVEL[module]}.{param}"
    return None


def unet_to_ldm(unet: Any, prefix: str = UNET_PREFIX) -> dict[str, Any]:
    """A ``UNet2DConditionModel`` (or its state dict) under original key names.

    Works for SD1.5, SD2 and SDXL layouts (``label_emb`` for SDXL's ``add_embedding``),
    any number of levels, layers per level and transformer depths.
    """
    state_dict = _as_state_dict(unet)
    layout = _UNetLayout(state_dict)
    result: dict[str, Any] = {}
    for key, tensor in state_dict.items():
        name = _unet_body_key(key, layout)
        if name is None:
            name = _unet_up_key(key, layout)
        result[prefix + name] = tensor
    return result


def _unet_up_key(key: str, layout: _UNetLayout) -> str:
    if match := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
        block, layer, rest = int(match[1]), int(match[2]), match[3]
        module, param = _split_param(rest)
        return (
            f"output_blocks.{layout.up_start[block] + layer}.0.{_rename(module, _UNET_RESNET, key)}.{param}"
        )
    if match := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$", key):
        block, layer, rest = int(match[1]), int(match[2]), match[3]
        return f"output_blocks.{layout.up_start[block] + layer}.1.{rest}"
    if match := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)$", key):
        block = int(match[1])
        last = layout.up_start[block] + layout.up_layers[block] - 1
        slot = 2 if layout.up_has_attention[block] else 1
        return f"output_blocks.{last}.{slot}.conv.{match[2]}"
    raise ValueError(f"no original-layout name for UNet key {key!r}")


def controlnet_to_ldm(controlnet: Any, prefix: str = CONTROLNET_PREFIX) -> dict[str, Any]:
    """A ``ControlNetModel`` (or its state dict) in the original ``control_model.`` layout.

    The hint encoder maps to ``input_hint_block.{0, 2, 4, ...}`` (its SiLUs take the odd
    slots); with the standard four conditioning channels that ends at ``input_hint_block.14``.
    """
    state_dict = _as_state_dict(controlnet)
    layout = _UNetLayout(state_dict)
    hint_blocks = {
        int(m[1]) for k in state_dict if (m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.", k))
    }
    num_hint_blocks = len(hint_blocks)
    result: dict[str, Any] = {}
    for key, tensor in state_dict.items():
        name = _unet_body_key(key, layout)
        if name is None:
            name = _controlnet_key(key, num_hint_blocks)
        result[prefix + name] = tensor
    return result


def _controlnet_key(key: str, num_hint_blocks: int) -> str:
    if match := re.match(r"controlnet_down_blocks\.(\d+)\.(\w+)$", key):
        return f"zero_convs.{match[1]}.0.{match[2]}"
    if match := re.match(r"controlnet_mid_block\.(\w+)$", key):
        return f"middle_block_out.0.{match[1]}"
    if match := re.match(r"controlnet_cond_embedding\.conv_in\.(\w+)$", key):
        return f"input_hint_block.0.{match[1]}"
    if match := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.(\w+)$", key):
        return f"input_hint_block.{2 * int(match[1]) + 2}.{match[2]}"
    if match := re.match(r"controlnet_cond_embedding\.conv_out\.(\w+)$", key):
        return f"input_hint_block.{2 * num_hint_blocks + 2}.{match[1]}"
    raise ValueError(f"no original-layout name for ControlNet key {key!r}")


def vae_to_ldm(vae: Any, prefix: str = VAE_PREFIX) -> dict[str, Any]:
    """An ``AutoencoderKL`` (or its state dict) in the original ``first_stage_model.`` layout.

    The decoder's levels are numbered from the lowest resolution in the original code, so
    ``decoder.up_blocks.0`` becomes ``decoder.up.{n-1}``. Mid-block attention projections
    become 1x1-conv weights (``[C, C, 1, 1]``), as the original ``AttnBlock`` stores them.
    """
    state_dict = _as_state_dict(vae)
    num_up = len({int(m[1]) for k in state_dict if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))})
    result: dict[str, Any] = {}
    for key, tensor in state_dict.items():
        name, tensor = _vae_key(key, tensor, num_up)
        result[prefix + name] = tensor
    return result


def _vae_key(key: str, tensor: Any, num_up: int) -> tuple[str, Any]:
    if match := re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
        part, direction, block, layer, rest = match[1], match[2], int(match[3]), match[4], match[5]
        level = block if direction == "down" else num_up - 1 - block
        module, param = _split_param(rest)
        return f"{part}.{direction}.{level}.block.{layer}.{_rename(module, _VAE_RESNET, key)}.{param}", tensor
    if match := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)$", key):
        return f"encoder.down.{match[1]}.downsample.conv.{match[2]}", tensor
    if match := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)$", key):
        return f"decoder.up.{num_up - 1 - int(match[1])}.upsample.conv.{match[2]}", tensor
    if match := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$", key):
        module, param = _split_param(match[3])
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{_rename(module, _VAE_RESNET, key)}.{param}", tensor
    if match := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)$", key):
        module, param = _split_param(match[2])
        name = _rename(module, _VAE_ATTENTION, key)
        if param == "weight" and tensor.ndim == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        return f"{match[1]}.mid.attn_1.{name}.{param}", tensor
    if match := re.match(r"(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)\.(\w+)$", key):
        module = "norm_out" if match[2] == "conv_norm_out" else match[2]
        return f"{match[1]}.{module}.{match[3]}", tensor
    if match := re.match(r"(quant_conv|post_quant_conv)\.(\w+)$", key):
        return key, tensor
    raise ValueError(f"no original-layout name for VAE key {key!r}")


def clip_to_ldm(text_encoder: Any, prefix: str = CLIP_PREFIX) -> dict[str, Any]:
    """An OpenAI-CLIP ``CLIPTextModel`` (or its state dict) as SD1.5 stores it.

    The original files keep Hugging Face's names under ``<prefix>text_model.``; newer
    transformers dropped the ``text_model.`` level from ``CLIPTextModel``, so it is restored.
    Use ``prefix=SDXL_CLIP_PREFIX`` for SDXL's first text encoder.
    """
    state_dict = _as_state_dict(text_encoder)
    result: dict[str, Any] = {}
    for key, tensor in state_dict.items():
        if key.endswith("position_ids"):
            continue  # a buffer; original files may or may not carry it and loaders ignore it
        if not key.startswith(("text_model.", "text_projection.")):
            key = "text_model." + key
        result[prefix + key] = tensor
    return result


def openclip_to_ldm(text_encoder: Any, prefix: str = SDXL_OPENCLIP_PREFIX) -> dict[str, Any]:
    """A ``CLIPTextModel(WithProjection)`` (or its state dict) in OpenCLIP's layout.

    Per layer, ``q/k/v_proj`` fuse into ``attn.in_proj_weight``/``in_proj_bias`` (q, k, v
    stacked on dim 0); ``text_projection`` (a ``Linear`` weight ``[proj, width]``) is stored
    as the matrix ``[width, proj]`` that OpenCLIP multiplies by. Use
    ``prefix=SD2_OPENCLIP_PREFIX`` for SD2's encoder.
    """
    state_dict = {k.removeprefix("text_model."): v for k, v in _as_state_dict(text_encoder).items()}
    fixed = {
        "embeddings.token_embedding.weight": "token_embedding.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "final_layer_norm.weight": "ln_final.weight",
        "final_layer_norm.bias": "ln_final.bias",
    }
    result: dict[str, Any] = {}
    fused: dict[tuple[int, str], dict[str, Any]] = {}
    for key, tensor in state_dict.items():
        if key.endswith("position_ids"):
            continue
        if key in fixed:
            result[prefix + fixed[key]] = tensor
        elif key == "text_projection.weight":
            result[prefix + "text_projection"] = tensor.T.contiguous()
        elif match := re.match(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", key):
            fused.setdefault((int(match[1]), match[3]), {})[match[2]] = tensor
        elif match := re.match(r"encoder\.layers\.(\d+)\.(.+)$", key):
            module, param = _split_param(match[2])
            result[
                f"{prefix}transformer.resblocks.{match[1]}.{_rename(module, _OPENCLIP_LAYER, key)}.{param}"
            ] = tensor
        else:
            raise ValueError(f"no OpenCLIP name for text-encoder key {key!r}")
    import torch

    for (layer, param), parts in sorted(fused.items()):
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"text-encoder layer {layer} has only {sorted(parts)} of q/k/v {param}s")
        name = f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{param}"
        result[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return result


def checkpoint_from_components(
    architecture: str,
    *,
    unet: Any,
    vae: Any,
    text_encoder: Any,
    text_encoder_2: Any = None,
) -> dict[str, Any]:
    """One single-file checkpoint dict (original keys) from diffusers components.

    ``architecture`` is ``"sd15"`` (CLIP-L), ``"sd2"`` (OpenCLIP under
    ``cond_stage_model.model.``) or ``"sdxl"`` (two encoders under ``conditioner.embedders``).
    """
    builders: dict[str, Callable[[], dict[str, Any]]] = {
        "sd15": lambda: clip_to_ldm(text_encoder, CLIP_PREFIX),
        "sd2": lambda: openclip_to_ldm(text_encoder, SD2_OPENCLIP_PREFIX),
        "sdxl": lambda: {
            **clip_to_ldm(text_encoder, SDXL_CLIP_PREFIX),
            **openclip_to_ldm(_required(text_encoder_2, "text_encoder_2"), SDXL_OPENCLIP_PREFIX),
        },
    }
    if architecture not in builders:
        raise ValueError(f"architecture {architecture!r} is not one of {sorted(builders)}")
    return {**unet_to_ldm(unet), **vae_to_ldm(vae), **builders[architecture]()}


def _required(value: Any, name: str) -> Any:
    if value is None:
        raise ValueError(f"an SDXL checkpoint needs {name}")
    return value
