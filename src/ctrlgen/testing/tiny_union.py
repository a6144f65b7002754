"""A tiny random-weight SDXL union ControlNet (``ControlNetUnionModel``), in the layouts users have.

xinsir's ``controlnet-union-sdxl-1.0`` ships as a diffusers folder (``config.json`` +
``diffusion_pytorch_model.safetensors``) whose ProMax weights are a second diffusers-key file;
A1111 and ComfyUI users drop that one file into ``models/ControlNet``. The tiny model is written
the same ways, under ``root/sdxl-union-<version>/``:

* ``tiny-controlnet-union-sdxl/`` — the diffusers folder (``save_pretrained``, safetensors);
* ``tiny-controlnet-union-sdxl.safetensors`` — its state dict in one file (diffusers keys), with
  a ``.config.json`` sidecar so :func:`~ctrlgen.core.models.loading.load_controlnet` builds it offline.

It matches :func:`ctrlgen.testing.tiny.tiny_sdxl_components`' UNet (same blocks, ``text_time``
conditioning), has ProMax's eight control types (``tile`` and ``repaint`` included) and, like the
other tiny ControlNets, random weights everywhere (no all-zero convolutions), so the control image
and the control type both change the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctrlgen.core.models.configs import write_sidecar
from ctrlgen.core.models.tokenizer import publish_folder

TINY_UNION_VERSION = "1"
NUM_CONTROL_TYPES = 8  # ProMax: openpose, depth, hed, canny, normal, segment, tile, repaint
NAME = "tiny-controlnet-union-sdxl"


@dataclass(frozen=True)
class TinyUnion:
    """Paths of the written tiny union ControlNet."""

    folder: Path
    diffusers_dir: Path
    single_file: Path


def _version_key() -> str:
    import diffusers

    return f"sdxl-union-v{TINY_UNION_VERSION}-diffusers{diffusers.__version__}"


def tiny_union_controlnet(seed: int = 0) -> Any:
    """A random-weight ``ControlNetUnionModel`` shaped like the tiny SDXL UNet."""
    import torch
    from diffusers import ControlNetUnionModel

    from ctrlgen.testing import tiny

    channels = tiny._UNET_CHANNELS
    torch.manual_seed(seed)
    model = ControlNetUnionModel(  # the tiny SDXL UNet's shape (see tiny.tiny_sdxl_components)
        block_out_channels=channels,
        layers_per_block=2,
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=32 + 64,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=32,
        transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time",
        addition_time_embed_dim=tiny._SDXL_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * tiny._SDXL_TIME_EMBED_DIM + tiny._SDXL_POOLED_DIM,
        conditioning_embedding_out_channels=tiny._HINT_CHANNELS,
        num_control_type=NUM_CONTROL_TYPES,
        num_trans_channel=channels[0],  # the control tokens live in the first block's width
        num_trans_head=4,
        num_trans_layer=1,
        num_proj_channel=channels[0],
    )
    generator = torch.Generator().manual_seed(seed + 5)
    with torch.no_grad():  # a hint encoder that passes the image on, as in tiny_controlnet
        for module in model.controlnet_cond_embedding.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
        # Control types differ as much as trained ones do: the type embedding drives the
        # time embedding through control_add_embedding, so give it a trained-like gain.
        model.control_add_embedding.linear_1.weight.mul_(20.0)
    return tiny._randomize(model, seed + 6, zero_init_std=tiny._ZERO_CONV_STD)


def write_tiny_union(root: Path) -> TinyUnion:
    """Write (once) the tiny union ControlNet under ``root`` and return its paths."""
    root = Path(root)
    folder = root / _version_key()
    if not (folder / ".complete").is_file():

        def build(tmp: Path) -> None:
            from safetensors.torch import save_file

            paths = _paths(tmp)
            model = tiny_union_controlnet()
            model.save_pretrained(paths.diffusers_dir, safe_serialization=True)
            state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            save_file(state, paths.single_file, metadata={"format": "pt"})
            write_sidecar(paths.single_file, paths.diffusers_dir)
            (tmp / ".complete").write_text("", encoding="utf-8")

        publish_folder(folder, build)
    return _paths(folder)


def _paths(folder: Path) -> TinyUnion:
    return TinyUnion(folder, folder / NAME, folder / f"{NAME}.safetensors")


def add_tiny_union(models_dir: Path, cache_dir: Path, folder_name: str = "ControlNet") -> dict[str, Path]:
    """Place the tiny union ControlNet in ``models_dir/folder_name`` (A1111's ``ControlNet``, ComfyUI's
    ``controlnet``): the single file with its sidecar as ``tiny-controlnet-union-sdxl``, and the
    diffusers folder as ``tiny-controlnet-union-sdxl-folder``. Returns ``{"single_file": ..., "folder": ...}``.
    """
    import shutil

    from ctrlgen.core.models.configs import link_or_copy, sidecar_path

    tiny = write_tiny_union(cache_dir)
    target = Path(models_dir) / folder_name
    target.mkdir(parents=True, exist_ok=True)
    for source in (tiny.single_file, sidecar_path(tiny.single_file)):
        if not (target / source.name).exists():
            link_or_copy(source, target / source.name)
    folder = target / f"{NAME}-folder"
    if not folder.exists():
        shutil.copytree(tiny.diffusers_dir, folder, copy_function=_link)
    return {"single_file": target / tiny.single_file.name, "folder": folder}


def _link(source: str, target: str) -> str:
    from ctrlgen.core.models.configs import link_or_copy

    link_or_copy(Path(source), Path(target))
    return target
