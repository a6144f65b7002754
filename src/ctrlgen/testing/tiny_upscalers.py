"""Tiny upscaler files in the real layouts, with random weights, for tests and benchmarks.

Each writer puts a ``.safetensors`` file whose tensor names and shapes are those the real
models have, only with few blocks and narrow layers:

* ``real_esrgan`` — BasicSR's RRDBNet names (``conv_first``, ``body.N.rdbK.convM``,
  ``conv_body``, ``conv_up1/2``, ``conv_hr``, ``conv_last``), as in RealESRGAN_x4plus;
* ``esrgan`` — the original ESRGAN names (``model.0``, ``model.1.sub.N.RDBK.convM.0``, ...),
  as in 4x-UltraSharp and the other community ESRGAN models;
* ``compact`` — SRVGGNetCompact (``body.N``: convolutions and PReLUs, pixel shuffle), as in
  realesr-general-x4v3 — the cheapest, for big images.

The growth width of the dense blocks stays at the real 32 channels (spandrel builds RRDB nets
with it); ``features`` and ``blocks`` are what shrink.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Family = Literal["real_esrgan", "esrgan", "compact"]


def _conv(shapes: dict, name: str, out_ch: int, in_ch: int, kernel: int = 3) -> None:
    shapes[f"{name}.weight"] = (out_ch, in_ch, kernel, kernel)
    shapes[f"{name}.bias"] = (out_ch,)


def _rrdb_shapes(family: str, features: int, blocks: int, scale: int, growth: int = 32) -> dict:
    shapes: dict[str, tuple[int, ...]] = {}
    ups = {2: 1, 4: 2, 8: 3}[scale]
    new = family == "real_esrgan"
    _conv(shapes, "conv_first" if new else "model.0", features, 3)
    for block in range(blocks):
        for rdb in (1, 2, 3):
            for index in range(1, 6):
                out_ch = features if index == 5 else growth
                in_ch = features + (index - 1) * growth
                name = (f"body.{block}.rdb{rdb}.conv{index}" if new
                        else f"model.1.sub.{block}.RDB{rdb}.conv{index}.0")
                _conv(shapes, name, out_ch, in_ch)
    if new:
        _conv(shapes, "conv_body", features, features)
        for index in range(1, ups + 1):
            _conv(shapes, f"conv_up{index}", features, features)
        _conv(shapes, "conv_hr", features, features)
        _conv(shapes, "conv_last", 3, features)
    else:  # model.1.sub.<blocks> is the trunk conv; then [upsample, conv, act] per x2, conv, act, conv
        _conv(shapes, f"model.1.sub.{blocks}", features, features)
        for index in range(ups):
            _conv(shapes, f"model.{3 + 3 * index}", features, features)
        last = 3 + 3 * ups
        _conv(shapes, f"model.{last - 1}", features, features)
        _conv(shapes, f"model.{last + 1}", 3, features)
    return shapes


def _compact_shapes(features: int, convs: int, scale: int) -> dict:
    shapes: dict[str, tuple[int, ...]] = {}
    _conv(shapes, "body.0", features, 3)
    shapes["body.1.weight"] = (features,)  # PReLU
    for index in range(convs):
        _conv(shapes, f"body.{2 + 2 * index}", features, features)
        shapes[f"body.{3 + 2 * index}.weight"] = (features,)
    _conv(shapes, f"body.{2 + 2 * convs}", 3 * scale * scale, features)
    return shapes


def write_tiny_upscaler(folder: Path, family: Family = "real_esrgan", *, scale: int = 4, features: int = 8,
                        blocks: int = 1, seed: int = 0, name: str | None = None) -> Path:
    """Write ``<folder>/<name>.safetensors`` (default name: ``tiny-<family>-x<scale>``) and return it.

    Weights are random (``seed``), scaled by each layer's fan-in so images stay in range; the
    compact family's last layer is biased towards repeating its input, so its output looks
    like a (noisy) enlargement of the input."""
    import numpy as np
    from safetensors.numpy import save_file

    if family == "compact":
        shapes = _compact_shapes(features, max(blocks, 1), scale)
    elif family in ("real_esrgan", "esrgan"):
        shapes = _rrdb_shapes(family, features, blocks, scale)
    else:
        raise ValueError(f"no tiny upscaler family {family!r}; choose real_esrgan, esrgan or compact")
    rng = np.random.default_rng(seed)
    tensors = {}
    for key, shape in sorted(shapes.items()):
        if key.endswith(".bias"):
            tensors[key] = np.zeros(shape, np.float32)
        elif len(shape) == 1:  # PReLU slopes
            tensors[key] = np.full(shape, 0.25, np.float32)
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            tensors[key] = (rng.standard_normal(shape) * (0.5 / np.sqrt(fan_in))).astype(np.float32)
    if family == "compact":
        # SRVGGNetCompact adds the nearest-upsampled input to its output: small random weights
        # keep the result close to an enlargement of the input.
        last = f"body.{2 + 2 * max(blocks, 1)}.weight"
        tensors[last] *= 0.2
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name or f'tiny-{family}-x{scale}'}.safetensors"
    save_file(tensors, str(path))
    return path
