"""Files the server keeps on disk: uploads and results by sha256, and the outputs folder.

- :class:`FileStore` writes a file under its digest atomically (a temporary file in the same
  folder, then ``os.replace``), so a file under its final name is always whole: a crash leaves
  at most a ``.tmp`` file, which the next start removes.
- :class:`OutputWriter` saves every finished job's images as PNGs carrying their parameters
  (A1111's ``parameters`` text and the ``ctrlgen-job`` JSON) in ``OUTPUTS/YYYY-MM-DD/``, on a
  thread of its own so the next job does not wait for PNG encoding (unless several are waiting
  already: memory stays bounded), and keeps the folder under
  its size limit by deleting the oldest files first.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("ctrlgen.server")

PENDING_OUTPUTS = 4  # finished jobs whose PNGs may wait to be written


def private_folder(path: Path) -> Path:
    """Create ``path`` (and parents) and make it private to the user (0700), whatever the umask
    and whether it existed."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.name == "posix":
        path.chmod(0o700)
    return path


class FileStore:
    """Files named by their sha256 in one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = private_folder(folder)
        for leftover in self.folder.glob(".*.tmp"):  # from a write a crash cut short
            leftover.unlink(missing_ok=True)

    def path(self, digest: str) -> Path:
        return self.folder / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def write(self, digest: str, data: Any) -> Path:
        """Write ``data`` (bytes-like) as ``digest``; a file already there is left as it is."""
        target = self.path(digest)
        if target.is_file():
            return target
        temporary = self.folder / f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return target

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self) -> list[str]:
        return [path.name for path in self.folder.iterdir() if not path.name.startswith(".")]


class OutputWriter:
    """Saves finished jobs' images as PNGs with their parameters, bounded by ``max_bytes``."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = private_folder(folder)
        self.max_bytes = max_bytes
        # Bounded: a job waits for the PNG writer rather than results piling up in memory when
        # jobs finish faster than their PNGs are written.
        self._queue: queue.Queue = queue.Queue(maxsize=PENDING_OUTPUTS)
        self._thread = threading.Thread(target=self._work, name="ctrlgen-outputs", daemon=True)
        self._thread.start()

    def save(self, result: Any, job_id: str) -> None:
        """Queue a :class:`~ctrlgen.core.engine.engine.JobResult` for saving."""
        self._queue.put((result, job_id))

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            result, job_id = item
            try:
                day = private_folder(self.folder / time.strftime("%Y-%m-%d"))
                result.save(day)  # ctrlgen-<job id[:8]>-<index>.png
                self._trim()
            except Exception:  # a full disk must not take the server down; the result is still kept
                log.exception("could not save the outputs of job %s in %s", job_id, self.folder)

    def _trim(self) -> None:
        files = [(path.stat().st_mtime, path.stat().st_size, path) for path in self.folder.rglob("*.png")]
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
        for day in self.folder.iterdir():
            if day.is_dir() and not any(day.iterdir()):
                day.rmdir()
