"""What a batch is made of: items, their atomic outputs, the manifest, the work on one item.

The batch runner (:mod:`ctrlgen.core.engine.runner`) and its Ray side
(:mod:`ctrlgen.core.engine.ray_runner`) both build on this module; see the runner for the
order of writes that makes a batch safe to kill at any moment.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ctrlgen.core.errors import CancelledError, CtrlgenError, JobError

PARTIAL_SUFFIX = ".ctrlgen-partial"


# -- atomic outputs ---------------------------------------------------------------------------------


def partial_path(output: Path) -> Path:
    """The hidden name an output is written under before it is renamed into place."""
    return output.with_name(f".{output.name}{PARTIAL_SUFFIX}")


def is_partial(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(PARTIAL_SUFFIX)


def write_atomic(output: Path, data: bytes) -> None:
    """``data`` to ``output``: written under the partial name, then renamed into place."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(output)
    try:
        with open(partial, "wb") as handle:
            handle.write(data)
        os.replace(partial, output)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise CtrlgenError(f"cannot write {output}: {exc.strerror or exc}; check the free space and permissions "
                           f"of {output.parent} (running the command again resumes)") from None


# -- the manifest -----------------------------------------------------------------------------------


class Manifest:
    """The JSONL record of a batch: one complete line per item, appended after its outputs are
    in place, keyed by ``key`` (``input`` for ``ctrlgen fix``, ``name`` for ``ctrlgen batch``).
    Opening it cuts off an incomplete last line (the writer was killed mid-line)."""

    def __init__(self, path: Path, key: str = "input", kind: str = "fix"):
        self.path = path
        self.key = key
        self.records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            data = path.read_bytes()
            keep = data.rfind(b"\n") + 1
            if keep != len(data):
                with open(path, "r+b") as handle:
                    handle.truncate(keep)
            for number, line in enumerate(data[:keep].splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = None
                if not isinstance(record, dict) or key not in record:
                    raise JobError(f"manifest {path} line {number} is not a ctrlgen {kind} record; give another "
                                   "--manifest, or move the file away to start the batch afresh")
                self.records[record[key]] = record
        self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def done(self, item: Any) -> bool:
        """Whether ``item`` needs no more work: its line is there (for the same job, when the item
        has a ``fingerprint``) and, unless it failed, its outputs too."""
        record = self.records.get(item.key)
        if record is None:
            return False
        fingerprint = getattr(item, "fingerprint", None)
        if fingerprint is not None and record.get("fingerprint") != fingerprint:
            return False
        return record.get("outcome") == "error" or all(output.exists() for output in item.outputs)

    def append(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._handle.write(json.dumps(record, sort_keys=True) + "\n")
            self._handle.flush()
            self.records[record[self.key]] = record

    def close(self) -> None:
        self._handle.close()


# -- what a batch does with one item ----------------------------------------------------------------


class Work(Protocol):
    """One kind of batch. Instances are pickled to Ray actors: keep them plain data."""

    def record(self, item: Any) -> dict[str, Any]:
        """The manifest fields every line of ``item`` has (its key among them)."""

    def failed(self, item: Any, error: str) -> dict[str, Any]:
        """The fields of a line for an item that could not be done (``outcome: "error"``)."""

    def load(self, item: Any) -> Any:
        """Read the item's inputs (on a reader thread); a :class:`CtrlgenError` marks the item
        failed, skipped and not tried again."""

    def run(self, engine: Any, item: Any, loaded: Any, cancel: Any) -> tuple[dict[str, Any], Any]:
        """Run the item; returns its manifest fields (``outcome`` among them) and the result for
        :meth:`encode`. A :class:`JobError` marks the item failed."""

    def encode(self, item: Any, loaded: Any, result: Any, record: dict[str, Any]) -> list[bytes]:
        """The bytes of each of ``item.outputs`` (none for a result without outputs)."""


def execute(work: Work, engine: Any, item: Any, load: Callable[[], Any], cancel: Any = None
            ) -> tuple[dict[str, Any], Any, Any]:
    """One item on ``engine``: ``(record, loaded, result)``; a failed item's record has
    ``outcome: "error"`` and no result. Errors that are not the item's (a missing model, a
    cancel, a dead device) propagate."""
    record = work.record(item)
    started = time.perf_counter()
    try:
        loaded = load()
    except CtrlgenError as exc:
        return {**record, **work.failed(item, str(exc))}, None, None
    try:
        fields, result = work.run(engine, item, loaded, cancel)
    except CancelledError:
        raise
    except JobError as exc:  # something about this item (its size, its pixels, its fields)
        return {**record, **work.failed(item, str(exc))}, loaded, None
    return {**record, **fields, "seconds": round(time.perf_counter() - started, 3)}, loaded, result


def write_record(work: Work, item: Any, manifest: Manifest, record: dict[str, Any], blobs: list[bytes]) -> None:
    """Outputs into place (atomically), then the manifest line."""
    for output, data in zip(item.outputs, blobs, strict=False):
        write_atomic(output, data)
    manifest.append(record)


__all__ = ["PARTIAL_SUFFIX", "Manifest", "Work", "execute", "is_partial", "partial_path", "write_atomic",
           "write_record"]
