"""Tiny random LoRAs and textual-inversion embeddings for the tiny models, in the real file formats.

Written for the tiny SD1.5 / SDXL families of :mod:`ctrlgen.testing.tiny` (module names and
widths are read from the built models, so they always match):

* ``tiny-lora-<arch>.safetensors`` — kohya/sd-scripts format, as most LoRAs on civitai are:
  ``lora_unet_<module>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` for every linear
  (and 1×1 projection) of the UNet's transformer blocks, and ``lora_te_`` (SD1.5) or
  ``lora_te1_`` / ``lora_te2_`` (SDXL) for the text encoders' attention and MLP layers. SD1.5
  module names are diffusers' (``down_blocks_0_attentions_0_...``), SDXL's the original LDM
  ones (``input_blocks_4_1_...``), exactly as sd-scripts writes them.
* ``tiny-lcm-lora-<arch>.safetensors`` — same format, also covering the resnets' convolutions,
  time-embedding projections and up/down samplers, like ``latent-consistency/lcm-lora-sdv1-5``.
* ``tiny-lora-<arch>-peft.safetensors`` — diffusers' own ``save_lora_weights`` format (PEFT
  names: ``unet.<module>.lora_A.weight`` / ``lora_B.weight``, ``text_encoder.<module>...``).
* embeddings (A1111's format): SD1.5 ``{"emb_params": (vectors, 768-like)}`` safetensors and the
  pickled ``.pt`` twin ``{"string_to_param": {"*": ...}, "string_to_token": ..., "name": ...}``;
  SDXL ``{"clip_l": (vectors, w1), "clip_g": (vectors, w2)}``.

:func:`write_tiny_addons` builds them once per cache folder and hard-links them into an A1111
root (``models/Lora``, ``embeddings``), next to what :func:`~ctrlgen.testing.tiny.write_model_root`
placed there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctrlgen.core.models.configs import link_or_copy
from ctrlgen.testing.tiny_files import build_once

TINY_ADDONS_VERSION = "2"
RANK = 4
_LORA_STD = 0.15  # large enough that a LoRA at weight 1 visibly changes a 64×64 tiny image
_EMBEDDING_STD = 0.5

# (file stem, architecture, folder under ``embeddings``, vectors)
EMBEDDINGS = (
    ("tinyneg", "sd15", "sd15", 2),
    ("tinystyle", "sd15", "", 1),
    ("tinyneg", "sdxl", "sdxl", 2),
    ("tinyxl", "sdxl", "sdxl", 1),
)


@dataclass(frozen=True)
class TinyAddons:
    """Where the add-ons were placed: name -> path for ``loras`` and ``embeddings``."""

    root: Path
    loras: dict[str, Path] = field(default_factory=dict)
    embeddings: dict[str, Path] = field(default_factory=dict)


def _linear_like(module: Any) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear) or (
        isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1)
    )


def unet_lora_targets(unet: Any, lcm: bool = False) -> dict[str, Any]:
    """Diffusers module name -> module for the layers a kohya LoRA (or LCM-LoRA) trains."""
    import torch

    targets = {}
    for name, module in unet.named_modules():
        if ".attentions." in name and _linear_like(module) and ".norm" not in name:
            targets[name] = module
        elif lcm and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and (
            ".resnets." in name or "samplers." in name
        ):
            targets[name] = module
    return targets


def text_encoder_lora_targets(text_encoder: Any) -> dict[str, Any]:
    """Module name (with ``text_model.``, as files spell it) -> module for CLIP's attention and MLP."""
    import torch

    targets = {}
    for name, module in text_encoder.named_modules():
        if isinstance(module, torch.nn.Linear) and (".self_attn." in name or ".mlp." in name):
            targets[name if name.startswith("text_model.") else "text_model." + name] = module
    return targets


def _pair(module: Any, generator: Any) -> tuple[Any, Any]:
    """Random (down, up) tensors of rank :data:`RANK` shaped for ``module``."""
    import torch

    if isinstance(module, torch.nn.Conv2d):
        kernel = module.kernel_size
        down = torch.randn(RANK, module.in_channels, *kernel, generator=generator)
        up = torch.randn(module.out_channels, RANK, 1, 1, generator=generator)
        fan_in = module.in_channels * kernel[0] * kernel[1]
    else:
        down = torch.randn(RANK, module.in_features, generator=generator)
        up = torch.randn(module.out_features, RANK, generator=generator)
        fan_in = module.in_features
    return down * (fan_in**-0.5), up * _LORA_STD


def _ldm_module_names(unet: Any) -> dict[str, str]:
    """Diffusers UNet module name -> original LDM module name (``input_blocks.4.1...``)."""
    import torch

    from ctrlgen.testing.ldm_keys import unet_to_ldm

    tagged = {key: torch.empty(0) for key in unet.state_dict()}
    back = {id(tensor): key for key, tensor in tagged.items()}
    names = {}
    for ldm_key, tensor in unet_to_ldm(tagged, prefix="").items():
        names[back[id(tensor)].rpartition(".")[0]] = ldm_key.rpartition(".")[0]
    return names


def kohya_lora(pipe: Any, architecture: str, *, lcm: bool = False, seed: int = 0) -> dict[str, Any]:
    """A kohya-format LoRA state dict for ``pipe``'s UNet and text encoder(s)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    result: dict[str, Any] = {}

    def add(key: str, module: Any) -> None:
        down, up = _pair(module, generator)
        result[f"{key}.lora_down.weight"] = down
        result[f"{key}.lora_up.weight"] = up
        result[f"{key}.alpha"] = torch.tensor(float(RANK))

    ldm_names = _ldm_module_names(pipe.unet) if architecture == "sdxl" else {}
    for name, module in unet_lora_targets(pipe.unet, lcm=lcm).items():
        add("lora_unet_" + ldm_names.get(name, name).replace(".", "_"), module)
    if not lcm:
        encoders = [("lora_te", pipe.text_encoder)]
        if architecture == "sdxl":
            encoders = [("lora_te1", pipe.text_encoder), ("lora_te2", pipe.text_encoder_2)]
        for prefix, encoder in encoders:
            for name, module in text_encoder_lora_targets(encoder).items():
                add(f"{prefix}_{name.replace('.', '_')}", module)
    return result


def peft_lora(pipe: Any, seed: int = 1) -> dict[str, Any]:
    """A LoRA in diffusers' ``save_lora_weights`` (PEFT) format for ``pipe``'s UNet and text encoder."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    result: dict[str, Any] = {}
    parts = [("unet", unet_lora_targets(pipe.unet)), ("text_encoder", text_encoder_lora_targets(pipe.text_encoder))]
    for prefix, targets in parts:
        for name, module in targets.items():
            down, up = _pair(module, generator)
            result[f"{prefix}.{name}.lora_A.weight"] = down
            result[f"{prefix}.{name}.lora_B.weight"] = up
    return result


def embedding_vectors(width: int, vectors: int, seed: int) -> Any:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randn(vectors, width, generator=generator) * _EMBEDDING_STD


def _build(folder: Path, cache_dir: Path) -> None:
    import diffusers
    import torch
    from safetensors.torch import save_file

    from ctrlgen.testing.tiny import write_tiny_sd15, write_tiny_sdxl

    for architecture, writer in (("sd15", write_tiny_sd15), ("sdxl", write_tiny_sdxl)):
        tiny = writer(cache_dir)
        pipe = getattr(diffusers, tiny.pipeline_cls_name).from_pretrained(tiny.pipeline_dir)
        loras = folder / "Lora"
        loras.mkdir(exist_ok=True)
        save_file(kohya_lora(pipe, architecture), loras / f"tiny-lora-{architecture}.safetensors")
        save_file(kohya_lora(pipe, architecture, lcm=True, seed=3), loras / f"tiny-lcm-lora-{architecture}.safetensors")
        if architecture == "sd15":
            save_file(peft_lora(pipe), loras / "tiny-lora-sd15-peft.safetensors")
        for index, (stem, arch, sub, vectors) in enumerate(EMBEDDINGS):
            if arch != architecture:
                continue
            target = folder / "embeddings" / sub
            target.mkdir(parents=True, exist_ok=True)
            width = pipe.text_encoder.get_input_embeddings().embedding_dim
            if architecture == "sdxl":
                width_2 = pipe.text_encoder_2.get_input_embeddings().embedding_dim
                tensors = {"clip_l": embedding_vectors(width, vectors, 10 + index),
                           "clip_g": embedding_vectors(width_2, vectors, 20 + index)}
                save_file(tensors, target / f"{stem}.safetensors")
            elif sub:
                save_file({"emb_params": embedding_vectors(width, vectors, 10 + index)}, target / f"{stem}.safetensors")
            else:  # the pickled original format A1111's training tab writes
                vector = embedding_vectors(width, vectors, 10 + index)
                torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vector}, "name": stem,
                            "step": 1000, "sd_checkpoint": None, "sd_checkpoint_name": None}, target / f"{stem}.pt")


def build_tiny_addons(cache_dir: Path) -> Path:
    """Build (once) every tiny add-on under ``cache_dir``; returns the folder."""
    return build_once(Path(cache_dir), "addons", TINY_ADDONS_VERSION, lambda tmp: _build(tmp, Path(cache_dir)))


def write_tiny_addons(root: Path, cache_dir: Path) -> TinyAddons:
    """Hard-link the tiny LoRAs into ``root/models/Lora`` and embeddings into ``root/embeddings``
    (A1111's layout; ``root`` is typically a :func:`~ctrlgen.testing.tiny.write_model_root` root)."""
    built = build_tiny_addons(cache_dir)
    result = TinyAddons(Path(root))
    for source in sorted(built.rglob("*")):
        if not source.is_file() or source.name.startswith("."):
            continue
        relative = source.relative_to(built)
        if relative.parts[0] == "Lora":
            target = Path(root) / "models" / relative
            result.loras[source.stem] = target
        else:
            target = Path(root) / relative
            result.embeddings[relative.with_suffix("").as_posix().removeprefix("embeddings/")] = target
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            link_or_copy(source, target)
    return result
