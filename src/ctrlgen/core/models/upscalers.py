"""Upscaler models (ESRGAN, Real-ESRGAN, SwinIR, DAT, ...) and the plain resamplers.

- The model store finds them by their headers (:mod:`ctrlgen.core.models.upscaler_rules`) and
  in the ``upscale_models`` category (ComfyUI's ``models/upscale_models``, A1111's
  ``models/ESRGAN``, ``RealESRGAN``, ``SwinIR``, ``DAT``). Families the rule does not know are
  still listed from those folders and loaded by spandrel when a job names them.
- :func:`load_upscaler` loads a file with `spandrel <https://github.com/chaiNNer-org/spandrel>`_
  (MIT), from a state dict read the way every ctrlgen file is read (safetensors first; a pickle
  only when allowed, and then with ``weights_only=True``).
- :func:`upscale_image` runs a loaded model over an image in tiles, so the model's working
  memory follows the tile, not the image; :func:`resample` is the model-free alternative.

spandrel and torch are imported inside the functions that need them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ctrlgen.core.errors import JobError, ModelFormatError

# Plain resamplers (no model): the names a job gives as its upscaler.
RESAMPLERS = ("lanczos", "bicubic", "bilinear", "nearest")


# -- loading --------------------------------------------------------------------------------

_LOADED: dict[tuple[str, int, str, str], Any] = {}


def _unwrap_state_dict(tensors: dict[str, Any]) -> dict[str, Any]:
    """BasicSR saves ``{"params_ema": ...}`` (or ``params``); the loader flattens it with a prefix."""
    for prefix in ("params_ema.", "params.", "model_state_dict.", "state_dict."):
        if tensors and all(name.startswith(prefix) or not name.startswith(prefix.split(".")[0]) for name in tensors) \
                and any(name.startswith(prefix) for name in tensors):
            return {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}
    return tensors


def load_upscaler(path: str | Path, *, allow_pickle: bool = False, device: str = "cpu", dtype: Any = None) -> Any:
    """A spandrel ``ImageModelDescriptor`` for the upscaler file at ``path``, cached by file.

    Raises :class:`ModelFormatError` naming the file when spandrel does not recognise it as an
    image model, and the store's :class:`UnsafeModelError` for a pickle that is not allowed."""
    from ctrlgen.core.models.identify import load_state_dict

    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, device, str(dtype))
    if key in _LOADED:
        return _LOADED[key]
    state_dict = _unwrap_state_dict(load_state_dict(path, allow_pickle=allow_pickle))
    try:
        from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError
    except ImportError:  # pragma: no cover - part of the engine extra
        raise JobError("upscaler models need the `spandrel` package: pip install 'ctrlgen[engine]'") from None
    try:
        descriptor = ModelLoader(device="cpu").load_from_state_dict(state_dict)
    except UnsupportedModelError:
        raise ModelFormatError(
            f"{path} is not an upscaler model spandrel knows (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, ... — "
            "https://github.com/chaiNNer-org/spandrel#model-architecture-support); pick another file from "
            "`ctrlgen models --category upscale_models` or a resampler (" + ", ".join(RESAMPLERS) + ")") from None
    except (KeyError, RuntimeError, ValueError, IndexError) as exc:
        raise ModelFormatError(f"{path} looks like an upscaler but does not load: {exc}") from None
    if not isinstance(descriptor, ImageModelDescriptor):
        raise ModelFormatError(f"{path} is a {descriptor.architecture.name} model, which does not make images "
                               "(an inpainting or restoration model?); give an upscaler")
    descriptor.model.eval()
    descriptor.to(device)
    if dtype is not None and str(dtype) != "torch.float32":
        supported = (str(dtype) == "torch.float16" and descriptor.supports_half) or (
            str(dtype) == "torch.bfloat16" and descriptor.supports_bfloat16)
        if supported:
            descriptor.to(dtype)
    if len(_LOADED) >= 4:
        _LOADED.clear()
    _LOADED[key] = descriptor
    return descriptor


def unload() -> None:
    """Forget the loaded upscalers (Engine.unload)."""
    _LOADED.clear()


# -- running --------------------------------------------------------------------------------


def resample(image: np.ndarray, width: int, height: int, method: str = "lanczos") -> np.ndarray:
    """``image`` (uint8 H×W×C) resized to ``width``×``height`` with a plain PIL filter."""
    from PIL import Image

    if method not in RESAMPLERS:
        raise JobError(f"resampler {method!r} is not one of {', '.join(RESAMPLERS)}")
    if image.shape[1] == width and image.shape[0] == height:
        return image
    filters = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC,
               "bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}
    return np.asarray(Image.fromarray(image).resize((width, height), filters[method]))


def upscale_image(descriptor: Any, image: np.ndarray, *, tile: int = 256, pad: int = 16,
                  check: Any = None) -> np.ndarray:
    """``image`` (uint8 H×W×3) through the upscaler, ``descriptor.scale`` times larger (uint8).

    The input is cut into ``tile``-pixel squares, each run with ``pad`` pixels of context on
    every side that are cut off again, so the model never sees more than ``tile + 2 * pad``
    pixels and the seams fall inside context the model had. ``check()`` (optional) is called
    between tiles (cancelling)."""
    import torch

    scale = int(descriptor.scale)
    height, width = image.shape[:2]
    out = np.empty((height * scale, width * scale, 3), np.uint8)
    parameter = next(descriptor.model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    requirements = descriptor.size_requirements
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            if check is not None:
                check()
            y0, x0 = max(top - pad, 0), max(left - pad, 0)
            y1, x1 = min(top + tile + pad, height), min(left + tile + pad, width)
            patch = image[y0:y1, x0:x1]
            patch, (pad_h, pad_w) = _meet(patch, requirements)
            tensor = torch.from_numpy(np.array(patch, copy=True)).to(device=device, dtype=dtype)
            tensor = tensor.permute(2, 0, 1)[None] / 255.0
            with torch.inference_mode():
                result = descriptor(tensor)
            result = result[0].float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
            result = result[: result.shape[0] - pad_h * scale or None, : result.shape[1] - pad_w * scale or None]
            inner_top, inner_left = (top - y0) * scale, (left - x0) * scale
            rows, cols = min(tile, height - top) * scale, min(tile, width - left) * scale
            out[top * scale: top * scale + rows, left * scale: left * scale + cols] = \
                result[inner_top: inner_top + rows, inner_left: inner_left + cols, :3]
    return out


def _meet(patch: np.ndarray, requirements: Any) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad a patch (reflecting its edge) to the model's size requirements; the padding added."""
    height, width = patch.shape[:2]
    want_h, want_w = height, width
    if requirements is not None:
        multiple = max(int(getattr(requirements, "multiple_of", 1) or 1), 1)
        minimum = int(getattr(requirements, "minimum", 0) or 0)
        want_h = max(-(-height // multiple) * multiple, minimum)
        want_w = max(-(-width // multiple) * multiple, minimum)
        if getattr(requirements, "square", False):
            want_h = want_w = max(want_h, want_w)
    if (want_h, want_w) == (height, width):
        return patch, (0, 0)
    mode = "reflect" if want_h - height < height and want_w - width < width else "edge"
    return np.pad(patch, ((0, want_h - height), (0, want_w - width), (0, 0)), mode=mode), \
        (want_h - height, want_w - width)
