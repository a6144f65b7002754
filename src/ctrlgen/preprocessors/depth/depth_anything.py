"""Depth Anything V2 on transformers' ``DepthAnythingForDepthEstimation`` (not a plugin).

Two on-disk forms of the same weights are accepted, looked up per size in this order:

* the original release file (``depth_anything_v2_vits.pth`` / ``vitb`` / ``vitl``, from
  ``depth-anything/Depth-Anything-V2-Small`` etc.), which sd-webui-controlnet
  (``annotator/downloads/depth_anything_v2/``) and comfyui_controlnet_aux
  (``ckpts/depth-anything/Depth-Anything-V2-Large/``) use. Its keys are mapped onto the
  transformers model the way transformers' own conversion script does
  (``convert_depth_anything_to_hf.py``), and its config is read off the tensor shapes;
* the transformers folder (``depth-anything/Depth-Anything-V2-Small-hf`` etc.: config.json +
  model.safetensors), e.g. in the Hugging Face cache, loaded with ``local_files_only``.

Inference follows the original ``DepthAnythingV2.infer_image`` (what sd-webui-controlnet and
comfyui_controlnet_aux call): the RGB image in ``[0, 1]`` resized with bicubic interpolation so
its short side is at least ``detect_resolution`` (sides multiples of 14), ImageNet
normalisation, the relative depth (disparity: near = large) resized back bilinearly
(``align_corners=True``) to the input's size, then min-max scaled to ``0..255``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ctrlgen.core.errors import ModelFormatError
from ctrlgen.core.models import annotators
from ctrlgen.core.plugins.specs import WeightFile

OWNER = "depth_anything_v2"
SIZES = ("small", "base", "large")
_ENCODERS = {"small": "vits", "base": "vitb", "large": "vitl"}
WEIGHTS = {
    size: WeightFile(
        f"depth_anything_v2_{encoder}.pth",
        source=f"depth-anything/Depth-Anything-V2-{size.title()}",
        alternatives=(f"depth-anything/Depth-Anything-V2-{size.title()}-hf/model.safetensors",),
    )
    for size, encoder in _ENCODERS.items()
}
# The DINOv2 layers the DPT head reads, by depth of the backbone (the original code's
# intermediate_layer_idx, counted from 1 as transformers' out_indices are).
_OUT_INDICES = {12: [3, 6, 9, 12], 24: [5, 12, 18, 24], 40: [10, 20, 30, 40]}
_MEAN = np.array([0.485, 0.456, 0.406])
_STD = np.array([0.229, 0.224, 0.225])


def depth_map(image: np.ndarray, size: str, detect_resolution: int) -> np.ndarray:
    """The ``uint8`` H×W depth map (near = bright) of an RGB ``uint8`` image."""
    disparity = predict(load_model(size), image, detect_resolution)
    low, high = float(disparity.min()), float(disparity.max())
    if high - low <= 0:
        return np.zeros(image.shape[:2], np.uint8)
    return ((disparity - low) / (high - low) * 255.0).astype(np.uint8)


def network_size(width: int, height: int, short_side: int, multiple: int = 14) -> tuple[int, int]:
    """The original ``Resize(lower_bound, keep_aspect_ratio, ensure_multiple_of=14)`` size."""
    scale = short_side / min(width, height)

    def constrain(value: float) -> int:
        rounded = int(np.round(value / multiple) * multiple)
        return rounded if rounded >= short_side else int(math.ceil(value / multiple) * multiple)

    return max(multiple, constrain(width * scale)), max(multiple, constrain(height * scale))


def predict(model: Any, image: np.ndarray, detect_resolution: int) -> np.ndarray:
    """Relative depth (disparity) of ``image`` at its own size, as float32 H×W."""
    import cv2
    import torch
    import torch.nn.functional as F

    height, width = image.shape[:2]
    short = detect_resolution if detect_resolution > 0 else min(width, height)
    net_w, net_h = network_size(width, height, short)
    # float64 until the tensor, as the original transform computes
    pixels = cv2.resize(image / 255.0, (net_w, net_h), interpolation=cv2.INTER_CUBIC)
    pixels = ((pixels - _MEAN) / _STD).transpose(2, 0, 1).astype(np.float32)
    device = next(iter(model.parameters())).device
    tensor = torch.from_numpy(np.ascontiguousarray(pixels))[None].to(device)
    with torch.no_grad():
        depth = model(pixel_values=tensor).predicted_depth
        depth = F.interpolate(depth[:, None], (height, width), mode="bilinear", align_corners=True)[0, 0]
    return depth.float().cpu().numpy()


def load_model(size: str) -> Any:
    """The model for ``size`` from the store (original .pth or -hf folder), loaded once."""
    owner = f"{OWNER} ({size})"
    path = annotators.weight_path(owner, WEIGHTS[size])
    device = annotators.torch_device()

    def loader() -> Any:
        if path.suffix == ".safetensors" and (path.parent / "config.json").is_file():
            model = load_folder(path.parent)
        else:
            model = load_original(path, annotators.load_weights(owner, WEIGHTS[size]))
        return model.float().eval().requires_grad_(False).to(device)

    return annotators.loaded(OWNER, loader, key=(str(path), device))


def load_folder(folder: Path) -> Any:
    import torch
    from transformers import DepthAnythingForDepthEstimation

    try:
        return DepthAnythingForDepthEstimation.from_pretrained(
            str(folder), local_files_only=True, dtype=torch.float32
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelFormatError(
            f"{folder} is not a loadable Depth Anything V2 transformers folder: {str(exc).splitlines()[0]}"
        ) from None


def load_original(path: Path, state: dict[str, Any]) -> Any:
    """A transformers model holding the original release file's tensors."""
    from transformers import DepthAnythingForDepthEstimation

    try:
        config = config_from_original(state)
    except KeyError as exc:
        raise ModelFormatError(
            f"{path} is not a Depth Anything V2 checkpoint: it has no tensor {exc}"
        ) from None
    model = DepthAnythingForDepthEstimation(config)
    converted = convert_original(state, config.backbone_config.hidden_size, set(model.state_dict()))
    missing = sorted(set(model.state_dict()) - converted.keys())
    if missing:
        raise ModelFormatError(
            f"{path} lacks {len(missing)} tensors a Depth Anything V2 model needs (e.g. {missing[0]}); "
            "is it the right file?"
        )
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as exc:
        reason = str(exc).splitlines()[-1]
        raise ModelFormatError(f"{path} does not fit Depth Anything V2: {reason}") from None
    return model


def config_from_original(state: dict[str, Any]) -> Any:
    """DepthAnythingConfig read off the original checkpoint's tensor shapes."""
    from transformers import DepthAnythingConfig, Dinov2Config

    hidden = state["pretrained.cls_token"].shape[-1]
    layers = len({m.group(1) for key in state if (m := re.match(r"pretrained\.blocks\.(\d+)\.", key))})
    patch = state["pretrained.patch_embed.proj.weight"].shape[-1]
    grid = int(round(math.sqrt(state["pretrained.pos_embed"].shape[1] - 1)))
    out_indices = _OUT_INDICES.get(layers) or [layers * i // 4 for i in (1, 2, 3, 4)]
    backbone = Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),  # DINOv2 uses 64-wide heads (ViT-S 6, B 12, L 16)
        mlp_ratio=state["pretrained.blocks.0.mlp.fc1.weight"].shape[0] // hidden,
        patch_size=patch,
        image_size=grid * patch,
        out_indices=out_indices,
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=hidden,
        patch_size=patch,
        neck_hidden_sizes=[state[f"depth_head.projects.{i}.weight"].shape[0] for i in range(4)],
        fusion_hidden_size=state["depth_head.scratch.layer1_rn.weight"].shape[0],
        head_hidden_size=state["depth_head.scratch.output_conv2.0.weight"].shape[0],
        depth_estimation_type="relative",
    )


def convert_original(state: dict[str, Any], hidden: int, model_keys: set[str]) -> dict[str, Any]:
    """The original checkpoint's tensors under transformers' names (its conversion script's map).

    transformers 5 names the attention projections ``q_proj``..``o_proj``; older versions
    ``attention.attention.query``..``attention.output.dense``: ``model_keys`` tells which.
    """
    new_names = "backbone.encoder.layer.0.attention.q_proj.weight" in model_keys
    attention = (("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj")
                 if new_names else ("attention.attention.query", "attention.attention.key",
                                    "attention.attention.value", "attention.output.dense"))
    fixed = {
        "pretrained.cls_token": "backbone.embeddings.cls_token",
        "pretrained.mask_token": "backbone.embeddings.mask_token",
        "pretrained.pos_embed": "backbone.embeddings.position_embeddings",
        "pretrained.patch_embed.proj": "backbone.embeddings.patch_embeddings.projection",
        "pretrained.norm": "backbone.layernorm",
        "depth_head.scratch.output_conv1": "head.conv1",
        "depth_head.scratch.output_conv2.0": "head.conv2",
        "depth_head.scratch.output_conv2.2": "head.conv3",
    }
    block_parts = {"ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1",
                   "norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
                   "attn.proj": attention[3]}
    fusion_unit = {"out_conv": "projection", "resConfUnit1.conv1": "residual_layer1.convolution1",
                   "resConfUnit1.conv2": "residual_layer1.convolution2",
                   "resConfUnit2.conv1": "residual_layer2.convolution1",
                   "resConfUnit2.conv2": "residual_layer2.convolution2"}
    converted: dict[str, Any] = {}
    for key, value in state.items():
        stem, _, leaf = key.rpartition(".")
        if key in fixed:  # tokens and position embeddings have no .weight/.bias leaf
            converted[fixed[key]] = value
        elif stem in fixed:
            converted[f"{fixed[stem]}.{leaf}"] = value
        elif m := re.fullmatch(r"pretrained\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", key):
            for part, name in enumerate(attention[:3]):  # qkv stacks query, key, value
                converted[f"backbone.encoder.layer.{m[1]}.{name}.{m[2]}"] = value[part * hidden:][:hidden]
        elif m := re.fullmatch(r"pretrained\.blocks\.(\d+)\.(.+)", key):
            part = m[2] if m[2] in block_parts else m[2].rpartition(".")[0]
            if part in block_parts:
                converted[f"backbone.encoder.layer.{m[1]}.{block_parts[part]}{m[2][len(part):]}"] = value
        elif m := re.fullmatch(r"depth_head\.projects\.(\d)\.(weight|bias)", key):
            converted[f"neck.reassemble_stage.layers.{m[1]}.projection.{m[2]}"] = value
        elif m := re.fullmatch(r"depth_head\.resize_layers\.(\d)\.(weight|bias)", key):
            converted[f"neck.reassemble_stage.layers.{m[1]}.resize.{m[2]}"] = value
        elif m := re.fullmatch(r"depth_head\.scratch\.layer(\d)_rn\.weight", key):
            converted[f"neck.convs.{int(m[1]) - 1}.weight"] = value
        elif m := re.fullmatch(r"depth_head\.scratch\.refinenet(\d)\.(.+)\.(weight|bias)", key):
            if m[2] in fusion_unit:  # refinenet4 (deepest) is transformers' fusion layer 0
                converted[f"neck.fusion_stage.layers.{4 - int(m[1])}.{fusion_unit[m[2]]}.{m[3]}"] = value
    return converted
