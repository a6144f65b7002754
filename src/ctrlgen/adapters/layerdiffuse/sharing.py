"""SD1.5 LayerDiffuse: attention-sharing modules as diffusers attention processors.

The SD1.5 files (``layer_sd15_transparent_attn``, ``layer_sd15_joint``, ``layer_sd15_fg2bg``,
``layer_sd15_bg2fg``) hold, for each self- and cross-attention of the UNet's transformer
blocks (``hookers.layers.<n>``, in the original UNet's order: input blocks, output blocks, then
the middle block), per frame low-rank changes of the four projections (``to_q_lora.<f>.down/up``
...) and a "temporal" attention across the frames of one picture (``temporal_n``,
``temporal_i``, ``temporal_q/k/v/o``). A job generates ``frames`` images per seed side by side
in the batch (``(b f)`` order: frame fastest) and the temporal attention lets them see each
other: the transparent file has one frame, ``joint`` three (foreground, background, blend),
``fg2bg`` / ``bg2fg`` two (the missing layer, the blend).

The two-frame files also read a picture (the given foreground or background): a small
convolutional encoder (``kwargs_encoder.blocks_0..3``) turns it into feature maps at 1/8, 1/16,
1/32 and 1/64 of the image, and each attention adds ``control_convs.<f>`` of the map at its own
resolution to every frame's input.

Each frame may see its own prompt (``cond_overwrite`` in the original): the conditional rows of
frame *f* attend to that frame's text instead of the job's; the unconditional rows keep the
negative prompt. ``weight`` scales the low-rank changes, the control and the frame attention:
0 is the plain attention.
"""

from __future__ import annotations

from typing import Any

# blocks_<i>: the layer numbers (Sequential indices, every other one is a SiLU) that halve the size.
_STRIDED = {"blocks_0": (4, 8, 12), "blocks_1": (0,), "blocks_2": (0,), "blocks_3": (0,)}


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


def build_control_encoder(widths: dict[str, list[tuple[int, int]]]):
    """The picture encoder of the two-frame files: ``widths[block]`` is each convolution's
    (in, out) channels, as the file has them (see :func:`control_widths`)."""
    import torch

    class ControlEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for block, convs in widths.items():
                layers: list[Any] = []
                for number, (inputs, outputs) in enumerate(convs):
                    stride = 2 if 2 * number in _STRIDED[block] else 1
                    layers += [torch.nn.Conv2d(inputs, outputs, 3, padding=1, stride=stride), torch.nn.SiLU()]
                setattr(self, block, torch.nn.Sequential(*layers))

        def forward(self, pixels):
            """``pixels`` 1×3×H×W in [-1, 1] -> {tokens (h·w): feature map} at 1/8 ... 1/64."""
            maps, sample = {}, pixels
            for block in ("blocks_0", "blocks_1", "blocks_2", "blocks_3"):
                sample = getattr(self, block)(sample)
                maps[int(sample.shape[2]) * int(sample.shape[3])] = sample
            return maps

    return ControlEncoder()


def control_widths(state_dict: dict[str, Any], prefix: str = "kwargs_encoder.") -> dict[str, list[tuple[int, int]]]:
    """(in, out) channels of every convolution of the file's picture encoder."""
    widths: dict[str, list[tuple[int, int]]] = {}
    for block in _STRIDED:
        numbers = sorted({int(k[len(prefix) + len(block) + 1:].split(".")[0]) for k in state_dict
                          if k.startswith(f"{prefix}{block}.") and k.endswith(".weight")})
        widths[block] = [tuple(int(v) for v in state_dict[f"{prefix}{block}.{n}.weight"].shape[1::-1])
                         for n in numbers]
    return widths


def build_processors(unet: Any, frames: int, rank: int, control_width: int | None = None) -> list[Any]:
    """Untrained processors for ``unet``'s attentions (see :func:`attention_layers`);
    ``control_width``: the picture encoder's width (two-frame files), None: no control."""
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
            self.frames = frames
            self.weight = 1.0
            # Set per job by SharingPatch: rows per pass (batch × frames), each frame's own text
            # (None: the job's) and the picture encoder's maps.
            self.rows = 0
            self.texts: list[Any] = [None] * frames
            self.signals: dict[int, Any] | None = None
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
            if control_width is not None:
                self.control_convs = torch.nn.ModuleList(torch.nn.Sequential(
                    torch.nn.Conv2d(control_width, control_width, 3, padding=1), torch.nn.SiLU(),
                    torch.nn.Conv2d(control_width, width, 1)) for _ in range(frames))

        def _linear(self, base, lora, inputs):
            weight = base.weight + self.weight * lora.delta().to(base.weight)
            return torch.nn.functional.linear(inputs, weight, base.bias)

        def _attend(self, q, k, v):
            batch, heads = q.shape[0], self.heads
            q, k, v = (t.reshape(batch, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return out.transpose(1, 2).reshape(batch, -1, heads * out.shape[-1])

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                     *args, **kwargs):
            return super().__call__(attn, hidden_states, encoder_hidden_states)

        def _frame(self, attn, f, states, context):
            q = self._linear(attn.to_q, self.to_q_lora[f], states)
            k = self._linear(attn.to_k, self.to_k_lora[f], context)
            v = self._linear(attn.to_v, self.to_v_lora[f], context)
            return attn.to_out[1](self._linear(attn.to_out[0], self.to_out_lora[f], self._attend(q, k, v)))

        def _context(self, attn, context):
            if attn.norm_cross:
                context = attn.norm_encoder_hidden_states(context)
            return context

        def forward(self, attn, hidden_states, encoder_hidden_states=None):
            rows, tokens, width = hidden_states.shape
            count = self.frames
            states = hidden_states.reshape(rows // count, count, tokens, width)  # (b f) -> b, f
            added = None  # what the module adds to its input (kept apart: no input - input rounding)
            if self.signals is not None and hasattr(self, "control_convs"):
                signal = self.signals[tokens].to(states)
                control = torch.stack([conv(signal).flatten(2).transpose(1, 2)[0] for conv in self.control_convs])
                added = self.weight * control[None]
                states = states + added
            per_pass = self.rows or rows
            # Rows before the last pass block are unconditional when the batch holds more than one pass.
            first_cond = 0 if rows <= per_pass else per_pass // count
            outs = []
            for f in range(count):
                own = states[:, f]
                if encoder_hidden_states is None:
                    outs.append(self._frame(attn, f, own, own))
                    continue
                context = encoder_hidden_states.reshape(rows // count, count, *encoder_hidden_states.shape[1:])[:, f]
                text = self.texts[f]
                if text is None:
                    outs.append(self._frame(attn, f, own, self._context(attn, context)))
                    continue
                parts = []
                if first_cond:
                    parts.append(self._frame(attn, f, own[:first_cond], self._context(attn, context[:first_cond])))
                cond = text.to(context).expand(own.shape[0] - first_cond, -1, -1)
                parts.append(self._frame(attn, f, own[first_cond:], self._context(attn, cond)))
                outs.append(torch.cat(parts))
            attended = torch.stack(outs, dim=1)
            changed = states + attended
            added = attended if added is None else added + attended
            # The frame attention: each token attends across the frames of its picture.
            x = self.temporal_i(self.temporal_n(changed))  # b, f, tokens, width
            x = x.transpose(1, 2).reshape(-1, count, width)
            x = self.temporal_o(self._attend(self.temporal_q(x), self.temporal_k(x), self.temporal_v(x)))
            x = x.reshape(rows // count, tokens, count, width).transpose(1, 2)
            out = (added + self.weight * x).reshape(rows, tokens, width)
            if attn.residual_connection:
                out = out + hidden_states
            return out / attn.rescale_output_factor

    return [SharingProcessor(attention) for _, attention in attention_layers(unet)]


def file_shape(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Frames, rank and control width of an attention-sharing state dict."""
    frames = len({k.split(".")[4] for k in state_dict if k.startswith("hookers.layers.0.to_q_lora.")})
    rank = int(state_dict["hookers.layers.0.to_q_lora.0.down.weight"].shape[0])
    control = state_dict.get("hookers.layers.0.control_convs.0.0.weight")
    return {"frames": frames, "rank": rank, "control_width": None if control is None else int(control.shape[0])}


class SharingModules:
    """The file's modules, built and loaded once (cached per engine by file): the processors
    (for a UNet of this shape) and, for two-frame files, the picture encoder."""

    def __init__(self, unet: Any, state_dict: dict[str, Any]) -> None:
        import torch

        from ctrlgen.core.errors import JobError

        layers = attention_layers(unet)
        in_file = len({key.split(".")[2] for key in state_dict if key.startswith("hookers.layers.")})
        if in_file != len(layers):
            raise JobError(f"the LayerDiffuse attention file has {in_file} attention layers, this SD1.5 UNet "
                           f"{len(layers)}; it is for another model")
        shape = file_shape(state_dict)
        self.frames = shape["frames"]
        self.processors = build_processors(unet, self.frames, shape["rank"], shape["control_width"])
        holder = torch.nn.Module()
        holder.hookers = torch.nn.Module()
        holder.hookers.layers = torch.nn.ModuleList(self.processors)
        self.encoder = None
        if shape["control_width"] is not None:
            self.encoder = holder.kwargs_encoder = build_control_encoder(control_widths(state_dict))
        try:
            holder.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            raise JobError(f"the LayerDiffuse attention file does not fit this UNet's attention layers: "
                           f"{str(exc)[:300]}") from None
        holder.to(device=unet.device, dtype=unet.dtype)
        holder.eval()
        self.names = [name for name, _ in layers]


class SharingPatch:
    """``modules``' processors on ``unet`` for one job; the previous processors back on exit.

    ``rows``: conditional rows per pass (batch × frames); ``texts``: each frame's own prompt
    embedding (or None); ``picture``: 1×3×H×W in [-1, 1] for the two-frame files' control."""

    def __init__(self, unet: Any, modules: SharingModules, weight: float, rows: int = 0,
                 texts: list[Any] | None = None, picture: Any = None) -> None:
        self.unet, self.modules, self.weight = unet, modules, weight
        self.rows, self.texts, self.picture = rows, texts or [None] * modules.frames, picture
        self.previous: dict[str, Any] | None = None

    def __enter__(self) -> SharingPatch:
        import torch

        signals = None
        if self.modules.encoder is not None:
            if self.picture is None:
                from ctrlgen.core.errors import JobError

                raise JobError("this LayerDiffuse file reads a picture (a foreground or background); give the mode's "
                               "image")
            encoder = self.modules.encoder
            weight = next(encoder.parameters())
            with torch.no_grad():
                signals = encoder(self.picture.to(device=weight.device, dtype=weight.dtype))
        for processor in self.modules.processors:
            processor.weight, processor.rows, processor.texts = self.weight, self.rows, list(self.texts)
            processor.signals = signals
        self.previous = dict(self.unet.attn_processors)
        updated = dict(self.previous)
        updated.update(zip(self.modules.names, self.modules.processors, strict=True))
        self.unet.set_attn_processor(updated)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            self.unet.set_attn_processor(self.previous)
            self.previous = None
        for processor in self.modules.processors:  # no job's tensors kept in the cache
            processor.texts, processor.signals = [None] * self.modules.frames, None
