"""InstantID's pieces on diffusers primitives: the keypoint image, IdentityNet fed with face tokens,
and IdentityNet joined to the job's ControlNet units.

IdentityNet is a ControlNet whose cross-attention reads the face (the InstantID projection's
tokens), not the prompt. diffusers' ControlNet pipelines give every ControlNet the prompt
embeddings, so a forward pre-hook on the IdentityNet model swaps its ``encoder_hidden_states``
for the face tokens (negative rows first when guided, as the prompt's) and is removed on exit.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import numpy as np

from ctrlgen.core.errors import JobError

_CONTROL_KEYS = ("controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end")


def fit_points(points: np.ndarray, source_size: tuple[int, int], width: int, height: int) -> np.ndarray:
    """Pixel points of a ``source_size`` (w, h) image, moved as ``images.fit(..., "crop_and_resize")``
    moves its pixels to ``width``×``height``."""
    src_w, src_h = source_size
    scale = max(width / src_w, height / src_h)
    new_w, new_h = max(width, round(src_w * scale)), max(height, round(src_h * scale))
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return np.asarray(points, np.float64) * [new_w / src_w, new_h / src_h] - [left, top]


def keypoint_image(kps: np.ndarray, source_size: tuple[int, int], width: int, height: int):
    """InstantID's keypoint drawing (PIL) at the generation size."""
    from PIL import Image

    from ctrlgen.preprocessors.face.detect import draw_kps

    return Image.fromarray(draw_kps(height, width, [fit_points(kps, source_size, width, height)]))


@contextlib.contextmanager
def face_tokens_for(identitynet: Any, tokens: Any) -> Iterator[None]:
    """While inside, ``identitynet`` attends to ``tokens`` instead of the prompt embeddings."""

    def swap(module, args, kwargs):
        states = kwargs.get("encoder_hidden_states")
        if states is None:
            return None
        rows = states.shape[0]
        face = tokens if tokens.shape[0] == rows else tokens[-rows:]  # guess mode: positive rows only
        return args, {**kwargs, "encoder_hidden_states": face.to(dtype=states.dtype, device=states.device)}

    handle = identitynet.register_forward_pre_hook(swap, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def with_identitynet(
    context: Any, identitynet: Any, control_image: Any, scale: float, start: float, end: float, label: str
) -> Iterator[None]:
    """Swap in a ControlNet view with IdentityNet added after the job's ControlNet units (if any)."""
    from diffusers import ControlNetModel
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    from ctrlgen.core.engine.tasks import pipeline_class as task_pipeline_class
    from ctrlgen.core.engine.tasks import pipeline_view

    current = context.pipeline
    existing = getattr(current, "controlnet", None)
    if existing is None:
        pipeline_class = task_pipeline_class(context.architecture, context.job.task, controlnet=True)
        nets: list[Any] = []
    elif isinstance(existing, (ControlNetModel, MultiControlNetModel)):
        pipeline_class = type(current)
        nets = list(existing.nets) if isinstance(existing, MultiControlNetModel) else [existing]
    else:
        raise JobError(
            f"{label}: IdentityNet cannot join a {type(existing).__name__} (ControlNet union models); "
            "use separate ControlNet models in the job's control units"
        )
    if any(getattr(net, "ctrlgen_base_model", net) is identitynet for net in nets):
        raise JobError(
            f"{label}.controlnet is also used as a control unit; IdentityNet reads the face, not the "
            "prompt, so give it only to instantid"
        )
    image_key = (
        "control_image"
        if "control_image" in inspect.signature(pipeline_class.__call__).parameters
        else "image"
    )
    saved = {key: context.call_kwargs.get(key) for key in (image_key, *_CONTROL_KEYS)}
    if nets:

        def as_list(value: Any) -> list[Any]:
            return list(value) if isinstance(existing, MultiControlNetModel) else [value]

        controlnet = MultiControlNetModel([*nets, identitynet])
        images = [*as_list(saved[image_key]), control_image]
        scales = [*as_list(saved["controlnet_conditioning_scale"]), scale]
        starts = [*saved["control_guidance_start"], start]
        ends = [*saved["control_guidance_end"], end]
    else:
        controlnet, images, scales, starts, ends = identitynet, control_image, scale, [start], [end]
    context.pipeline = pipeline_view(pipeline_class, current, controlnet=controlnet)
    context.call_kwargs.update(
        {
            image_key: images,
            "controlnet_conditioning_scale": scales,
            "control_guidance_start": starts,
            "control_guidance_end": ends,
        }
    )
    try:
        yield
    finally:
        context.pipeline = current
        for key, value in saved.items():
            if value is None:
                context.call_kwargs.pop(key, None)
            else:
                context.call_kwargs[key] = value
