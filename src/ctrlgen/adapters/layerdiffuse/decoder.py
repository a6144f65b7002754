"""LayerDiffuse's transparent VAE decoder, and the hook that runs it inside the VAE's decode.

The decoder is a small UNet (diffusers' 2D blocks, no time embedding) that reads the ordinary
VAE's RGB output together with the latent it came from and returns four channels: alpha and
the foreground's colours. Its size is read from the file (``down_blocks.<i>`` widths, layers
per block, which levels attend), so a tiny test decoder and the real 1024-pixel one
(``vae_transparent_decoder.safetensors``, ``layer_sd15_vae_transparent_decoder.safetensors``)
load through the same code. The latent joins the pixels' features after three downsamplings
(where they are 1/8 of the image, as the latent is).

:class:`DecodeHook` puts it behind ``vae.decode``: a pre-hook on ``post_quant_conv`` keeps
the latent the VAE was given, a forward hook on ``vae.decoder`` replaces its RGB output by
RGBA (colours and alpha in the decoder's [-1, 1] range), so the pipeline's own
post-processing returns H×W×4 images. Tiled VAE decoding works unchanged: each tile's
latent and pixels pair up the same way.
"""

from __future__ import annotations

from typing import Any

# Fixed by the architecture (not stored in the file): GroupNorm groups, attention head width,
# and the downsampling after which the latent is added (1/8 of the image, like the latent).
NORM_GROUPS = 4
HEAD_WIDTH = 8
LATENT_LEVEL = 3
# Flips and quarter turns the decoder runs on; the result is their median (LayerDiffuse's own
# test-time augmentation, which removes most of a single pass's speckles in the alpha).
AUGMENTATIONS = tuple((flip, turns) for flip in (False, True) for turns in range(4))


def decoder_config(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The decoder's shape from its tensors (names as in the released file)."""
    levels = sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("down_blocks.")})
    widths = tuple(int(state_dict[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in levels)
    layers = len({k.split(".")[3] for k in state_dict if k.startswith("down_blocks.0.resnets.")})
    attends = tuple(any(k.startswith(f"down_blocks.{i}.attentions.") for k in state_dict) for i in levels)
    return {"in_channels": int(state_dict["conv_in.weight"].shape[1]),
            "out_channels": int(state_dict["conv_out.weight"].shape[0]),
            "latent_channels": int(state_dict["latent_conv_in.weight"].shape[1]),
            "widths": widths, "layers_per_block": layers, "attends": attends}


def build_decoder(config: dict[str, Any]):
    """An untrained decoder of ``config``'s shape (see :func:`decoder_config`)."""
    import torch
    from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block, get_up_block

    widths, attends, layers = config["widths"], config["attends"], config["layers_per_block"]
    if len(widths) <= LATENT_LEVEL:
        raise ValueError(f"a transparent decoder needs more than {LATENT_LEVEL} levels, this one has {len(widths)}")

    class TransparentDecoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv_in = torch.nn.Conv2d(config["in_channels"], widths[0], 3, padding=1)
            self.latent_conv_in = torch.nn.Conv2d(config["latent_channels"], widths[LATENT_LEVEL - 1], 1)
            common = {"temb_channels": None, "resnet_eps": 1e-5, "resnet_act_fn": "silu",
                      "resnet_groups": NORM_GROUPS, "attention_head_dim": HEAD_WIDTH}
            self.down_blocks = torch.nn.ModuleList()
            previous = widths[0]
            for i, width in enumerate(widths):
                kind = "AttnDownBlock2D" if attends[i] else "DownBlock2D"
                self.down_blocks.append(get_down_block(
                    kind, num_layers=layers, in_channels=previous, out_channels=width,
                    add_downsample=i < len(widths) - 1, downsample_padding=1, downsample_type="conv", **common))
                previous = width
            self.mid_block = UNetMidBlock2D(in_channels=widths[-1], temb_channels=None, resnet_eps=1e-5,
                                            resnet_act_fn="silu", resnet_groups=NORM_GROUPS,
                                            attention_head_dim=HEAD_WIDTH, add_attention=True)
            self.up_blocks = torch.nn.ModuleList()
            reversed_widths, reversed_attends = widths[::-1], attends[::-1]
            previous = reversed_widths[0]
            for i, width in enumerate(reversed_widths):
                below = reversed_widths[min(i + 1, len(widths) - 1)]
                kind = "AttnUpBlock2D" if reversed_attends[i] else "UpBlock2D"
                self.up_blocks.append(get_up_block(
                    kind, num_layers=layers + 1, in_channels=below, out_channels=width,
                    prev_output_channel=previous, add_upsample=i < len(widths) - 1, upsample_type="conv",
                    **common))
                previous = width
            self.conv_norm_out = torch.nn.GroupNorm(NORM_GROUPS, widths[0], eps=1e-5)
            self.conv_act = torch.nn.SiLU()
            self.conv_out = torch.nn.Conv2d(widths[0], config["out_channels"], 3, padding=1)

        def forward(self, pixels, latent):
            """``pixels`` RGB in [0, 1] (B×3×H×W, H and W multiples of 64), ``latent`` B×4×H/8×W/8."""
            added = self.latent_conv_in(latent)
            sample = self.conv_in(pixels)
            skips = (sample,)
            for index, block in enumerate(self.down_blocks):
                if index == LATENT_LEVEL:
                    sample = sample + added
                sample, more = block(hidden_states=sample, temb=None)
                skips += more
            sample = self.mid_block(sample, None)
            for block in self.up_blocks:
                count = len(block.resnets)
                sample, skips = block(sample, skips[-count:], None), skips[:-count]
            return self.conv_out(self.conv_act(self.conv_norm_out(sample)))

    return TransparentDecoder()


# Attention names of diffusers before 0.21 (``query``/``key``/``value``/``proj_attn``), in case a
# decoder was saved with them.
_OLD_ATTENTION_NAMES = ((".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."),
                        (".proj_attn.", ".to_out.0."))


def load_decoder(state_dict: dict[str, Any], device: str, dtype: Any):
    """The decoder with ``state_dict``'s weights, in eval mode on ``device``."""
    renamed = {}
    for key, tensor in state_dict.items():
        for old, new in _OLD_ATTENTION_NAMES:
            key = key.replace(old, new)
        renamed[key] = tensor
    model = build_decoder(decoder_config(renamed))
    model.load_state_dict(renamed, strict=True)
    return model.to(device=device, dtype=dtype).eval()


def _single_pass(model, pixels, latent):
    import torch.nn.functional as F

    # The decoder halves the size six times: pad to a multiple of 64 (latent: 8) and crop back.
    height, width = pixels.shape[-2:]
    pad_h, pad_w = -height % 64, -width % 64
    if pad_h or pad_w:
        pixels = F.pad(pixels, (0, pad_w, 0, pad_h), mode="replicate")
        latent = F.pad(latent, (0, pad_w // 8, 0, pad_h // 8), mode="replicate")
    return model(pixels, latent)[..., :height, :width]


def decode_rgba(model, pixels, latent, augment: bool = True):
    """Alpha and colours (B×4×H×W in [0, 1], alpha first, as the decoder gives them) for
    ``pixels`` (the VAE's RGB in [0, 1]) decoded from ``latent`` (the VAE's input latent)."""
    import torch

    pixels = pixels.to(next(model.parameters()).dtype)
    latent = latent.to(pixels.dtype)
    with torch.no_grad():
        if not augment:
            return _single_pass(model, pixels, latent).clamp(0, 1)
        results = []
        for flip, turns in AUGMENTATIONS:
            feed_pixels, feed_latent = pixels, latent
            if flip:
                feed_pixels, feed_latent = feed_pixels.flip(3), feed_latent.flip(3)
            feed_pixels = torch.rot90(feed_pixels, turns, dims=(2, 3))
            feed_latent = torch.rot90(feed_latent, turns, dims=(2, 3))
            out = torch.rot90(_single_pass(model, feed_pixels, feed_latent).clamp(0, 1), -turns, dims=(2, 3))
            results.append(out.flip(3) if flip else out)
        return torch.stack(results).median(dim=0).values


class DecodeHook:
    """While active, ``vae.decode`` returns RGBA from the transparent decoder (see the module doc)."""

    def __init__(self, vae: Any, model: Any, augment: bool, every: int = 1) -> None:
        # every: of each group of ``every`` rows (SD1.5's multi-frame modes: the frames of one
        # seed), the first is the transparent layer; the others are opaque (alpha 1).
        self.vae, self.model, self.augment, self.every = vae, model, augment, every
        self.latent = None
        self.position = 0
        self.handles: list[Any] = []

    def __enter__(self) -> DecodeHook:
        self.position = 0
        quant = getattr(self.vae, "post_quant_conv", None)
        keeper = quant if quant is not None else self.vae.decoder
        self.handles.append(keeper.register_forward_pre_hook(self._keep_latent))
        self.handles.append(self.vae.decoder.register_forward_hook(self._to_rgba))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.latent = None

    def _keep_latent(self, module, args):
        self.latent = args[0]

    def _to_rgba(self, module, args, output):
        import torch

        sample = output[0] if isinstance(output, tuple) else output
        if self.latent is None or sample.shape[1] != 3:
            return output
        pixels = (sample.float() / 2 + 0.5).clamp(0, 1)
        rows, latent, count = None, self.latent, sample.shape[0]
        if self.every > 1:  # VAE slicing decodes a row at a time: count the rows seen
            rows = (self.position + torch.arange(count)) % self.every == 0
            self.position = (self.position + count) % self.every
        if rows is not None:
            pixels, latent = pixels[rows], latent[rows]
        found = decode_rgba(self.model, pixels.to(self.model_device()), latent.to(self.model_device()),
                            self.augment)
        rgba = torch.cat([found[:, 1:4], found[:, :1]], dim=1) * 2 - 1
        self.latent = None
        if rows is not None:
            opaque = torch.cat([sample.float(), torch.ones_like(sample[:, :1], dtype=torch.float32)], dim=1)
            opaque[rows] = rgba.to(opaque.device, torch.float32)
            rgba = opaque
        return rgba.to(device=sample.device, dtype=sample.dtype)

    def model_device(self):
        return next(self.model.parameters()).device
