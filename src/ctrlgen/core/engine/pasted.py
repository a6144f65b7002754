"""An inpaint result that is the input plus a changed box, made whole only when it is read.

A small edit on a big canvas must cost what the edit costs, and the whole-canvas result of an
inpaint job is the input everywhere but in the feathered mask's box. So the engine returns it
as a :class:`PastedImage`: a ``PIL.Image.Image`` holding the input's pixels (by reference, not
copied) and the composited box. Its ``size`` and ``mode`` are known at once; ``crop`` of a box
is computed from the two without the rest of the canvas; anything else that reads its pixels
(``np.asarray``, ``tobytes``, ``save``, ``paste``, ``convert``, ``load``…) first makes the
whole image — the very pixels an eager paste would have made, bit for bit — once.

Because the input is held by reference until then, a caller that hands the engine an array
it changes later should read the result (or call ``load()``) before changing it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image


class PastedImage(Image.Image):
    """``done`` (the composited pixels of ``box``) over ``base`` (the input: uint8 grey, grey
    + alpha, RGB or RGBA; RGBA stays RGBA, anything else comes out RGB unless ``done`` is RGBA)."""

    def __init__(self, base: np.ndarray, box: tuple[int, int, int, int], done: np.ndarray,
                 make: Any) -> None:
        super().__init__()
        # RGBA when the input is, or when the pasted pixels carry an alpha (a transparent layer).
        rgba = (base.ndim == 3 and base.shape[2] == 4) or (done.ndim == 3 and done.shape[2] == 4)
        self._mode = "RGBA" if rgba else "RGB"
        self._size = (int(base.shape[1]), int(base.shape[0]))
        # make(base, box, done) -> the whole image (a PIL image), as an eager paste makes it.
        self._pending: tuple[np.ndarray, tuple[int, int, int, int], np.ndarray, Any] | None = (
            base, box, done, make)

    # -- made whole on first use of the pixels ---------------------------------------------

    @property
    def materialised(self) -> bool:
        """Whether the whole image has been made."""
        return self.__dict__.get("_pending") is None

    def _materialise(self) -> None:
        pending = self.__dict__.get("_pending")
        if pending is None:
            return
        base, box, done, make = pending
        whole = make(base, box, done)
        self._im, self._readonly = whole.im, whole.readonly
        self._pending = None

    @property
    def im(self) -> Any:  # every pixel access of PIL goes through here or through load()
        if self.__dict__.get("_pending") is not None and self._im is None:
            self._materialise()
        return Image.Image.im.fget(self)

    @im.setter
    def im(self, value: Any) -> None:
        self._pending = None
        self._im = value

    def load(self) -> Any:
        self._materialise()
        return super().load()

    # -- reads that need only part of it -----------------------------------------------------

    def crop(self, box: tuple[float, float, float, float] | None = None) -> Image.Image:
        """A box of the image; before the whole image is made, computed from the input's and
        the changed box's pixels over that box alone."""
        pending = self.__dict__.get("_pending")
        if pending is None or box is None or tuple(box) == (0, 0, *self.size) \
                or not all(isinstance(v, (int, np.integer)) for v in box):
            return super().crop(box)
        x0, y0, x1, y1 = (int(v) for v in box)
        width, height = self.size
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            return super().crop(box)
        base, (cx0, cy0, cx1, cy1), done, _ = pending
        part = base[y0:y1, x0:x1]
        if self._mode == "RGBA" or (part.ndim == 3 and part.shape[2] == 3):
            part = np.array(part, order="C")
        else:
            from ctrlgen.core.images import to_rgb

            part = np.array(to_rgb(np.ascontiguousarray(part), "job.image"), order="C")
        sx0, sy0, sx1, sy1 = max(x0, cx0), max(y0, cy0), min(x1, cx1), min(y1, cy1)
        if sx0 < sx1 and sy0 < sy1:
            part[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = done[sy0 - cy0 : sy1 - cy0, sx0 - cx0 : sx1 - cx0]
        return Image.fromarray(part, self._mode)

    def __eq__(self, other: object) -> bool:  # equal to a plain image with the same pixels
        if not isinstance(other, Image.Image):
            return False
        return (self.mode == other.mode and self.size == other.size and self.info == other.info
                and self.getpalette() == other.getpalette() and self.tobytes() == other.tobytes())

    __hash__ = None  # type: ignore[assignment]
