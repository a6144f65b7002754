"""Labelled contact sheets (demo output, ``ctrlgen preprocess --sheet``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def contact_sheet(items: Sequence[tuple[str, np.ndarray]], cell: int = 256, columns: int | None = None,
                  title: str = ""):
    """A grid of ``(label, uint8 image)`` cells, each fitted into ``cell``×``cell`` with its label below."""
    from PIL import Image, ImageDraw, ImageFont

    if not items:
        raise ValueError("contact_sheet needs at least one image")
    columns = columns or min(len(items), 4)
    rows = -(-len(items) // columns)
    label_h, title_h, pad = 22, (28 if title else 0), 6
    sheet = Image.new("RGB", (columns * (cell + pad) + pad, title_h + rows * (cell + label_h + pad) + pad),
                      (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    if title:
        draw.text((pad, 6), title, fill=(235, 235, 235), font=font)
    for index, (label, array) in enumerate(items):
        image = Image.fromarray(np.asarray(array))
        image.thumbnail((cell, cell), Image.Resampling.LANCZOS)
        col, row = index % columns, index // columns
        x = pad + col * (cell + pad)
        y = title_h + pad + row * (cell + label_h + pad)
        sheet.paste(image, (x + (cell - image.width) // 2, y + (cell - image.height) // 2))
        draw.text((x + 2, y + cell + 4), label[:40], fill=(235, 235, 235), font=font)
    return sheet


# When a preprocessor's default needs weights that are absent, the sheet tries these
# offline settings instead (and says so in the label).
OFFLINE_ALTERNATIVES: dict[str, dict[str, object]] = {
    "face_keypoints": {"detector": "mediapipe"},
}


def preprocessor_sheet(image: np.ndarray, cell: int = 256, names: Sequence[str] | None = None,
                       mask: np.ndarray | None = None):
    """Run every preprocessor (or ``names``) on ``image`` with its defaults.

    Returns ``(sheet, ran, skipped)``: the labelled sheet (input first), the names that ran,
    and ``{name: reason}`` for those that could not run here (missing weights or packages,
    needing input the defaults do not give). A mask (centred ellipse by default) is passed
    to every preprocessor, so mask-driven ones (inpaint hints) show what they do.
    """
    from ctrlgen.core.engine.preprocess import preprocess
    from ctrlgen.core.errors import CtrlgenError
    from ctrlgen.core.images import to_rgb
    from ctrlgen.core.plugins.manager import get_registry

    image = to_rgb(image)
    height, width = image.shape[:2]
    if mask is None:
        yy, xx = np.mgrid[0:height, 0:width]
        mask = ((((xx - width / 2) / (width / 4)) ** 2 + ((yy - height / 2) / (height / 4)) ** 2) <= 1)
        mask = mask.astype(np.uint8) * 255
    registry = get_registry("preprocessors")
    items: list[tuple[str, np.ndarray]] = [("input", image)]
    ran: list[str] = []
    skipped: dict[str, str] = {}
    from ctrlgen.core.errors import ModelNotFoundError

    for name in names or registry.names():
        label = name
        try:
            try:
                result = preprocess(name, image, mask=mask)
            except ModelNotFoundError:
                if name not in OFFLINE_ALTERNATIVES:
                    raise
                params = OFFLINE_ALTERNATIVES[name]
                result = preprocess(name, image, mask=mask, **params)
                label += " (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"
        except CtrlgenError as exc:
            skipped[name] = str(exc).splitlines()[0]
            continue
        items.append((label, result.image))
        ran.append(name)
    return contact_sheet(items, cell=cell, columns=min(6, len(items))), ran, skipped
