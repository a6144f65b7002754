"""Random-weight depth and normal files in the real formats, for tests (not a plugin).

Each writer puts one file under its real name, with the real container, key names and
dtype, so ctrlgen's real loading code (and controlnet_aux's ``from_pretrained``) runs on it:

==================================  ==========================================================
``dpt_hybrid-midas-501f0c75.pt``    MiDaS ``DPTDepthModel`` (ViT-B + ResNet-50), bare state dict
``ZoeD_M12_N.pt``                   ``{"model": ...}`` of ``ZoeDepth`` (BEiT-L 384), full size
``res101.pth``                      ``{"depth_model": ...}`` of ``RelDepthModel``, ``module.`` keys
``latest_net_G.pth``                pix2pix ``UnetGenerator`` (unet_1024), bare state dict
``scannet.pt``                      ``{"model": ...}`` of BAE's ``NNET``, ``module.`` keys
``depth_anything_v2_vit?.pth``      original Depth Anything V2 keys, of a tiny config
``Depth-Anything-V2-*-hf/``         transformers folder (``save_pretrained``) of a tiny config
==================================  ==========================================================

The controlnet_aux architectures are fixed, so those files are full size (MiDaS 0.5 GB,
ZoeDepth 1.4 GB, LeReS 0.5 + 0.3 GB). Writers are seeded and idempotent (an existing file is
kept); the global torch RNG is left as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .tiny_lines import write_seeded


def _with_prefix(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {prefix + key: value for key, value in state.items()}


def _randomise_batch_norms(network: Any) -> Any:
    """Non-trivial BatchNorm statistics (the defaults make them identities)."""
    import torch

    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.8, 1.2)
    return network


def write_midas(folder: Path) -> Path:
    from ctrlgen.preprocessors.depth.networks import build_midas, quiet

    def make() -> Any:
        with quiet():
            network = build_midas()
        return network.state_dict()

    return write_seeded(folder, "dpt_hybrid-midas-501f0c75.pt", 1, make)


def write_zoe(folder: Path) -> Path:
    from ctrlgen.preprocessors.depth.networks import build_zoe, quiet

    def make() -> Any:
        with quiet():
            network = build_zoe()
        return {"model": network.state_dict()}

    return write_seeded(folder, "ZoeD_M12_N.pt", 2, make)


def write_leres(folder: Path) -> Path:
    from ctrlgen.preprocessors.depth.networks import build_leres

    return write_seeded(folder, "res101.pth", 3,
                        lambda: {"depth_model": _with_prefix(_randomise_batch_norms(build_leres()).state_dict(),
                                                             "module.")})


def write_leres_boost(folder: Path) -> Path:
    def make() -> Any:
        from controlnet_aux.leres.pix2pix.models.networks import define_G

        return define_G(2, 1, 64, "unet_1024", "none", False, "normal", 0.02, []).state_dict()

    return write_seeded(folder, "latest_net_G.pth", 4, make)


def write_normal_bae(folder: Path) -> Path:
    import torch

    from ctrlgen.preprocessors.depth.networks import build_normal_bae, quiet

    def make() -> Any:
        with quiet():
            network = _randomise_batch_norms(build_normal_bae())
        with torch.no_grad():  # with its random biases the decoder draws one flat colour
            for name, parameter in network.decoder.named_parameters():
                if name.endswith("bias"):
                    parameter.zero_()
        return {"model": _with_prefix(network.state_dict(), "module.")}

    return write_seeded(folder, "scannet.pt", 5, make)


def tiny_depth_anything(seed: int = 6) -> Any:
    """A small ``DepthAnythingForDepthEstimation`` (ViT with 4 layers of width 64, patch 14)."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=1, mlp_ratio=4,
                            image_size=70, patch_size=14, out_indices=[1, 2, 3, 4], apply_layernorm=True,
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=64, patch_size=14,
                                 neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=16,
                                 head_hidden_size=8, depth_estimation_type="relative")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DepthAnythingForDepthEstimation(config).eval()
        with torch.no_grad():  # layer scales start at 1; varied values catch swapped ls1/ls2
            for name, parameter in model.named_parameters():
                if "lambda1" in name:
                    parameter.uniform_(0.5, 1.5)
    return model


def write_depth_anything_folder(folder: Path, seed: int = 6) -> Path:
    """A transformers folder (config.json + model.safetensors), as the ``-hf`` repos are."""
    folder = Path(folder)
    if not (folder / "model.safetensors").is_file():
        tiny_depth_anything(seed).save_pretrained(folder)
    return folder


def write_depth_anything_original(path: Path, seed: int = 6) -> Path:
    """The same tiny model in the original release's format (``DepthAnythingV2.state_dict()``)."""
    return write_seeded(Path(path).parent, Path(path).name, seed, lambda: original_state_dict(tiny_depth_anything(seed)))


def original_state_dict(model: Any) -> dict[str, Any]:
    """``model``'s tensors under the original Depth Anything V2 names (the inverse of the
    transformers conversion script, written out key by key from its table)."""
    import torch

    state = {key: value.clone() for key, value in model.state_dict().items()}
    config = model.config
    layers = config.backbone_config.num_hidden_layers
    names = {
        "backbone.embeddings.cls_token": "pretrained.cls_token",
        "backbone.embeddings.mask_token": "pretrained.mask_token",
        "backbone.embeddings.position_embeddings": "pretrained.pos_embed",
        "backbone.embeddings.patch_embeddings.projection.weight": "pretrained.patch_embed.proj.weight",
        "backbone.embeddings.patch_embeddings.projection.bias": "pretrained.patch_embed.proj.bias",
        "backbone.layernorm.weight": "pretrained.norm.weight",
        "backbone.layernorm.bias": "pretrained.norm.bias",
        "head.conv1.weight": "depth_head.scratch.output_conv1.weight",
        "head.conv1.bias": "depth_head.scratch.output_conv1.bias",
        "head.conv2.weight": "depth_head.scratch.output_conv2.0.weight",
        "head.conv2.bias": "depth_head.scratch.output_conv2.0.bias",
        "head.conv3.weight": "depth_head.scratch.output_conv2.2.weight",
        "head.conv3.bias": "depth_head.scratch.output_conv2.2.bias",
    }
    if "backbone.encoder.layer.0.attention.q_proj.weight" in state:  # transformers 5 names
        attention = {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj",
                     "o": "attention.o_proj"}
    else:
        attention = {"q": "attention.attention.query", "k": "attention.attention.key",
                     "v": "attention.attention.value", "o": "attention.output.dense"}
    original: dict[str, Any] = {}
    for i in range(layers):
        ours, theirs = f"backbone.encoder.layer.{i}.", f"pretrained.blocks.{i}."
        for leaf in ("weight", "bias"):
            original[f"{theirs}attn.qkv.{leaf}"] = torch.cat(
                [state.pop(f"{ours}{attention[p]}.{leaf}") for p in "qkv"])
            names[f"{ours}{attention['o']}.{leaf}"] = f"{theirs}attn.proj.{leaf}"
            for part in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                names[f"{ours}{part}.{leaf}"] = f"{theirs}{part}.{leaf}"
        names[f"{ours}layer_scale1.lambda1"] = f"{theirs}ls1.gamma"
        names[f"{ours}layer_scale2.lambda1"] = f"{theirs}ls2.gamma"
    for i in range(4):
        for leaf in ("weight", "bias"):
            names[f"neck.reassemble_stage.layers.{i}.projection.{leaf}"] = f"depth_head.projects.{i}.{leaf}"
            names[f"neck.reassemble_stage.layers.{i}.resize.{leaf}"] = f"depth_head.resize_layers.{i}.{leaf}"
        names[f"neck.convs.{i}.weight"] = f"depth_head.scratch.layer{i + 1}_rn.weight"
        refinenet = f"depth_head.scratch.refinenet{4 - i}."
        for ours, theirs in (("projection", "out_conv"),
                             ("residual_layer1.convolution1", "resConfUnit1.conv1"),
                             ("residual_layer1.convolution2", "resConfUnit1.conv2"),
                             ("residual_layer2.convolution1", "resConfUnit2.conv1"),
                             ("residual_layer2.convolution2", "resConfUnit2.conv2")):
            for leaf in ("weight", "bias"):
                names[f"neck.fusion_stage.layers.{i}.{ours}.{leaf}"] = f"{refinenet}{theirs}.{leaf}"
    for key, value in state.items():
        original[names[key]] = value
    return original
