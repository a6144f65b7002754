"""The server's uploaded images: content-addressed, held in memory, bounded.

An upload is kept as the bytes it came in (raw pixels are used in place, without a copy)
plus a numpy view of its pixels. The store holds at most ``max_bytes``; when a new upload
would go over, the least recently used uploads (uploaded, asked about with HEAD or named by
a job) that no queued or running job references are dropped.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ctrlgen.core.errors import JobError

REF_PREFIX = "sha256:"
HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def is_ref(value: object) -> bool:
    """Whether ``value`` looks like an upload reference (``sha256:<64 lowercase hex>``)."""
    return isinstance(value, str) and value.startswith(REF_PREFIX) and bool(HEX_DIGEST.match(value[7:]))


@dataclass
class Upload:
    digest: str
    pixels: np.ndarray  # H×W (grey), H×W×3 or H×W×4 uint8
    nbytes: int
    created: float = field(default_factory=time.time)

    @property
    def ref(self) -> str:
        return REF_PREFIX + self.digest

    def describe(self, existed: bool) -> dict:
        height, width = self.pixels.shape[:2]
        channels = 1 if self.pixels.ndim == 2 else self.pixels.shape[2]
        return {"id": self.ref, "width": width, "height": height, "channels": channels, "existed": existed}


class StoreFull(Exception):
    """Every upload in memory is pinned by a queued or running job."""


class UploadStore:
    """Uploads by sha256, oldest first; thread-safe (the worker resolves refs from its thread)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Upload] = OrderedDict()
        self._pins: dict[str, int] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def __contains__(self, digest: str) -> bool:
        with self._lock:
            return digest in self._items

    def get(self, digest: str, touch: bool = False) -> Upload | None:
        """The upload, if kept; ``touch`` counts this as a use (it is evicted last)."""
        with self._lock:
            upload = self._items.get(digest)
            if upload is not None and touch:
                self._items.move_to_end(digest)
            return upload

    @property
    def used_bytes(self) -> int:
        return self._bytes

    def add(self, upload: Upload) -> Upload:
        """Keep ``upload`` (or return the one already kept under its hash), evicting old ones."""
        with self._lock:
            known = self._items.get(upload.digest)
            if known is not None:
                return known
            if upload.nbytes > self.max_bytes:
                raise StoreFull(
                    f"the image needs {upload.nbytes} bytes but the server keeps at most {self.max_bytes} "
                    "bytes of uploads; start `ctrlgen serve` with a larger --max-upload-memory")
            for digest in list(self._items):
                if self._bytes + upload.nbytes <= self.max_bytes:
                    break
                if self._pins.get(digest):
                    continue
                self._bytes -= self._items.pop(digest).nbytes
            if self._bytes + upload.nbytes > self.max_bytes:
                raise StoreFull(
                    "upload memory is full of images that queued or running jobs use; wait for them to "
                    "finish, or start `ctrlgen serve` with a larger --max-upload-memory")
            self._items[upload.digest] = upload
            self._bytes += upload.nbytes
            return upload

    def pin(self, digests: list[str]) -> None:
        with self._lock:
            for digest in digests:
                self._pins[digest] = self._pins.get(digest, 0) + 1

    def unpin(self, digests: list[str]) -> None:
        with self._lock:
            for digest in digests:
                count = self._pins.get(digest, 0) - 1
                if count > 0:
                    self._pins[digest] = count
                else:
                    self._pins.pop(digest, None)

    def resolve(self, ref: str, what: str) -> np.ndarray:
        """The pixels of ``ref`` for the engine (its ``images=`` source)."""
        if not is_ref(ref):
            raise JobError(f"{what}: {ref!r} is not an upload reference; upload the image and use 'sha256:<hex>'")
        upload = self.get(ref[len(REF_PREFIX):])
        if upload is None:
            raise JobError(f"{what}: image {ref} is not on the server (it was never uploaded or was evicted); "
                           "upload it again with PUT /v1/images/<sha256>")
        return upload.pixels
