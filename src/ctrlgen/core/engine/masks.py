"""Inpainting masks: grow/shrink, feather, invert, fill, only-masked crops, compositing,
and the expanded canvas of outpainting.

Conventions follow A1111 and Krita AI Diffusion: a mask is ``uint8`` H×W, 255 = repaint.
The composite uses the *feathered* mask as alpha, so every pixel where that alpha is 0 is
copied from the original unchanged, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ctrlgen.core.errors import ImageError

FillMode = Literal["original", "fill", "latent_noise", "latent_nothing"]
FILL_MODES: tuple[str, ...] = ("original", "fill", "latent_noise", "latent_nothing")
LATENT_FILL_MODES: tuple[str, ...] = ("latent_noise", "latent_nothing")


def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Dilate the mask by ``pixels`` (a negative value erodes), with a round brush."""
    import cv2

    if pixels == 0:
        return mask.copy()
    radius = abs(pixels)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    operation = cv2.dilate if pixels > 0 else cv2.erode
    border = 0 if pixels > 0 else 255  # eroding at the image edge keeps edge pixels masked
    return operation(mask, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=border)


def feather(mask: np.ndarray, pixels: float) -> np.ndarray:
    """The mask blurred over ``pixels`` as float32 alpha in [0, 1] (0 px = a hard edge)."""
    import cv2

    if pixels <= 0:
        return mask.astype(np.float32) / 255.0
    sigma = pixels / 2.0
    size = 2 * feather_reach(pixels) + 1
    # In float64, rounded to float32 after: OpenCV's float32 filters round differently by image
    # width (SIMD paths), and a mask feathered on a box around it must equal the whole canvas's.
    blurred = cv2.GaussianBlur(mask.astype(np.float64) / 255.0, (size, size), sigmaX=sigma, sigmaY=sigma,
                               borderType=cv2.BORDER_REPLICATE).astype(np.float32)
    # Exact zeros far from the mask, so "outside" stays exactly the original there.
    blurred[blurred < 1.0 / 512.0] = 0.0
    return blurred


def feather_reach(pixels: float) -> int:
    """How far (px) :func:`feather` spreads a mask: its blur kernel's half width (0: no blur)."""
    return int(np.ceil(3 * pixels / 2.0)) if pixels > 0 else 0


def prepare_mask(mask: np.ndarray, grow_px: int = 0, invert: bool = False) -> np.ndarray:
    """Binarise (>= 128), invert ("inpaint not masked") and grow/shrink a mask."""
    binary = np.where(mask >= 128, 255, 0).astype(np.uint8)
    if invert:
        binary = 255 - binary
    return grow(binary, grow_px)


def fill(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Replace masked pixels with colours spread in from around the mask (OpenCV Telea)."""
    import cv2

    if not mask.any():
        return image.copy()
    return cv2.inpaint(image, (mask > 0).astype(np.uint8), 3, cv2.INPAINT_TELEA)


@dataclass(frozen=True)
class Region:
    """A crop box ``[x0, x1) × [y0, y1)`` inside an image."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def crop(self, array: np.ndarray) -> np.ndarray:
        return array[self.y0 : self.y1, self.x0 : self.x1]

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)

    def grown(self, margin: int, width: int, height: int) -> Region:
        """This box with ``margin`` px more on each side, clamped to a ``width``×``height`` image."""
        return Region(max(0, self.x0 - margin), max(0, self.y0 - margin),
                      min(width, self.x1 + margin), min(height, self.y1 + margin))

    def intersect(self, other: Region) -> Region:
        """The overlap of two boxes (empty: zero width or height at ``self``'s corner)."""
        x0, y0 = max(self.x0, other.x0), max(self.y0, other.y0)
        return Region(x0, y0, max(x0, min(self.x1, other.x1)), max(y0, min(self.y1, other.y1)))

    def moved(self, dx: int, dy: int) -> Region:
        return Region(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)

    def relative_to(self, outer: Region) -> Region:
        """This box in the coordinates of ``outer`` (whose top-left becomes 0, 0)."""
        return self.moved(-outer.x0, -outer.y0)


def mask_bounds(mask: np.ndarray, invert: bool = False) -> Region | None:
    """The box of the pixels a mask selects (>= 128, or < 128 with ``invert``), None if none.

    Cheap on a big canvas: one vectorised max (min) per row finds the rows, then only the band
    of those rows is read for the columns; nothing canvas-sized is allocated. ``mask`` is any
    mask :func:`ctrlgen.core.images.to_mask` takes; RGBA and grey+alpha masks use their alpha,
    RGB ones their luminance (found as a superset from the channels' max/min, then exact)."""
    from ctrlgen.core.images import to_mask

    if mask.dtype != np.uint8 or mask.ndim not in (2, 3):
        return mask_bounds(to_mask(mask), invert)
    luminance = mask.ndim == 3 and mask.shape[2] == 3
    if mask.ndim == 3 and not luminance:
        mask = mask[:, :, -1]  # alpha (or the only channel)
    reduce = np.min if invert else np.max

    def selected(values: np.ndarray) -> np.ndarray:
        return values < 128 if invert else values >= 128

    # Luminance is a weighted mean, so it lies between the channels' min and max: rows and
    # columns without a selected channel value cannot hold a selected pixel.
    rows = reduce(mask.reshape(mask.shape[0], -1), axis=1)
    found = np.flatnonzero(selected(rows))
    if len(found) == 0:
        return None
    y0, y1 = int(found[0]), int(found[-1]) + 1
    band = mask[y0:y1]
    columns = reduce(band, axis=0)
    if luminance:
        columns = reduce(columns, axis=-1)
    found = np.flatnonzero(selected(columns))
    x0, x1 = int(found[0]), int(found[-1]) + 1
    if not luminance:
        return Region(x0, y0, x1, y1)
    exact = selected(to_mask(np.ascontiguousarray(band[:, x0:x1])))
    ys, xs = np.flatnonzero(exact.any(axis=1)), np.flatnonzero(exact.any(axis=0))
    if len(ys) == 0:
        return None
    return Region(x0 + int(xs[0]), y0 + int(ys[0]), x0 + int(xs[-1]) + 1, y0 + int(ys[-1]) + 1)


def masked_region(mask: np.ndarray, padding: int, aspect: float | None = None) -> Region:
    """Bounding box of the mask's nonzero pixels plus ``padding``, widened to ``aspect`` (w/h) where the
    image allows, clamped to the image. Raises if the mask is empty."""
    bounds = _nonzero_bounds(mask)
    if bounds is None:
        raise ImageError("the mask is empty: nothing to inpaint; paint the area to change in white")
    height, width = mask.shape
    return region_around(bounds, width, height, padding, aspect)


def _nonzero_bounds(mask: np.ndarray) -> Region | None:
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return Region(int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1)


def region_around(bounds: Region, width: int, height: int, padding: int, aspect: float | None = None) -> Region:
    """``bounds`` plus ``padding``, widened to ``aspect`` (w/h) where a ``width``×``height``
    image allows, clamped to it: the only-masked region of a mask with these bounds."""
    x0, x1 = max(0, bounds.x0 - padding), min(width, bounds.x1 + padding)
    y0, y1 = max(0, bounds.y0 - padding), min(height, bounds.y1 + padding)
    if aspect:
        box_w, box_h = x1 - x0, y1 - y0
        if box_w / box_h < aspect:
            want = min(width, int(np.ceil(box_h * aspect)))
            x0, x1 = _expand(x0, x1, want, width)
        else:
            want = min(height, int(np.ceil(box_w / aspect)))
            y0, y1 = _expand(y0, y1, want, height)
    return Region(int(x0), int(y0), int(x1), int(y1))


def _expand(start: int, end: int, want: int, limit: int) -> tuple[int, int]:
    extra = want - (end - start)
    start -= extra // 2
    end += extra - extra // 2
    if start < 0:
        end, start = end - start, 0
    if end > limit:
        start, end = max(0, start - (end - limit)), limit
    return start, end


def composite(original: np.ndarray, generated: np.ndarray, alpha: np.ndarray,
              region: Region | None = None) -> np.ndarray:
    """``generated`` over ``original`` through ``alpha`` (float H×W in [0, 1]).

    With ``region``, ``generated`` covers only that box (already at the box's size) and
    ``alpha`` is for the whole image. Pixels with alpha 0 are the original's, unchanged.
    """
    result = original.copy()
    box = region or Region(0, 0, original.shape[1], original.shape[0])
    if generated.shape[:2] != (box.height, box.width):
        raise ImageError(f"generated patch is {generated.shape[1]}×{generated.shape[0]}, region is "
                         f"{box.width}×{box.height}")
    local_alpha = box.crop(alpha)[..., None]
    touched = local_alpha[..., 0] > 0
    base = box.crop(original).astype(np.float32)
    blended = base * (1.0 - local_alpha) + generated.astype(np.float32) * local_alpha
    patch = box.crop(result)
    patch[touched] = np.clip(blended[touched] + 0.5, 0, 255).astype(np.uint8)
    return result


def composite_rgba(original: np.ndarray, generated: np.ndarray, alpha: np.ndarray,
                   region: Region | None = None) -> np.ndarray:
    """:func:`composite` for an RGBA ``original`` (straight alpha) and a ``generated`` patch that is
    opaque RGB or RGBA (straight alpha: a transparent layer, LayerDiffuse).

    Through ``alpha`` (the feathered mask) the result's alpha goes from the original's to the
    generated one (255 for RGB), and colours blend weighted by the alphas (so a transparent
    pixel's hidden colour does not bleed in). Pixels with mask alpha 0 are the original's,
    colour and alpha, unchanged."""
    result = original.copy()
    box = region or Region(0, 0, original.shape[1], original.shape[0])
    if generated.shape[:2] != (box.height, box.width):
        raise ImageError(f"generated patch is {generated.shape[1]}×{generated.shape[0]}, region is "
                         f"{box.width}×{box.height}")
    weight = box.crop(alpha)[..., None].astype(np.float32)
    touched = weight[..., 0] > 0
    base = box.crop(original).astype(np.float32)
    new = generated.astype(np.float32)
    kept = base[..., 3:4] / 255.0 * (1.0 - weight)  # how much of the original shows
    added = weight * (new[..., 3:4] / 255.0 if new.shape[2] == 4 else 1.0)  # how much of the generated
    opacity = kept + added
    colour = np.where(opacity > 0, (base[..., :3] * kept + new[..., :3] * added) / np.maximum(opacity, 1e-6),
                      new[..., :3])  # fully transparent: keep the generated colour rather than black
    blended = np.concatenate([colour, opacity * 255.0], axis=-1)
    patch = box.crop(result)
    patch[touched] = np.clip(blended[touched] + 0.5, 0, 255).astype(np.uint8)
    return result


@dataclass(frozen=True)
class Expansion:
    """Pixels added on each side of an image (outpainting)."""

    left: int = 0
    top: int = 0
    right: int = 0
    bottom: int = 0

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The expanded canvas's ``(width, height)`` for an image of ``width``×``height``."""
        return width + self.left + self.right, height + self.top + self.bottom

    def place(self, image: np.ndarray, value: int = 0) -> np.ndarray:
        """``image`` on the expanded canvas at its offset, the new area set to ``value``."""
        height, width = image.shape[:2]
        canvas_w, canvas_h = self.size(width, height)
        canvas = np.full((canvas_h, canvas_w, *image.shape[2:]), value, dtype=image.dtype)
        canvas[self.top : self.top + height, self.left : self.left + width] = image
        return canvas


def expand_canvas(image: np.ndarray, expansion: Expansion) -> np.ndarray:
    """``image`` on a bigger canvas whose new area holds the image's edge colours, spread
    outwards and blurred more the further they go (a neutral start for outpainting, as Krita AI
    Diffusion's canvas expansion gives). The image's own pixels are copied unchanged."""
    import cv2

    e = expansion
    spread = cv2.copyMakeBorder(image, e.top, e.bottom, e.left, e.right, cv2.BORDER_REPLICATE)
    # Replicated edges are streaks; blur them over a scale that grows with the expansion. The
    # blur runs on a reduced copy so a wide expansion of a big canvas stays cheap.
    sigma = max(4.0, max(e.left, e.top, e.right, e.bottom) / 4.0)
    height, width = spread.shape[:2]
    scale = max(1.0, sigma / 4.0)
    small_size = (max(1, round(width / scale)), max(1, round(height / scale)))
    small = cv2.resize(spread, small_size, interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma / scale, borderType=cv2.BORDER_REPLICATE)
    blurred = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    result = blurred.reshape(spread.shape)
    result[e.top : e.top + image.shape[0], e.left : e.left + image.shape[1]] = image
    return result


def outpaint_mask(width: int, height: int, expansion: Expansion, overlap: int = 0) -> np.ndarray:
    """The repaint mask on the expanded canvas of a ``width``×``height`` image: the new area,
    reaching ``overlap`` pixels into the image on each side that was expanded."""
    e = expansion
    canvas_w, canvas_h = e.size(width, height)
    mask = np.full((canvas_h, canvas_w), 255, np.uint8)
    x0 = e.left + (min(overlap, width) if e.left else 0)
    y0 = e.top + (min(overlap, height) if e.top else 0)
    x1 = e.left + width - (min(overlap, width) if e.right else 0)
    y1 = e.top + height - (min(overlap, height) if e.bottom else 0)
    if x1 > x0 and y1 > y0:
        mask[y0:y1, x0:x1] = 0
    return mask
