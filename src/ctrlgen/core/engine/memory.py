"""Fitting a job into the memory there is: offloading and VAE tiling/slicing.

Editor users often have 6–8 GB cards. Before a pipeline is moved to the GPU and before
every job, the engine asks :func:`plan_memory` what to do, from the free memory the
device reports, the size of the model's weights and the size of the job:

- ``offload="none"``: everything lives on the device (fastest).
- ``offload="model"``: weights live in RAM; each model (text encoder, UNet, VAE, ...) moves
  to the device while it runs (diffusers' ``enable_model_cpu_offload``). Chosen when the
  whole pipeline does not fit but its largest model does.
- ``offload="sequential"``: submodules move one at a time (``enable_sequential_cpu_offload``):
  slow, but runs on very little memory.
- ``vae_slicing``: decode a batch one image at a time; ``vae_tiling``: decode (and encode)
  in overlapping tiles, for sizes whose decode would not fit.

``memory`` (``auto`` / ``none`` / ``model_offload`` / ``sequential_offload``) and
``vae_tiling`` (``auto`` / ``on`` / ``off``) override the automatic choice; they come
from ``config.toml``, ``CTRLGEN_MEMORY`` / ``CTRLGEN_VAE_TILING``, ``Engine(...)`` or the
CLI's ``--memory`` / ``--vae-tiling``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Literal

from ctrlgen.core.errors import CtrlgenError

MEMORY_MODES = ("auto", "none", "model_offload", "sequential_offload")
TILING_MODES = ("auto", "on", "off")
GIB = 1024**3
# Working memory beyond the weights while denoising (activations, attention with SDPA):
# a fixed part plus a part per megapixel of output (≈1.5 GiB for SDXL at 1024², 0.75 GiB
# for SD1.5 at 512²), rounded up from what these models use.
MARGIN_FIXED = GIB // 2
MARGIN_PER_MEGAPIXEL = GIB
# VAE decode peak per output pixel and byte of precision (SD/SDXL VAE: ~3 KB per pixel in fp16).
VAE_BYTES_PER_PIXEL_PER_BYTE = 1536


@dataclass(frozen=True)
class MemoryPlan:
    offload: Literal["none", "model", "sequential"]
    vae_tiling: bool
    vae_slicing: bool
    reason: str


def check_modes(memory: str, vae_tiling: str) -> None:
    if memory not in MEMORY_MODES:
        raise CtrlgenError(f"unknown memory mode {memory!r}; use one of {', '.join(MEMORY_MODES)}")
    if vae_tiling not in TILING_MODES:
        raise CtrlgenError(f"unknown vae_tiling {vae_tiling!r}; use one of {', '.join(TILING_MODES)}")


def free_memory(device: str) -> int | None:
    """Bytes free on ``device`` now: CUDA's own count, available RAM for the CPU, None if unknown."""
    if device.startswith("cuda"):
        import torch

        index = torch.device(device)
        free, total = torch.cuda.mem_get_info(index)
        # A cap set with torch.cuda.set_per_process_memory_fraction (another app shares the
        # card, or gpu_check.sh simulates a small one) counts: what this process may still take.
        get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # torch >= 2.8
        fraction = get_fraction(index) if get_fraction is not None else 1.0
        if fraction < 1.0:
            free = min(free, int(total * fraction) - torch.cuda.memory_reserved(index))
        return max(int(free), 0)
    if device == "cpu":
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):  # not on this platform
            return None
    return None


def weight_bytes(pipeline: Any) -> tuple[int, int]:
    """``(all weights, largest single model)`` of a pipeline's torch modules, in bytes."""
    sizes = []
    for component in pipeline.components.values():
        parameters = getattr(component, "parameters", None)
        if parameters is None:
            continue
        sizes.append(sum(p.numel() * p.element_size() for p in parameters()))
    return sum(sizes), max(sizes, default=0)


def vae_decode_bytes(width: int, height: int, batch: int, dtype_bytes: int) -> int:
    return width * height * batch * dtype_bytes * VAE_BYTES_PER_PIXEL_PER_BYTE


def plan_memory(*, memory: str, vae_tiling: str, device: str, free: int | None, weights: int, largest: int,
                width: int, height: int, batch: int, dtype_bytes: int, resident: bool = False) -> MemoryPlan:
    """What to do for one job. ``resident``: the weights already sit on the device (so
    ``free`` no longer counts them)."""
    check_modes(memory, vae_tiling)
    on_gpu = device != "cpu"
    decode = vae_decode_bytes(width, height, batch, dtype_bytes)
    decode_one = vae_decode_bytes(width, height, 1, dtype_bytes)
    margin = MARGIN_FIXED + int(MARGIN_PER_MEGAPIXEL * width * height * batch / 2**20)

    if memory == "none" or not on_gpu:
        offload, why = "none", "asked for" if memory == "none" else "runs on the CPU"
    elif memory == "auto" and resident:
        offload, why = "none", "the weights are already on the device"
    elif memory == "model_offload":
        offload, why = "model", "asked for"
    elif memory == "sequential_offload":
        offload, why = "sequential", "asked for"
    elif free is None:
        offload, why = "none", "free memory unknown"
    else:
        if weights + margin <= free:
            offload, why = "none", f"{_gib(weights)} of weights fit in {_gib(free)} free"
        elif largest + margin <= free:
            offload, why = "model", f"{_gib(weights)} of weights do not fit in {_gib(free)} free; the largest model does"
        else:
            offload, why = "sequential", f"not even the largest model ({_gib(largest)}) fits in {_gib(free)} free"

    # Memory left for the VAE decode: what is free minus what stays on the device.
    if free is None:
        left = None
    elif offload == "none":
        left = free - (0 if resident or not on_gpu else weights)
    else:
        left = free  # the VAE runs alone on the device
    if vae_tiling == "on":
        tiling, slicing = True, batch > 1
    elif vae_tiling == "off":
        tiling, slicing = False, False
    elif left is None:
        tiling, slicing = False, False
    else:
        tiling = decode_one > left * 0.8
        slicing = batch > 1 and decode > left * 0.8
    return MemoryPlan(offload, tiling, slicing, why)  # type: ignore[arg-type]


def _gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"


@contextlib.contextmanager
def applied(pipeline: Any, plan: MemoryPlan, device: str):
    """Apply ``plan`` to a job-local pipeline view; undo it afterwards.

    The VAE and the models are shared with the cached pipeline, so its tiling/slicing
    flags are put back, offload hooks removed and every model returned to the device it
    was on (RAM for an offloaded pipeline) on exit — success, error or cancel.
    """
    vae = getattr(pipeline, "vae", None)
    before = (getattr(vae, "use_tiling", False), getattr(vae, "use_slicing", False))
    homes = {name: _device_of(module) for name, module in pipeline.components.items()
             if _device_of(module) is not None}
    try:
        if vae is not None:
            if plan.vae_tiling:
                vae.enable_tiling()
            if plan.vae_slicing:
                vae.enable_slicing()
        if plan.offload == "model":
            pipeline.enable_model_cpu_offload(device=device)
        elif plan.offload == "sequential":
            pipeline.enable_sequential_cpu_offload(device=device)
        yield pipeline
    finally:
        if plan.offload != "none":
            pipeline.remove_all_hooks()
            for name, module in pipeline.components.items():
                if name in homes and _device_of(module) != homes[name]:
                    module.to(homes[name])
        if vae is not None:
            vae.use_tiling, vae.use_slicing = before


def _device_of(module: Any):
    parameters = getattr(module, "parameters", None)
    if parameters is None:
        return None
    first = next(iter(parameters()), None)
    return None if first is None else first.device
