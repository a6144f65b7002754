"""What a set of tensors is, for base models: UNets, SD3/FLUX transformers, ControlNets, VAEs.

Rules look at *which* tensors exist and how they are wired (a conv or a linear
``proj_in``, a ``label_emb``, how many input channels relative to output channels),
so a tiny random test model with real tensor names is identified like the real one.
Absolute sizes (768, 1024, 2048, ...) are used only as tie-breakers and recorded in
``details``. File names are never looked at.

Each ``*_rule(keys, metadata)`` returns a :class:`ModelIdentity` or ``None`` (not mine);
:func:`ctrlgen.core.models.identify.identify_tensors` tries them in order. Add-on files
(LoRA, IP-Adapter, embeddings, encoders) are in :mod:`ctrlgen.core.models.addon_rules`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

KINDS = (
    "checkpoint",
    "unet",
    "transformer",
    "controlnet",
    "lora",
    "ip_adapter",
    "vae",
    "embedding",
    "clip_vision",
    "text_encoder",
    "upscaler",
    "layerdiffuse",
    "unknown",
)
ARCHITECTURES = ("sd15", "sd2", "sdxl", "sd3", "flux", "unknown")

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ModelIdentity:
    """What a model file or folder is.

    ``kind`` is one of :data:`KINDS`, ``architecture`` one of :data:`ARCHITECTURES`.
    ``variant`` is ``""`` or a tag such as ``inpaint``, ``refiner``, ``v_prediction``,
    ``union`` (ControlNet), ``plus``/``faceid``/``instantid`` (IP-Adapter).
    ``format`` is the key layout: ``original`` (LDM/BFL/h94 single files), ``diffusers``,
    ``kohya``, ``peft``, ``lycoris``, ``a1111`` or ``""`` when unknown.
    ``details`` holds what was measured (cross_attention_dim, in_channels, tensors, ...).
    """

    kind: str = "unknown"
    architecture: str = "unknown"
    variant: str = ""
    details: dict[str, Any] = field(default_factory=dict, hash=False)
    format: str = ""

    @property
    def known(self) -> bool:
        return self.kind != "unknown"

    def describe(self) -> str:
        """Short human text, e.g. ``"sdxl inpaint checkpoint"``."""
        words = [w for w in (self.architecture if self.architecture != "unknown" else "", self.variant) if w]
        return " ".join([*words, self.kind.replace("_", "-")])

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "architecture": self.architecture,
            "variant": self.variant,
            "format": self.format,
            "details": dict(self.details),
        }


class TensorKeys:
    """Tensor names with the questions the rules ask of them."""

    def __init__(self, shapes: Mapping[str, Shape]) -> None:
        self.shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
        self.names = sorted(self.shapes)

    def has(self, name: str) -> bool:
        return name in self.shapes

    def shape(self, name: str) -> Shape | None:
        return self.shapes.get(name)

    def any_prefix(self, *prefixes: str) -> bool:
        return any(name.startswith(prefixes) for name in self.names)

    def first(self, pattern: str) -> str | None:
        """First name fully matching the regular expression ``pattern``."""
        regex = re.compile(pattern)
        return next((name for name in self.names if regex.fullmatch(name)), None)

    def matching(self, pattern: str) -> list[str]:
        regex = re.compile(pattern)
        return [name for name in self.names if regex.fullmatch(name)]

    def indices(self, prefix: str) -> set[int]:
        """Integers that follow ``prefix`` (``"double_blocks."`` -> {0, ..., 18})."""
        found = set()
        for name in self.names:
            if name.startswith(prefix):
                head = name[len(prefix) :].split(".", 1)[0]
                if head.isdigit():
                    found.add(int(head))
        return found


# -- metadata -----------------------------------------------------------------

_MODELSPEC_ARCHITECTURES = (
    ("stable-diffusion-xl", "sdxl"),
    ("stable-diffusion-v3", "sd3"),
    ("stable-diffusion-3", "sd3"),
    ("stable-diffusion-v2", "sd2"),
    ("stable-diffusion-v1", "sd15"),
    ("flux", "flux"),
)


def metadata_architecture(meta: Mapping[str, str]) -> str:
    spec = meta.get("modelspec.architecture", "").lower()
    for prefix, architecture in _MODELSPEC_ARCHITECTURES:
        if spec.startswith(prefix):
            return architecture
    base = meta.get("ss_base_model_version", "").lower()
    for prefix, architecture in (("sdxl", "sdxl"), ("sd_v2", "sd2"), ("sd_v1", "sd15"), ("sd3", "sd3")):
        if base.startswith(prefix):
            return architecture
    if base.startswith("flux"):
        return "flux"
    if meta.get("ss_v2", "").lower() == "true":
        return "sd2"
    return ""


def is_v_prediction(keys: TensorKeys, meta: Mapping[str, str]) -> bool:
    if keys.has("v_pred"):  # SDXL v-prediction checkpoints carry this marker tensor
        return True
    prediction = (meta.get("modelspec.prediction_type") or meta.get("prediction_type") or "").lower()
    if prediction in ("v", "v_prediction", "v-prediction"):
        return True
    return meta.get("ss_v_parameterization", "").lower() == "true"


# -- UNet structure shared by UNets and ControlNets -----------------------------


def _unet_structure(keys: TensorKeys, prefix: str, diffusers: bool) -> dict[str, Any]:
    """Measurements of an LDM (``input_blocks``) or diffusers (``down_blocks``) UNet."""
    p = re.escape(prefix)
    cross_key = keys.first(rf"{p}.*\.attn2\.to_k\.weight")
    proj_key = keys.first(rf"{p}(input_blocks|down_blocks|middle_block|mid_block)\..*\.proj_in\.weight")
    depth_indices = {
        int(m.group(1)) for n in keys.names if (m := re.search(r"\.transformer_blocks\.(\d+)\.", n))
    }
    if diffusers:
        conv_in = keys.shape(f"{prefix}conv_in.weight")
        conv_out = keys.shape(f"{prefix}conv_out.weight")
        levels = len(keys.indices(f"{prefix}down_blocks."))
        adm = keys.shape(f"{prefix}add_embedding.linear_1.weight")
        level0_attention = keys.any_prefix(f"{prefix}down_blocks.0.attentions.")
    else:
        conv_in = keys.shape(f"{prefix}input_blocks.0.0.weight")
        conv_out = keys.shape(f"{prefix}out.2.weight")
        levels = 1 + len(keys.matching(rf"{p}input_blocks\.\d+\.0\.op\.weight"))
        adm = keys.shape(f"{prefix}label_emb.0.0.weight")
        level0_attention = keys.any_prefix(f"{prefix}input_blocks.1.1.")
    return {
        "in_channels": conv_in[1] if conv_in and len(conv_in) > 1 else None,
        "out_channels": conv_out[0] if conv_out else None,
        "model_channels": conv_in[0] if conv_in else None,
        "levels": levels,
        "cross_attention_dim": keys.shape(cross_key)[1] if cross_key else None,
        "linear_proj_in": len(keys.shape(proj_key)) == 2 if proj_key else None,
        "transformer_depth": max(depth_indices) + 1 if depth_indices else 0,
        "adm_in_channels": adm[1] if adm else None,
        "level0_attention": level0_attention,
    }


def _unet_architecture(structure: Mapping[str, Any]) -> str:
    """sd15 / sd2 / sdxl from structure: ADM embedding, linear vs conv proj_in, width last."""
    cross = structure["cross_attention_dim"]
    if structure["adm_in_channels"]:
        # SD2 unCLIP also has a label embedding, but keeps SD2's single-block transformers.
        if cross == 1024 and structure["transformer_depth"] <= 1 and structure["linear_proj_in"]:
            return "sd2"
        return "sdxl"
    if structure["linear_proj_in"] is True:
        return "sd2"
    if structure["linear_proj_in"] is False:
        return "sd15"
    return {768: "sd15", 1024: "sd2", 2048: "sdxl"}.get(cross, "unknown")


def clean_details(details: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in details.items() if v is not None and k != "level0_attention"}


# -- ControlNet ---------------------------------------------------------------


def controlnet_rule(keys: TensorKeys, meta: Mapping[str, str]) -> ModelIdentity | None:
    for prefix in ("control_model.", ""):
        if keys.any_prefix(f"{prefix}input_hint_block.", f"{prefix}zero_convs."):
            if keys.any_prefix(f"{prefix}double_blocks."):  # XLabs FLUX ControlNet
                return ModelIdentity("controlnet", "flux", "", {}, "original")
            structure = _unet_structure(keys, prefix, diffusers=False)
            hint = keys.shape(f"{prefix}input_hint_block.0.weight")
            details = clean_details({**structure, "conditioning_channels": hint[1] if hint else None})
            variant = "control_lora" if keys.has("lora_controlnet") else ""
            return ModelIdentity("controlnet", _unet_architecture(structure), variant, details, "original")
    if keys.any_prefix("controlnet_cond_embedding.") and keys.any_prefix("controlnet_down_blocks."):
        structure = _unet_structure(keys, "", diffusers=True)
        hint = keys.shape("controlnet_cond_embedding.conv_in.weight")
        details = clean_details({**structure, "conditioning_channels": hint[1] if hint else None})
        variant = ""
        if keys.any_prefix("task_embedding", "control_add_embedding.", "transformer_layes."):
            variant = "union"
            task = keys.shape("task_embedding")
            details["num_control_types"] = task[0] if task else None
        return ModelIdentity("controlnet", _unet_architecture(structure), variant, details, "diffusers")
    if keys.any_prefix("controlnet_blocks."):
        variant = "union" if keys.any_prefix("controlnet_mode_embedder.") else ""
        if keys.any_prefix("controlnet_x_embedder.", "controlnet_single_blocks."):
            return ModelIdentity("controlnet", "flux", variant, {}, "diffusers")
        if keys.any_prefix("pos_embed_input."):
            return ModelIdentity("controlnet", "sd3", variant, {}, "diffusers")
    return None


# -- full models and diffusion models -------------------------------------------

_DIFFUSION_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")
_VAE_PREFIXES = ("first_stage_model.", "vae.")
_TEXT_PREFIXES = ("cond_stage_model.", "conditioner.", "text_encoders.", "text_encoder.")


def diffusion_model_rule(keys: TensorKeys, meta: Mapping[str, str]) -> ModelIdentity | None:
    has_vae = keys.any_prefix(*_VAE_PREFIXES)
    has_text = keys.any_prefix(*_TEXT_PREFIXES)
    for prefix in _DIFFUSION_PREFIXES:
        if keys.any_prefix(f"{prefix}input_blocks.") and keys.any_prefix(f"{prefix}middle_block."):
            return _unet_model(keys, meta, prefix, False, has_vae or has_text)
        if keys.any_prefix(f"{prefix}joint_blocks."):
            return _sd3_model(keys, prefix, "x_embedder.proj.weight", has_vae or has_text, "original")
        if keys.any_prefix(f"{prefix}double_blocks.") and keys.any_prefix(f"{prefix}single_blocks."):
            return _flux_model(keys, prefix, has_vae or has_text)
    if keys.has("conv_in.weight") and keys.any_prefix("down_blocks.") and keys.any_prefix("time_embedding."):
        return _unet_model(keys, meta, "", True, False)
    if keys.any_prefix("transformer_blocks.") and keys.has("context_embedder.weight"):
        if keys.any_prefix("single_transformer_blocks."):
            return _flux_diffusers(keys)
        if keys.has("pos_embed.proj.weight"):
            return _sd3_model(keys, "", "pos_embed.proj.weight", False, "diffusers")
    return None


def _unet_model(
    keys: TensorKeys, meta: Mapping[str, str], prefix: str, diffusers: bool, full: bool
) -> ModelIdentity:
    structure = _unet_structure(keys, prefix, diffusers)
    architecture = _unet_architecture(structure)
    in_ch, out_ch = structure["in_channels"], structure["out_channels"]
    variant = ""
    refiner_text = keys.any_prefix("conditioner.embedders.0.model.") and not keys.any_prefix(
        "conditioner.embedders.1."
    )
    if in_ch and out_ch and in_ch == 2 * out_ch + 1:  # latents + masked-image latents + mask
        variant = "inpaint"
    elif in_ch and out_ch and in_ch == 2 * out_ch:
        variant = "instruct_pix2pix"
    elif architecture == "sd2" and in_ch and out_ch and in_ch == out_ch + 1:
        variant = "depth"
    elif architecture == "sd2" and structure["adm_in_channels"]:
        variant = "unclip"
    elif architecture == "sdxl" and (refiner_text or structure["levels"] == 4):
        variant = "refiner"
    details = clean_details(structure)
    if is_v_prediction(keys, meta):
        details["prediction_type"] = "v_prediction"
        variant = variant or "v_prediction"
    if full:
        details["components"] = _components(keys)
    kind = "checkpoint" if full else "unet"
    return ModelIdentity(kind, architecture, variant, details, "diffusers" if diffusers else "original")


def _components(keys: TensorKeys) -> list[str]:
    found = ["unet"]
    if keys.any_prefix(*_VAE_PREFIXES):
        found.append("vae")
    if keys.any_prefix(*_TEXT_PREFIXES):
        found.append("text_encoder")
    return found


def _sd3_model(keys: TensorKeys, prefix: str, embed_key: str, full: bool, layout: str) -> ModelIdentity:
    embed = keys.shape(f"{prefix}{embed_key}")
    blocks = "joint_blocks." if layout == "original" else "transformer_blocks."
    details: dict[str, Any] = {
        "depth": len(keys.indices(f"{prefix}{blocks}")),
        "hidden_size": embed[0] if embed else None,
        "in_channels": embed[1] if embed else None,
        "qk_norm": keys.any_prefix(
            f"{prefix}{blocks}0.x_block.attn.ln_q.", f"{prefix}{blocks}0.attn.norm_q."
        ),
        "dual_attention": keys.any_prefix(f"{prefix}{blocks}0.x_block.attn2.", f"{prefix}{blocks}0.attn2."),
    }
    return ModelIdentity("checkpoint" if full else "transformer", "sd3", "", clean_details(details), layout)


def _flux_variant(in_channels: int | None, out_channels: int | None) -> str:
    if not in_channels or not out_channels:
        return ""
    ratio = in_channels / out_channels
    if ratio == 6:  # FLUX.1 Fill: latents + masked-image latents + packed mask
        return "inpaint"
    if ratio == 2:  # FLUX.1 Depth/Canny: latents + control latents
        return "control"
    return ""


def _flux_model(keys: TensorKeys, prefix: str, full: bool) -> ModelIdentity:
    img_in = keys.shape(f"{prefix}img_in.weight")
    final = keys.shape(f"{prefix}final_layer.linear.weight")
    details = {
        "double_blocks": len(keys.indices(f"{prefix}double_blocks.")),
        "single_blocks": len(keys.indices(f"{prefix}single_blocks.")),
        "hidden_size": img_in[0] if img_in else None,
        "in_channels": img_in[1] if img_in else None,
        "guidance_embed": keys.any_prefix(f"{prefix}guidance_in."),
    }
    variant = _flux_variant(details["in_channels"], final[0] if final else None)
    return ModelIdentity(
        "checkpoint" if full else "transformer", "flux", variant, clean_details(details), "original"
    )


def _flux_diffusers(keys: TensorKeys) -> ModelIdentity:
    embed = keys.shape("x_embedder.weight")
    out = keys.shape("proj_out.weight")
    details = {
        "double_blocks": len(keys.indices("transformer_blocks.")),
        "single_blocks": len(keys.indices("single_transformer_blocks.")),
        "hidden_size": embed[0] if embed else None,
        "in_channels": embed[1] if embed else None,
        "guidance_embed": keys.any_prefix("time_text_embed.guidance_embedder."),
    }
    variant = _flux_variant(details["in_channels"], out[0] if out else None)
    return ModelIdentity("transformer", "flux", variant, clean_details(details), "diffusers")


# -- VAE ---------------------------------------------------------------------------


def vae_rule(keys: TensorKeys, meta: Mapping[str, str]) -> ModelIdentity | None:
    for prefix in ("", *_VAE_PREFIXES):
        original = keys.any_prefix(f"{prefix}encoder.down.0.", f"{prefix}decoder.up.0.")
        diffusers = keys.any_prefix(f"{prefix}encoder.down_blocks.0.", f"{prefix}decoder.up_blocks.0.")
        if not (original or diffusers):
            continue
        decoder_in = keys.shape(f"{prefix}decoder.conv_in.weight")
        encoder_out = keys.shape(f"{prefix}encoder.conv_out.weight")
        latent = decoder_in[1] if decoder_in else (encoder_out[0] // 2 if encoder_out else None)
        details: dict[str, Any] = {
            "latent_channels": latent,
            "quant_conv": keys.has(f"{prefix}quant_conv.weight")
            or keys.has(f"{prefix}post_quant_conv.weight"),
        }
        # SD1.5, SD2 and SDXL VAEs are the same network (as are SD3's and FLUX's): the
        # structure says which family fits, only metadata can say which one it was made for.
        if latent == 4:
            details["compatible_architectures"] = ["sd15", "sd2", "sdxl"]
        elif latent == 16:
            details["compatible_architectures"] = ["sd3", "flux"]
        return ModelIdentity(
            "vae", "unknown", "", clean_details(details), "original" if original else "diffusers"
        )
    return None
