"""Identifying upscaler models (ESRGAN, Real-ESRGAN, compact, SwinIR, HAT, DAT) from their tensors.

:func:`upscaler_rule` says from a file's tensor names and shapes that it is an upscaler, which
family and (where the structure shows it) its scale. It is the last of the identification rules
in :mod:`ctrlgen.core.models.identify`, so nothing a diffusion model holds is taken for one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ctrlgen.core.models.base_rules import ModelIdentity, TensorKeys


def _seq_len(keys: TensorKeys, prefix: str) -> int:
    found = keys.indices(prefix)
    return max(found) + 1 if found else 0


def upscaler_rule(keys: TensorKeys, meta: Mapping[str, str]) -> ModelIdentity | None:
    """An upscaler's family and scale from its tensor names (None when it is not one)."""
    details: dict[str, Any] = {}
    if keys.has("model.0.weight") and keys.any_prefix("model.1.sub.0.RDB1."):
        # ESRGAN's original layout: conv, trunk, [upsample, conv, act] per x2, conv, act, conv.
        variant = "esrgan"
        details["scale"] = 2 ** max((_seq_len(keys, "model.") - 5) // 3, 0)
        details["blocks"] = _seq_len(keys, "model.1.sub.") - 1
        details["features"] = keys.shape("model.0.weight")[0]
    elif keys.has("conv_first.weight") and (keys.any_prefix("body.0.rdb1.") or keys.any_prefix("RRDB_trunk.0.")):
        # Real-ESRGAN / BSRGAN: the same network in BasicSR's names; conv_up1/2 each double,
        # a pixel-unshuffled input (12 or 48 channels) takes back a factor 2 or 4.
        variant = "real_esrgan"
        scale = 2 ** sum(keys.has(f"conv_up{i}.weight") or keys.has(f"upconv{i}.weight") for i in (1, 2, 3))
        in_channels = keys.shape("conv_first.weight")[1]
        scale //= {12: 2, 48: 4}.get(in_channels, 1)
        details["scale"] = max(scale, 1)
        details["blocks"] = len(keys.indices("body.") or keys.indices("RRDB_trunk."))
        details["features"] = keys.shape("conv_first.weight")[0]
    elif keys.has("body.0.weight") and keys.has("body.1.weight") and not keys.any_prefix("conv_first."):
        # Real-ESRGAN's compact network (SRVGGNetCompact): convs and PReLUs, pixel shuffle at the end.
        last = f"body.{_seq_len(keys, 'body.') - 1}.weight"
        shape = keys.shape(last)
        first = keys.shape("body.0.weight")
        if not shape or len(shape) != 4 or not first or len(first) != 4:
            return None
        channels = first[1]
        scale = math.isqrt(max(shape[0] // max(channels, 1), 1))
        if scale * scale * channels != shape[0]:
            return None
        variant, details["scale"], details["features"] = "compact", scale, first[0]
    elif keys.has("conv_first.weight") and keys.any_prefix("layers.0.residual_group.blocks.0."):
        variant = "hat" if keys.any_prefix("layers.0.residual_group.overlap_attn.") else "swinir"
    elif keys.has("conv_first.weight") and keys.any_prefix("layers.0.blocks.0.attn.") and keys.any_prefix(
            "layers.0.blocks.0.ffn."):
        variant = "dat"
    else:
        return None
    return ModelIdentity("upscaler", "unknown", variant, details, "original")


