"""The history of results, without Qt or Krita: what each result was made with, and its
storage beside the document.

A document saved as ``painting.kra`` keeps its history in ``painting.kra.ctrlgen/``:
``history.json`` (one entry per result: job, seed, parameters, where it goes) and one
``<job>-<index>.bgra.z`` per result (its BGRA pixels, zlib-compressed). Krita's ``.kra`` is
left alone, so the history never risks the painting; copy or delete the folder with it.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .logic import Rect

HISTORY_VERSION = 1
PARAMS = ("task", "model", "prompt", "negative_prompt", "seed", "steps", "cfg_scale", "sampler", "strength")


@dataclass
class HistoryItem:
    """One result: image ``index`` of job ``key`` (a batch's images share the key)."""

    key: int
    index: int
    region: Rect
    params: dict[str, Any]
    bgra: bytes = b""
    applied: bool = False  # added to the document as a layer
    created: float = 0.0
    doc: Any = field(default=None, repr=False, compare=False)  # the Krita document (not stored)
    layer: Any = field(default=None, repr=False, compare=False)  # its layer (applied or previewed)
    above: Any = field(default=None, repr=False, compare=False)  # the layer it goes above

    @property
    def seed(self) -> Any:
        return self.params.get("seed")

    @property
    def ident(self) -> str:
        """Unique across sessions (job numbers start again at 1 each time Krita starts)."""
        return f"{int(self.created * 1000)}-{self.key}-{self.index}"

    def label(self) -> str:
        return f"#{self.key}" + (f".{self.index + 1}" if self.index else "") + f" · seed {self.seed}"

    def describe(self) -> str:
        """The parameters, one per line, for the thumbnail's tooltip."""
        p = self.params
        lines = [f"#{self.key} {p.get('task', '')}, image {self.index + 1}" + (" (applied)" if self.applied else ""),
                 f"seed {p.get('seed')}", f"model {p.get('model', '')}"]
        if p.get("prompt"):
            lines.append(f"prompt: {p['prompt']}")
        if p.get("negative_prompt"):
            lines.append(f"negative: {p['negative_prompt']}")
        lines.append(f"{p.get('steps')} steps, CFG {p.get('cfg_scale')}, {p.get('sampler', '')}, "
                     f"strength {p.get('strength')}")
        r = self.region
        lines.append(f"area {r.width}×{r.height} at {r.x},{r.y}")
        return "\n".join(lines)


def history_folder(document_path: str) -> Path | None:
    """Where a saved document's history lives; None for a document never saved."""
    return Path(document_path + ".ctrlgen") if document_path else None


def save_history(folder: Path, items: list[HistoryItem]) -> None:
    """Write the entries and any pixels not written yet; drop files of discarded results.
    The index is replaced atomically, so a crash leaves the old or the new one."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for item in items:
        pixels = folder / f"{item.ident}.bgra.z"
        if not pixels.exists() and item.bgra:
            pixels.write_bytes(zlib.compress(item.bgra, 3))
        entries.append({"key": item.key, "index": item.index, "region": list(item.region.tuple()),
                        "params": {k: item.params.get(k) for k in PARAMS}, "applied": item.applied,
                        "created": item.created, "pixels": pixels.name})
    keep = {entry["pixels"] for entry in entries}
    for stale in folder.glob("*.bgra.z"):
        if stale.name not in keep:
            stale.unlink()
    handle, temp = tempfile.mkstemp(dir=folder, prefix=".history-", suffix=".json")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump({"version": HISTORY_VERSION, "items": entries}, out, indent=1)
    os.replace(temp, folder / "history.json")


def load_history(folder: Path) -> list[HistoryItem]:
    """The saved entries (pixels included); a missing folder is an empty history, a damaged
    index raises ValueError naming the file."""
    index = folder / "history.json"
    if not index.exists():
        return []
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        items = []
        for entry in data["items"]:
            pixels = folder / entry["pixels"]
            bgra = zlib.decompress(pixels.read_bytes()) if pixels.exists() else b""
            items.append(HistoryItem(int(entry["key"]), int(entry["index"]), Rect(*entry["region"]),
                                     dict(entry["params"]), bgra, bool(entry.get("applied")),
                                     float(entry.get("created", 0.0))))
        return items
    except (KeyError, TypeError, ValueError, zlib.error) as exc:
        raise ValueError(f"{index} is damaged ({exc}); move the folder away to start a new history") from exc
