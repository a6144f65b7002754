"""Inpainting masks: grow/shrink, feather, invert, fill, only-masked crops, compositing.

Conventions follow A1111 and Krita AI Diffusion: a mask is ``uint8`` H×W, 255 = repaint.
The composite uses the *feathered* mask as alpha, so every pixel where that alpha is 0 is
copied from the original unchanged, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import ImageError

FillMode = Literal["fill", "original", "latent_noise", "latent_nothing"]
FILL_MODES: tuple[str, ...] = ("fill", "original", "latent_noise", "latent_nothing")


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

    alpha = mask.astype(np.float32) / 255.0
    if pixels <= 0:
        return alpha
    sigma = pixels / 2.0
    size = 2 * int(np.ceil(3 * sigma)) + 1
    blurred = cv2.GaussianBlur(alpha, (size, size), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)
    # Exact zeros far from the mask, so "outside" stays exactly the original there.
    blurred[blurred < 1.0 / 512.0] = 0.0
    return blurred


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


def masked_region(mask: np.ndarray, padding: int, aspect: float | None = None) -> Region:
    """Bounding box of the mask plus ``padding``, widened to ``aspect`` (w/h) where the
    image allows, clamped to the image. Raises if the mask is empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ImageError("the mask is empty: nothing to inpaint; paint the area to change in white")
    height, width = mask.shape
    x0, x1 = max(0, xs.min() - padding), min(width, xs.max() + 1 + padding)
    y0, y1 = max(0, ys.min() - padding), min(height, ys.max() + 1 + padding)
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


@dataclass(frozen=True)
class InpaintOptions:
    """Mask handling for one inpaint job (A1111 names in brackets).

    ``grow_px`` (dilate; negative shrinks), ``feather_px`` [mask blur], ``invert``
    [inpaint not masked], ``fill`` [masked content: fill / original / latent noise /
    latent nothing], ``only_masked`` [inpaint area: only masked] with ``padding_px``.
    """

    grow_px: int = 0
    feather_px: float = 4.0
    invert: bool = False
    fill: FillMode = "original"
    only_masked: bool = False
    padding_px: int = 32
