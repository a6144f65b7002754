"""The manga line extraction network (``erika.pth``) behind sd-webui-controlnet's lineart_anime_denoise.

A residual encoder-decoder from "Deep Extraction of Manga Structural Lines" (Li et al.,
2017; github.com/ljsabc/MangaLineExtraction_PyTorch), which controlnet_aux does not ship.
Module and attribute names follow that implementation so its state dict loads as is; the
channel widths are read from the state dict (the real file: 24, 48, 96, 192, 384 and 16).
"""

from __future__ import annotations

from typing import Any

REPETITIONS = (2, 3, 5, 7, 12)  # residual units per encoder stage (the decoder mirrors them)


REAL_WIDTHS = (24, 48, 96, 192, 384)
REAL_HEAD = 16


def manga_line_network(widths: tuple[int, ...] = REAL_WIDTHS, head: int = REAL_HEAD) -> Any:
    """The network (random weights) with encoder ``widths`` and ``head`` channels before the output."""
    return _network_class()(tuple(widths), head)


def build_manga_line_network(state: dict[str, Any]) -> Any:
    """The network with the channel widths of ``state`` (random weights; load ``state`` next)."""
    widths = tuple(int(state[f"block{i}.model.0.conv1.model.2.weight"].shape[0]) for i in range(5))
    return manga_line_network(widths, int(state["block9.model.0.conv1.model.2.weight"].shape[0]))


def _network_class():
    from torch import nn

    def bn_relu_conv(channels_in, channels_out, size, stride=1, upsample=False):
        layers = [nn.BatchNorm2d(channels_in, eps=1e-3), nn.LeakyReLU(0.2),
                  nn.Conv2d(channels_in, channels_out, size, stride=stride, padding=size // 2)]
        return nn.Sequential(*layers, *([nn.Upsample(scale_factor=2, mode="nearest")] if upsample else []))

    class Wrapped(nn.Module):  # the original wraps every Sequential in a module's ``model``
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)

    class Shortcut(nn.Module):
        """``x + y``, with ``x`` projected (1×1 conv, optionally upsampled) when shapes differ."""

        def __init__(self, channels_in, channels_out, stride=1, upsample=False):
            super().__init__()
            self.model = None
            if channels_in != channels_out or (stride != 1 and not upsample):
                layers = [nn.Conv2d(channels_in, channels_out, 1, stride=stride)]
                self.model = nn.Sequential(*layers, *([nn.Upsample(scale_factor=2)] if upsample else []))

        def forward(self, x, y):
            return y + (x if self.model is None else self.model(x))

    class Unit(nn.Module):
        def __init__(self, channels_in, channels_out, stride=1, upsample=False):
            super().__init__()
            self.conv1 = Wrapped(bn_relu_conv(channels_in, channels_out, 3, stride, upsample))
            self.residual = Wrapped(bn_relu_conv(channels_out, channels_out, 3))
            self.shortcut = Shortcut(channels_in, channels_out, stride, upsample)

        def forward(self, x):
            return self.shortcut(x, self.residual(self.conv1(x)))

    def encoder(channels_in, channels_out, repetitions, first=False):
        # The last unit of each stage but the first halves the resolution.
        units = [Unit(channels_in if i == 0 else channels_out, channels_out,
                      stride=2 if i == repetitions - 1 and not first else 1) for i in range(repetitions)]
        return Wrapped(nn.Sequential(*units))

    def decoder(channels_in, channels_out, repetitions):
        units = [Unit(channels_in, channels_out, upsample=True)]
        units += [Unit(channels_out, channels_out) for _ in range(repetitions - 1)]
        return Wrapped(nn.Sequential(*units))

    class MangaLineNetwork(nn.Module):
        def __init__(self, widths, head):
            super().__init__()
            ins = [1, *widths[:-1]]
            for i in range(5):
                setattr(self, f"block{i}", encoder(ins[i], widths[i], REPETITIONS[i], first=i == 0))
            for j, i in enumerate((3, 2, 1, 0)):
                setattr(self, f"block{5 + j}", decoder(widths[i + 1], widths[i], REPETITIONS[i]))
                setattr(self, f"res{1 + j}", Shortcut(widths[i], widths[i]))
            self.block9 = encoder(widths[0], head, 2, first=True)
            self.conv15 = Wrapped(bn_relu_conv(head, 1, 1))

        def forward(self, x):
            skips = []
            for i in range(5):
                x = getattr(self, f"block{i}")(x)
                skips.append(x)
            for j in range(4):
                x = getattr(self, f"res{1 + j}")(skips[3 - j], getattr(self, f"block{5 + j}")(x))
            return self.conv15(self.block9(x))

    return MangaLineNetwork
