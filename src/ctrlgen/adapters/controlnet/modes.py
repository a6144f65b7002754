"""sd-webui-controlnet's control modes on diffusers ControlNets.

* ``balanced``: the residuals as the ControlNet gives them (times the unit's weight).
* ``prompt`` ("My prompt is more important"): *soft injection*. Residual ``i`` of ``n``
  (shallowest first, the middle block last) is scaled by ``0.825 ** (12 - i)``. SD1.5 has 13
  residuals, so the middle block keeps the full weight and the shallowest gets ``0.825 ** 12``
  (under 0.1); SDXL has 10 and sd-webui-controlnet uses the first ten of the same factors
  (``control_scales[:10]``), so SDXL's middle block gets ``0.825 ** 3``. Other counts follow
  the same rule.
* ``controlnet`` ("ControlNet is more important"): soft injection plus *CFG injection*: the
  residuals reach only the conditional half of the classifier-free-guidance batch; the
  unconditional half gets none, so guidance pushes towards the control.

Each unit's ControlNet is run through a job-local view (:func:`with_control_mode`): a shallow
copy of the module that shares every parameter, buffer and sub-module with the cached model but
has its own ``forward``. Nothing on the cached model changes, so there is nothing to restore.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ctrlgen.core.plugins.specs import Param

CONTROL_MODES = ("balanced", "prompt", "controlnet")
SOFT_INJECTION_BASE = 0.825
_ALIASES = {
    # sd-webui-controlnet's labels and API values (0/1/2), and the reference adapter's names
    "balanced": "balanced",
    "0": "balanced",
    "prompt": "prompt",
    "my prompt is more important": "prompt",
    "my_prompt_is_more_important": "prompt",
    "1": "prompt",
    "controlnet": "controlnet",
    "controlnet is more important": "controlnet",
    "controlnet_is_more_important": "controlnet",
    "2": "controlnet",
}


def canonical_control_mode(value: Any) -> Any:
    """``"My prompt is more important"`` -> ``"prompt"`` (and the other aliases); other values unchanged."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, int)):
        return _ALIASES.get(str(value).strip().lower(), value)
    return value


@dataclass(frozen=True)
class ControlModeParam(Param):
    """A choice param that also takes sd-webui-controlnet's names for the control modes."""

    def validate(self, value: Any, owner: str = "") -> Any:
        return super().validate(canonical_control_mode(value), owner)


def soft_injection_scales(count: int) -> list[float]:
    """The factors for ``count`` residuals (shallowest first, middle block last)."""
    return [SOFT_INJECTION_BASE ** float(12 - index) for index in range(count)]


def with_control_mode(model: Any, mode: str, has_uncond_half: Callable[[int], bool]) -> Any:
    """``model`` itself for ``balanced``; otherwise a job-local view of it whose outputs get the
    mode's soft injection (and CFG injection). ``has_uncond_half(rows)`` says whether a batch of
    ``rows`` starts with the unconditional half (it does not in diffusers' guess mode, where the
    ControlNet sees the conditional rows only)."""
    if mode == "balanced":
        return model
    if mode not in CONTROL_MODES:
        raise ValueError(f"control mode {mode!r} is not one of {', '.join(CONTROL_MODES)}")
    forward = model.forward
    cfg_injection = mode == "controlnet"

    def moded_forward(*args: Any, **kwargs: Any) -> Any:
        output = forward(*args, **kwargs)
        sample = args[0] if args else kwargs["sample"]
        as_tuple = isinstance(output, tuple)
        down, mid = output if as_tuple else (output.down_block_res_samples, output.mid_block_res_sample)
        residuals = [*down, mid]
        residuals = [r * s for r, s in zip(residuals, soft_injection_scales(len(residuals)), strict=True)]
        if cfg_injection and has_uncond_half(sample.shape[0]):
            residuals = [_zero_uncond(r) for r in residuals]
        down, mid = residuals[:-1], residuals[-1]
        if as_tuple:
            return (down, mid)
        return type(output)(down_block_res_samples=down, mid_block_res_sample=mid)

    view = copy.copy(model)  # shares _parameters/_buffers/_modules with the cached model
    object.__setattr__(view, "forward", moded_forward)
    object.__setattr__(view, "ctrlgen_control_mode", mode)
    object.__setattr__(view, "ctrlgen_base_model", model)
    return view


def _zero_uncond(residual: Any) -> Any:
    import torch

    half = residual.shape[0] // 2
    return torch.cat([torch.zeros_like(residual[:half]), residual[half:]])
