"""LayerDiffuse's transparent VAE encoder: an RGBA picture's alpha, carried in the latent.

``vae_transparent_encoder.safetensors`` (SDXL) and ``layer_sd15_vae_transparent_encoder``
(SD1.5) are a small convolution stack (``blocks.0`` ... ``blocks.16``: RGBA in, three
halvings, 4 channels out). As in LayerDiffuse's own diffusers code, the picture is encoded as:

- the VAE sees the colours premultiplied by alpha (transparent = mid-grey, 0 in [-1, 1]);
- the encoder sees alpha and the colours *padded* into the transparent area (each transparent
  pixel takes the colour of the nearest opaque ones, through an alpha-weighted pyramid);
- the latent is ``mean + std · offset · 300`` of the VAE's distribution: the offset moves the
  sample where the transparent decoder reads alpha back.

:class:`EncodeHook` puts this behind ``vae.encode`` for one job (img2img with an RGBA
``job.image``); the pipeline's own img2img code takes the latent as it comes.
"""

from __future__ import annotations

from typing import Any

OFFSET_SCALE = 300.0  # LayerDiffuse's "alpha": the zero-initialised last layer trained small
_STRIDED = (4, 8, 12)  # the layers (Sequential indices) that halve the size


def build_encoder(state_dict: dict[str, Any]):
    """The encoder of ``state_dict``'s shape (widths read from the file), weights loaded, eval."""
    import torch

    numbers = sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("blocks.") and k.endswith(".weight")})
    layers: list[Any] = []
    for position, number in enumerate(numbers):
        weight = state_dict[f"blocks.{number}.weight"]
        stride = 2 if number in _STRIDED else 1
        layers.append(torch.nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2],
                                      padding=weight.shape[2] // 2, stride=stride))
        if position < len(numbers) - 1:
            layers.append(torch.nn.SiLU())
    class TransparentEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.Sequential(*layers)

        def forward(self, rgba):
            """alpha and padded colours (B×4×H×W in [0, 1]) -> the latent offset (B×4×H/8×W/8)."""
            return self.blocks(rgba)

    model = TransparentEncoder()
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def pad_colours(rgb, alpha, step: float = 1.2):
    """Colours (H×W×3 float in [0, 1]) with the transparent area filled from the opaque one:
    an alpha-weighted pyramid, coarsest first, each level filling what the finer one lacks."""
    import numpy as np
    from PIL import Image

    def shrink(array, width, height):
        return np.dstack([np.asarray(Image.fromarray(array[..., c]).resize((width, height), Image.Resampling.BOX))
                          for c in range(array.shape[2])])

    levels = [(rgb * alpha, alpha)]
    while min(levels[-1][1].shape[:2]) > 1:
        colour, weight = levels[-1]
        height, width = weight.shape[:2]
        size = (max(1, int(width / step)), max(1, int(height / step)))
        levels.append((shrink(colour.astype(np.float32), *size), shrink(weight.astype(np.float32), *size)))
    colour, weight = levels[-1]
    filled = colour.sum(axis=(0, 1), keepdims=True) / max(float(weight.sum()), 1e-8)
    for colour, weight in reversed(levels):
        height, width = weight.shape[:2]
        filled = np.dstack([np.asarray(Image.fromarray(np.ascontiguousarray(filled[..., c])).resize(
            (width, height), Image.Resampling.BILINEAR)) for c in range(3)])
        filled = colour + filled * (1.0 - weight)
    return filled


class EncodeHook:
    """While active, ``vae.encode`` of the job's picture returns LayerDiffuse's latent of
    ``rgba`` (H×W×4 uint8, the job's image at the generation size; see the module doc). Only
    the call that encodes ``shown`` (the RGB picture the pipeline was given, H×W×3 uint8) is
    changed; others (a reference-only image, say) go through. ``offset`` keeps the last offset
    (tests measure it)."""

    def __init__(self, vae: Any, model: Any, rgba: Any, shown: Any = None) -> None:
        self.vae, self.model, self.rgba, self.shown = vae, model, rgba, shown
        self.offset = None
        self.original = None

    def __enter__(self) -> EncodeHook:
        self.original = self.vae.encode
        self.vae.encode = self._encode  # an instance attribute over the class's method; deleted on exit
        return self

    def __exit__(self, *exc: object) -> None:
        if self.vae.__dict__.get("encode") == self._encode:
            del self.vae.__dict__["encode"]
        self.original = None

    def _is_shown(self, x) -> bool:
        if self.shown is None:
            return True
        import torch

        shown = torch.from_numpy(self.shown.astype("float32") / 127.5 - 1).permute(2, 0, 1).to(x.device)
        return float((x[0].float() - shown).abs().mean()) < 0.02

    def _encode(self, x, return_dict: bool = True):
        from types import SimpleNamespace

        import numpy as np
        import torch

        height, width = self.rgba.shape[:2]
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (height, width) or not self._is_shown(x):
            return self.original(x, return_dict=return_dict)
        array = self.rgba.astype(np.float32) / 255.0
        rgb, alpha = array[..., :3], array[..., 3:]
        padded = pad_colours(rgb, alpha)

        def tensor(a):
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)[None]

        feed = ((tensor(rgb) * 2 - 1) * tensor(alpha)).to(device=x.device, dtype=x.dtype)
        distribution = self.original(feed.expand(x.shape[0], -1, -1, -1)).latent_dist
        weight = next(self.model.parameters())
        with torch.no_grad():
            offset = self.model(torch.cat([tensor(alpha), tensor(padded)], dim=1).to(weight)) * OFFSET_SCALE
        self.offset = offset.detach().float().cpu()
        latent = distribution.mean + distribution.std * offset.to(distribution.mean)
        # diffusers' retrieve_latents takes ready ``latents`` when there is no ``latent_dist``.
        return SimpleNamespace(latents=latent) if return_dict else (latent,)
