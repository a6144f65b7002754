"""The server's uploaded images: content-addressed, in memory within a byte budget, spilled to
disk beyond it.

An upload is kept as pixels in memory (raw bodies are used in place, without a copy), within
``max_bytes`` (``--max-memory``). It is written to a file named by its sha256 (by a thread of
its own, as the bytes it came in) only when needed:

- when a job names it: ``POST /v1/jobs`` waits until the files of the images a job names are
  written before it answers (:meth:`UploadStore.persist`), so an accepted job's inputs survive
  a crash;
- when it leaves memory: a new upload that would go over the budget pushes the least recently
  used uploads (uploaded, asked about with HEAD or named by a job) that no queued or running job
  references out of memory, oldest first; one not yet on disk is spilled there first.

So an upload used only by preprocess calls, or replaced before it is evicted, never touches the
disk. An upload not in memory is read back from its file when asked for. Files that no queued or
running job references are deleted once unused for ``ttl_s``. Uploads only in memory are not
kept across a restart (a client sends them again when the server says it lacks them).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ctrlgen.core.errors import JobError
from ctrlgen.host_bridges.server.files import FileStore
from ctrlgen.host_bridges.server.journal import Journal, UploadRow

REF_PREFIX = "sha256:"
HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def is_ref(value: object) -> bool:
    """Whether ``value`` looks like an upload reference (``sha256:<64 lowercase hex>``)."""
    return isinstance(value, str) and value.startswith(REF_PREFIX) and bool(HEX_DIGEST.match(value[7:]))


def _done() -> Future:
    future: Future = Future()
    future.set_result(None)
    return future


@dataclass
class Upload:
    digest: str
    pixels: np.ndarray  # H×W (grey), H×W×3 or H×W×4 uint8
    nbytes: int
    created: float = field(default_factory=time.time)
    saved: Future | None = field(default_factory=_done)  # resolves once the file is on disk; None: not asked
    body: Any = field(default=None, repr=False)  # the bytes as uploaded, until written to disk
    content_type: str = "raw"

    @property
    def ref(self) -> str:
        return REF_PREFIX + self.digest

    def describe(self, existed: bool) -> dict:
        height, width = self.pixels.shape[:2]
        channels = 1 if self.pixels.ndim == 2 else self.pixels.shape[2]
        return {"id": self.ref, "width": width, "height": height, "channels": channels, "existed": existed}


class StoreFull(Exception):
    """Every upload in memory is pinned by a queued or running job."""


def read_upload_file(path, row: UploadRow) -> np.ndarray:
    """The pixels of an upload's file, as :meth:`UploadStore.add` wrote it."""
    if row.format == "raw":
        shape = (row.height, row.width) if row.channels == 1 else (row.height, row.width, row.channels)
        return np.memmap(path, dtype=np.uint8, mode="r", shape=shape)
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[row.channels]
        pixels = np.asarray(image.convert(mode) if image.mode != mode else image)
    pixels.setflags(write=False)
    return pixels


class UploadStore:
    """Uploads by sha256, oldest first; thread-safe (the worker resolves refs from its thread).

    Without ``files``/``journal`` (tests, tools) it is memory only, as before."""

    def __init__(self, max_bytes: int, files: FileStore | None = None, journal: Journal | None = None,
                 ttl_s: float = 3600.0) -> None:
        self.max_bytes = max_bytes
        self.files = files
        self.journal = journal
        self.ttl_s = ttl_s
        self._items: OrderedDict[str, Upload] = OrderedDict()
        self._saving: dict[str, Upload] = {}  # uploads whose file is being written
        self._pins: dict[str, int] = {}
        self._used: dict[str, float] = {}  # last use of uploads on disk
        self._bytes = 0
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ctrlgen-save") if files is not None else None

    def close(self) -> None:
        """Finish writing what was uploaded."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)

    def __contains__(self, digest: str) -> bool:
        return self.get(digest) is not None

    def get(self, digest: str, touch: bool = False) -> Upload | None:
        """The upload, if kept (in memory or on disk); ``touch`` counts this as a use."""
        with self._lock:
            upload = self._items.get(digest)
            if upload is not None:
                if touch:
                    self._items.move_to_end(digest)
                    self._used[digest] = time.time()
                return upload
            upload = self._saving.get(digest)  # left memory before its file was written
            if upload is not None:
                return upload
        return self._load(digest, touch)

    def _load(self, digest: str, touch: bool) -> Upload | None:
        if self.journal is None or self.files is None or not HEX_DIGEST.match(digest):
            return None
        row = self.journal.upload(digest)
        if row is None or not self.files.exists(digest):
            return None
        try:
            pixels = read_upload_file(self.files.path(digest), row)
        except (OSError, ValueError) as exc:  # a damaged file is as good as none
            raise JobError(f"image sha256:{digest} could not be read back from {self.files.path(digest)} "
                           f"({exc}); upload it again") from None
        upload = Upload(digest, pixels, pixels.nbytes, created=row.created)
        if touch:
            self._used[digest] = time.time()
        try:
            return self.add(upload)
        except StoreFull:  # memory is full of pinned images: use it without caching
            return upload

    @property
    def used_bytes(self) -> int:
        return self._bytes

    def add(self, upload: Upload, body=None, content_type: str = "raw") -> Upload:
        """Keep ``upload`` (or return the one already kept under its hash), evicting old ones from
        memory (spilling them to disk first when they are not there yet). ``body``, the bytes as
        uploaded, is what :meth:`persist` writes."""
        with self._lock:
            known = self._items.get(upload.digest)
            if known is not None:
                return known
            if upload.nbytes > self.max_bytes:
                raise StoreFull(
                    f"the image needs {upload.nbytes} bytes but the server keeps at most {self.max_bytes} "
                    "bytes of images in memory; start `ctrlgen serve` with a larger --max-memory")
            spill = []
            for digest in list(self._items):
                if self._bytes + upload.nbytes <= self.max_bytes:
                    break
                if self._pins.get(digest):
                    continue
                victim = self._items.pop(digest)
                self._bytes -= victim.nbytes
                if victim.body is not None:  # never written: spill it, findable until it is on disk
                    self._saving[digest] = victim
                    spill.append(victim)
            if self._bytes + upload.nbytes > self.max_bytes:
                raise StoreFull(
                    "image memory is full of images that queued or running jobs use; wait for them to "
                    "finish, or start `ctrlgen serve` with a larger --max-memory")
            self._items[upload.digest] = upload
            self._bytes += upload.nbytes
            self._used[upload.digest] = time.time()
            if body is not None and self._writer is not None:
                upload.body, upload.content_type, upload.saved = body, content_type, None
        for victim in spill:
            self._schedule(victim)
        return upload

    def persist(self, digest: str) -> Future:
        """A future that resolves once the upload's file is on disk (writing it if needed)."""
        with self._lock:
            upload = self._items.get(digest) or self._saving.get(digest)
        if upload is None:
            return _done()  # read back from its file, or unknown: nothing to write
        return self._schedule(upload)

    def _schedule(self, upload: Upload) -> Future:
        with self._lock:
            if upload.saved is None:
                assert self._writer is not None
                upload.saved = self._writer.submit(self._save, upload)
            return upload.saved

    def _save(self, upload: Upload) -> None:
        assert self.files is not None and self.journal is not None
        try:
            body = upload.body
            self.files.write(upload.digest, body)
            height, width = upload.pixels.shape[:2]
            channels = 1 if upload.pixels.ndim == 2 else upload.pixels.shape[2]
            image_format = {"image/png": "png", "image/webp": "webp"}.get(upload.content_type, "raw")
            self.journal.add_upload(UploadRow(upload.digest, image_format, width, height, channels, len(body),
                                              upload.created))
            upload.body = None  # on disk now (raw pixels are a view of the body and keep it alive)
        finally:
            with self._lock:
                self._saving.pop(upload.digest, None)

    def pin(self, digests: list[str]) -> None:
        with self._lock:
            for digest in digests:
                self._pins[digest] = self._pins.get(digest, 0) + 1

    def unpin(self, digests: list[str]) -> None:
        with self._lock:
            now = time.time()
            for digest in digests:
                self._used[digest] = now
                count = self._pins.get(digest, 0) - 1
                if count > 0:
                    self._pins[digest] = count
                else:
                    self._pins.pop(digest, None)

    def collect(self, now: float | None = None) -> int:
        """Delete the files of uploads no job needs that were last used more than ``ttl_s`` ago;
        returns how many went."""
        if self.files is None or self.journal is None:
            return 0
        now = time.time() if now is None else now
        needed = self.journal.referenced_uploads()
        removed = 0
        for row in self.journal.uploads():
            with self._lock:
                if row.digest in needed or self._pins.get(row.digest):
                    continue
                if now - self._used.get(row.digest, row.created) <= self.ttl_s:
                    continue
                known = self._items.pop(row.digest, None)
                if known is not None:
                    self._bytes -= known.nbytes
                self._used.pop(row.digest, None)
            self.journal.forget_upload(row.digest)
            self.files.remove(row.digest)
            removed += 1
        return removed

    def resolve(self, ref: str, what: str) -> np.ndarray:
        """The pixels of ``ref`` for the engine (its ``images=`` source)."""
        if not is_ref(ref):
            raise JobError(f"{what}: {ref!r} is not an upload reference; upload the image and use 'sha256:<hex>'")
        upload = self.get(ref[len(REF_PREFIX):])
        if upload is None:
            raise JobError(f"{what}: image {ref} is not on the server (it was never uploaded or was deleted "
                           "after --result-ttl unused); upload it again with PUT /v1/images/<sha256>")
        return upload.pixels
