"""SD1.5 LayerDiffuse: attention-sharing modules as diffusers attention processors.

``layer_sd15_transparent_attn.safetensors`` holds, for each self- and cross-attention of the
UNet's transformer blocks (``hookers.layers.<n>``, in the original UNet's order: input blocks,
output blocks, then the middle block), low-rank changes of the four projections
(``to_q_lora.0.down/up`` ...) and a small "temporal" attention across frames (``temporal_n``,
``temporal_i``, ``temporal_q/k/v/o``). The transparent mode is its one-frame case. Each
:class:`SharingProcessor` computes the attention with the changed projections, then the
frame attention on its result, and returns both added (the transformer block adds the input
back). ``weight`` scales both changes: 0 is the plain attention.
"""

from __future__ import annotations

from typing import Any


def attention_layers(unet: Any) -> list[tuple[str, Any]]:
    """``(processor name, Attention)`` of the first transformer block of every UNet attention, in
    the order the original UNet numbers them (input blocks, output blocks, middle block)."""
    blocks = []
    for prefix, group in (("down_blocks", unet.down_blocks), ("up_blocks", unet.up_blocks)):
        for index, block in enumerate(group):
            for layer, attention in enumerate(getattr(block, "attentions", None) or []):
                blocks.append((f"{prefix}.{index}.attentions.{layer}", attention))
    for layer, attention in enumerate(getattr(unet.mid_block, "attentions", None) or []):
        blocks.append((f"mid_block.attentions.{layer}", attention))
    found = []
    for name, transformer in blocks:
        block = transformer.transformer_blocks[0]
        for which in ("attn1", "attn2"):
            found.append((f"{name}.transformer_blocks.0.{which}.processor", getattr(block, which)))
    return found


def build_processors(unet: Any, frames: int, rank: int) -> list[Any]:
    """Untrained processors for ``unet``'s attentions (see :func:`attention_layers`)."""
    import torch

    class LowRank(torch.nn.Module):
        def __init__(self, inputs: int, outputs: int) -> None:
            super().__init__()
            self.down = torch.nn.Linear(inputs, rank, bias=False)
            self.up = torch.nn.Linear(rank, outputs, bias=False)

        def delta(self):
            return self.up.weight @ self.down.weight

    class SharingProcessor(torch.nn.Module):
        def __init__(self, attention: Any) -> None:
            super().__init__()
            width = attention.to_k.out_features
            self.heads = attention.heads
            self.weight = 1.0
            for name, linear in (("to_q", attention.to_q), ("to_k", attention.to_k), ("to_v", attention.to_v),
                                 ("to_out", attention.to_out[0])):
                setattr(self, f"{name}_lora", torch.nn.ModuleList(
                    LowRank(linear.in_features, linear.out_features) for _ in range(frames)))
            self.temporal_i = torch.nn.Linear(width, width)
            self.temporal_n = torch.nn.LayerNorm(width, elementwise_affine=True, eps=1e-6)
            self.temporal_q = torch.nn.Linear(width, width)
            self.temporal_k = torch.nn.Linear(width, width)
            self.temporal_v = torch.nn.Linear(width, width)
            self.temporal_o = torch.nn.Linear(width, width)

        def _linear(self, base, lora, inputs):
            weight = base.weight + self.weight * lora.delta().to(base.weight)
            return torch.nn.functional.linear(inputs, weight, base.bias)

        def _attend(self, q, k, v):
            batch, heads = q.shape[0], self.heads
            q, k, v = (t.view(batch, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return out.transpose(1, 2).reshape(batch, -1, heads * out.shape[-1])

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                     *args, **kwargs):
            return super().__call__(attn, hidden_states, encoder_hidden_states)

        def forward(self, attn, hidden_states, encoder_hidden_states=None):
            context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            if encoder_hidden_states is not None and attn.norm_cross:
                context = attn.norm_encoder_hidden_states(context)
            # The attention with the changed projections (frame 0: one frame per image).
            q = self._linear(attn.to_q, self.to_q_lora[0], hidden_states)
            k = self._linear(attn.to_k, self.to_k_lora[0], context)
            v = self._linear(attn.to_v, self.to_v_lora[0], context)
            attended = attn.to_out[1](self._linear(attn.to_out[0], self.to_out_lora[0], self._attend(q, k, v)))
            changed = hidden_states + attended
            # The frame attention: each token attends across the frames of its image (one here).
            x = self.temporal_i(self.temporal_n(changed))
            tokens = x.shape[1]
            x = x.reshape(-1, frames, tokens, x.shape[-1]).transpose(1, 2).reshape(-1, frames, x.shape[-1])
            x = self.temporal_o(self._attend(self.temporal_q(x), self.temporal_k(x), self.temporal_v(x)))
            x = x.reshape(-1, tokens, frames, x.shape[-1]).transpose(1, 2).reshape(-1, tokens, x.shape[-1])
            out = attended + self.weight * x
            if attn.residual_connection:
                out = out + hidden_states
            return out / attn.rescale_output_factor

    return [SharingProcessor(attention) for _, attention in attention_layers(unet)]


class SharingPatch:
    """The file's processors on ``unet`` for one job; the previous processors back on exit."""

    def __init__(self, unet: Any, state_dict: dict[str, Any], weight: float, frames: int = 1) -> None:
        import torch

        from ctrlgen.core.errors import JobError

        layers = attention_layers(unet)
        in_file = len({key.split(".")[2] for key in state_dict if key.startswith("hookers.layers.")})
        if in_file != len(layers):
            raise JobError(f"the LayerDiffuse attention file has {in_file} attention layers, this SD1.5 UNet "
                           f"{len(layers)}; it is for another model")
        rank = int(state_dict["hookers.layers.0.to_q_lora.0.down.weight"].shape[0])
        processors = build_processors(unet, frames, rank)
        holder = torch.nn.Module()
        holder.hookers = torch.nn.Module()
        holder.hookers.layers = torch.nn.ModuleList(processors)
        try:
            holder.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            raise JobError(f"the LayerDiffuse attention file does not fit this UNet's attention layers: "
                           f"{str(exc)[:300]}") from None
        holder.to(device=unet.device, dtype=unet.dtype)
        for processor in processors:
            processor.weight = weight
        self.unet = unet
        self.names = [name for name, _ in layers]
        self.processors = processors
        self.previous: dict[str, Any] | None = None

    def __enter__(self) -> SharingPatch:
        self.previous = dict(self.unet.attn_processors)
        updated = dict(self.previous)
        updated.update(zip(self.names, self.processors, strict=True))
        self.unet.set_attn_processor(updated)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            self.unet.set_attn_processor(self.previous)
            self.previous = None
