"""ControlNet: steer generation with control maps (edges, depth, pose, ...).

Several units per job; each brings a ControlNet model, a control map, a weight and the
fraction of the steps it acts in. The pipeline is swapped for a job-local ControlNet view
(``from_pipe``) so the cached base pipeline is never modified.
"""

from __future__ import annotations

import contextlib

from ctrlgen.core.plugins import hookimpl
from ctrlgen.core.specs import AdapterSpec, Param

PARAMS = (
    Param("weight", "float", default=1.0, min=0.0, max=2.0, step=0.05,
          description="How strongly the control map steers (controlnet_conditioning_scale)"),
    Param("guidance_start", "float", default=0.0, min=0.0, max=1.0, step=0.01,
          description="Fraction of the steps after which the unit starts acting"),
    Param("guidance_end", "float", default=1.0, min=0.0, max=1.0, step=0.01,
          description="Fraction of the steps after which the unit stops acting"),
)


@contextlib.contextmanager
def attach_controlnet(context, units):
    """Swap in a ControlNet pipeline view for ``units`` (PreparedUnit list) for one job."""
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    from ctrlgen.core.engine import fit_control
    from ctrlgen.core.errors import JobError
    from ctrlgen.core.tasks import control_image_key, pipeline_class

    for unit in units:
        if unit.params["guidance_start"] >= unit.params["guidance_end"]:
            raise JobError(
                f"control[{unit.index}].guidance_start={unit.params['guidance_start']} must be below "
                f"guidance_end={unit.params['guidance_end']}"
            )
    models = [context.engine.load_controlnet(unit.model_entry, context.architecture) for unit in units]
    controlnet = models[0] if len(models) == 1 else MultiControlNetModel(models)
    task = context.job.task
    original_pipeline, original_kwargs = context.pipeline, dict(context.call_kwargs)
    context.pipeline = pipeline_class(context.architecture, task, controlnet=True).from_pipe(
        original_pipeline, controlnet=controlnet)
    context.pipeline.set_progress_bar_config(disable=True)
    modes = [context.job.control[unit.index].resize_mode for unit in units]
    images = fit_control(units, context.width, context.height, modes)
    single = len(units) == 1
    context.call_kwargs.update({control_image_key(task): images[0] if single else images})
    context.call_kwargs.update(
        controlnet_conditioning_scale=units[0].params["weight"] if single else [u.params["weight"] for u in units],
        control_guidance_start=[u.params["guidance_start"] for u in units],
        control_guidance_end=[u.params["guidance_end"] for u in units],
    )
    try:
        yield context
    finally:
        context.pipeline = original_pipeline
        context.call_kwargs.clear()
        context.call_kwargs.update(original_kwargs)


@hookimpl
def ctrlgen_adapters():
    yield AdapterSpec(
        name="controlnet",
        attach=attach_controlnet,
        params=PARAMS,
        description="ControlNet units: control maps steering the denoising",
        architectures=("sd15", "sd2", "sdxl"),
        requires=("diffusers",),
    )
