"""Per-use preparation for ``ip_adapter``: weights and fit checks, image/face embeddings, InstantStyle
block factors, attention masks."""

from __future__ import annotations

from typing import Any

import numpy as np

from ctrlgen.core.errors import JobError

_WIDTH_NAMES = {768: "SD1.5", 1024: "SD2", 2048: "SDXL"}


def check_fits_unet(
    state: dict[str, dict[str, Any]], unet: Any, architecture: str, ref: str, label: str
) -> None:
    """The adapter's key/value projections must match this UNet's cross-attention layers."""
    layers = [k for k in state["ip_adapter"] if k.endswith(".to_k_ip.weight")]
    width = int(state["ip_adapter"][layers[0]].shape[1]) if layers else None
    expected = unet.config.cross_attention_dim
    cross = sum(1 for name in unet.attn_processors if name.endswith("attn2.processor"))
    if width != expected or len(layers) != cross:
        made_for = _WIDTH_NAMES.get(width, f"cross-attention width {width}")
        raise JobError(
            f"{label}.model {ref!r} is made for {made_for} ({len(layers)} cross-attention layers, width {width}); "
            f"this {architecture} checkpoint's UNet has {cross} layers of width {expected}. "
            f"Use an IP-Adapter made for {architecture}."
        )


def _face_embeddings(context: Any, params: dict[str, Any], images: list[Any], label: str):
    """(normed ArcFace embeddings N×512, aligned 224² face crops) for FaceID."""
    from ctrlgen.adapters.ip_adapter.face import aligned_face, analyze_face, load_embedding

    if params["face_embedding"]:
        embedding = load_embedding(params["face_embedding"], f"{label}.face_embedding")
        return [embedding / max(float(np.linalg.norm(embedding)), 1e-12)], [np.asarray(images[0])]
    embeddings, crops = [], []
    for index, image in enumerate(images):
        pixels = np.asarray(image)
        face = analyze_face(
            context.store,
            pixels,
            f"{label}.image" + (f"s[{index - 1}]" if index else ""),
            pack=params["insightface_model"],
            detector=params["face_detector"],
            device=context.device,
        )
        embeddings.append(face.normed_embedding)
        crops.append(aligned_face(pixels, face.kps))
    return embeddings, crops


def embeddings_for(
    context: Any,
    kind: str,
    state: dict[str, dict[str, Any]],
    images: list[Any],
    params: dict[str, Any],
    entry: Any,
    label: str,
):
    """(``ip_adapter_image_embeds`` entry, projection setup or None) for one use."""
    import torch
    from PIL import Image

    from ctrlgen.adapters.ip_adapter.attach import cfg_layout
    from ctrlgen.adapters.ip_adapter.encoder import encode_images, load_encoder, needed_width, pick_encoder

    def encoder_for():
        need = needed_width(kind, state)
        found = pick_encoder(context.store, params["image_encoder"], need, params["model"])
        return load_encoder(found, context.device, context.dtype, context.store.allow_pickle)

    if kind in ("base", "plus", "full"):
        encoder, processor = encoder_for()
        positive, negative = encode_images(context, encoder, processor, images, hidden=kind != "base")
        return cfg_layout(context, positive, negative), None
    embeddings, crops = _face_embeddings(context, params, images, label)
    ids = torch.from_numpy(np.stack(embeddings)).float()
    embeds = cfg_layout(context, ids, torch.zeros_like(ids))
    if kind == "faceid":
        return embeds, None
    encoder, processor = encoder_for()  # FaceID-Plus: CLIP features of the aligned face too
    positive, negative = encode_images(
        context, encoder, processor, [Image.fromarray(c) for c in crops], hidden=True
    )
    clip_embeds = cfg_layout(context, positive, negative)
    v2 = "v2" in entry.path.name.lower()

    def prepare(layer: Any) -> None:
        layer.clip_embeds = clip_embeds
        layer.shortcut = v2
        layer.shortcut_scale = params["faceid_structure"]

    return embeds, prepare


def read_mask(context: Any, path: str, images: int, label: str):
    """``1×images×H×W`` mask (white = where the reference acts) at the generation size."""
    from diffusers.image_processor import IPAdapterMaskProcessor
    from PIL import Image

    pixels = context.read_image(path, f"{label}.mask")
    grey = Image.fromarray(pixels).convert("L")
    mask = IPAdapterMaskProcessor().preprocess([grey], height=context.height, width=context.width)
    if not mask.any():
        raise JobError(f"{label}.mask {path} is black everywhere: the reference would act nowhere")
    return mask.reshape(1, 1, *mask.shape[-2:]).repeat(1, images, 1, 1).to(context.device)


def block_factors(preset: str, custom: dict[str, float], unet: Any, architecture: str, label: str):
    """Processor-name prefix -> factor for a preset or ``block_scales`` (None: every layer, 1)."""
    from ctrlgen.adapters.ip_adapter.attach import cross_attention_blocks

    blocks = cross_attention_blocks(unet)
    if custom:
        for prefix in custom:
            if not any(
                b == prefix or b.startswith(prefix + ".") or prefix.startswith(b + ".") for b in blocks
            ):
                raise JobError(
                    f"{label}.block_scales: {prefix!r} names no cross-attention block of this UNet; "
                    f"its blocks are: {', '.join(blocks)}"
                )
        return {k: float(v) for k, v in custom.items()}
    if preset == "all":
        return None
    down = [b.rsplit(".attentions.", 1)[0] for b in blocks if b.startswith("down_blocks.")]
    up = [b.rsplit(".attentions.", 1)[0] for b in blocks if b.startswith("up_blocks.")]
    if architecture == "sdxl":  # InstantStyle: up_blocks.0.attentions.1 and down_blocks.2.attentions.1
        style = {f"{up[0]}.attentions.1" if f"{up[0]}.attentions.1" in blocks else up[0]: 1.0}
        layout = {f"{down[-1]}.attentions.1" if f"{down[-1]}.attentions.1" in blocks else down[-1]: 1.0}
    else:  # InstantStyle's SD1.5 choice: up_blocks.1 for style, down_blocks.2 + mid_block for layout
        style, layout = {up[0]: 1.0}, {down[-1]: 1.0, "mid_block": 1.0}
    return {"style": style, "composition": layout, "style_and_composition": {**style, **layout}}[preset]


def prepare_use(context: Any, params: dict[str, Any], label: str):
    """An :class:`~ctrlgen.adapters.ip_adapter.attach.IPUse` for one validated use (loads weights, encodes images)."""
    from PIL import Image

    from ctrlgen.adapters.ip_adapter.attach import IPUse, projection_kind, read_ip_adapter_cached
    from ctrlgen.core.engine.engine import file_signature

    store = context.store
    entry = store.find(params["model"], category=("ipadapter",))
    if entry.identity.kind not in ("ip_adapter", "unknown"):
        raise JobError(
            f"{label}.model {params['model']!r} ({entry.path}) is a {entry.identity.kind}, not an IP-Adapter"
        )
    state = read_ip_adapter_cached(context.engine, entry.path, store.allow_pickle, context.device)
    kind = projection_kind(state)
    if kind == "face_resampler":
        raise JobError(
            f"{label}.model {params['model']!r} is InstantID's IP-Adapter; use the instantid adapter"
        )
    check_fits_unet(state, context.pipeline.unet, context.architecture, params["model"], label)
    paths = [params["image"], *params["images"]]
    images = [
        Image.fromarray(context.read_image(p, f"{label}.image" + (f"s[{i - 1}]" if i else "")))
        for i, p in enumerate(paths)
    ]
    embeds, prepare = embeddings_for(context, kind, state, images, params, entry, label)
    factors = block_factors(
        params["block_preset"], params["block_scales"], context.pipeline.unet, context.architecture, label
    )
    mask = read_mask(context, params["mask"], len(images), label) if params["mask"] else None
    return IPUse(label, state, embeds, params["scale"], factors, mask, prepare, source=file_signature(entry.path))
