"""A small stand-in for Krita's document API (the methods ctrlgen_krita.kritadoc calls), backed
by numpy arrays, for unit tests of the plugin's logic where real Krita adds nothing.

Pixels are BGRA like Krita's RGBA/8-bit documents. The selection grows by a square and
feathers with a box blur: not Krita's exact algorithms (the real-Krita tests cover those).
"""

from __future__ import annotations

import itertools
import uuid

import numpy as np

_ids = itertools.count(1)


class FakeSelection:
    def __init__(self, mask: np.ndarray):
        self.mask = mask.astype(np.uint8).copy()
        self.calls: list[tuple] = []

    def _bounds(self) -> tuple[int, int, int, int]:
        ys, xs = np.nonzero(self.mask)
        if len(xs) == 0:
            return (0, 0, 0, 0)
        return (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))

    def x(self) -> int:
        return self._bounds()[0]

    def y(self) -> int:
        return self._bounds()[1]

    def width(self) -> int:
        return self._bounds()[2]

    def height(self) -> int:
        return self._bounds()[3]

    def duplicate(self) -> FakeSelection:
        return FakeSelection(self.mask)

    def grow(self, xr: int, yr: int) -> None:
        self.calls.append(("grow", xr, yr))
        padded = np.pad(self.mask, ((yr, yr), (xr, xr)))
        out = np.zeros_like(self.mask)
        h, w = self.mask.shape
        for dy in range(2 * yr + 1):
            for dx in range(2 * xr + 1):
                out = np.maximum(out, padded[dy:dy + h, dx:dx + w])
        self.mask = out

    def shrink(self, xr: int, yr: int, edge_lock: bool) -> None:
        self.calls.append(("shrink", xr, yr, edge_lock))
        inverted = FakeSelection(255 - self.mask)
        inverted.grow(xr, yr)
        self.mask = 255 - inverted.mask

    def feather(self, radius: int) -> None:
        self.calls.append(("feather", radius))
        size = 2 * radius + 1
        padded = np.pad(self.mask.astype(np.float32), radius)
        h, w = self.mask.shape
        acc = np.zeros((h, w), np.float32)
        for dy in range(size):
            for dx in range(size):
                acc += padded[dy:dy + h, dx:dx + w]
        self.mask = np.round(acc / size**2).astype(np.uint8)

    def pixelData(self, x: int, y: int, w: int, h: int) -> bytes:  # noqa: N802 - Krita's names
        return self.mask[y:y + h, x:x + w].tobytes()


class FakeRect:
    def __init__(self, x: int, y: int, w: int, h: int):
        self._box = (x, y, w, h)

    def x(self) -> int:
        return self._box[0]

    def y(self) -> int:
        return self._box[1]

    def width(self) -> int:
        return self._box[2]

    def height(self) -> int:
        return self._box[3]


class FakeNode:
    def __init__(self, name: str, kind: str, width: int, height: int):
        self._name, self._type = name, kind
        self.pixels = np.zeros((height, width, 4), np.uint8)
        self.children: list[FakeNode] = []
        self.parent: FakeNode | None = None
        self._uid = uuid.UUID(int=next(_ids))
        self.removed = False
        self.shown = True

    def name(self) -> str:
        return self._name

    def type(self) -> str:
        return self._type

    def uniqueId(self) -> uuid.UUID:  # noqa: N802
        return self._uid

    def childNodes(self) -> list[FakeNode]:  # noqa: N802
        return list(self.children)

    def addChildNode(self, child: FakeNode, above: FakeNode | None) -> bool:  # noqa: N802
        child.parent = self
        if above is None:
            self.children.append(child)  # Krita puts it on top without `above`
        else:
            self.children.insert(self.children.index(above) + 1, child)
        return True

    def parentNode(self) -> FakeNode | None:  # noqa: N802
        return self.parent

    def visible(self) -> bool:
        return self.shown

    def setVisible(self, shown: bool) -> None:  # noqa: N802
        self.shown = shown

    def bounds(self) -> FakeRect:
        ys, xs = np.nonzero(self.pixels[..., 3])
        if len(xs) == 0:
            return FakeRect(0, 0, 0, 0)
        return FakeRect(int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))

    def remove(self) -> bool:
        if self.parent is None:
            raise RuntimeError("node is not in a document")
        self.parent.children.remove(self)
        self.parent, self.removed = None, True
        return True

    def pixelData(self, x: int, y: int, w: int, h: int) -> bytes:  # noqa: N802
        return self.pixels[y:y + h, x:x + w].tobytes()

    projectionPixelData = pixelData  # noqa: N815

    def setPixelData(self, data: bytes, x: int, y: int, w: int, h: int) -> None:  # noqa: N802
        self.pixels[y:y + h, x:x + w] = np.frombuffer(bytes(data), np.uint8).reshape(h, w, 4)


class FakeDocument:
    def __init__(self, width: int, height: int, color_model: str = "RGBA", color_depth: str = "U8"):
        self._width, self._height = width, height
        self._model, self._depth = color_model, color_depth
        self.root = FakeNode("root", "grouplayer", width, height)
        self._selection: FakeSelection | None = None
        self.active: FakeNode | None = None
        self.refreshed = 0

    def width(self) -> int:
        return self._width

    def height(self) -> int:
        return self._height

    def colorModel(self) -> str:  # noqa: N802
        return self._model

    def colorDepth(self) -> str:  # noqa: N802
        return self._depth

    def rootNode(self) -> FakeNode:  # noqa: N802
        return self.root

    def createNode(self, name: str, kind: str) -> FakeNode:  # noqa: N802
        return FakeNode(name, kind, self._width, self._height)

    def add_layer(self, name: str, bgra: np.ndarray) -> FakeNode:
        node = self.createNode(name, "paintlayer")
        node.pixels[:] = bgra
        self.root.addChildNode(node, None)
        self.active = node
        return node

    def activeNode(self) -> FakeNode | None:  # noqa: N802
        return self.active

    def setActiveNode(self, node: FakeNode) -> None:  # noqa: N802
        self.active = node

    def add_group(self, name: str, parent: FakeNode | None = None) -> FakeNode:
        group = self.createNode(name, "grouplayer")
        (parent or self.root).addChildNode(group, None)
        return group

    def close(self) -> None:
        """Krita's wrapper of a closed document answers None for its root."""
        self.root = None

    def selection(self) -> FakeSelection | None:
        return self._selection

    def select(self, x: int, y: int, w: int, h: int) -> None:
        mask = np.zeros((self._height, self._width), np.uint8)
        mask[y:y + h, x:x + w] = 255
        self._selection = FakeSelection(mask)

    def projection(self) -> np.ndarray:
        """Layers composited bottom to top (normal blending, straight alpha)."""
        out = np.zeros((self._height, self._width, 4), np.float32)
        for node in self._painted(self.root):
            src = node.pixels.astype(np.float32)
            a = src[..., 3:4] / 255.0
            out[..., :3] = src[..., :3] * a + out[..., :3] * (1 - a)
            out[..., 3:4] = 255.0 * (a + out[..., 3:4] / 255.0 * (1 - a))
        return np.round(out).astype(np.uint8)

    def _painted(self, node: FakeNode) -> list[FakeNode]:
        """Shown paint layers under ``node``, bottom first (groups flattened)."""
        out = []
        for child in node.children:
            if child.shown:
                out.extend(self._painted(child) if child.type() == "grouplayer" else [child])
        return out

    def pixelData(self, x: int, y: int, w: int, h: int) -> bytes:  # noqa: N802
        return self.projection()[y:y + h, x:x + w].tobytes()

    def waitForDone(self) -> None:  # noqa: N802
        pass

    def refreshProjection(self) -> None:  # noqa: N802
        self.refreshed += 1
