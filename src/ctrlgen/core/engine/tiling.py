"""Denoising a canvas larger than the model in overlapping tiles, blended in latent space.

The pipeline runs its own loop over the whole canvas's latents (a 4096² image is a 512² latent:
a few MB), but its denoiser never sees more than one tile: while :func:`tiled_denoising` is
active, each call of the UNet is split into tiles, each tile is denoised with the job's
prompt, adapters and (per tile) ControlNet, and the noise predictions are blended back into one
canvas-sized prediction before the scheduler steps. Blending the predictions at every step is
what MultiDiffusion (Bar-Tal et al. 2023) and Mixture of Diffusers (Jiménez 2023) do; every
step sees its neighbours' latest state, so the tiles agree at their borders and no seam forms.

Blend modes (``blend``):

- ``gaussian`` (Mixture of Diffusers): each tile's prediction weighs by a 2-D Gaussian centred
  on the tile (σ = tile / 5); where tiles overlap the nearer centre dominates, fading smoothly.
- ``average`` (MultiDiffusion): equal weights; overlaps are averaged.
- ``none``: plain tiling, each latent pixel from the last tile covering it — what the blending
  is measured against (it seams).

ControlNets are called per tile too: while active, the pipeline's ControlNet only records its
call; the tiled UNet replays it on each tile with the control image cut to the tile, so the
ControlNet's memory also follows the tile. SDXL's size conditioning (``time_ids``) is set to
the tile's size for each tile, as when the model generates a picture that size.

:func:`tiled_vae` sets the VAE's own tiling (diffusers' ``tiled_encode``/``tiled_decode``, which
blend their tiles' overlaps) to the same tile and overlap, so encoding and decoding also work
on one tile at a time. Both context managers change only job-local state or put back what they
changed on the shared modules when they exit.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

BlendMode = Literal["gaussian", "average", "none"]

# The tile being denoised (on this thread), for adapters whose hooks work on canvas-sized
# things: the regions' attention masks crop themselves to it (see :func:`current_tile`).
_ACTIVE = threading.local()
BLEND_MODES = ("gaussian", "average", "none")
GAUSSIAN_SIGMA = 0.2  # of the tile's side


@dataclass(frozen=True)
class Tile:
    """A tile of the latent canvas (latent pixels)."""

    top: int
    left: int
    height: int
    width: int

    def slices(self, factor: int = 1) -> tuple[slice, slice]:
        return (slice(self.top * factor, (self.top + self.height) * factor),
                slice(self.left * factor, (self.left + self.width) * factor))


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one side: evenly spread, each overlap at least ``overlap``."""
    if size <= tile:
        return [0]
    count = math.ceil((size - overlap) / (tile - overlap))
    count = max(count, 2)
    return [round(index * (size - tile) / (count - 1)) for index in range(count)]


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Tiles of at most ``tile``×``tile`` covering ``height``×``width``, overlapping by at least
    ``overlap`` (all in the same units). Tiles on the canvas's edges end at the edge."""
    if tile <= overlap:
        raise ValueError(f"the tile ({tile}) must be larger than its overlap ({overlap})")
    tile_h, tile_w = min(tile, height), min(tile, width)
    return [Tile(top, left, tile_h, tile_w)
            for top in _starts(height, tile, overlap) for left in _starts(width, tile, overlap)]


def tile_weights(height: int, width: int, blend: BlendMode, device: Any = None) -> Any:
    """The ``height``×``width`` weight map of one tile (a float32 torch tensor)."""
    import torch

    if blend != "gaussian":
        return torch.ones((height, width), dtype=torch.float32, device=device)

    def profile(size: int) -> Any:
        position = torch.arange(size, dtype=torch.float32, device=device) + 0.5
        centre, sigma = size / 2, GAUSSIAN_SIGMA * size
        return torch.exp(-((position - centre) ** 2) / (2 * sigma * sigma))

    return profile(height)[:, None] * profile(width)[None, :]


def current_tile() -> tuple[Tile, tuple[int, int]] | None:
    """``(tile, canvas)`` while a tile is being denoised (latent pixels; ``canvas`` is the whole
    latent's ``(height, width)``), else None: what a cross-attention hook sees then is the tile."""
    return getattr(_ACTIVE, "tile", None)


def tile_count(width_px: int, height_px: int, tile_px: int, overlap_px: int, factor: int = 8) -> int:
    """How many tiles a ``width_px``×``height_px`` canvas is denoised in."""
    return len(tile_grid(height_px // factor, width_px // factor, tile_px // factor, overlap_px // factor))


# -- the tiled denoiser -----------------------------------------------------------------------------


class _Deferred:
    """A ControlNet call the pipeline made on the whole canvas, replayed per tile; or (``call``
    given, see :func:`defer`) an adapter's residuals, computed per tile and added to
    ``previous``'s."""

    def __init__(self, args: tuple, kwargs: dict, call: Any = None, previous: _Deferred | None = None) -> None:
        self.args, self.kwargs, self.call, self.previous = args, kwargs, call, previous


def is_tiled(unet: Any) -> bool:
    """Whether ``unet`` is being denoised in tiles (a UNet pre-hook may then :func:`defer`)."""
    return id(unet) in getattr(_ACTIVE, "unets", ())


def defer(call: Any, args: tuple, kwargs: dict, previous: Any = None) -> _Deferred:
    """What a UNet pre-hook that adds ControlNet-like residuals passes as
    ``down_block_additional_residuals`` and ``mid_block_additional_residual`` while the UNet is
    tiled: the tiler calls ``call(*args, **kwargs)`` per tile (tensors over the canvas cut to the
    tile, :func:`current_tile` set) for ``(down, mid)``, added to ``previous``'s residuals (the
    value the hook found there, when it was deferred too)."""
    return _Deferred(args, kwargs, call, previous if isinstance(previous, _Deferred) else None)


class _Tiler:
    def __init__(self, tile: int, overlap: int, blend: BlendMode, controlnet: Any) -> None:
        self.tile, self.overlap, self.blend, self.controlnet = tile, overlap, blend, controlnet
        self.local = threading.local()  # set while a ControlNet call is replayed for real
        self.calls = 0  # denoiser calls on tiles (for tests and progress)
        self._weights: dict[tuple, Any] = {}

    def weights(self, height: int, width: int, device: Any) -> Any:
        key = (height, width, str(device))
        if key not in self._weights:
            self._weights[key] = tile_weights(height, width, self.blend, device)
        return self._weights[key]

    def cut(self, value: Any, canvas: tuple[int, int], tile: Tile, key: str = "") -> Any:
        """``value`` as one tile sees it: tensors over the canvas (latent or pixel) are cut to
        the tile; SDXL's time ids say the tile's size; everything else is passed on."""
        import torch

        if isinstance(value, torch.Tensor):
            if key == "time_ids" and value.ndim == 2 and value.shape[-1] == 6:
                return _tile_time_ids(value, canvas, tile)
            if value.ndim >= 3:
                height, width = value.shape[-2:]
                factor = height // canvas[0] if canvas[0] else 0
                if factor >= 1 and height == canvas[0] * factor and width == canvas[1] * factor:
                    rows, cols = tile.slices(factor)
                    return value[..., rows, cols]
            return value
        if isinstance(value, dict):
            return {k: self.cut(v, canvas, tile, k) for k, v in value.items()}
        if isinstance(value, (list, tuple)) and not isinstance(value, str):
            return type(value)(self.cut(v, canvas, tile, key) for v in value)
        return value

    def denoise(self, forward: Any, sample: Any, timestep: Any, encoder_hidden_states: Any, *args: Any,
                **kwargs: Any) -> Any:
        import torch

        canvas = tuple(sample.shape[-2:])
        grid = tile_grid(canvas[0], canvas[1], self.tile, self.overlap)
        deferred = kwargs.get("down_block_additional_residuals")
        if len(grid) == 1 and not isinstance(deferred, _Deferred):
            return forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        total = torch.zeros(sample.shape, dtype=torch.float32, device=sample.device)
        weight_sum = torch.zeros(canvas, dtype=torch.float32, device=sample.device)
        template = None
        for tile in grid:
            rows, cols = tile.slices()
            tile_kwargs = {k: v for k, v in kwargs.items()
                           if k not in ("down_block_additional_residuals", "mid_block_additional_residual")}
            tile_kwargs = self.cut(tile_kwargs, canvas, tile)
            if isinstance(deferred, _Deferred):
                down, mid = self.control(deferred, canvas, tile)
                tile_kwargs.update(down_block_additional_residuals=down, mid_block_additional_residual=mid)
            elif deferred is not None:
                raise RuntimeError("tiled denoising got ControlNet residuals for the whole canvas; the ControlNet "
                                   "must be called per tile (attach it before tiled_denoising)")
            _ACTIVE.tile = (tile, canvas)
            try:
                output = forward(sample[..., rows, cols], timestep, self.cut(encoder_hidden_states, canvas, tile),
                                 *args, **tile_kwargs)
            finally:
                _ACTIVE.tile = None
            self.calls += 1
            prediction = output[0] if isinstance(output, tuple) else output.sample
            template = template if template is not None else output
            if self.blend == "none":  # plain tiling: the later tile wins
                total[..., rows, cols] = prediction.float()
                weight_sum[rows, cols] = 1.0
            else:
                weights = self.weights(tile.height, tile.width, sample.device)
                total[..., rows, cols] += prediction.float() * weights
                weight_sum[rows, cols] += weights
        blended = (total / weight_sum).to(sample.dtype)
        if isinstance(template, tuple):
            return (blended,)
        return type(template)(sample=blended)

    def control(self, deferred: _Deferred, canvas: tuple[int, int], tile: Tile) -> Any:
        args = self.cut(deferred.args, canvas, tile)
        kwargs = self.cut(deferred.kwargs, canvas, tile)
        _ACTIVE.tile = (tile, canvas)
        try:
            if deferred.call is not None:
                down, mid = deferred.call(*args, **kwargs)
            else:
                kwargs["return_dict"] = False
                self.local.real = True
                try:
                    down, mid = self.controlnet(*args, **kwargs)
                finally:
                    self.local.real = False
        finally:
            _ACTIVE.tile = None
        if deferred.previous is not None:
            before_down, before_mid = self.control(deferred.previous, canvas, tile)
            down = [a + b for a, b in zip(before_down, down, strict=True)]
            mid = before_mid + mid
        return down, mid


def _tile_time_ids(time_ids: Any, canvas: tuple[int, int], tile: Tile) -> Any:
    """SDXL's (original size, crop, target size) conditioning for one tile: the tile's size
    where the canvas's size was given."""
    ids = time_ids.clone()
    for height_col, width_col in ((0, 1), (4, 5)):
        factor = ids[:, height_col] / canvas[0]
        ids[:, height_col] = factor * tile.height
        ids[:, width_col] = ids[:, width_col] / canvas[1] * tile.width
    return ids


@contextlib.contextmanager
def _patched_forward(module: Any, forward: Any) -> Iterator[Any]:
    """``module.forward`` replaced on the instance while active; its own forward (class or
    instance attribute, e.g. a control-mode view's) is what ``original`` calls."""
    had = "forward" in module.__dict__
    before = module.__dict__.get("forward")
    original = before if had else module.forward
    object.__setattr__(module, "forward", lambda *a, **k: forward(original, *a, **k))
    try:
        yield original
    finally:
        if had:
            object.__setattr__(module, "forward", before)
        else:
            del module.__dict__["forward"]


@contextlib.contextmanager
def tiled_denoising(pipeline: Any, tile: int, overlap: int, blend: BlendMode = "gaussian") -> Iterator[_Tiler]:
    """While active, ``pipeline``'s UNet (and ControlNet) work on ``tile``-latent-pixel tiles
    overlapping by ``overlap`` latent pixels, blended by ``blend``. Yields the tiler (its
    ``calls`` counts the denoiser's calls)."""
    if blend not in BLEND_MODES:
        raise ValueError(f"blend {blend!r} is not one of {', '.join(BLEND_MODES)}")
    controlnet = getattr(pipeline, "controlnet", None)
    tiler = _Tiler(tile, 0 if blend == "none" else overlap, blend, controlnet)
    with contextlib.ExitStack() as stack:
        if controlnet is not None:
            def record(original, *args, **kwargs):
                if getattr(tiler.local, "real", False):
                    return original(*args, **kwargs)
                call = _Deferred(args, kwargs)
                return (call, call)

            stack.enter_context(_patched_forward(controlnet, record))

        def denoise(original, *args, **kwargs):
            return tiler.denoise(original, *args, **kwargs)

        stack.enter_context(_patched_forward(pipeline.unet, denoise))
        unets = getattr(_ACTIVE, "unets", set())
        _ACTIVE.unets = unets | {id(pipeline.unet)}
        stack.callback(lambda: setattr(_ACTIVE, "unets", getattr(_ACTIVE, "unets", set()) - {id(pipeline.unet)}))
        yield tiler


@contextlib.contextmanager
def tiled_vae(vae: Any, tile_px: int, overlap_px: int) -> Iterator[Any]:
    """The VAE encodes and decodes in ``tile_px`` tiles overlapping by ``overlap_px`` while active
    (diffusers' tiling, which blends the overlaps); its settings are put back on exit."""
    names = ("use_tiling", "tile_sample_min_size", "tile_latent_min_size", "tile_overlap_factor")
    if vae is None or not hasattr(vae, "tile_sample_min_size"):
        yield vae
        return
    before = {name: getattr(vae, name) for name in names}
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    try:
        vae.use_tiling = True
        vae.tile_sample_min_size = tile_px
        vae.tile_latent_min_size = tile_px // factor
        vae.tile_overlap_factor = min(max(overlap_px / tile_px, 0.125), 0.5)
        yield vae
    finally:
        for name, value in before.items():
            setattr(vae, name, value)
