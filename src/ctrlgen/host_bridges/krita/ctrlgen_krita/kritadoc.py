"""Reading and writing Krita documents. Call these on the GUI thread only.

They take Krita's ``Document``/``Node``/``Selection`` objects (or look-alikes with the same
methods, in the unit tests) and return plain bytes and :class:`~.logic.Rect` values that a
worker thread can send.
"""

from __future__ import annotations

from typing import Any

from .logic import (
    Capture,
    DocumentError,
    Rect,
    Settings,
    check_color_space,
    check_size,
    choose_task,
    inpaint_region,
)

LAYER_TYPES = ("paintlayer", "grouplayer", "filelayer", "vectorlayer", "filllayer", "clonelayer")


def canvas_rect(doc: Any) -> Rect:
    return Rect(0, 0, int(doc.width()), int(doc.height()))


def node_id(node: Any) -> str:
    uid = node.uniqueId()
    return str(uid.toString()) if hasattr(uid, "toString") else str(uid)


def iter_layers(doc: Any) -> list[Any]:
    """Every layer of the document, top of the stack first (masks left out)."""
    found: list[Any] = []

    def walk(node: Any) -> None:
        for child in reversed(list(node.childNodes())):
            if child.type() in LAYER_TYPES:
                found.append(child)
                walk(child)

    walk(doc.rootNode())
    return found


def find_layer(doc: Any, layer_id: str) -> Any:
    for node in iter_layers(doc):
        if node_id(node) == layer_id:
            return node
    return None


def prepared_selection(doc: Any, settings: Settings) -> Any:
    """A copy of the document's selection, grown and feathered as set; None without one.

    Krita does the growing and feathering natively: fast on big canvases, and the user's own
    selection stays as it was."""
    selection = doc.selection()
    if selection is None or selection.width() <= 0 or selection.height() <= 0:
        return None
    work = selection.duplicate()
    grow = int(settings.grow_px)
    if grow > 0:
        work.grow(grow, grow)
    elif grow < 0:
        work.shrink(-grow, -grow, True)
    if settings.feather_px > 0:
        work.feather(int(settings.feather_px))
    if work.width() <= 0 or work.height() <= 0:
        raise DocumentError(f"Shrinking the selection by {-grow} px leaves nothing: lower the shrink.")
    return work


def layer_pixels(node: Any, region: Rect) -> bytes:
    """The layer's rendered pixels (with its masks and, for groups, its children) as BGRA."""
    return bytes(node.projectionPixelData(*region.tuple()))


def capture(doc: Any, settings: Settings) -> Capture:
    """Everything a job needs from the document, read now, on the GUI thread."""
    if doc is None:
        raise DocumentError("Open or create a document first.")
    check_color_space(doc.colorModel(), doc.colorDepth())
    canvas = canvas_rect(doc)
    selection = prepared_selection(doc, settings)
    task = choose_task(selection is not None, settings.strength)
    if selection is not None:
        region = inpaint_region(Rect(selection.x(), selection.y(), selection.width(), selection.height()),
                                canvas, settings.context_px)
    else:
        region = canvas
    check_size(region)
    doc.waitForDone()  # the projection must include the latest strokes
    result = Capture(task=task, region=region)
    if task != "txt2img":
        if settings.source == "active_layer":
            node = doc.activeNode()
            if node is None:
                raise DocumentError("No active layer: pick one in the Layers docker or set Input to 'visible'.")
            bgra = layer_pixels(node, region)
        else:
            bgra = bytes(doc.pixelData(*region.tuple()))
        result.image = bgra
    if selection is not None:
        result.mask = bytes(selection.pixelData(*region.tuple()))
    result.controls = _marked_layer_pixels(doc, settings.controls, "Control", region)
    result.references = _marked_layer_pixels(doc, settings.references, "Reference", region)
    return result


def _marked_layer_pixels(doc: Any, marked: list, kind: str, region: Rect) -> list[tuple[Any, bytes]]:
    """``(item, BGRA in region)`` for each enabled control or reference layer; gone layers are refused."""
    pixels = []
    for item in marked:
        if not item.enabled:
            continue
        node = find_layer(doc, item.layer_id)
        if node is None:
            raise DocumentError(f"{kind} layer {item.layer_name!r} no longer exists: remove it from the list.")
        pixels.append((item, layer_pixels(node, region)))
    return pixels


def insert_layer(doc: Any, name: str, bgra: bytes, region: Rect) -> Any:
    """A new paint layer on top of the stack holding ``bgra`` at ``region``'s offset.

    Adding the node is one step on Krita's undo stack (Ctrl+Z removes the whole result);
    nothing already in the document is touched."""
    layer = doc.createNode(name, "paintlayer")
    doc.rootNode().addChildNode(layer, None)
    layer.setPixelData(bgra, *region.tuple())
    doc.refreshProjection()
    return layer


def remove_layer(doc: Any, layer: Any) -> None:
    """Discard a result layer (one undoable step)."""
    layer.remove()
    doc.refreshProjection()


def scale_image(image: Any, width: int, height: int) -> Any:
    """A server image (``RawImage``: grey, RGB or RGBA) scaled smoothly to ``width``×``height``
    with Qt, as RGBA. QImage work is safe off the GUI thread (no widgets, no Krita API)."""
    from .client_import import RawImage
    from .qt import Qt, QtGui

    formats = {1: QtGui.QImage.Format.Format_Grayscale8, 3: QtGui.QImage.Format.Format_RGB888,
               4: QtGui.QImage.Format.Format_RGBA8888}
    if image.channels not in formats:
        raise ValueError(f"images have 1, 3 or 4 channels, not {image.channels}")
    data = bytes(image.data)  # QImage reads this buffer; keep it alive until the copy below
    source = QtGui.QImage(data, image.width, image.height, image.width * image.channels, formats[image.channels])
    scaled = source.scaled(width, height, Qt.AspectRatioMode.IgnoreAspectRatio,
                           Qt.TransformationMode.SmoothTransformation)
    scaled = scaled.convertToFormat(QtGui.QImage.Format.Format_RGBA8888)  # 4 bytes a pixel: rows unpadded
    pixels = scaled.constBits().asstring(width * height * 4)
    return RawImage(bytes(pixels), width, height, 4)
