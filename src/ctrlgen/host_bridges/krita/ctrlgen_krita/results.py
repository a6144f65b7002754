"""The history of results in Krita: add, preview on the canvas, apply as a layer, discard;
kept beside the saved document (:mod:`.history`). GUI thread only."""

from __future__ import annotations

import time
from typing import Any

from . import kritadoc
from .history import PARAMS, HistoryItem, history_folder, load_history, save_history
from .logic import LAYER_PREFIX, result_layer_name

PREVIEW_NAME = f"{LAYER_PREFIX} preview"


def _path(doc: Any) -> str:
    try:
        return str(doc.fileName() or "")
    except (AttributeError, RuntimeError):
        return ""


def _same(a: Any, b: Any) -> bool:
    """Krita hands out a new Python wrapper for a document on each call; its ``==`` compares
    the documents themselves."""
    try:
        return a is b or (a is not None and b is not None and bool(a == b))
    except RuntimeError:  # a closed document
        return False


class ResultHistory:
    """Every result of this session (and of saved documents' earlier sessions), newest last."""

    def __init__(self) -> None:
        self.items: list[HistoryItem] = []
        self.previewing: HistoryItem | None = None
        self._loaded: set[str] = set()

    def of(self, doc: Any) -> list[HistoryItem]:
        """The document's results (loading the saved ones the first time it is asked for)."""
        self.load(doc)
        return [item for item in self.items if _same(item.doc, doc)]

    def load(self, doc: Any) -> None:
        path = _path(doc)
        if not path or path in self._loaded:
            return
        self._loaded.add(path)
        folder = history_folder(path)
        for item in load_history(folder):
            item.doc = doc
            self.items.append(item)
        self.items.sort(key=lambda item: (item.created, item.index))

    def save(self, doc: Any) -> bool:
        """Write the document's history beside it (once it has a file); True if written."""
        path = _path(doc)
        if not path:
            return False
        self._loaded.add(path)
        save_history(history_folder(path), [item for item in self.items if _same(item.doc, doc)])
        return True

    def add(self, doc: Any, key: int, index: int, region: Any, settings: Any, task: str, seed: Any, bgra: bytes,
            above: Any, layer: Any = None) -> HistoryItem:
        params = {name: getattr(settings, name, None) for name in PARAMS}
        params.update(task=task, seed=seed)
        item = HistoryItem(key, index, region, params, bgra, applied=layer is not None, created=time.time(),
                           doc=doc, layer=layer, above=above)
        self.load(doc)
        self.items.append(item)
        self.save(doc)
        return item

    def preview(self, item: HistoryItem) -> None:
        """Show the result on the canvas as a temporary layer (one at a time), nothing committed."""
        self.end_preview()
        if item.applied or not kritadoc.is_open(item.doc):
            return
        item.layer = kritadoc.insert_layer(item.doc, PREVIEW_NAME, item.bgra, item.region, above=item.above)
        self.previewing = item

    def end_preview(self) -> None:
        item, self.previewing = self.previewing, None
        if item is not None and item.layer is not None and not item.applied:
            if kritadoc.is_open(item.doc):
                try:
                    kritadoc.remove_layer(item.doc, item.layer)
                except RuntimeError:
                    pass
            item.layer = None

    def apply(self, item: HistoryItem) -> Any:
        """Add the result as a layer (the previewed one is kept and named); returns the layer."""
        if item.applied and item.layer is not None:
            return item.layer
        name = result_layer_name(item.key, item.params.get("task", ""), item.params.get("prompt") or "", item.seed)
        if self.previewing is item and item.layer is not None:
            item.layer.setName(name)
            self.previewing = None
        else:
            self.end_preview()
            item.layer = kritadoc.insert_layer(item.doc, name, item.bgra, item.region, above=item.above)
        item.applied = True
        self.save(item.doc)
        return item.layer

    def discard(self, item: HistoryItem) -> None:
        """Drop the result from the history, and its layer (previewed or applied) from the document."""
        if self.previewing is item:
            self.end_preview()
        elif item.applied and item.layer is not None and kritadoc.is_open(item.doc):
            try:
                kritadoc.remove_layer(item.doc, item.layer)
            except RuntimeError:  # deleted by the user meanwhile
                pass
        self.items.remove(item)
        self.save(item.doc)
