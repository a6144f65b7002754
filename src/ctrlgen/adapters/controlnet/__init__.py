"""ControlNet: steer generation with control maps (edges, depth, pose, ...).

Several units per job; each brings a ControlNet model, a control map, a weight, the fraction
of the steps it acts in and a control mode (sd-webui-controlnet's balanced / my prompt is more
important / ControlNet is more important, see :mod:`ctrlgen.adapters.controlnet.modes`).
The pipeline is swapped for a job-local ControlNet view (``tasks.pipeline_view``) so the cached base
pipeline is never modified.

* **ControlNet inpaint** on a regular checkpoint: a unit with preprocessor ``inpaint`` (or
  ``inpaint_only``) in an inpaint job is conditioned on the job's picture with the pixels to
  repaint set to -1, from the same image and mask (grown, inverted, cropped for only-masked)
  that the inpaint pipeline gets. The hint goes to diffusers as a float tensor: its ControlNet
  image processor does not normalise, so -1 arrives as -1.
* **SDXL union ControlNets** (``ControlNetUnionModel``): each unit has a ``control_type``
  (:mod:`ctrlgen.adapters.controlnet.union`). Units that share one union model run as one
  multi-condition pass (diffusers' ``control_image`` + ``control_mode`` lists); units on
  different union models run side by side (``MultiControlNetUnionModel``). Union and regular
  ControlNets cannot be mixed in one job: diffusers has no pipeline for that.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ctrlgen.adapters.controlnet.modes import CONTROL_MODES, ControlModeParam
from ctrlgen.adapters.controlnet.union import CONTROL_TYPE_CHOICES
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import AdapterSpec, Param

PARAMS = (
    Param("weight", "float", default=1.0, min=0.0, max=2.0, step=0.05,
          description="How strongly the control map steers (controlnet_conditioning_scale)"),
    Param("guidance_start", "float", default=0.0, min=0.0, max=1.0, step=0.01,
          description="Fraction of the steps after which the unit starts acting"),
    Param("guidance_end", "float", default=1.0, min=0.0, max=1.0, step=0.01,
          description="Fraction of the steps after which the unit stops acting"),
    ControlModeParam("control_mode", "choice", default="balanced", choices=CONTROL_MODES,
                     description="balanced; prompt (My prompt is more important: deeper residuals weigh more, "
                                 "0.825**(12-i)); controlnet (ControlNet is more important: that, and no control "
                                 "on the negative-prompt half of guidance). sd-webui-controlnet's names work too"),
    Param("control_type", "choice", default="auto", choices=CONTROL_TYPE_CHOICES,
          description="Union ControlNets only: what the control map is; auto picks it from the preprocessor"),
)


def check_controlnet(context, units):
    """The units' rules that need no weights (the spec's ``check``; ``attach`` runs it too):
    guidance order, ``control_type`` only on union models, union and regular models not mixed,
    one ``control_mode`` per shared union model, inpaint units only in inpaint jobs."""
    import os

    from ctrlgen.adapters.controlnet.inpaint import check_inpaint_unit, is_inpaint_preprocessor
    from ctrlgen.adapters.controlnet.union import check_one_control_mode
    from ctrlgen.core.errors import JobError

    union = [unit.model_entry.identity.variant == "union" for unit in units]
    for unit in units:
        params, label = unit.params, f"control[{unit.index}]"
        if params["guidance_start"] >= params["guidance_end"]:
            raise JobError(
                f"{label}.guidance_start={params['guidance_start']} must be below "
                f"guidance_end={params['guidance_end']}"
            )
        if unit.model_entry.identity.variant != "union" and params["control_type"] != "auto":
            raise JobError(
                f"{label}.control_type={params['control_type']!r} is for union ControlNets; "
                f"{unit.model_entry.name!r} is a regular one (it knows its control type): drop control_type"
            )
        if is_inpaint_preprocessor(unit.preprocessor):
            check_inpaint_unit(context.job, unit)
    if any(union) and not all(union):
        names = ", ".join(f"control[{u.index}] ({u.model_entry.name})" for u, is_u in zip(units, union, strict=True)
                          if is_u)
        raise JobError(
            f"union ControlNets ({names}) cannot run with regular ControlNets in one job (diffusers has no "
            "pipeline for both); use the union model for every unit, or only regular ControlNets"
        )
    if all(union) and len({os.path.realpath(u.model_entry.path) for u in units}) == 1:
        check_one_control_mode(units)


@contextlib.contextmanager
def attach_controlnet(context, units):
    """Swap in a ControlNet pipeline view for ``units`` (PreparedUnit list) for one job."""
    check_controlnet(context, units)
    union = [unit.model_entry.identity.variant == "union" for unit in units]
    from ctrlgen.adapters.controlnet.inpaint import control_images

    images = control_images(context, units, union_kind=all(union))
    original_pipeline, original_kwargs = context.pipeline, dict(context.call_kwargs)
    if all(union):
        controlnet, kwargs = _union_controlnet(context, units, images)
    else:
        controlnet, kwargs = _regular_controlnet(context, units, images)
    from ctrlgen.core.engine.tasks import pipeline_class, pipeline_view

    kind = "union" if all(union) else True
    context.pipeline = pipeline_view(pipeline_class(context.architecture, context.job.task, controlnet=kind),
                                     original_pipeline, controlnet=controlnet)
    context.call_kwargs.update(kwargs)
    try:
        yield context
    finally:
        context.pipeline = original_pipeline
        context.call_kwargs.clear()
        context.call_kwargs.update(original_kwargs)


def _has_uncond_half(context):
    """Whether a ControlNet batch of ``rows`` holds [unconditional, conditional] halves."""

    def check(rows: int) -> bool:
        guided = bool(getattr(context.pipeline, "do_classifier_free_guidance", False))
        return guided and rows == 2 * context.job.batch_size

    return check


def _moded(context, unit, model):
    from ctrlgen.adapters.controlnet.modes import with_control_mode

    return with_control_mode(model, unit.params["control_mode"], _has_uncond_half(context))


def _regular_controlnet(context, units, images) -> tuple[Any, dict[str, Any]]:
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    from ctrlgen.core.engine.tasks import control_image_key

    nets = [_moded(context, u, context.engine.load_controlnet(u.model_entry, context.architecture)) for u in units]
    single = len(units) == 1
    kwargs = {
        control_image_key(context.job.task): images[0] if single else images,
        "controlnet_conditioning_scale": units[0].params["weight"] if single else [u.params["weight"] for u in units],
        "control_guidance_start": [u.params["guidance_start"] for u in units],
        "control_guidance_end": [u.params["guidance_end"] for u in units],
    }
    return (nets[0] if single else MultiControlNetModel(nets)), kwargs


def _union_controlnet(context, units, images) -> tuple[Any, dict[str, Any]]:
    from diffusers.models.controlnets.multicontrolnet_union import MultiControlNetUnionModel

    from ctrlgen.adapters.controlnet.union import check_one_control_mode, resolve_control_type

    models = [context.engine.load_controlnet(u.model_entry, context.architecture) for u in units]
    modes = [
        resolve_control_type(u.params["control_type"], u.preprocessor, m.config.num_control_type, f"control[{u.index}]")
        for u, m in zip(units, models, strict=True)
    ]
    kwargs = {
        "control_image": images,
        "control_mode": modes,
        "controlnet_conditioning_scale": [u.params["weight"] for u in units],
        "control_guidance_start": [u.params["guidance_start"] for u in units],
        "control_guidance_end": [u.params["guidance_end"] for u in units],
    }
    if all(m is models[0] for m in models):
        # One union model: one pass with every control image, as the model was trained for.
        check_one_control_mode(units)
        return _moded(context, units[0], models[0]), kwargs
    return MultiControlNetUnionModel([_moded(context, u, m) for u, m in zip(units, models, strict=True)]), kwargs


@hookimpl
def ctrlgen_adapters():
    yield AdapterSpec(
        name="controlnet",
        attach=attach_controlnet,
        check=check_controlnet,
        params=PARAMS,
        description="ControlNet units: control maps steering the denoising (control modes, inpaint, SDXL union)",
        architectures=("sd15", "sd2", "sdxl"),
        requires=("diffusers",),
    )
