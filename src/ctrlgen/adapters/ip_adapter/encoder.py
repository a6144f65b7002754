"""The CLIP image encoder an IP-Adapter reads its reference images with.

An IP-Adapter's projection says which encoder it needs by its input width: plain adapters take
the projected ``image_embeds`` (ViT-H: 1024, ViT-bigG: 1280), Plus / full-face / FaceID-Plus take
the penultimate hidden states (ViT-H: 1280, ViT-bigG: 1664). ``image_encoder="auto"`` picks the
``clip_vision`` model whose width matches. Encoders are transformers folders (h94's
``models/image_encoder``) or single files with transformers' key names (ComfyUI's
``CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors``; sd-webui-controlnet's ``clip_h.pth`` when
pickles are allowed), whose config is read off the tensor shapes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ctrlgen.core.errors import JobError, ModelNotFoundError
from ctrlgen.core.models.annotators import loaded

OWNER = "ip_adapter"
_WIDTH_OF = {
    "base": "projection_dim",
    "plus": "hidden_size",
    "full": "hidden_size",
    "faceid_plus": "hidden_size",
}
_KNOWN = {1024: "ViT-L", 1280: "ViT-H", 1664: "ViT-bigG"}


def needed_width(kind: str, state_dict: dict[str, dict[str, Any]]) -> tuple[str, int] | None:
    """(``projection_dim`` or ``hidden_size``, width) the adapter's projection reads; None: no encoder."""
    proj = state_dict["image_proj"]
    key = {
        "base": "proj.weight",
        "plus": "proj_in.weight",
        "full": "proj.0.weight",
        "faceid_plus": "perceiver_resampler.proj_in.weight",
    }.get(kind)
    return None if key is None else (_WIDTH_OF[kind], int(proj[key].shape[1]))


def encoder_widths(entry: Any) -> dict[str, int]:
    """``hidden_size`` and ``projection_dim`` of a clip_vision store entry (config or tensor shapes)."""
    if entry.path.is_dir():
        try:
            config = json.loads((entry.path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        vision = config.get("vision_config", config)
        return {
            k: int(v)
            for k in ("hidden_size", "projection_dim")
            if isinstance(v := vision.get(k, config.get(k)), int)
        }
    details = entry.identity.details
    return {k: int(details[k]) for k in ("hidden_size", "projection_dim") if details.get(k)}


def pick_encoder(store: Any, ref: str, need: tuple[str, int], adapter: str) -> Any:
    """The clip_vision entry for ``ref`` (``auto``: the one whose width fits), checked against ``need``."""
    field, width = need
    what = "image embeddings" if field == "projection_dim" else "hidden states"
    if ref != "auto":
        entry = store.find(ref, category=("clip_vision", "annotators"))
        found = encoder_widths(entry).get(field)
        if found is not None and found != width:
            raise JobError(
                f"image_encoder {ref!r} gives {found}-wide {what}, but IP-Adapter {adapter!r} reads "
                f"{width}-wide ones; use the encoder it was trained with, or image_encoder=auto"
            )
        return entry
    fitting = sorted(
        (e for e in store.entries("clip_vision") if encoder_widths(e).get(field) == width),
        key=lambda e: e.name,
    )
    if fitting:
        return fitting[0]
    hint = f" ({_KNOWN[width]})" if field == "hidden_size" and width in _KNOWN else ""
    raise ModelNotFoundError(
        f"IP-Adapter {adapter!r} needs a CLIP image encoder with {width}-wide {what}{hint}; no clip_vision "
        "model in the store has that width. Put h94/IP-Adapter's models/image_encoder folder (ViT-H) or "
        "sdxl_models/image_encoder (ViT-bigG) into your clip_vision folder, or name one with image_encoder."
    )


def load_encoder(entry: Any, device: str, dtype: Any, allow_pickle: bool):
    """``(CLIPVisionModelWithProjection, CLIPImageProcessor)`` for a store entry, loaded once."""

    def load():
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        if entry.path.is_dir():
            model = CLIPVisionModelWithProjection.from_pretrained(entry.path, local_files_only=True)
        else:
            model = _from_single_file(entry.path, allow_pickle)
        model = model.to(device=device, dtype=dtype).eval()
        size = model.config.image_size
        return model, CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        )

    return loaded(OWNER, load, key=("encoder", str(Path(entry.path).resolve()), device, str(dtype)))


def _from_single_file(path: Path, allow_pickle: bool):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from ctrlgen.core.models.identify import load_state_dict

    state = load_state_dict(path, allow_pickle=allow_pickle)
    patch_key = next((k for k in state if k.endswith("vision_model.embeddings.patch_embedding.weight")), None)
    if patch_key is None or not any(k.endswith("visual_projection.weight") for k in state):
        raise JobError(f"{path} is not a CLIP vision model with a projection (transformers key names)")
    prefix = patch_key[: -len("vision_model.embeddings.patch_embedding.weight")]
    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    hidden, _, patch, _ = state["vision_model.embeddings.patch_embedding.weight"].shape
    positions = state["vision_model.embeddings.position_embedding.weight"].shape[0]
    layers = len({k.split(".")[3] for k in state if k.startswith("vision_model.encoder.layers.")})
    config = CLIPVisionConfig(
        hidden_size=hidden,
        patch_size=patch,
        image_size=round((positions - 1) ** 0.5) * patch,
        num_hidden_layers=layers,
        projection_dim=state["visual_projection.weight"].shape[0],
        intermediate_size=state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        # OpenCLIP ViT-H/bigG and OpenAI ViT-L all use 16 heads; OpenAI's ViT-L uses quick_gelu.
        num_attention_heads=16 if hidden in _KNOWN else max(1, hidden // 64),
        hidden_act="quick_gelu" if hidden == 1024 else "gelu",
    )
    model = CLIPVisionModelWithProjection(config)
    state.pop("vision_model.embeddings.position_ids", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise JobError(
            f"{path}: not a CLIPVisionModelWithProjection state dict "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model


def encode_images(context: Any, encoder: Any, processor: Any, images: list[Any], hidden: bool):
    """(positive, negative) embeddings of ``images`` (PIL) through diffusers' ``encode_image``."""
    import torch

    pipe = context.pipeline
    saved = {name: getattr(pipe, name, None) for name in ("image_encoder", "feature_extractor")}
    pipe.register_modules(image_encoder=encoder, feature_extractor=processor)
    try:
        with torch.no_grad():
            return pipe.encode_image(images, context.device, 1, output_hidden_states=hidden)
    finally:
        pipe.register_modules(**saved)
