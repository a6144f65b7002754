"""The layer side of reference-only: what the write pass stores and the read pass applies.

:class:`ReferenceAttnProcessor` wraps a self-attention layer's processor; :func:`adain_hook`
is a forward hook for an AdaIN point. Both read the shared :class:`ReferenceState` that
:class:`~ctrlgen.adapters.reference.hooks.ReferenceHooks` switches between ``write`` and ``read``.
Which layers take part follows sd-webui-controlnet's hook.py: self-attention layers sorted by
width (widest first) get thresholds ``i / n`` and write only while ``weight > threshold``; AdaIN
points are the middle block (threshold 0), the down-path units below full resolution
(thresholds falling from 1) and the first two thirds of the up-path units (rising from 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ReferenceState:
    """What the current UNet call is: a reference *write* pass (with that use's weights and
    fidelity), the real *read* pass (with the unconditional batch rows), or neither."""

    mode: str = "idle"  # idle | write | read
    attention_weight: float | None = None
    adain_weight: float | None = None
    style_fidelity: float = 0.0
    uncond_rows: list[int] = field(default_factory=list)
    in_reference_pass: bool = False
    step: int = 0
    total: int = 1


class Bank:
    """What one layer stored in this call's write passes, and from which ``weight`` it writes."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.items: list[Any] = []
        self.fidelities: list[float] = []

    def fidelity(self) -> float:
        return sum(self.fidelities) / len(self.fidelities)

    def clear(self) -> None:
        self.items, self.fidelities = [], []


class ReferenceAttnProcessor:
    """Wraps a self-attention layer's processor: stores its input in the write pass and attends
    over input + stored reference tokens in the read pass."""

    def __init__(self, inner: Any, state: ReferenceState, threshold: float) -> None:
        self.inner, self.state, self.bank = inner, state, Bank(threshold)

    def _call_inner(self, attn, hidden_states, context, attention_mask, temb, kwargs):
        extra = dict(kwargs) if temb is None else {**kwargs, "temb": temb}
        return self.inner(attn, hidden_states, encoder_hidden_states=context, attention_mask=attention_mask, **extra)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        import torch

        state, bank = self.state, self.bank
        if encoder_hidden_states is None and attention_mask is None and hidden_states.ndim == 3:
            if state.mode == "write" and state.attention_weight is not None and state.attention_weight > bank.threshold:
                bank.items.append(hidden_states.detach().clone())
                bank.fidelities.append(state.style_fidelity)
            elif state.mode == "read" and bank.items:
                fidelity = bank.fidelity()
                context = torch.cat([hidden_states, *bank.items], dim=1)
                bank.clear()
                with_reference = self._call_inner(attn, hidden_states, context, None, temb, kwargs)
                rows = state.uncond_rows
                if not rows or fidelity <= 1e-5:
                    return with_reference
                plain = with_reference.clone()
                plain[rows] = self._call_inner(attn, hidden_states[rows], None, None,
                                               None if temb is None else temb[rows], kwargs)
                return fidelity * plain + (1.0 - fidelity) * with_reference
        return self._call_inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs)


def adain_hook(state: ReferenceState, bank: Bank):
    def hook(module, args, output):
        import torch

        tensor = output[0] if isinstance(output, tuple) else output
        if not torch.is_tensor(tensor) or tensor.ndim != 4:
            return None
        if state.mode == "write" and state.adain_weight is not None and state.adain_weight > bank.threshold:
            var, mean = torch.var_mean(tensor, dim=(2, 3), keepdim=True, correction=0)
            bank.items.append((mean, var))
            bank.fidelities.append(state.style_fidelity)
        elif state.mode == "read" and bank.items:
            eps = 1e-6
            var, mean = torch.var_mean(tensor, dim=(2, 3), keepdim=True, correction=0)
            std = torch.clamp(var, min=eps) ** 0.5
            mean_ref = sum(m for m, _ in bank.items) / len(bank.items)
            std_ref = torch.clamp(sum(v for _, v in bank.items) / len(bank.items), min=eps) ** 0.5
            fidelity = bank.fidelity()
            bank.clear()
            styled = (tensor - mean) / std * std_ref + mean_ref
            if state.uncond_rows and fidelity > 1e-5:
                plain = styled.clone()
                plain[state.uncond_rows] = tensor[state.uncond_rows]
                styled = fidelity * plain + (1.0 - fidelity) * styled
            styled = styled.to(tensor.dtype)
            return (styled, *output[1:]) if isinstance(output, tuple) else styled
        return None

    return hook


def self_attention_layers(unet: Any) -> list[Any]:
    """The UNet's self-attention modules in A1111's order (down, mid, up), then sorted widest first."""
    from diffusers.models.attention import BasicTransformerBlock

    parts = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    blocks = [m for part in parts if part is not None for m in part.modules()
              if isinstance(m, BasicTransformerBlock) and not m.only_cross_attention]
    return [block.attn1 for block in sorted(blocks, key=lambda b: -b.attn1.query_dim)]


def adain_points(unet: Any) -> list[tuple[Any, float]]:
    """(module, threshold) for every AdaIN point: mid block, down units below full resolution,
    the first two thirds of the up units (the output of a level's last unit is after its upsampler)."""

    def units(blocks):
        found = []
        for block in blocks:
            resnets = list(block.resnets)
            attentions = list(getattr(block, "attentions", None) or [])
            for index, resnet in enumerate(resnets):
                module = attentions[index] if index < len(attentions) else resnet
                upsamplers = getattr(block, "upsamplers", None)
                if upsamplers and index == len(resnets) - 1:
                    module = upsamplers[0]
                found.append(module)
        return found

    down = units(list(unet.down_blocks)[1:])
    up = units(unet.up_blocks)
    up = up[: len(up) * 2 // 3]
    points = [(unet.mid_block, 0.0)] if unet.mid_block is not None else []
    points += [(module, 1.0 - i / len(down)) for i, module in enumerate(down)]
    points += [(module, i / len(up)) for i, module in enumerate(up)]
    return points
