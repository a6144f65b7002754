"""Pick the device and precision to run on."""

from __future__ import annotations

from dataclasses import dataclass

from ctrlgen.core.errors import CtrlgenError


@dataclass(frozen=True)
class DeviceChoice:
    device: str
    dtype_name: str  # "float16", "bfloat16", "float32"

    @property
    def dtype(self):
        import torch

        return getattr(torch, self.dtype_name)


def choose_device(preference: str = "auto", precision: str = "auto") -> DeviceChoice:
    """``auto`` picks CUDA, then Apple MPS, then CPU; fp16 on GPUs, fp32 on CPU."""
    import torch

    preference = (preference or "auto").strip().lower()
    if preference == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    else:
        device = preference
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise CtrlgenError(
                f"device {preference!r} was asked for but CUDA is not available here; "
                "use device = \"auto\" or \"cpu\" (CTRLGEN_DEVICE / config.toml)"
            )
        if device == "mps" and not torch.backends.mps.is_available():
            raise CtrlgenError("device 'mps' was asked for but Apple MPS is not available; use 'auto' or 'cpu'")
        if not (device == "cpu" or device == "mps" or device.startswith("cuda")):
            raise CtrlgenError(f"unknown device {preference!r}; use auto, cpu, cuda, cuda:N or mps")
    if precision == "auto":
        precision = "float32" if device == "cpu" else "float16"
    if precision not in ("float16", "bfloat16", "float32"):
        raise CtrlgenError(f"unknown precision {precision!r}; use auto, float16, bfloat16 or float32")
    return DeviceChoice(device, precision)
