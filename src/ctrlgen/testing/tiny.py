"""Tiny random-weight Stable Diffusion models, written in the on-disk layouts users really have.

As in diffusers' own ``get_dummy_components()``, every component is built from a small
config after ``torch.manual_seed(seed)``, so two builds are bit-identical; then every tensor
gets its own random values, as trained weights have (no constant norms, no all-zero ControlNet
convolutions, so round trips catch swapped tensors and a control image changes the result).
The shapes follow
the real architectures (SD1.5: cross-attention levels first, CLIP-L-style encoder; SDXL:
plain first level, ``text_time`` added conditioning, two text encoders, linear projections,
two transformer layers deep in the second level) at sizes that generate a 64×64 image in
two steps on a CPU in well under a second. The VAE has four levels (8× down-scaling) and
the ControlNet hint encoder the real four-stage layout, so original-format single files
stay in the exact key layout that diffusers' and A1111/ComfyUI's loaders expect. The text
encoders use the real 49,408-token vocabulary and the tokenizer is a real
``CLIPTokenizer`` built offline (:mod:`ctrlgen.core.models.tokenizer`).

``write_tiny_sd15(root)`` / ``write_tiny_sdxl(root)`` write, under
``root/<arch>-<version>/``:

* ``tiny-<arch>/`` — the diffusers pipeline folder (``save_pretrained``, safetensors);
* ``tiny-<arch>.safetensors`` — a single-file checkpoint with ORIGINAL key names
  (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.*`` /
  ``conditioner.embedders.*``), see :mod:`ctrlgen.testing.ldm_keys`;
* ``tiny-controlnet-<arch>/`` — the diffusers ControlNet folder;
* ``tiny-controlnet-<arch>.safetensors`` — the ControlNet in the original ``control_model.*``
  layout (as sd-webui-controlnet ships ``control_v11p_sd15_canny.safetensors``);
* ``tiny-controlnet-<arch>-diffusers.safetensors`` — the ControlNet's diffusers state dict in
  one file (as ``diffusers_xl_canny_mid.safetensors`` and most SDXL ControlNets are shipped).

**Sidecar configs.** A tiny file cannot be loaded with the real architecture's config, and
an A1111-style ``<stem>.yaml`` (original LDM config) is not enough offline: it describes the
UNet and VAE, but its text encoder is only a hub name (``openai/clip-vit-large-patch14``)
that diffusers would download. So every single file gets a ``<stem>.config.json`` sidecar:
its diffusers config folder packed into one JSON file (see :mod:`ctrlgen.core.models.configs`),
which :func:`~ctrlgen.core.models.loading.load_pipeline_from_single_file` and
:func:`~ctrlgen.core.models.loading.load_controlnet` pick up automatically.

Built folders are keyed by :data:`TINY_VERSION` (with the diffusers and transformers
versions), published atomically, and reused by later calls with the same ``root``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ctrlgen.core.models.configs import bundled_config_files, link_or_copy, write_sidecar
from ctrlgen.core.models.tokenizer import default_cache_dir, load_clip_tokenizer, publish_folder

TINY_VERSION = "2"
"""Bump when the tiny models change; old cache folders are then ignored."""

IMAGE_SIZE = 64
_UNET_CHANNELS = (32, 64)
_HINT_CHANNELS = (16, 16, 32, 32)  # four stages like the real (16, 32, 96, 256): 8x down-scaling
_SDXL_TIME_EMBED_DIM = 8
_SDXL_POOLED_DIM = 32
_ZERO_CONV_STD = 0.1  # ControlNet's zero convolutions, as if trained: the control image steers the result


@dataclass(frozen=True)
class TinyModel:
    """Paths of one written tiny model family (see the module docstring for the layout)."""

    architecture: str
    folder: Path
    pipeline_dir: Path
    checkpoint: Path
    controlnet_dir: Path
    controlnet_checkpoint: Path
    controlnet_diffusers_checkpoint: Path
    cache_dir: Path
    pipeline_cls_name: str
    controlnet_pipeline_cls_name: str
    height: int = IMAGE_SIZE
    width: int = IMAGE_SIZE

    @property
    def single_files(self) -> tuple[Path, ...]:
        """Every single-file artefact (checkpoint and ControlNets), each with its sidecar."""
        return (self.checkpoint, self.controlnet_checkpoint, self.controlnet_diffusers_checkpoint)


def _version_key(architecture: str) -> str:
    import diffusers
    import transformers

    return f"{architecture}-v{TINY_VERSION}-diffusers{diffusers.__version__}-transformers{transformers.__version__}"


# ---------------------------------------------------------------- components


def _clip_config(hidden_size: int, projection_dim: int, hidden_act: str) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=3,
        layer_norm_eps=1e-05,
        max_position_embeddings=77,
        vocab_size=49408,
        projection_dim=projection_dim,
        hidden_act=hidden_act,
    )


def _tiny_vae(scaling_factor: float) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        in_channels=3,
        out_channels=3,
        sample_size=IMAGE_SIZE,
        scaling_factor=scaling_factor,
    )


def _randomize(model: Any, seed: int, zero_init_std: float = 0.0) -> Any:
    """Give every tensor its own random values, as trained weights have.

    Fresh modules hold constant tensors (norm weights 1, biases 0, ControlNet's zero
    convolutions), so a round trip that swapped two same-shaped norms would go unnoticed and
    a fresh ControlNet would not change the image at all. Each parameter gets N(0, 0.02)
    added; tensors that are all zero (the zero convolutions) get N(0, ``zero_init_std``).
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            if zero_init_std and not parameter.any():
                parameter.copy_(noise * zero_init_std)
            else:
                parameter.add_(noise * 0.02)
    return model


def _scheduler(architecture: str) -> Any:
    import diffusers

    config = bundled_config_files(architecture)["scheduler/scheduler_config.json"]
    return getattr(diffusers, config["_class_name"]).from_config(config)


def tiny_sd15_components(seed: int = 0, cache_dir: Path | None = None) -> dict[str, Any]:
    """SD1.5-shaped pipeline components (``StableDiffusionPipeline(**components)``)."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=_UNET_CHANNELS,
        layers_per_block=2,
        sample_size=IMAGE_SIZE // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(seed)
    vae = _tiny_vae(scaling_factor=0.18215)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_config(32, 32, "quick_gelu"))
    return {
        "unet": _randomize(unet, seed),
        "vae": _randomize(vae, seed + 1),
        "text_encoder": _randomize(text_encoder, seed + 2),
        "tokenizer": load_clip_tokenizer("clip", cache_dir),
        "scheduler": _scheduler("sd15"),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def tiny_sdxl_components(seed: int = 0, cache_dir: Path | None = None) -> dict[str, Any]:
    """SDXL-shaped components (``StableDiffusionXLPipeline(**components)``).

    The encoders differ in width (32 and 64, concatenated to a 96-wide context) as CLIP-L and
    bigG do, which is also how diffusers' single-file loader tells them apart.
    """
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=_UNET_CHANNELS,
        layers_per_block=2,
        sample_size=IMAGE_SIZE // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=_SDXL_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * _SDXL_TIME_EMBED_DIM + _SDXL_POOLED_DIM,
        cross_attention_dim=32 + 64,
        norm_num_groups=32,
    )
    torch.manual_seed(seed)
    vae = _tiny_vae(scaling_factor=0.13025)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_config(32, 32, "quick_gelu"))
    torch.manual_seed(seed)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(64, _SDXL_POOLED_DIM, "gelu"))
    return {
        "unet": _randomize(unet, seed),
        "vae": _randomize(vae, seed + 1),
        "text_encoder": _randomize(text_encoder, seed + 2),
        "text_encoder_2": _randomize(text_encoder_2, seed + 3),
        "tokenizer": load_clip_tokenizer("clip", cache_dir),
        "tokenizer_2": load_clip_tokenizer("openclip", cache_dir),
        "scheduler": _scheduler("sdxl"),
        "image_encoder": None,
        "feature_extractor": None,
    }


def tiny_controlnet(unet: Any, seed: int = 0) -> Any:
    """A random-weight ``ControlNetModel`` matching ``unet`` (SD1.5- or SDXL-shaped).

    Built from its own config (not ``from_unet``) and with its zero convolutions filled, so
    like a trained ControlNet it changes the image, and round trips check every tensor.
    """
    import torch
    from diffusers import ControlNetModel

    config = unet.config
    extra: dict[str, Any] = {}
    if config.addition_embed_type == "text_time":
        extra = {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": config.addition_time_embed_dim,
            "projection_class_embeddings_input_dim": config.projection_class_embeddings_input_dim,
            "transformer_layers_per_block": config.transformer_layers_per_block,
        }
    torch.manual_seed(seed)
    controlnet = ControlNetModel(
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        in_channels=config.in_channels,
        down_block_types=config.down_block_types,
        cross_attention_dim=config.cross_attention_dim,
        attention_head_dim=config.attention_head_dim,
        use_linear_projection=config.use_linear_projection,
        norm_num_groups=config.norm_num_groups,
        conditioning_embedding_out_channels=_HINT_CHANNELS,
        **extra,
    )
    # A trained hint encoder passes the control image on; at its default init the signal fades
    # through its eight convolutions and the hint would barely matter. He init keeps its gain.
    generator = torch.Generator().manual_seed(seed + 5)
    with torch.no_grad():
        for module in controlnet.controlnet_cond_embedding.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
    return _randomize(controlnet, seed + 4, zero_init_std=_ZERO_CONV_STD)


# ---------------------------------------------------------------- writers


def write_tiny_sd15(root: Path) -> TinyModel:
    """Write (once) the tiny SD1.5 family under ``root`` and return its paths."""
    return _write_tiny("sd15", Path(root))


def write_tiny_sdxl(root: Path) -> TinyModel:
    """Write (once) the tiny SDXL family under ``root`` and return its paths."""
    return _write_tiny("sdxl", Path(root))


def _tiny_paths(architecture: str, folder: Path, cache_dir: Path) -> TinyModel:
    name = f"tiny-{architecture}"
    control = f"tiny-controlnet-{architecture}"
    xl = architecture == "sdxl"
    return TinyModel(
        architecture=architecture,
        folder=folder,
        pipeline_dir=folder / name,
        checkpoint=folder / f"{name}.safetensors",
        controlnet_dir=folder / control,
        controlnet_checkpoint=folder / f"{control}.safetensors",
        controlnet_diffusers_checkpoint=folder / f"{control}-diffusers.safetensors",
        cache_dir=cache_dir,
        pipeline_cls_name="StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline",
        controlnet_pipeline_cls_name="StableDiffusionXLControlNetPipeline"
        if xl
        else "StableDiffusionControlNetPipeline",
    )


def _write_tiny(architecture: str, root: Path) -> TinyModel:
    folder = root / _version_key(architecture)
    if (folder / ".complete").is_file():
        return _tiny_paths(architecture, folder, root)

    def build(tmp: Path) -> None:
        _build_tiny(_tiny_paths(architecture, tmp, root))
        (tmp / ".complete").write_text("", encoding="utf-8")

    publish_folder(folder, build)
    return _tiny_paths(architecture, folder, root)


def save_tiny_pipeline(model: Any, components: dict[str, Any]) -> Any:
    """Build ``model.pipeline_cls_name`` from ``components`` and write it both ways: a diffusers
    folder (``model.pipeline_dir``) and an original-key single file (``model.checkpoint``) with
    its ``.config.json`` sidecar. Returns the pipeline."""
    import diffusers
    from safetensors.torch import save_file

    from ctrlgen.testing.ldm_keys import checkpoint_from_components

    if model.architecture != "sdxl":
        components["requires_safety_checker"] = False
    pipe = getattr(diffusers, model.pipeline_cls_name)(**components)
    pipe.save_pretrained(model.pipeline_dir, safe_serialization=True)
    checkpoint = checkpoint_from_components(
        model.architecture,
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        text_encoder_2=getattr(pipe, "text_encoder_2", None),
    )
    save_file(_contiguous(checkpoint), model.checkpoint, metadata={"format": "pt"})
    write_sidecar(model.checkpoint, model.pipeline_dir)
    return pipe


def _build_tiny(model: TinyModel) -> None:
    from safetensors.torch import save_file

    from ctrlgen.testing.ldm_keys import controlnet_to_ldm

    if model.architecture == "sdxl":
        components = tiny_sdxl_components(cache_dir=model.cache_dir)
    else:
        components = tiny_sd15_components(cache_dir=model.cache_dir)
    pipe = save_tiny_pipeline(model, components)

    controlnet = tiny_controlnet(pipe.unet)
    controlnet.save_pretrained(model.controlnet_dir, safe_serialization=True)
    save_file(
        _contiguous(controlnet_to_ldm(controlnet)), model.controlnet_checkpoint, metadata={"format": "pt"}
    )
    save_file(
        _contiguous(controlnet.state_dict()), model.controlnet_diffusers_checkpoint, metadata={"format": "pt"}
    )
    for path in (model.controlnet_checkpoint, model.controlnet_diffusers_checkpoint):
        write_sidecar(path, model.controlnet_dir)


def _contiguous(state_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().contiguous() for k, v in state_dict.items()}


# ---------------------------------------------------------------- model roots

Layout = Literal["a1111", "comfyui"]
_LAYOUT_FOLDERS: dict[str, dict[str, str]] = {
    "a1111": {"checkpoints": "Stable-diffusion", "controlnet": "ControlNet"},
    "comfyui": {"checkpoints": "checkpoints", "controlnet": "controlnet", "diffusers": "diffusers"},
}


@dataclass(frozen=True)
class TinyModelRoot:
    """An A1111 or ComfyUI install root with the tiny models in place.

    ``root`` is the install folder (the ``ModelRoot`` path; ``models_dir`` is ``root/models``);
    ``checkpoints``, ``controlnets`` and ``diffusers_folders`` map architecture -> placed path.
    """

    root: Path
    layout: str
    models_dir: Path
    checkpoints: dict[str, Path] = field(default_factory=dict)
    controlnets: dict[str, Path] = field(default_factory=dict)
    diffusers_folders: dict[str, Path] = field(default_factory=dict)

    @property
    def checkpoint(self) -> Path:
        """The SD1.5 checkpoint when there is one, else the first placed."""
        return self.checkpoints.get("sd15") or next(iter(self.checkpoints.values()))

    @property
    def controlnet(self) -> Path:
        """The ControlNet matching :attr:`checkpoint`."""
        return self.controlnets.get("sd15") or next(iter(self.controlnets.values()))


def write_model_root(
    root: Path,
    layout: Layout = "a1111",
    *,
    architectures: tuple[str, ...] = ("sd15",),
    cache_dir: Path | None = None,
) -> TinyModelRoot:
    """Lay the tiny models out as A1111 (``models/Stable-diffusion``, ``models/ControlNet``) or
    ComfyUI (``models/checkpoints``, ``models/controlnet``, ``models/diffusers``) has them.

    ``architectures``: any of ``"sd15"``, ``"sdxl"``. The models are built once in
    ``cache_dir`` (default: ctrlgen's cache folder, ``tiny-models``) and hard-linked into place
    where the filesystem allows, so nothing is copied twice. Each single file keeps its
    ``.config.json`` sidecar next to it. Calling it again on the same root is cheap.
    """
    if layout not in _LAYOUT_FOLDERS:
        raise ValueError(f"layout {layout!r} is not one of {sorted(_LAYOUT_FOLDERS)}")
    root = Path(root)
    build_root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "tiny-models"
    folders = _LAYOUT_FOLDERS[layout]
    models_dir = root / "models"
    result = TinyModelRoot(root=root, layout=layout, models_dir=models_dir)
    writers = {"sd15": write_tiny_sd15, "sdxl": write_tiny_sdxl}
    for architecture in architectures:
        if architecture not in writers:
            raise ValueError(
                f"no tiny model for architecture {architecture!r}; choose from {sorted(writers)}"
            )
        tiny = writers[architecture](build_root)
        result.checkpoints[architecture] = _place(tiny.checkpoint, models_dir / folders["checkpoints"])
        result.controlnets[architecture] = _place(
            tiny.controlnet_checkpoint, models_dir / folders["controlnet"]
        )
        if "diffusers" in folders:
            target = models_dir / folders["diffusers"] / tiny.pipeline_dir.name
            shutil.copytree(tiny.pipeline_dir, target, copy_function=_link_or_copy_str, dirs_exist_ok=True)
            result.diffusers_folders[architecture] = target
    return result


def _place(single_file: Path, folder: Path) -> Path:
    from ctrlgen.core.models.configs import sidecar_path

    folder.mkdir(parents=True, exist_ok=True)
    for source in (single_file, sidecar_path(single_file)):
        target = folder / source.name
        if not target.exists():
            link_or_copy(source, target)
    return folder / single_file.name


def _link_or_copy_str(source: str, target: str) -> str:
    if not Path(target).exists():
        link_or_copy(Path(source), Path(target))
    return target
