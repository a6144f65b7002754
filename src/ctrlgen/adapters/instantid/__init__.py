"""InstantID: keep a person's identity from one face photo, zero-shot.

Three parts, each on diffusers primitives: insightface's face analysis (antelopev2 from the
model store: SCRFD keypoints, ArcFace embedding); the InstantID IP-Adapter (``ip-adapter.bin``:
a Resampler over the embedding, loaded by diffusers' ``load_ip_adapter`` as IP-Adapter attention
processors, so it composes with other IP-Adapters in the job); and IdentityNet, a ControlNet
fed InstantID's five-keypoint drawing that attends to the face tokens instead of the prompt
(:mod:`ctrlgen.adapters.instantid.identitynet`). It joins the job's ControlNet units (MultiControlNet).
``ip_adapter_scale`` (identity strength) and ``controlnet_conditioning_scale`` (keypoint
strength) are separate, as in InstantID's own pipeline.
"""

from __future__ import annotations

import contextlib

from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import AdapterSpec, Param, normalize_name

PARAMS = (
    Param(
        "face_image", "image", description="Photo of the person whose identity to keep (largest face is used)"
    ),
    Param(
        "model",
        "model",
        category="ipadapter",
        description="InstantID's IP-Adapter (InstantX/InstantID ip-adapter.bin; ComfyUI: models/instantid)",
    ),
    Param(
        "controlnet",
        "model",
        category="controlnet",
        description="InstantID's IdentityNet ControlNet (InstantX/InstantID ControlNetModel)",
    ),
    Param(
        "ip_adapter_scale",
        "float",
        default=0.8,
        min=0.0,
        max=1.5,
        step=0.05,
        description="Face embedding strength: how much the identity steers (IP-Adapter scale)",
    ),
    Param(
        "controlnet_conditioning_scale",
        "float",
        default=0.8,
        min=0.0,
        max=1.5,
        step=0.05,
        description="Keypoint strength: how strictly the face follows the five keypoints (IdentityNet)",
    ),
    Param(
        "guidance_start",
        "float",
        default=0.0,
        min=0.0,
        max=1.0,
        step=0.01,
        description="Fraction of the steps after which IdentityNet starts acting",
    ),
    Param(
        "guidance_end",
        "float",
        default=1.0,
        min=0.0,
        max=1.0,
        step=0.01,
        description="Fraction of the steps after which IdentityNet stops acting",
    ),
    Param(
        "pose_image",
        "str",
        default="",
        description="Image whose face keypoints set the face's place and "
        "pose (empty: the face image's own, fitted to the output like a crop-and-resize control map)",
    ),
    Param(
        "detector",
        "choice",
        default="insightface",
        choices=("insightface", "mediapipe"),
        description="Keypoints from insightface's SCRFD (as InstantID) or MediaPipe's bundled detector "
        "(offline, mouth corners estimated); the embedding is always ArcFace's",
    ),
    Param(
        "insightface_model",
        "choice",
        default="antelopev2",
        choices=("antelopev2", "buffalo_l"),
        description="insightface pack in the store's insightface folder (InstantID uses antelopev2)",
    ),
)


def _label(context) -> str:
    index = next(
        (i for i, use in enumerate(context.job.adapters) if normalize_name(use.type) == "instantid"), 0
    )
    return f"adapters[{index}] (instantid)"


def _one_use(label: str, uses) -> dict:
    """The job's one instantid use, its guidance window in order (check and attach both ask)."""
    from ctrlgen.core.errors import JobError

    if len(uses) > 1:
        raise JobError("a job takes one instantid use (one identity); give the others in separate jobs")
    params = uses[0]
    if params["guidance_start"] >= params["guidance_end"]:
        raise JobError(
            f"{label}.guidance_start={params['guidance_start']} must be below "
            f"guidance_end={params['guidance_end']}"
        )
    return params


def check_instantid(context, uses):
    """What needs no weights (the spec's ``check``): one use, guidance order, the face photo,
    the face IP-Adapter and IdentityNet by their headers, the pose image readable."""
    from ctrlgen.core.errors import JobError

    if not uses:
        return
    label = _label(context)
    params = _one_use(label, uses)
    if params["face_image"] is None:
        raise JobError(f"{label}.face_image is missing; give a photo of the person")
    for name in ("model", "controlnet"):
        if not params[name]:
            raise JobError(f"{label}.{name} is missing; name InstantID's "
                           + ("IP-Adapter (ip-adapter.bin)" if name == "model" else "IdentityNet ControlNet"))
    entry = context.store.find(params["model"], category=("ipadapter",))
    if entry.identity.kind != "ip_adapter" or entry.identity.variant != "instantid":
        raise JobError(
            f"{label}.model {params['model']!r} ({entry.path}) is not InstantID's IP-Adapter (a Resampler "
            "over the 512-number face embedding); IP-Adapters for images go in an ip_adapter use"
        )
    net_entry = context.store.find(params["controlnet"], category=("controlnet",))
    if net_entry.identity.kind != "controlnet" or net_entry.identity.architecture not in (
        context.architecture,
        "unknown",
    ):
        raise JobError(
            f"{label}.controlnet {params['controlnet']!r} ({net_entry.path}) is not a "
            f"{context.architecture} ControlNet; give InstantID's IdentityNet"
        )
    if params["pose_image"]:
        context.read_image(params["pose_image"], f"{label}.pose_image")


@contextlib.contextmanager
def attach_instantid(context, uses):
    """Face analysis, IdentityNet with the keypoint image, and the face IP-Adapter, for one job."""
    import numpy as np
    import torch

    from ctrlgen.adapters.instantid.identitynet import face_tokens_for, keypoint_image, with_identitynet
    from ctrlgen.adapters.ip_adapter.attach import (
        IPUse,
        attach_ip_uses,
        cfg_layout,
        projection_kind,
        read_ip_adapter_cached,
    )
    from ctrlgen.adapters.ip_adapter.face import analyze_face, detect_faces
    from ctrlgen.adapters.ip_adapter.prepare import check_fits_unet
    from ctrlgen.core.errors import JobError

    label = _label(context)
    params = _one_use(label, uses)
    store, device = context.store, context.device
    entry = store.find(params["model"], category=("ipadapter",))
    state = read_ip_adapter_cached(context.engine, entry.path, store.allow_pickle, device)
    if projection_kind(state) != "face_resampler":
        raise JobError(
            f"{label}.model {params['model']!r} ({entry.path}) is not InstantID's IP-Adapter (a Resampler "
            "over the 512-number face embedding); IP-Adapters for images go in an ip_adapter use"
        )
    check_fits_unet(state, context.pipeline.unet, context.architecture, params["model"], label)
    net_entry = store.find(params["controlnet"], category=("controlnet",))
    if net_entry.identity.kind != "controlnet" or net_entry.identity.architecture not in (
        context.architecture,
        "unknown",
    ):
        raise JobError(
            f"{label}.controlnet {params['controlnet']!r} ({net_entry.path}) is not a "
            f"{context.architecture} ControlNet; give InstantID's IdentityNet"
        )
    identitynet = context.engine.load_controlnet(net_entry, context.architecture)

    analysis = {"pack": params["insightface_model"], "detector": params["detector"], "device": device}
    face_pixels = context.read_image(params["face_image"], f"{label}.face_image")
    face = analyze_face(store, face_pixels, f"{label}.face_image", **analysis)
    kps, source = face.kps, face_pixels
    if params["pose_image"]:
        source = context.read_image(params["pose_image"], f"{label}.pose_image")
        faces = detect_faces(store, source, **analysis)
        if not faces:
            raise JobError(f"{label}.pose_image: no face found (detector={params['detector']})")
        kps = faces[0].kps
    control = keypoint_image(kps, (source.shape[1], source.shape[0]), context.width, context.height)

    embedding = torch.from_numpy(np.asarray(face.embedding, np.float32)).reshape(1, 1, -1)
    embeds = cfg_layout(context, embedding, torch.zeros_like(embedding))
    from ctrlgen.core.engine.engine import file_signature

    use = IPUse(label, state, embeds, params["ip_adapter_scale"], source=file_signature(entry.path))
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            with_identitynet(
                context,
                identitynet,
                control,
                params["controlnet_conditioning_scale"],
                params["guidance_start"],
                params["guidance_end"],
                label,
            )
        )
        (projection,) = stack.enter_context(attach_ip_uses(context, [use]))
        with torch.no_grad():  # the face tokens IdentityNet attends to: the projection of the embedding
            tokens = projection(embeds.reshape(-1, *embeds.shape[2:]).to(identitynet.dtype))
        stack.enter_context(face_tokens_for(identitynet, tokens))
        yield context


@hookimpl
def ctrlgen_adapters():
    yield AdapterSpec(
        name="instantid",
        attach=attach_instantid,
        check=check_instantid,
        params=PARAMS,
        description="InstantID: identity from one face photo (face embedding IP-Adapter + IdentityNet keypoints)",
        architectures=("sdxl",),
        requires=("diffusers", "insightface", "onnxruntime"),
    )
