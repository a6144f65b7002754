"""Tiny random-weight inpainting checkpoints (9-channel UNets), in the layouts users have.

Inpainting checkpoints (``sd-v1-5-inpainting``, ``sd_xl_base_1.0_inpainting_0.1``) are the
regular architecture with a UNet that takes 9 input channels: the noisy latents, the mask
(one channel) and the masked image's latents. The model store tells them apart by that
(``conv_in`` has ``2 × out + 1`` input channels: variant ``inpaint``); diffusers' inpaint
pipelines feed them ``masked_image_latents``.

The tiny ones here are the tiny SD1.5 / SDXL families of :mod:`ctrlgen.testing.tiny` with
their UNet rebuilt at 9 input channels (same config otherwise, so the tiny ControlNets fit
them), written as

* ``tiny-<arch>-inpainting/`` — a diffusers folder (``StableDiffusion[XL]InpaintPipeline``);
* ``tiny-<arch>-inpainting.safetensors`` — an original-format single file with its
  ``.config.json`` sidecar (see :mod:`ctrlgen.testing.tiny`).

:func:`add_inpaint_models` places them into an A1111 or ComfyUI root written by
:func:`~ctrlgen.testing.tiny.write_model_root`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctrlgen.core.models.tokenizer import publish_folder

INPAINT_IN_CHANNELS = 9  # 4 latents + 1 mask + 4 masked-image latents


@dataclass(frozen=True)
class TinyInpaintModel:
    """Paths of one written tiny inpainting checkpoint."""

    architecture: str
    folder: Path
    pipeline_dir: Path
    checkpoint: Path
    pipeline_cls_name: str

    @property
    def name(self) -> str:
        """The model's name in the store (the file stem)."""
        return self.checkpoint.stem


def tiny_inpaint_components(architecture: str, seed: int = 0, cache_dir: Path | None = None) -> dict[str, Any]:
    """The tiny ``architecture`` (``sd15`` or ``sdxl``) components with a 9-channel UNet."""
    import torch
    from diffusers import UNet2DConditionModel

    from ctrlgen.testing.tiny import _randomize, tiny_sd15_components, tiny_sdxl_components

    builders = {"sd15": tiny_sd15_components, "sdxl": tiny_sdxl_components}
    if architecture not in builders:
        raise ValueError(f"no tiny inpainting model for {architecture!r}; choose from {sorted(builders)}")
    components = builders[architecture](seed=seed, cache_dir=cache_dir)
    config = dict(components["unet"].config)
    config["in_channels"] = INPAINT_IN_CHANNELS
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(config)
    components["unet"] = _randomize(unet, seed + 10)
    return components


def write_tiny_inpaint(root: Path, architecture: str = "sd15") -> TinyInpaintModel:
    """Write (once) the tiny ``architecture`` inpainting checkpoint under ``root``."""
    from ctrlgen.testing.tiny import _version_key

    root = Path(root)
    folder = root / f"{_version_key(architecture)}-inpaint"
    if not (folder / ".complete").is_file():

        def build(tmp: Path) -> None:
            _build(_paths(architecture, tmp), cache_dir=root)
            (tmp / ".complete").write_text("", encoding="utf-8")

        publish_folder(folder, build)
    return _paths(architecture, folder)


def _paths(architecture: str, folder: Path) -> TinyInpaintModel:
    name = f"tiny-{architecture}-inpainting"
    xl = architecture == "sdxl"
    return TinyInpaintModel(
        architecture=architecture,
        folder=folder,
        pipeline_dir=folder / name,
        checkpoint=folder / f"{name}.safetensors",
        pipeline_cls_name="StableDiffusionXLInpaintPipeline" if xl else "StableDiffusionInpaintPipeline",
    )


def _build(model: TinyInpaintModel, cache_dir: Path) -> None:
    from ctrlgen.testing.tiny import save_tiny_pipeline

    save_tiny_pipeline(model, tiny_inpaint_components(model.architecture, cache_dir=cache_dir))


def add_inpaint_models(model_root: Any, architectures: tuple[str, ...] = ("sd15",),
                       cache_dir: Path | None = None) -> dict[str, Path]:
    """Place tiny inpainting checkpoints into ``model_root`` (a
    :class:`~ctrlgen.testing.tiny.TinyModelRoot`): the single file (and sidecar) next to the
    other checkpoints and, in the ComfyUI layout, the diffusers folder under ``diffusers``.

    Returns architecture -> placed single file. Built once in ``cache_dir`` (default: ctrlgen's
    cache folder, ``tiny-models``)."""
    import shutil

    from ctrlgen.core.models.tokenizer import default_cache_dir
    from ctrlgen.testing.tiny import _LAYOUT_FOLDERS, _link_or_copy_str, _place

    build_root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "tiny-models"
    folders = _LAYOUT_FOLDERS[model_root.layout]
    placed = {}
    for architecture in architectures:
        tiny = write_tiny_inpaint(build_root, architecture)
        placed[architecture] = _place(tiny.checkpoint, model_root.models_dir / folders["checkpoints"])
        if "diffusers" in folders:
            target = model_root.models_dir / folders["diffusers"] / tiny.pipeline_dir.name
            shutil.copytree(tiny.pipeline_dir, target, copy_function=_link_or_copy_str, dirs_exist_ok=True)
    return placed
