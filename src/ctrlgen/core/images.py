"""Image and mask normalisation and the resize helpers every preprocessor shares.

Conventions: images are ``numpy.uint8`` arrays ``H×W×3`` (RGB); masks are ``uint8``
``H×W`` with 255 = "change this pixel". Heavy imports (cv2) happen inside functions.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ctrlgen.core.plugins.specs import Param

from .errors import ImageError

MAX_SIDE = 16384
MAX_PIXELS = 16384 * 16384

ResizeMode = Literal["just_resize", "crop_and_resize", "resize_and_fill"]
RESIZE_MODES: tuple[str, ...] = ("just_resize", "crop_and_resize", "resize_and_fill")

DETECT_RESOLUTION = Param(
    "detect_resolution",
    "int",
    default=512,
    min=0,
    max=4096,
    step=64,
    description="Short side the detector runs at (0 = the input's own size); the map is resized back",
)


def _as_array(image: Any, what: str) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return image
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.asarray(image).astype(np.uint16 if image.mode != "I" else np.int32)
        if image.mode not in ("RGB", "RGBA", "L", "LA"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        return np.asarray(image)
    raise ImageError(f"{what} must be a numpy array or a PIL image, got {type(image).__name__}")


def check_size(height: int, width: int, what: str = "image") -> None:
    if height < 1 or width < 1:
        raise ImageError(f"{what} is empty ({width}×{height}); give an image at least 1×1 pixels")
    if height > MAX_SIDE or width > MAX_SIDE or height * width > MAX_PIXELS:
        raise ImageError(
            f"{what} is {width}×{height}, above the limit of {MAX_SIDE} pixels a side; scale it down first"
        )


def _to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(f"{what} contains NaN or infinite values")
        return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 65535:
            raise ImageError(f"{what} has integer values outside 0..65535; give uint8 or uint16 data")
        if array.max() > 255:
            return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        return array.astype(np.uint8)
    raise ImageError(f"{what} has unsupported dtype {array.dtype}; use uint8, uint16 or float in [0, 1]")


def to_rgb(image: Any, what: str = "image") -> np.ndarray:
    """Any supported image as ``uint8`` H×W×3 RGB.

    Accepts grey (H×W or H×W×1), RGB, RGBA (composited on white), grey+alpha,
    ``uint8``/``uint16``/bool/float-in-[0,1] arrays and PIL images.
    """
    array = _as_array(image, what)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ImageError(
            f"{what} has shape {tuple(array.shape)}; expected H×W (grey), H×W×3 (RGB) or H×W×4 (RGBA)"
        )
    check_size(array.shape[0], array.shape[1], what)
    array = _to_uint8(array, what)
    channels = array.shape[2]
    if channels in (2, 4):
        alpha = array[:, :, -1:]
        if alpha.min() == 255:  # opaque (an editor's canvas, usually): nothing to composite
            array = array[:, :, :-1]
        else:  # on white, rounded exactly, in 16-bit integers: (c·a + 255·(255 − a) + 127) // 255
            a16 = alpha.astype(np.uint16)
            mixed = array[:, :, :-1].astype(np.uint16)
            mixed *= a16
            mixed += 255 * (255 - a16) + 127
            mixed += 1 + (mixed >> 8)  # y // 255 == (y + 1 + (y >> 8)) >> 8 for every y < 65536
            mixed >>= 8
            array = mixed.astype(np.uint8)
        channels -= 1
    if channels == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)


def to_mask(mask: Any, size: tuple[int, int] | None = None, what: str = "mask") -> np.ndarray:
    """A mask as ``uint8`` H×W (255 = masked). RGBA masks use alpha; RGB masks use luminance.

    ``size`` is ``(width, height)`` the mask must match.
    """
    array = _as_array(mask, what)
    if array.ndim == 3:
        if array.shape[2] == 4 or array.shape[2] == 2:
            array = array[:, :, -1]
        elif array.shape[2] == 3:
            array = _to_uint8(array, what).astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            array = (array + 0.5).astype(np.uint8)
        elif array.shape[2] == 1:
            array = array[:, :, 0]
    if array.ndim != 2:
        raise ImageError(f"{what} has shape {tuple(array.shape)}; expected H×W or an image")
    check_size(array.shape[0], array.shape[1], what)
    array = _to_uint8(array, what)
    if size is not None and (array.shape[1], array.shape[0]) != tuple(size):
        raise ImageError(
            f"{what} is {array.shape[1]}×{array.shape[0]} but the image is {size[0]}×{size[1]}; "
            "give a mask of the same size"
        )
    return np.ascontiguousarray(array)


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with area filtering when shrinking and bicubic when enlarging."""
    import cv2

    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrinking = width * height < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(image, (width, height), interpolation=interpolation)


def fit(image: np.ndarray, width: int, height: int, mode: str = "crop_and_resize") -> np.ndarray:
    """Bring a control map to ``width``×``height`` the way sd-webui-controlnet does.

    - ``just_resize``: stretch, ignoring aspect ratio.
    - ``crop_and_resize``: scale to cover, then centre-crop (nothing is padded).
    - ``resize_and_fill``: scale to fit inside, then pad with the edge colour median.
    """
    if mode not in RESIZE_MODES:
        raise ImageError(f"resize mode {mode!r} is not one of {', '.join(RESIZE_MODES)}")
    src_h, src_w = image.shape[:2]
    if mode == "just_resize" or (src_w, src_h) == (width, height):
        return resize(image, width, height)
    scale_w, scale_h = width / src_w, height / src_h
    if mode == "crop_and_resize":
        scale = max(scale_w, scale_h)
        new_w, new_h = max(width, round(src_w * scale)), max(height, round(src_h * scale))
        scaled = resize(image, new_w, new_h)
        top, left = (new_h - height) // 2, (new_w - width) // 2
        return np.ascontiguousarray(scaled[top : top + height, left : left + width])
    scale = min(scale_w, scale_h)
    new_w, new_h = min(width, max(1, round(src_w * scale))), min(height, max(1, round(src_h * scale)))
    scaled = resize(image, new_w, new_h)
    border = np.concatenate([scaled[0], scaled[-1], scaled[:, 0], scaled[:, -1]], axis=0)
    fill = np.median(border, axis=0).astype(np.uint8)
    canvas = np.empty((height, width) + image.shape[2:], dtype=image.dtype)
    canvas[...] = fill
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = scaled
    return canvas


def pixel_perfect_resolution(
    image_size: tuple[int, int], target_size: tuple[int, int], mode: str = "crop_and_resize"
) -> int:
    """The ``detect_resolution`` that makes one detector pixel land on one generated pixel.

    ``image_size`` and ``target_size`` are ``(width, height)``. With ``resize_and_fill``
    the image is fitted inside the target, so the smaller scale wins; otherwise the larger.
    """
    raw_w, raw_h = image_size
    target_w, target_h = target_size
    scale_h, scale_w = target_h / raw_h, target_w / raw_w
    scale = min(scale_h, scale_w) if mode == "resize_and_fill" else max(scale_h, scale_w)
    return int(round(scale * min(raw_h, raw_w)))


def detection_size(width: int, height: int, detect_resolution: int, multiple: int = 64) -> tuple[int, int]:
    """Size to run a detector at: short side ``detect_resolution``, sides rounded to ``multiple``."""
    if detect_resolution <= 0:
        return width, height
    scale = detect_resolution / min(width, height)
    new_w = max(multiple, int(round(width * scale / multiple)) * multiple)
    new_h = max(multiple, int(round(height * scale / multiple)) * multiple)
    return new_w, new_h
