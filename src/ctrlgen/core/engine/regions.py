"""Where an inpaint job works, found without touching the rest of the canvas.

A small edit on a big painting must cost what the edit costs. So the mask's bounds are found
with one vectorised pass (:func:`~ctrlgen.core.engine.masks.mask_bounds`), and from then on
only boxes around them are read: the mask is binarised, inverted and grown on its bounds plus
the grow radius, feathered on the grown bounds plus the blur's reach, and — in only-masked
mode — the picture is converted to RGB (RGBA composited on white) on the region alone. Each
of these is a per-pixel or a local operation whose border never reaches the box's inside, so
the result is the same, bit for bit, as on the whole canvas; pixels outside the feathered
mask are the input's.

With ``job.image_offset``/``job.canvas_size`` the picture is a patch of a bigger canvas (the
host sent the region and its context): the only-masked region is computed in the canvas's
coordinates — clamped and widened to the generation's aspect as on the whole canvas — and
then taken inside the patch, so a patch that holds the region gives the result the whole
canvas would give there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ctrlgen.core.engine.masks import (
    Expansion,
    Region,
    feather,
    feather_reach,
    mask_bounds,
    prepare_mask,
    region_around,
)
from ctrlgen.core.errors import ImageError, JobError
from ctrlgen.core.images import resize, to_mask, to_rgb

SELECTS_NOTHING = "job.mask selects nothing (after grow/invert): paint the area to change in white"


@dataclass(frozen=True)
class InpaintFrame:
    """Where an inpaint job works.

    ``size`` is the canvas's ``(width, height)``: the input image, expanded when outpainting
    (the result's size). ``region`` is the box that is generated (the whole canvas, or the
    grown mask's bounds plus padding in only-masked mode). ``canvas`` (RGB) and ``mask``
    (uint8, 255 = repaint, after grow/invert and with the outpaint area) cover ``window``: the
    region in only-masked mode, the whole canvas otherwise. ``alpha``, the feathered mask the
    result is composited through, covers ``alpha_box`` (it is 0 everywhere else);
    ``changed_box`` bounds the pixels the result may change. ``expansion`` is how the input was
    placed on the canvas (all zeros without outpaint). All boxes are in canvas coordinates."""

    canvas: np.ndarray
    mask: np.ndarray
    alpha: np.ndarray
    region: Region
    expansion: Expansion
    size: tuple[int, int] = (0, 0)
    window: Region | None = None
    alpha_box: Region | None = None
    changed_box: Region | None = None
    # The grown mask over grown_box (zero outside it), and the input's own pixels (any format
    # the job's image came in: RGB, RGBA, grey), which the result is composited onto.
    grown: np.ndarray | None = field(default=None, repr=False)
    grown_box: Region | None = None
    picture: np.ndarray | None = field(default=None, repr=False)
    regional: bool = False  # made by region_frame (else from whole-canvas arrays)

    def __post_init__(self) -> None:
        if self.size == (0, 0):  # built from whole-canvas arrays (outpaint, or by hand)
            height, width = self.canvas.shape[:2]
            whole = Region(0, 0, width, height)
            object.__setattr__(self, "size", (width, height))
            for name, value in (("window", whole), ("alpha_box", whole), ("grown_box", whole)):
                if getattr(self, name) is None:
                    object.__setattr__(self, name, value)
            if self.grown is None:
                object.__setattr__(self, "grown", self.mask)
            if self.changed_box is None:
                object.__setattr__(self, "changed_box", _changed(self.region.crop(self.alpha), self.region))

    @property
    def input_size(self) -> tuple[int, int]:
        """The input image's ``(width, height)`` (the canvas before outpainting)."""
        e = self.expansion
        return self.size[0] - e.left - e.right, self.size[1] - e.top - e.bottom

    @property
    def cropped(self) -> bool:
        """Whether ``canvas`` and ``mask`` cover only the region (not the whole canvas)."""
        return self.window != Region(0, 0, *self.size)

    def region_canvas(self) -> np.ndarray:
        """The RGB pixels of the region."""
        return np.ascontiguousarray(self.region.relative_to(self.window).crop(self.canvas))

    def region_mask(self) -> np.ndarray:
        """The (grown, inverted) repaint mask over the region."""
        return np.ascontiguousarray(self.region.relative_to(self.window).crop(self.mask))

    def region_alpha(self) -> np.ndarray:
        """The feathered mask over the region (float32, 0 = keep the input)."""
        return self.over(self.region, self.alpha, self.alpha_box)

    def mask_over(self, box: Region) -> np.ndarray:
        """The grown repaint mask over any ``box`` of the canvas (0 beyond what it covers)."""
        return self.over(box, self.grown, self.grown_box)

    @staticmethod
    def over(box: Region, values: np.ndarray, values_box: Region) -> np.ndarray:
        """``values`` (covering ``values_box``) over ``box``, zero where they do not reach."""
        if box == values_box:
            return values
        result = np.zeros((box.height, box.width), values.dtype)
        shared = box.intersect(values_box)
        if shared.width and shared.height:
            shared.relative_to(box).crop(result)[...] = shared.relative_to(values_box).crop(values)
        return result

    def to_region(self, image: np.ndarray, value: int = 0) -> np.ndarray:
        """A map over the job's picture (a control map, say) as the generated region sees it.

        A map at the canvas's size is taken as it is; any other is taken to cover the INPUT:
        resized to the input's size, put on the canvas at the input's offset (new area:
        ``value``, 0 = "no control" for most maps). Then it is cropped to ``region``."""
        if image.shape[:2] != (self.size[1], self.size[0]):
            width, height = self.input_size
            image = self.expansion.place(resize(image, width, height), value)
        return np.ascontiguousarray(self.region.crop(image))


def _changed(alpha: np.ndarray, box: Region) -> Region:
    """The bounds (canvas coordinates) of ``alpha > 0``, ``alpha`` covering ``box``."""
    touched = alpha > 0
    rows, columns = np.flatnonzero(touched.any(axis=1)), np.flatnonzero(touched.any(axis=0))
    if len(rows) == 0:
        return Region(box.x0, box.y0, box.x0, box.y0)
    return Region(box.x0 + int(columns[0]), box.y0 + int(rows[0]),
                  box.x0 + int(columns[-1]) + 1, box.y0 + int(rows[-1]) + 1)


def fast_path(pixels: np.ndarray, mask: np.ndarray | None, job: Any) -> bool:
    """Whether the region-proportional frame applies: uint8 picture and mask, no outpaint.
    Other inputs (16-bit, float) are converted whole first, as before."""
    return (job.outpaint is None and mask is not None and pixels.dtype == np.uint8 and mask.dtype == np.uint8
            and pixels.ndim in (2, 3) and mask.ndim in (2, 3))


def read_mask(job: Any, pixels: np.ndarray, load: Callable[[str, str], np.ndarray]) -> np.ndarray:
    """The job's mask as it came (uint8 grey/RGB/RGBA, not converted), checked against the
    picture's size; other types are converted whole (:func:`to_mask`)."""
    height, width = pixels.shape[:2]
    raw = load(job.mask, "job.mask")
    try:
        if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8 or raw.ndim not in (2, 3) \
                or (raw.ndim == 3 and raw.shape[2] not in (1, 2, 3, 4)):
            return to_mask(raw, (width, height), "job.mask")
        if raw.shape[:2] != (height, width):
            raise ImageError(f"job.mask is {raw.shape[1]}×{raw.shape[0]} but the image is {width}×{height}; "
                             "give a mask of the same size")
    except ImageError as exc:
        raise JobError(str(exc)) from None
    return raw


def grown_mask(raw: np.ndarray, grow_px: int, invert: bool) -> tuple[np.ndarray, Region]:
    """The binarised, inverted and grown mask on its bounds plus the grow radius, with that box;
    raises when it selects nothing."""
    height, width = raw.shape[:2]
    bounds = mask_bounds(raw, invert)
    if bounds is None:
        raise JobError(SELECTS_NOTHING)
    box = bounds.grown(abs(grow_px) + 1, width, height)
    grown = prepare_mask(to_mask(np.ascontiguousarray(box.crop(raw)), what="job.mask"), grow_px, invert)
    if not grown.any():
        raise JobError(SELECTS_NOTHING)
    return grown, box


def region_frame(job: Any, pixels: np.ndarray, raw_mask: np.ndarray, aspect: float | None = None) -> InpaintFrame:
    """The frame of a (non-outpaint) inpaint job, touching only boxes around the mask.

    ``pixels`` is the job's image as it came (uint8 grey, RGB or RGBA), ``raw_mask`` its mask
    (see :func:`read_mask`); ``aspect`` (width / height of the generation size) widens an
    only-masked region to it."""
    options = job.inpaint
    height, width = pixels.shape[:2]
    whole = Region(0, 0, width, height)
    # 1. The grown mask, on its bounds plus the grow radius (nothing is selected beyond them).
    grown, grown_box = grown_mask(raw_mask, options.grow_px, options.invert)
    rows, columns = np.flatnonzero(grown.any(axis=1)), np.flatnonzero(grown.any(axis=0))
    bounds = Region(int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1).moved(
        grown_box.x0, grown_box.y0)
    # 2. The region that is generated: the grown bounds plus padding (in the canvas's
    #    coordinates when the picture is a patch of one), or the whole picture.
    if options.only_masked:
        region = _patch_region(job, bounds, width, height, aspect)
    else:
        region = whole
    # 3. The feathered mask, on the grown bounds plus the blur's reach: beyond them it is 0,
    #    and the replicated border there repeats the zeros that really are there.
    reach_box = bounds.grown(feather_reach(options.feather_px), width, height)
    alpha_all = feather(InpaintFrame.over(reach_box, grown, grown_box), options.feather_px)
    alpha_box = reach_box.intersect(region)
    alpha = np.ascontiguousarray(alpha_box.relative_to(reach_box).crop(alpha_all))
    # 4. The picture in RGB (RGBA composited on white) and the mask, over the region only.
    window = region if options.only_masked else whole
    canvas = to_rgb(np.ascontiguousarray(window.crop(pixels)), "job.image")
    mask = InpaintFrame.over(window, grown, grown_box)
    return InpaintFrame(canvas, mask, alpha, region, Expansion(), size=(width, height), window=window,
                        alpha_box=alpha_box, changed_box=_changed(alpha, alpha_box), grown=grown,
                        grown_box=grown_box, picture=pixels, regional=True)


def _patch_region(job: Any, bounds: Region, width: int, height: int, aspect: float | None) -> Region:
    """The only-masked region of ``bounds`` in a ``width``×``height`` picture that may be a patch
    of a bigger canvas (``job.image_offset``/``job.canvas_size``)."""
    options = job.inpaint
    offset, canvas = getattr(job, "image_offset", None), getattr(job, "canvas_size", None)
    if offset is None or canvas is None:
        return region_around(bounds, width, height, options.padding_px, aspect)
    on_canvas = region_around(bounds.moved(offset[0], offset[1]), canvas[0], canvas[1], options.padding_px, aspect)
    return on_canvas.moved(-offset[0], -offset[1]).intersect(Region(0, 0, width, height))


def _composited(frame: InpaintFrame, patch: np.ndarray) -> tuple[Region, np.ndarray]:
    """``patch`` (RGB, the region's size) composited onto the input through the feathered mask,
    computed on ``alpha_box`` only (nothing changes where the alpha is 0): that box and its
    pixels, RGBA for an RGBA input (its colours and alpha kept outside the mask), else RGB."""
    from ctrlgen.core.engine.masks import composite, composite_rgba

    box, pixels = frame.alpha_box, frame.picture
    generated = np.ascontiguousarray(box.relative_to(frame.region).crop(patch))
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        return box, composite_rgba(np.ascontiguousarray(box.crop(pixels)), generated, frame.alpha)
    rgb = np.ascontiguousarray(box.relative_to(frame.window).crop(frame.canvas))
    if generated.shape[2] == 4:  # a transparent patch (LayerDiffuse) on an opaque input: RGBA out
        opaque = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
        return box, composite_rgba(opaque, generated, frame.alpha)
    return box, composite(rgb, generated, frame.alpha)


def composite_region(frame: InpaintFrame, patch: np.ndarray) -> np.ndarray:
    """The region of the result: ``patch`` (RGB, the region's size) composited onto the input's
    region through the feathered mask; RGBA for an RGBA input, else RGB."""
    region, pixels = frame.region, frame.picture
    rgba = pixels.ndim == 3 and pixels.shape[2] == 4
    result = np.array(region.crop(pixels) if rgba else frame.region_canvas(), order="C")
    if patch.shape[2] == 4 and not rgba:  # a transparent patch on an opaque input: RGBA out
        result = np.dstack([result, np.full(result.shape[:2], 255, np.uint8)])
    box, done = _composited(frame, patch)
    box.relative_to(region).crop(result)[...] = done
    return result


def paste(frame: InpaintFrame, patch: np.ndarray) -> Any:
    """The result of a region frame: ``patch`` (RGB, the region's size) composited onto the
    input through the feathered mask, as a PIL image of the input's size and mode (RGBA in,
    RGBA out). Only the feathered mask's box is computed; the rest of the image is made from
    the input when it is first read (a :class:`~ctrlgen.core.engine.pasted.PastedImage`), so
    a job that is read through its ``changed_box`` never copies the canvas."""
    from ctrlgen.core.engine.pasted import PastedImage

    box, done = _composited(frame, patch)
    return PastedImage(frame.picture, box.box, done, _paste_whole)


def _paste_whole(pixels: np.ndarray, box_xy: tuple[int, int, int, int], done: np.ndarray) -> Any:
    """The whole result: ``done`` (the composited pixels of ``box_xy``) pasted onto the input."""
    from PIL import Image

    box = Region(*box_xy)
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        result = np.array(pixels, order="C")  # a copy PIL takes over without another one
        box.crop(result)[...] = done
        return Image.fromarray(result, "RGBA")
    if done.shape[2] == 4:  # a transparent patch (LayerDiffuse) on an opaque input: RGBA out
        image = Image.fromarray(pixels if pixels.ndim == 3 and pixels.shape[2] == 3 else to_rgb(pixels, "job.image"))
        image = image.convert("RGBA")
        image.paste(Image.fromarray(done, "RGBA"), (box.x0, box.y0))
        return image
    base = pixels if pixels.ndim == 3 and pixels.shape[2] == 3 else to_rgb(pixels, "job.image")
    image = Image.fromarray(base)
    image.paste(Image.fromarray(done), (box.x0, box.y0))
    return image


# -- the job's picture and its place on the host's canvas ---------------------------------------


def read_pixels(path: str | None, what: str, images: Callable[[str, str], np.ndarray]) -> np.ndarray:
    """An image reference's pixels as they came, checked but not converted when they are
    uint8 grey, grey+alpha, RGB or RGBA (no canvas-sized copy); other types come as RGB.
    ``images`` resolves references (the engine's default reads files)."""
    from ctrlgen.core.images import check_size

    if path is None:
        raise JobError(f"{what} is missing; give an image path")
    try:
        pixels = images(path, what)
        if isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and (
                pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (1, 2, 3, 4))):
            check_size(pixels.shape[0], pixels.shape[1], what)
            return pixels
        return to_rgb(pixels, what)
    except ImageError as exc:
        raise JobError(f"{what}: {exc}") from None


def check_placement(job: Any, pixels: np.ndarray) -> None:
    """With ``job.image_offset``/``job.canvas_size``: the image, a patch, lies inside the canvas."""
    if getattr(job, "image_offset", None) is None or getattr(job, "canvas_size", None) is None:
        return
    (x, y), (width, height) = job.image_offset, job.canvas_size
    patch_h, patch_w = pixels.shape[:2]
    if x + patch_w > width or y + patch_h > height:
        raise JobError(f"job.image_offset {[x, y]} + the image's {patch_w}×{patch_h} reaches to "
                       f"{[x + patch_w, y + patch_h]}, outside job.canvas_size {[width, height]}; the patch must "
                       "lie inside the canvas")


def job_offset(job: Any) -> tuple[int, int]:
    """Where the job's image sits on the host's canvas (``job.image_offset``, or the origin)."""
    offset = getattr(job, "image_offset", None)
    return (0, 0) if offset is None else (int(offset[0]), int(offset[1]))
