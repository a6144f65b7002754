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
