"""IP-Adapter: reference images steer the generation through extra cross-attention (image prompts).

Loaded with diffusers' ``load_ip_adapter`` from local weights (h94's formats: plain, Plus,
full-face, FaceID, FaceID-Plus v1/v2, SD1.5 and SDXL), the reference images encoded by the CLIP
image encoder the adapter needs (or insightface's ArcFace for FaceID), and taken out again after
the job: see :mod:`ctrlgen.adapters.ip_adapter.attach`. Several uses in one job load together (diffusers
keeps one key/value projection per adapter in every processor). Per-block scales follow
InstantStyle: ``style`` acts only in the block that carries style, ``composition`` only in the
one that carries layout.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import AdapterSpec, Param, normalize_name

PRESETS = ("all", "style", "composition", "style_and_composition")


def _check_block_scales(value: Any) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
        for k, v in value.items()
    ):
        raise ValueError(
            'give an object of UNet block prefixes and factors, e.g. {"up_blocks.0.attentions.1": 1.0}'
        )


def _check_images(value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(p, str) and p.strip() for p in value):
        raise ValueError(f"give a list of image paths, got {value!r}")


PARAMS = (
    Param(
        "model",
        "model",
        category="ipadapter",
        description="IP-Adapter weights (ip-adapter_sd15, ip-adapter-plus_sd15, ip-adapter-full-face_sd15, "
        "ip-adapter_sdxl_vit-h, ip-adapter-faceid_sd15, ip-adapter-faceid-plusv2_sd15, ...)",
    ),
    Param("image", "image", description="Reference image (for FaceID: a photo of the face)"),
    Param(
        "images",
        "json",
        default=[],
        validator=_check_images,
        description="More reference images for this adapter (paths); "
        "their tokens are attended to together with the first image's",
    ),
    Param(
        "image_encoder",
        "model",
        default="auto",
        category="clip_vision",
        description="CLIP image encoder; auto picks the clip_vision model whose width the adapter reads",
    ),
    Param(
        "scale",
        "float",
        default=1.0,
        min=0.0,
        max=2.0,
        step=0.05,
        description="How strongly the reference steers (0 = no effect)",
    ),
    Param(
        "block_preset",
        "choice",
        default="all",
        choices=PRESETS,
        description="InstantStyle: style = only the style block, composition = only the layout block",
    ),
    Param(
        "block_scales",
        "json",
        default={},
        validator=_check_block_scales,
        description='Per-block factors by UNet block prefix (e.g. {"down_blocks.2.attentions.1": 1.0}); '
        "blocks not named get 0. Overrides block_preset",
    ),
    Param(
        "mask",
        "str",
        default="",
        description="Attention mask image path for regional use: the reference "
        "acts where the mask is white (empty: everywhere)",
    ),
    Param(
        "face_detector",
        "choice",
        default="insightface",
        choices=("insightface", "mediapipe"),
        description="FaceID: find the face with insightface's detector or MediaPipe's (offline)",
    ),
    Param(
        "insightface_model",
        "choice",
        default="buffalo_l",
        choices=("buffalo_l", "antelopev2"),
        description="FaceID: insightface pack (from the store's insightface folder) for detection and ArcFace",
    ),
    Param(
        "face_embedding",
        "str",
        default="",
        description="FaceID: a precomputed 512-number ArcFace "
        "embedding (.npy) to use instead of analysing the image",
    ),
    Param(
        "faceid_structure",
        "float",
        default=1.0,
        min=0.0,
        max=3.0,
        step=0.05,
        description="FaceID-Plus v2 only: weight of the face-ID shortcut (h94's s_scale)",
    ),
)


def _labels(context: Any, count: int) -> list[str]:
    indices = [i for i, use in enumerate(context.job.adapters) if normalize_name(use.type) == "ip_adapter"]
    return [f"adapters[{i}] (ip_adapter)" for i in indices][:count] or [
        f"ip_adapter[{i}]" for i in range(count)
    ]


def check_ip_adapter(context, uses):
    """What needs no weights (the spec's ``check``): a reference image, the model's kind and
    architecture from its header, the attention mask and a face-embedding file readable."""
    from ctrlgen.core.errors import JobError

    for params, label in zip(uses, _labels(context, len(uses)), strict=False):
        if params["image"] is None:
            raise JobError(f"{label}.image is missing; give the reference image (for FaceID: a photo of the face)")
        entry = context.store.find(params["model"], category=("ipadapter",)) if params["model"] else None
        if entry is None:
            raise JobError(f"{label}.model is missing; name an IP-Adapter (`ctrlgen models --category ipadapter`)")
        identity = entry.identity
        if identity.kind != "ip_adapter":  # read from its header: not an IP-Adapter at all
            kind = "model of unknown kind" if identity.kind == "unknown" else identity.kind
            raise JobError(f"{label}.model {params['model']!r} ({entry.path}) is a {kind}, not an IP-Adapter")
        if identity.variant == "instantid":
            raise JobError(f"{label}.model {params['model']!r} is InstantID's IP-Adapter; use the instantid adapter")
        if identity.architecture not in ("unknown", context.architecture):
            raise JobError(f"{label}.model {params['model']!r} is made for {identity.architecture}; this checkpoint "
                           f"is {context.architecture}. Use an IP-Adapter made for {context.architecture}.")
        if params["mask"]:
            context.read_image(params["mask"], f"{label}.mask")
        if params["face_embedding"]:
            if not context.store.allow_paths:
                raise JobError(f"{label}.face_embedding names a file, which this server does not read; give the "
                               "face photo as the image instead")
            from ctrlgen.adapters.ip_adapter.face import load_embedding

            load_embedding(params["face_embedding"], f"{label}.face_embedding")


@contextlib.contextmanager
def attach_ip_adapter(context, uses):
    """Load every ``ip_adapter`` use of the job into the UNet for the job; restore on exit."""
    from ctrlgen.adapters.ip_adapter.attach import attach_ip_uses
    from ctrlgen.adapters.ip_adapter.prepare import prepare_use

    prepared = [
        prepare_use(context, params, label)
        for params, label in zip(uses, _labels(context, len(uses)), strict=False)
    ]
    with attach_ip_uses(context, prepared):
        yield context


@hookimpl
def ctrlgen_adapters():
    yield AdapterSpec(
        name="ip_adapter",
        attach=attach_ip_adapter,
        check=check_ip_adapter,
        params=PARAMS,
        description="IP-Adapter: reference images as prompts (style, composition, faces with FaceID)",
        architectures=("sd15", "sdxl"),
        requires=("diffusers", "transformers"),
    )
