"""Tiny random IP-Adapter, InstantID, CLIP image encoder and insightface weights, in the real formats.

Everything here is written the way the published files are, only small, so ctrlgen's real
loading code (model store identification, diffusers' ``load_ip_adapter``, transformers'
``from_pretrained``, insightface's ONNX classes) runs on it unchanged:

* IP-Adapters as h94 ships them (``ip-adapter_sd15.safetensors`` and friends): ``image_proj.*``
  (the image projection in its original key names: ``proj``/``norm``, the ``Resampler``'s
  ``latents``/``proj_in``/``layers.N.0.to_kv``/``layers.N.1.1``, FaceID's ``proj.0``/``proj.2``,
  FaceID-Plus' ``perceiver_resampler.*``) and ``ip_adapter.<i>.to_k_ip.weight`` /
  ``to_v_ip.weight`` with ``i`` the index of the cross-attention processor among *all* of the
  UNet's attention processors (odd numbers), plus FaceID's LoRA (``to_q_lora.down.weight`` ...);
* InstantID's ``ip-adapter`` (a ``Resampler`` over the 512-number ArcFace embedding);
* a ``CLIPVisionModelWithProjection`` folder (``config.json`` + ``model.safetensors``), as
  h94/IP-Adapter's ``models/image_encoder``;
* insightface model packs (``antelopev2``: ``scrfd_10g_bnkps.onnx`` + ``glintr100.onnx``;
  ``buffalo_l``: ``det_10g.onnx`` + ``w600k_r50.onnx``): SCRFD's nine outputs (scores, boxes,
  five keypoints at strides 8/16/32, two anchors per cell) and ArcFace's 112×112 → 512 network.

Sizes follow the tiny UNets of :mod:`ctrlgen.testing.tiny` (cross-attention width 32 for SD1.5,
96 for SDXL). Resamplers keep diffusers' fixed choices (depth 4, 64-wide heads, feed-forward ×4),
since its converter infers the rest from tensor shapes. :func:`add_tiny_ip_adapter_models`
places them in an A1111/ComfyUI root.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TINY_IP_VERSION = "1"
FACE_EMBEDDING_DIM = 512  # ArcFace (antelopev2 glintr100 / buffalo_l w600k_r50)
CLIP_VISION = {"hidden_size": 32, "projection_dim": 16, "image_size": 32, "patch_size": 8}
_RESAMPLER_DIM = 64  # one 64-wide head, as diffusers' converter assumes heads = to_q rows // 64
_QUERIES = 4
_LORA_RANK = 4

# name -> (architecture, kind); kind picks the image projection the file carries
IP_ADAPTERS = {
    "tiny-ip-adapter_sd15": ("sd15", "base"),
    "tiny-ip-adapter-plus_sd15": ("sd15", "plus"),
    "tiny-ip-adapter-full-face_sd15": ("sd15", "full"),
    "tiny-ip-adapter-faceid_sd15": ("sd15", "faceid"),
    "tiny-ip-adapter-faceid-plusv2_sd15": ("sd15", "faceid_plus"),
    "tiny-ip-adapter_sdxl": ("sdxl", "base"),
    "tiny-ip-adapter-plus_sdxl": ("sdxl", "plus"),
}
INSTANTID = "tiny-instantid-ip-adapter"
IDENTITYNET = "tiny-instantid-controlnet"  # the tiny SDXL ControlNet under its own name
IMAGE_ENCODER = "tiny-clip-vision"


@dataclass(frozen=True)
class TinyIPModels:
    """Where :func:`add_tiny_ip_adapter_models` put things (names are model-store references)."""

    root: Path
    ip_adapters: dict[str, Path]
    instantid: Path
    identitynet: Path
    image_encoder: Path
    insightface: dict[str, Path]  # pack name -> folder with the ONNX files


# ---------------------------------------------------------------- tensors


class _Random:
    def __init__(self, seed: int) -> None:
        import torch

        self.torch = torch
        self.generator = torch.Generator().manual_seed(seed)

    def linear(self, out_features: int, in_features: int):
        return self.torch.randn(out_features, in_features, generator=self.generator) / in_features**0.5

    def bias(self, size: int, std: float = 0.02):
        return self.torch.randn(size, generator=self.generator) * std

    def norm(self, size: int):
        return 1.0 + self.bias(size, 0.1)


def cross_attention_layers(unet_config: dict[str, Any]) -> list[tuple[int, str, int, int | None]]:
    """``(index, processor name, hidden size, cross-attention width or None)`` of every attention
    processor of a UNet with this config, in ``unet.attn_processors`` order (h94's numbering)."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    unet = UNet2DConditionModel.from_config(config)
    channels = list(unet.config.block_out_channels)
    layers = []
    for index, name in enumerate(unet.attn_processors):
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name.split(".")[1])]
        else:
            hidden = channels[int(name.split(".")[1])]
        cross = None if name.endswith("attn1.processor") else unet.config.cross_attention_dim
        layers.append((index, name, hidden, cross))
    return layers


def _resampler(
    rand: _Random, prefix: str, dim: int, embedding_dim: int, output_dim: int, latents: bool
) -> dict[str, Any]:
    """h94's ``Resampler`` / ``FacePerceiverResampler`` keys (depth 4, one 64-wide head, ff ×4)."""
    inner, ff = 64, dim * 4
    state = {
        f"{prefix}proj_in.weight": rand.linear(dim, embedding_dim),
        f"{prefix}proj_in.bias": rand.bias(dim),
        f"{prefix}proj_out.weight": rand.linear(output_dim, dim),
        f"{prefix}proj_out.bias": rand.bias(output_dim),
        f"{prefix}norm_out.weight": rand.norm(output_dim),
        f"{prefix}norm_out.bias": rand.bias(output_dim),
    }
    if latents:
        state[f"{prefix}latents"] = rand.torch.randn(1, _QUERIES, dim, generator=rand.generator) / dim**0.5
    for layer in range(4):
        p = f"{prefix}layers.{layer}."
        state.update(
            {
                f"{p}0.norm1.weight": rand.norm(dim),
                f"{p}0.norm1.bias": rand.bias(dim),
                f"{p}0.norm2.weight": rand.norm(dim),
                f"{p}0.norm2.bias": rand.bias(dim),
                f"{p}0.to_q.weight": rand.linear(inner, dim),
                f"{p}0.to_kv.weight": rand.linear(2 * inner, dim),
                f"{p}0.to_out.weight": rand.linear(dim, inner),
                f"{p}1.0.weight": rand.norm(dim),
                f"{p}1.0.bias": rand.bias(dim),
                f"{p}1.1.weight": rand.linear(ff, dim),
                f"{p}1.3.weight": rand.linear(dim, ff),
            }
        )
    return state


def image_projection_state(kind: str, cross: int, seed: int = 0) -> dict[str, Any]:
    """The ``image_proj.*`` tensors of an IP-Adapter ``kind`` (base, plus, full, faceid,
    faceid_plus, instantid) for a UNet with cross-attention width ``cross``."""
    rand = _Random(seed)
    clip_hidden, clip_projection = CLIP_VISION["hidden_size"], CLIP_VISION["projection_dim"]
    p = "image_proj."
    if kind == "base":  # ImageProjModel: 4 tokens from the projected CLIP embedding
        return {
            f"{p}proj.weight": rand.linear(4 * cross, clip_projection),
            f"{p}proj.bias": rand.bias(4 * cross),
            f"{p}norm.weight": rand.norm(cross),
            f"{p}norm.bias": rand.bias(cross),
        }
    if kind == "plus":
        return _resampler(rand, p, _RESAMPLER_DIM, clip_hidden, cross, latents=True)
    if kind == "instantid":
        return _resampler(rand, p, _RESAMPLER_DIM, FACE_EMBEDDING_DIM, cross, latents=True)
    if kind == "full":  # MLPProjModel over every CLIP token
        return {
            f"{p}proj.0.weight": rand.linear(clip_hidden, clip_hidden),
            f"{p}proj.0.bias": rand.bias(clip_hidden),
            f"{p}proj.2.weight": rand.linear(cross, clip_hidden),
            f"{p}proj.2.bias": rand.bias(cross),
            f"{p}proj.3.weight": rand.norm(cross),
            f"{p}proj.3.bias": rand.bias(cross),
        }
    if kind in ("faceid", "faceid_plus"):  # MLPProjModel (FaceID) / ProjPlusModel (FaceID-Plus)
        hidden = 2 * FACE_EMBEDDING_DIM
        state = {
            f"{p}proj.0.weight": rand.linear(hidden, FACE_EMBEDDING_DIM),
            f"{p}proj.0.bias": rand.bias(hidden),
            f"{p}proj.2.weight": rand.linear(4 * cross, hidden),
            f"{p}proj.2.bias": rand.bias(4 * cross),
            f"{p}norm.weight": rand.norm(cross),
            f"{p}norm.bias": rand.bias(cross),
        }
        if kind == "faceid_plus":
            state.update(
                _resampler(rand, f"{p}perceiver_resampler.", cross, clip_hidden, cross, latents=False)
            )
        return state
    raise ValueError(f"unknown IP-Adapter kind {kind!r}")


def ip_layer_state(
    layers: list[tuple[int, str, int, int | None]], seed: int = 1, lora_rank: int = 0
) -> dict[str, Any]:
    """``ip_adapter.<i>.to_k_ip/to_v_ip`` for every cross-attention processor ``i`` (and FaceID's
    LoRA ``to_{q,k,v,out}_lora.{down,up}.weight`` on every processor when ``lora_rank``)."""
    rand = _Random(seed)
    state: dict[str, Any] = {}
    for index, _name, hidden, cross in layers:
        p = f"ip_adapter.{index}."
        if cross is not None:
            state[f"{p}to_k_ip.weight"] = rand.linear(hidden, cross)
            state[f"{p}to_v_ip.weight"] = rand.linear(hidden, cross)
        if lora_rank:
            for part, width in (
                ("to_q", hidden),
                ("to_k", cross or hidden),
                ("to_v", cross or hidden),
                ("to_out", hidden),
            ):
                state[f"{p}{part}_lora.down.weight"] = rand.linear(lora_rank, width)
                state[f"{p}{part}_lora.up.weight"] = rand.bias(hidden * lora_rank).reshape(hidden, lora_rank)
    return state


# ---------------------------------------------------------------- files


def write_ip_adapter(path: Path, unet_config: dict[str, Any], kind: str, seed: int = 0) -> Path:
    """One IP-Adapter ``.safetensors`` file in h94's layout for a UNet with ``unet_config``."""
    from safetensors.torch import save_file

    layers = cross_attention_layers(unet_config)
    state = image_projection_state(kind, unet_config["cross_attention_dim"], seed)
    state.update(ip_layer_state(layers, seed + 1, _LORA_RANK if kind in ("faceid", "faceid_plus") else 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def write_image_encoder(folder: Path, seed: int = 0) -> Path:
    """A tiny ``CLIPVisionModelWithProjection`` saved as a transformers folder."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, hidden_act="gelu", **CLIP_VISION
    )
    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def write_tiny_scrfd(path: Path, seed: int = 0) -> Path:
    """A random SCRFD-format ONNX (``scrfd_10g_bnkps.onnx`` / ``det_10g.onnx``): input ``input.1``
    1×3×H×W; outputs scores, boxes and five keypoints at strides 8, 16, 32 (two anchors per cell)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights, outputs = [], [], {"score": [], "bbox": [], "kps": []}
    for stride in (8, 16, 32):
        for kind, channels, width in (("score", 2, 1), ("bbox", 8, 4), ("kps", 20, 10)):
            name = f"{kind}_{stride}"
            weights += [
                numpy_helper.from_array(
                    (rng.standard_normal((channels, 3, stride, stride)) * 0.02).astype(np.float32),
                    f"w_{name}",
                ),
                numpy_helper.from_array(
                    (rng.standard_normal(channels) * 0.5).astype(np.float32), f"b_{name}"
                ),
                numpy_helper.from_array(np.array([-1, width], np.int64), f"shape_{name}"),
            ]
            nodes += [
                helper.make_node(
                    "Conv",
                    ["input.1", f"w_{name}", f"b_{name}"],
                    [f"conv_{name}"],
                    kernel_shape=[stride, stride],
                    strides=[stride, stride],
                ),
                helper.make_node("Transpose", [f"conv_{name}"], [f"nhwc_{name}"], perm=[0, 2, 3, 1]),
                helper.make_node("Reshape", [f"nhwc_{name}", f"shape_{name}"], [f"flat_{name}"]),
            ]
            if kind == "score":
                nodes.append(helper.make_node("Sigmoid", [f"flat_{name}"], [name]))
            elif kind == "bbox":  # distances to the box sides: positive, up to 4 strides
                weights.append(numpy_helper.from_array(np.array(4.0, np.float32), f"four_{name}"))
                nodes += [
                    helper.make_node("Sigmoid", [f"flat_{name}"], [f"sig_{name}"]),
                    helper.make_node("Mul", [f"sig_{name}", f"four_{name}"], [name]),
                ]
            else:
                nodes.append(helper.make_node("Identity", [f"flat_{name}"], [name]))
            outputs[kind].append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, width]))
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, None, None])
    graph = helper.make_graph(
        nodes, "tiny_scrfd", [image], outputs["score"] + outputs["bbox"] + outputs["kps"], weights
    )
    _save_onnx(graph, path)
    return path


def write_tiny_arcface(path: Path, seed: int = 0) -> Path:
    """A random ArcFace-format ONNX (``glintr100.onnx`` / ``w600k_r50.onnx``): ``input.1`` N×3×112×112
    (normalised as (x - 127.5) / 127.5 by insightface) -> one N×512 embedding."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    features = 8 * 7 * 7
    weights = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 16, 16)) / 16).astype(np.float32), "conv_w"),
        numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "conv_b"),
        numpy_helper.from_array(
            (rng.standard_normal((features, FACE_EMBEDDING_DIM)) / features**0.5).astype(np.float32), "fc_w"
        ),
        numpy_helper.from_array((rng.standard_normal(FACE_EMBEDDING_DIM) * 0.1).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node(
            "Conv",
            ["input.1", "conv_w", "conv_b"],
            ["conv"],
            name="Conv_0",
            kernel_shape=[16, 16],
            strides=[16, 16],
        ),
        helper.make_node("Relu", ["conv"], ["relu"], name="Relu_1"),
        helper.make_node("Flatten", ["relu"], ["flat"], name="Flatten_2", axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["embedding"], name="Gemm_3"),
    ]
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])
    output = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["None", FACE_EMBEDDING_DIM])
    _save_onnx(helper.make_graph(nodes, "tiny_arcface", [image], [output], weights), path)
    return path


def _save_onnx(graph: Any, path: Path) -> None:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


INSIGHTFACE_PACKS = {
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
}


def add_tiny_ip_adapter_models(root: Any) -> TinyIPModels:
    """Place the tiny IP-Adapters, InstantID adapter, image encoder and insightface packs under an
    install ``root`` (a :class:`~ctrlgen.testing.tiny.TinyModelRoot` or a folder holding
    ``models/``), next to the tiny checkpoints, in the folders A1111/ComfyUI users have:

    * ``models/ipadapter/<name>.safetensors`` (ComfyUI; A1111 users keep them in ``models/ControlNet``);
    * ``models/instantid/tiny-instantid-ip-adapter.safetensors`` (ComfyUI_InstantID's folder);
    * ``tiny-instantid-controlnet.safetensors`` (IdentityNet: the tiny SDXL ControlNet, linked
      under its own name next to it, as ComfyUI users rename InstantID's ControlNet);
    * ``models/clip_vision/tiny-clip-vision/`` (a transformers folder);
    * ``models/insightface/models/{antelopev2,buffalo_l}/*.onnx`` (insightface's own layout).

    The tiny SD1.5 and SDXL checkpoints' sidecar configs give the UNet shapes. Idempotent.
    """
    from ctrlgen.core.models.configs import link_or_copy, read_sidecar, sidecar_path

    base = Path(getattr(root, "root", root))
    models = base / "models"
    controlnets = getattr(root, "controlnets", None) or {
        "sdxl": next(p for p in models.glob("*/tiny-controlnet-sdxl.safetensors"))
    }
    result = TinyIPModels(
        root=base,
        ip_adapters={name: models / "ipadapter" / f"{name}.safetensors" for name in IP_ADAPTERS},
        instantid=models / "instantid" / f"{INSTANTID}.safetensors",
        identitynet=Path(controlnets["sdxl"]).with_name(f"{IDENTITYNET}.safetensors"),
        image_encoder=models / "clip_vision" / IMAGE_ENCODER,
        insightface={pack: models / "insightface" / "models" / pack for pack in INSIGHTFACE_PACKS},
    )
    marker = models / f".tiny-ip-adapter-v{TINY_IP_VERSION}"
    if marker.is_file():
        return result
    checkpoints = getattr(root, "checkpoints", None) or {
        arch: next((models / folder).glob(f"tiny-{arch}.safetensors"))
        for arch in ("sd15", "sdxl")
        for folder in ("Stable-diffusion", "checkpoints")
        if (models / folder).is_dir()
    }
    unet_configs = {arch: read_sidecar(Path(path))["unet/config.json"] for arch, path in checkpoints.items()}
    for seed, (name, (arch, kind)) in enumerate(IP_ADAPTERS.items()):
        write_ip_adapter(result.ip_adapters[name], unet_configs[arch], kind, seed=10 * seed)
    write_ip_adapter(result.instantid, unet_configs["sdxl"], "instantid", seed=100)
    for source, target in (
        (Path(controlnets["sdxl"]), result.identitynet),
        (sidecar_path(Path(controlnets["sdxl"])), sidecar_path(result.identitynet)),
    ):
        if not target.exists():
            link_or_copy(source, target)
    write_image_encoder(result.image_encoder)
    for seed, (pack, (detector, recognizer)) in enumerate(INSIGHTFACE_PACKS.items()):
        write_tiny_scrfd(result.insightface[pack] / detector, seed=seed)
        write_tiny_arcface(result.insightface[pack] / recognizer, seed=seed)
    marker.write_text(json.dumps({"version": TINY_IP_VERSION}), encoding="utf-8")
    return result
