"""What every host plug-in decides the same way, with the standard library only.

The Krita and GIMP plug-ins are installed on their own and cannot import ctrlgen or each
other; ``ctrlgen install krita|gimp`` copies this file beside ``client.py`` into the plug-in
(each plug-in's ``client_import.py`` finds it there, or here when it runs from the source
tree). Host-specific wording (which menu to open) stays in each plug-in; what is here is
geometry and the model families' rules:

- :class:`Rect` and :func:`fit_region`: the area a job works on (a selection's bounds plus
  context, at least :data:`MIN_SIDE` where the image allows, kept inside the image);
- :func:`generation_size`: the size a model generates an area at (:data:`NATIVE_SIDE`);
- :func:`model_architecture`: a model's family from the server's capabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MIN_SIDE = 64  # the server refuses smaller jobs (Job.width/height >= 64)
NATIVE_SIDE = {"sd15": 512, "sd2": 768, "sdxl": 1024}  # the side each family was trained at


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    width: int
    height: int

    @property
    def empty(self) -> bool:
        return self.width <= 0 or self.height <= 0

    @property
    def right(self) -> int:
        return self.x + self.width

    @property
    def bottom(self) -> int:
        return self.y + self.height

    def expanded(self, pixels: int) -> Rect:
        return Rect(self.x - pixels, self.y - pixels, self.width + 2 * pixels, self.height + 2 * pixels)

    def intersected(self, other: Rect) -> Rect:
        left, top = max(self.x, other.x), max(self.y, other.y)
        right, bottom = min(self.right, other.right), min(self.bottom, other.bottom)
        return Rect(left, top, max(0, right - left), max(0, bottom - top))

    def moved(self, dx: int, dy: int) -> Rect:
        return Rect(self.x + dx, self.y + dy, self.width, self.height)

    def tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.width, self.height)


def fit_region(area: Rect, bounds: Rect, context_px: int) -> Rect:
    """``area`` plus ``context_px`` of surroundings, grown to at least MIN_SIDE×MIN_SIDE, shifted
    back inside ``bounds`` before clipping (so the crop keeps its size where it can), clipped to
    ``bounds``. The result may still be smaller than MIN_SIDE on a small image, or empty when
    ``area`` lies outside ``bounds``: the caller says what to do in its host's words."""
    region = area.expanded(max(0, int(context_px)))
    grow_w, grow_h = max(0, MIN_SIDE - region.width), max(0, MIN_SIDE - region.height)
    region = Rect(region.x - grow_w // 2, region.y - grow_h // 2, region.width + grow_w, region.height + grow_h)
    dx = max(0, bounds.x - region.x) - max(0, region.right - bounds.right)
    dy = max(0, bounds.y - region.y) - max(0, region.bottom - bounds.bottom)
    return region.moved(dx, dy).intersected(bounds)


def generation_size(width: int, height: int, architecture: str) -> tuple[int, int]:
    """The size to generate an area of ``width``×``height`` at: the area's shape, scaled so its
    pixel count lies between the model's native area and 1.5² times it (SD1.5: 512² to 768²,
    SDXL: 1024² to 1536²), sides a multiple of 8. A 4096² canvas is not denoised at 4096² (slow,
    and the model repeats itself), nor a 100×60 selection at 100×60 (too few latents to draw in).
    Unknown families: as given."""
    native = NATIVE_SIDE.get(architecture)
    if native is None:
        return width, height
    area, low, high = width * height, native * native, (native * 1.5) ** 2
    scale = math.sqrt(high / area) if area > high else math.sqrt(low / area) if area < low else 1.0
    if scale == 1.0:
        return width, height
    to_8 = math.ceil if scale > 1 else math.floor  # stay inside the range after rounding to 8
    return max(64, to_8(width * scale / 8) * 8), max(64, to_8(height * scale / 8) * 8)


def model_architecture(capabilities: dict[str, Any], name: str) -> str:
    """The model's identified architecture, else a guess from its name (IP-Adapter files do not
    always tell: ``ip-adapter_sdxl`` vs ``ip-adapter_sd15``), else ``unknown``."""
    for model in capabilities.get("models", []):
        if model.get("name") == name:
            arch = str(model.get("architecture") or "unknown")
            if arch != "unknown":
                return arch
    lowered = name.lower()
    if "sdxl" in lowered or "_xl" in lowered:
        return "sdxl"
    if "sd15" in lowered or "sd1.5" in lowered:
        return "sd15"
    return "unknown"
