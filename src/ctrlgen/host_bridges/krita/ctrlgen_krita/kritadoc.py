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
    layer_pixels_for_server,
    region_mask,
    region_prompt,
    selection_plan,
)

INVERT = bytes(range(255, -1, -1))  # bytes.translate table: 255 - value
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


def is_open(doc: Any) -> bool:
    """Whether ``doc`` is still an open document (Krita's wrapper outlives a closed document:
    its ``rootNode()`` is then None)."""
    if doc is None:
        return False
    try:
        return doc.rootNode() is not None
    except RuntimeError:  # the C++ object is gone
        return False


def is_shown(node: Any) -> bool:
    """Whether the layer is visible in the Layers docker: it and every group above it."""
    while node is not None:
        if not node.visible():
            return False
        node = node.parentNode()
    return True


def active_layer(doc: Any) -> Any:
    """The active node as a layer: a mask's own layer when a mask is active; None without one
    (or when the view reports a layer that is not this document's)."""
    node = doc.activeNode()
    while node is not None and node.type() not in LAYER_TYPES:
        node = node.parentNode()
    if node is not None and find_layer(doc, node_id(node)) is None:
        return None
    return node


def layer_rect(node: Any, canvas: Rect) -> Rect:
    """The part of the canvas the layer has pixels in (its bounds, clipped to the canvas)."""
    bounds = node.bounds()
    return Rect(int(bounds.x()), int(bounds.y()), int(bounds.width()), int(bounds.height())).intersected(canvas)


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
    invert = False
    region = canvas
    if selection is not None:
        bounds = Rect(selection.x(), selection.y(), selection.width(), selection.height())
        plan = selection_plan(settings.selection_mode, settings.strength, settings.context_px, bounds)
        invert = plan.invert  # replace background: the whole canvas but the selection
        if not invert:
            region = inpaint_region(bounds, canvas, plan.context_px)
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
        if invert:  # everything but the selection is repainted
            result.mask = result.mask.translate(INVERT)
    # Controls are cut to the region (they align with the pixels being made); a reference is the
    # whole layer, whatever the selection: a crop of it could be blank.
    for item, node in _marked_layers(doc, settings.controls, "Control", result.skipped):
        result.controls.append((item, layer_pixels(node, region)))
    for item, node in _marked_layers(doc, settings.references, "Reference", result.skipped):
        rect = layer_rect(node, canvas)
        if rect.empty:
            raise DocumentError(f"Reference layer {item.layer_name!r} is empty: paint on it, or remove it "
                                "from the list.")
        result.references.append((item, layer_pixels(node, rect), rect))
    if settings.regions_group:
        result.regions = capture_regions(doc, settings, region, result.skipped)
    if not settings.place_on_top:
        result.above = active_layer(doc)
    return result


def group_layers(doc: Any) -> list[Any]:
    """The document's group layers, top of the stack first."""
    return [node for node in iter_layers(doc) if node.type() == "grouplayer"] if doc is not None else []


def region_layers(doc: Any, group_id: str) -> list[Any]:
    """The regions group's child layers (top first), masks and the group's own masks left out."""
    group = find_layer(doc, group_id) if group_id else None
    if group is None or group.type() != "grouplayer":
        return []
    return [child for child in reversed(list(group.childNodes())) if child.type() in LAYER_TYPES]


def capture_regions(doc: Any, settings: Settings, region: Rect, skipped: list[str]) -> list[tuple[str, str, bytes]]:
    """Each shown child of the regions group as ``(name, prompt, mask)``: the mask is the
    layer's alpha × its opacity, cut to ``region``. Hidden children are named in ``skipped``;
    a child with nothing painted in ``region`` is left out."""
    group = find_layer(doc, settings.regions_group)
    if group is None or group.type() != "grouplayer":
        raise DocumentError("The regions group no longer exists: choose another group (or none) on the Generate "
                            "page.")
    regions = []
    for child in region_layers(doc, settings.regions_group):
        if not is_shown(child):
            skipped.append(child.name())
            continue
        opacity = int(child.opacity()) if hasattr(child, "opacity") else 255
        mask = region_mask(layer_pixels(child, region), opacity)
        if not mask.strip(b"\x00"):
            continue
        regions.append((child.name(), region_prompt(settings, node_id(child), child.name()), mask))
    return regions


def capture_for_fix(doc: Any, settings: Settings) -> Capture:
    """The picture a fix works on: the selection's area (grown, feathered, with context around
    it, so a face cut by the selection is still found) or the whole canvas; the visible pixels."""
    if doc is None:
        raise DocumentError("Open or create a document first.")
    check_color_space(doc.colorModel(), doc.colorDepth())
    canvas = canvas_rect(doc)
    selection = prepared_selection(doc, settings)
    region = canvas
    if selection is not None:
        region = inpaint_region(Rect(selection.x(), selection.y(), selection.width(), selection.height()),
                                canvas, settings.context_px)
    check_size(region)
    doc.waitForDone()
    result = Capture(task="fix", region=region, image=bytes(doc.pixelData(*region.tuple())))
    if selection is not None:
        result.mask = bytes(selection.pixelData(*region.tuple()))
    if not settings.place_on_top:
        result.above = active_layer(doc)
    return result


def pixels_for_server(capture: Capture) -> tuple[bytes, int, int, int]:
    """The captured picture as an upload: ``(pixels, width, height, channels)``."""
    data, channels = layer_pixels_for_server(capture.image or b"")
    return data, capture.region.width, capture.region.height, channels


def _marked_layers(doc: Any, marked: list, kind: str, skipped: list[str]) -> list[tuple[Any, Any]]:
    """``(item, node)`` for each enabled control or reference layer shown in the Layers docker;
    hidden ones are left out and named in ``skipped``; gone ones are refused."""
    found = []
    for item in marked:
        if not item.enabled:
            continue
        node = find_layer(doc, item.layer_id)
        if node is None:
            raise DocumentError(f"{kind} layer {item.layer_name!r} no longer exists: remove it from the list.")
        if not is_shown(node):
            skipped.append(item.layer_name)
            continue
        found.append((item, node))
    return found


_changing = [0]  # > 0 while this module changes a document (see busy())


def busy() -> bool:
    """Whether a document change made here is under way. Krita can run the event loop inside one;
    the dockers' timers check this and leave Krita alone until it returns."""
    return _changing[0] > 0


def insert_layer(doc: Any, name: str, bgra: bytes, region: Rect, above: Any = None) -> Any:
    _changing[0] += 1
    try:
        return _insert_layer(doc, name, bgra, region, above)
    finally:
        _changing[0] -= 1


def _insert_layer(doc: Any, name: str, bgra: bytes, region: Rect, above: Any = None) -> Any:
    """A new paint layer holding ``bgra`` at ``region``'s offset: right above ``above``, inside
    its group, or on top of the stack when ``above`` is None or no longer in the document.
    The layer that was active stays active (so the next job reads the same layer).

    Adding the node is one step on Krita's undo stack (Ctrl+Z removes the whole result);
    nothing already in the document is touched."""
    active = doc.activeNode()
    layer = doc.createNode(name, "paintlayer")
    # Only a layer of this document, still in it (the user may have deleted it meanwhile; and a view
    # just switched to this document can report the previous document's layer as its current one).
    if above is not None and find_layer(doc, node_id(above)) is None:
        above = None
    parent = above.parentNode() if above is not None else None
    if parent is not None:
        parent.addChildNode(layer, above)
    else:
        doc.rootNode().addChildNode(layer, None)
    layer.setPixelData(bgra, *region.tuple())
    # A view makes the new layer active: give the user's back. Only then (a document shown in no
    # view of the current window has nothing to restore, and Krita 5.1 can crash on the call).
    now = doc.activeNode()
    if active is not None and now is not None and node_id(now) != node_id(active):
        doc.setActiveNode(active)
    doc.refreshProjection()
    return layer


def flatten_on_white(bgra: bytes, width: int, height: int) -> bytes:
    """BGRA pixels composited on white, opaque: what the server (and so the model) sees of a
    transparent layer."""
    from .qt import QtGui

    data = bytes(bgra)  # QImage reads this buffer; keep it alive until the copy below
    # Format_ARGB32 is B, G, R, A in memory on little-endian machines: Krita's byte order.
    source = QtGui.QImage(data, width, height, width * 4, QtGui.QImage.Format.Format_ARGB32)
    out = QtGui.QImage(width, height, QtGui.QImage.Format.Format_ARGB32)
    out.fill(QtGui.QColor(255, 255, 255, 255))
    painter = QtGui.QPainter(out)
    painter.drawImage(0, 0, source)
    painter.end()
    return bytes(out.constBits().asstring(width * height * 4))


def remove_layer(doc: Any, layer: Any) -> None:
    """Discard a result layer (one undoable step)."""
    _changing[0] += 1
    try:
        layer.remove()
        doc.refreshProjection()
    finally:
        _changing[0] -= 1


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
