"""Regional attention masking: each region's text tokens reach only the latents under its mask.

The prompt is encoded as one block of tokens per group, the root prompt first and then the
regions (the layout of :mod:`ctrlgen.core.engine.composition`). A forward pre-hook on every
cross-attention layer of the UNet (and of the job's ControlNets) passes the layer an additive
attention mask over (query pixel, token): 0 for the root's tokens, ``log(mask)`` for a region's,
with the region's mask brought to the layer's resolution by area averaging. A feathered edge
therefore scales a region's attention weights before the softmax renormalises, and where a
mask is 0 the region's weights are exactly 0. The root's tokens are seen everywhere, so every
pixel has tokens to attend to.

The mask goes in as the layer's ``attention_mask`` argument, which every diffusers attention
processor applies (IP-Adapter's to its text tokens), so processors other adapters install keep
working, in any order. The hooks are removed on exit by their handles.

In a tiled pass (the upscale task's refine, a tiled hires fix) the UNet sees one tile at a
time (:func:`ctrlgen.core.engine.tiling.current_tile`): the masks are cropped to the tile's
window before they are brought to the layer's resolution, so a region's tokens reach only the
tile's latents under its mask, and a tile outside every region attends to the root prompt alone.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def cross_attention_layers(module: Any) -> list[Any]:
    """The cross-attention layers (diffusers ``Attention`` with ``is_cross_attention``) in ``module``."""
    return [m for m in module.modules() if getattr(m, "is_cross_attention", False) and hasattr(m, "processor")]


class RegionalAttention:
    """The masks of ``regions`` (float32 H×W at the generation size, latent size × 8) as attention
    biases, per layer resolution, and the hooks that pass them in."""

    def __init__(self, masks: list[np.ndarray], latent_height: int, latent_width: int) -> None:
        self.masks = masks
        self.latent = (latent_height, latent_width)
        self.groups = 1 + len(masks)
        self.handles: list[Any] = []
        self._biases: dict[tuple, Any] = {}

    def attach(self, modules: list[Any]) -> None:
        layers = {id(layer): layer for module in modules for layer in cross_attention_layers(module)}
        for layer in layers.values():  # once each, though a module is named twice
            self.handles.append(layer.register_forward_pre_hook(self._before, with_kwargs=True))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self._biases.clear()

    def grid(self, queries: int, latent: tuple[int, int] | None = None) -> tuple[int, int]:
        """The ``(height, width)`` of a layer with ``queries`` pixels (each UNet level halves
        the latent, or the tile's ``latent`` size, rounding up)."""
        height, width = latent or self.latent
        for level in range(8):
            factor = 2**level
            h, w = math.ceil(height / factor), math.ceil(width / factor)
            if h * w == queries:
                return h, w
        raise RuntimeError(f"regions: a cross-attention layer has {queries} query pixels, which is no level "
                           f"of the {width}×{height} latent")

    def level_masks(self, height: int, width: int, window: tuple[int, int, int, int] | None = None) -> Any:
        """The regions' masks at a layer's ``height``×``width`` (torch, regions × h × w); ``window``
        ``(top, left, height, width)`` in latent pixels: the part of the canvas a tile covers."""
        import torch
        import torch.nn.functional as F

        masks = np.stack(self.masks).astype(np.float32)
        if window is not None:
            top, left, tile_h, tile_w = window
            factor = masks.shape[1] // self.latent[0]  # mask pixels per latent pixel (8)
            masks = masks[:, top * factor: (top + tile_h) * factor, left * factor: (left + tile_w) * factor]
        stacked = torch.from_numpy(np.ascontiguousarray(masks))[:, None]
        return F.interpolate(stacked, size=(height, width), mode="area")[:, 0].clamp(0.0, 1.0)

    def bias(self, queries: int, tokens: int, dtype: Any, device: Any,
             window: tuple[int, int, int, int] | None = None) -> Any:
        """The additive attention mask ``(1, queries, tokens)``: 0 on the root's block, log(mask)
        on each region's (over the tile's ``window`` of the canvas, when given)."""
        import torch

        key = (queries, tokens, dtype, device, window)
        if key not in self._biases:
            height, width = self.grid(queries, None if window is None else window[2:])
            block = tokens // self.groups
            logs = torch.log(self.level_masks(height, width, window).reshape(len(self.masks), queries))  # 0 -> -inf
            columns = [torch.zeros(queries, block)] + [logs[r][:, None].expand(queries, block)
                                                       for r in range(len(self.masks))]
            self._biases[key] = torch.cat(columns, dim=1)[None].to(device=device, dtype=dtype)
        return self._biases[key]

    def _before(self, module, args, kwargs):
        states = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        if states is None:
            return None
        text = states[0] if isinstance(states, tuple) else states
        hidden = args[0] if args else kwargs["hidden_states"]
        tokens = text.shape[1]
        if tokens % self.groups:
            raise RuntimeError(f"regions: the prompt has {tokens} tokens, which is not {self.groups} equal blocks "
                               "(root + regions); was it encoded without the regions?")
        queries = hidden.shape[1] if hidden.ndim == 3 else hidden.shape[2] * hidden.shape[3]
        from ctrlgen.core.engine.tiling import current_tile

        active, window = current_tile(), None
        if active is not None and tuple(active[1]) == tuple(self.latent):
            tile = active[0]
            window = (tile.top, tile.left, tile.height, tile.width)
        bias = self.bias(queries, tokens, hidden.dtype, hidden.device, window).expand(hidden.shape[0], -1, -1)
        existing = kwargs.get("attention_mask")
        if existing is not None:  # an encoder attention mask (batch, 1, tokens): add ours
            bias = bias + existing
        kwargs = dict(kwargs)
        kwargs["attention_mask"] = bias
        if len(args) > 1:
            args = args[:1]
            kwargs["encoder_hidden_states"] = states
        return args, kwargs
