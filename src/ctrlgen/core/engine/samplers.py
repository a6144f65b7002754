"""A1111 sampler names mapped to diffusers schedulers."""

from __future__ import annotations

from typing import Any

from ctrlgen.core.errors import JobError

# name -> (diffusers scheduler class, extra config)
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "LMS Karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 Karras": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ 2M SDE Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", {}),
    "DPM++ SDE Karras": ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
    "DDIM": ("DDIMScheduler", {}),
    "PLMS": ("PNDMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "DEIS": ("DEISMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}

_BY_KEY = {name.lower().replace(" ", ""): name for name in SAMPLERS}


def resolve_sampler_name(name: str) -> str:
    """Canonical A1111 name for ``name`` (case and spaces ignored), or a clear error."""
    key = str(name).lower().replace(" ", "").replace("_", "")
    if key in _BY_KEY:
        return _BY_KEY[key]
    raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")


def make_scheduler(name: str, base_config: Any):
    """A fresh diffusers scheduler for sampler ``name`` built from the model's scheduler config."""
    import diffusers

    canonical = resolve_sampler_name(name)
    class_name, extra = SAMPLERS[canonical]
    try:
        cls = getattr(diffusers, class_name)
        return cls.from_config(base_config, **extra)
    except (AttributeError, ImportError, ValueError) as exc:
        raise JobError(f"sampler {canonical!r} is not available with this diffusers version: {exc}") from None
