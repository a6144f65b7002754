"""Pixels in and out of GIMP 3: GEGL buffers, the selection, result layers, parasites, progress.

Pixels are read and written as ``"R'G'B'A u8"`` whatever the image's precision: GEGL converts
16-bit, 32-bit and float layers (and greyscale ones) on the way in and out, so those images
work as they are. Indexed images are refused (a palette cannot hold a generated picture).
"""

from __future__ import annotations

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp  # noqa: E402

from .client_import import Rect  # noqa: E402
from .logic import SETTINGS_PARASITE, Connection, ImageRefused  # noqa: E402

RGBA = "R'G'B'A u8"
MASK = "Y u8"


def check_image(image: Gimp.Image) -> None:
    if image.get_base_type() == Gimp.ImageBaseType.INDEXED:
        raise ImageRefused("this image is indexed (a palette of colours); convert it with Image › Mode › RGB "
                           "first, run ctrlgen, then Image › Mode › Indexed again if you need the palette.")


def drawable_rect(drawable: Gimp.Drawable) -> Rect:
    """The drawable's extent in image coordinates."""
    _, x, y = drawable.get_offsets()
    return Rect(x, y, drawable.get_width(), drawable.get_height())


def read_rgba(drawable: Gimp.Drawable, area: Rect) -> bytes:
    """The drawable's pixels under ``area`` (image coordinates) as RGBA bytes."""
    origin = drawable_rect(drawable)
    local = Gegl.Rectangle.new(area.x - origin.x, area.y - origin.y, area.width, area.height)
    return bytes(drawable.get_buffer().get(local, 1.0, RGBA, Gegl.AbyssPolicy.CLAMP))


def selection_bounds(image: Gimp.Image) -> Rect | None:
    """The selection's bounding box (image coordinates), None when nothing is selected."""
    _, non_empty, x1, y1, x2, y2 = Gimp.Selection.bounds(image)
    return Rect(x1, y1, x2 - x1, y2 - y1) if non_empty else None


def read_selection(image: Gimp.Image, area: Rect) -> bytes:
    """The selection (feathered as GIMP holds it) under ``area``: one byte per pixel, 255 = selected."""
    rect = Gegl.Rectangle.new(area.x, area.y, area.width, area.height)
    return bytes(image.get_selection().get_buffer().get(rect, 1.0, MASK, Gegl.AbyssPolicy.NONE))


def add_layer(image: Gimp.Image, above: Gimp.Drawable, name: str, area: Rect, rgba: bytes,
              size: tuple[int, int] | None = None) -> Gimp.Layer:
    """A new layer holding ``rgba`` (``size`` pixels, default the area's), placed directly above
    ``above`` in its group and scaled to cover ``area`` (image coordinates). Call it inside an
    undo group: it makes several undo steps."""
    width, height = size or (area.width, area.height)
    kind = Gimp.ImageType.GRAYA_IMAGE if image.get_base_type() == Gimp.ImageBaseType.GRAY else Gimp.ImageType.RGBA_IMAGE
    layer = Gimp.Layer.new(image, name, width, height, kind, 100.0, Gimp.LayerMode.NORMAL)
    parent = above.get_parent() if above is not None else None
    position = image.get_item_position(above) if above is not None else 0
    image.insert_layer(layer, parent, position)
    layer.set_offsets(area.x, area.y)
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, width, height), RGBA, rgba)
    buffer.flush()
    if (width, height) != (area.width, area.height):
        layer.scale(area.width, area.height, False)
        layer.set_offsets(area.x, area.y)
    layer.update(0, 0, layer.get_width(), layer.get_height())
    return layer


def attach_data(item: Gimp.Item, name: str, data: bytes) -> None:
    """Keep ``data`` on the layer (saved in the XCF) as the persistent parasite ``name``."""
    item.attach_parasite(Gimp.Parasite.new(name, Gimp.PARASITE_PERSISTENT, list(data)))


def read_data(item: Gimp.Item, name: str) -> bytes | None:
    parasite = item.get_parasite(name)
    return bytes(parasite.get_data()) if parasite is not None else None


def load_connection() -> Connection:
    parasite = Gimp.get_parasite(SETTINGS_PARASITE)
    return Connection.from_bytes(bytes(parasite.get_data()) if parasite is not None else None)


def save_connection(connection: Connection) -> None:
    """Kept as a persistent global parasite: GIMP saves it in its parasiterc between sessions."""
    Gimp.attach_parasite(Gimp.Parasite.new(SETTINGS_PARASITE, Gimp.PARASITE_PERSISTENT, list(connection.to_bytes())))


class Progress:
    """GIMP's progress bar (the status bar, or the console in batch mode) fed by job events."""

    def __init__(self, text: str):
        Gimp.progress_init(text)

    def update(self, fraction: float | None, text: str | None) -> None:
        if text:
            Gimp.progress_set_text(text)
        if fraction is not None:
            Gimp.progress_update(min(1.0, max(0.0, fraction)))

    def end(self) -> None:
        Gimp.progress_end()
