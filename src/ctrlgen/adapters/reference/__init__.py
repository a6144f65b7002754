"""Reference-only: generate in the style and with the content of a reference image, no model needed.

sd-webui-controlnet's ``reference_only``, ``reference_adain`` and ``reference_adain+attn``
preprocessors, with the same semantics: the reference image's latent, noised to each step's
timestep, goes through the UNet first and its self-attention tokens (``attn``) and/or feature
statistics (``adain``) steer the real pass. Works with SD1.5 and SDXL and alongside ControlNet
units (the reference pass gets no ControlNet residuals). Hooks and attention processors are put
on the shared UNet for the job only and removed after it, success, error or cancel.
"""

from __future__ import annotations

import contextlib

from ctrlgen.core.images import RESIZE_MODES
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import AdapterSpec, Param, normalize_name

MODES = ("reference_only", "reference_adain", "reference_adain+attn")
CONTROL_MODES = ("balanced", "my_prompt_is_more_important", "controlnet_is_more_important")

PARAMS = (
    Param("image", "image", required=True, description="Reference image (path or uploaded image id)"),
    Param("mode", "choice", default="reference_only", choices=MODES,
          description="reference_only: share self-attention with the reference; reference_adain: match its "
                      "feature statistics (AdaIN); reference_adain+attn: both"),
    Param("weight", "float", default=1.0, min=0.0, max=2.0, step=0.05,
          description="How many layers take part (A1111's control weight): 0 none, 1 all but the widest "
                      "AdaIN point, above 1 all"),
    Param("style_fidelity", "float", default=0.5, min=0.0, max=1.0, step=0.01,
          description="How much of the negative-prompt branch stays unreferenced: 0 follows the reference "
                      "in both branches, 1 keeps the negative branch plain (stronger style). "
                      "SDXL uses its cube, as sd-webui-controlnet does"),
    Param("control_mode", "choice", default="balanced", choices=CONTROL_MODES,
          description="A1111's control mode: my_prompt_is_more_important sets style_fidelity 0, "
                      "controlnet_is_more_important sets it to 1"),
    Param("guidance_start", "float", default=0.0, min=0.0, max=1.0, step=0.01,
          description="Fraction of the steps after which the reference starts acting"),
    Param("guidance_end", "float", default=1.0, min=0.0, max=1.0, step=0.01,
          description="Fraction of the steps after which the reference stops acting"),
    Param("resize_mode", "choice", default="crop_and_resize", choices=RESIZE_MODES,
          description="How the reference image is fitted to the output size"),
)


def _use(context, index, params):
    from ctrlgen.adapters.reference.hooks import ReferenceUse
    from ctrlgen.core.errors import JobError

    owner = f"reference use {index + 1}"
    if params["guidance_start"] >= params["guidance_end"]:
        raise JobError(f"{owner}: guidance_start={params['guidance_start']} must be below "
                       f"guidance_end={params['guidance_end']}")
    fidelity = params["style_fidelity"]
    if context.architecture == "sdxl":
        fidelity = fidelity**3.0  # sd-webui-controlnet: SDXL's attention sharing is less stable
    fidelity = {"my_prompt_is_more_important": 0.0, "controlnet_is_more_important": 1.0}.get(
        params["control_mode"], fidelity)
    mode = params["mode"]
    return ReferenceUse(
        image=context.read_image(params["image"], f"{owner}.image"),
        attention=mode in ("reference_only", "reference_adain+attn"),
        adain=mode in ("reference_adain", "reference_adain+attn"),
        weight=params["weight"],
        style_fidelity=fidelity,
        guidance_start=params["guidance_start"],
        guidance_end=params["guidance_end"],
        resize_mode=params["resize_mode"],
    )


def check_reference(context, uses):
    """The spec's ``check``: each use's guidance range is not empty."""
    from ctrlgen.core.errors import JobError

    indices = [i for i, use in enumerate(context.job.adapters) if normalize_name(use.type) == "reference"]
    for position, params in enumerate(uses):
        label = f"adapters[{indices[position]}] (reference)" if position < len(indices) else f"reference use {position + 1}"
        if params["guidance_start"] >= params["guidance_end"]:
            raise JobError(f"{label}.guidance_start={params['guidance_start']} must be below "
                           f"guidance_end={params['guidance_end']}")


@contextlib.contextmanager
def attach_reference(context, uses):
    """Hook the job's UNet for the reference uses; everything is removed on exit."""
    from ctrlgen.adapters.reference.hooks import ReferenceHooks

    references = [_use(context, index, params) for index, params in enumerate(uses)]
    generators = context.call_kwargs.get("generator")
    seed = generators[0].initial_seed() if isinstance(generators, list) and generators else max(context.job.seed, 0)
    hooks = ReferenceHooks(context, context.pipeline.unet, references, seed)
    context.step_callbacks.append(hooks.on_step_end)
    try:
        yield context
    finally:
        hooks.remove()
        with contextlib.suppress(ValueError):
            context.step_callbacks.remove(hooks.on_step_end)


@hookimpl
def ctrlgen_adapters():
    yield AdapterSpec(
        name="reference",
        attach=attach_reference,
        check=check_reference,
        params=PARAMS,
        description="Reference-only (sd-webui-controlnet): follow a reference image's style and content, "
                    "through self-attention sharing and/or AdaIN",
        architectures=("sd15", "sd2", "sdxl"),
        requires=("diffusers",),
    )
