"""Image bodies received by the connection layer itself, straight into their buffers.

uvicorn hands a body to the application in pieces of at most 64 KiB, each one a wake-up of the
request's task, a ``bytes`` concatenation and a pause of the socket; at 4096² that is the most
of an upload's cost. For the bodies that are images — ``PUT /v1/images/{sha256}`` (raw, PNG or
WebP) and bundles (``application/vnd.ctrlgen.bundle``: a request plus the images it needs, see
docs/protocol.md#bundles) — :class:`BodySink` is fed by the protocol's ``on_body`` instead: each
piece is copied once into the buffer of the image it belongs to (one buffer per image, allocated
when its length is known) and hashed on a thread of its own while the rest still arrives. The
route awaits :meth:`BodySink.received` and gets the images' buffers and sha256 digests.

A bundle's body: a 4-byte little-endian length ``n``, ``n`` bytes of UTF-8 JSON
``{"request": {...}, "images": [{"id", "width", "height", "channels", "length", "format"}, ...]}``,
then the images' bytes, one after the other, in that order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import queue as queue_module
import threading
from dataclasses import dataclass, field
from typing import Any

RAW_TYPE = "application/vnd.ctrlgen.raw"
BUNDLE_TYPE = "application/vnd.ctrlgen.bundle"
IMAGE_TYPES = (RAW_TYPE, "image/png", "image/webp")
MAX_BUNDLE_HEADER = 1 << 20
THREAD_FROM = 1 << 20  # bodies from this size are hashed on a thread while they arrive


class BodyError(Exception):
    """A body that cannot be what it says (``code``, ``message`` for the error answer)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def new_buffer(length: int) -> Any:
    """A writable buffer of ``length`` bytes, not zeroed: ``bytearray(length)`` writes zeros over
    every page first (tens of ms at 4096²) that the body then overwrites."""
    import numpy as np

    return np.empty(length, np.uint8)


@dataclass
class Part:
    """One image of a body: its buffer (a 1-D uint8 array, filled as the body arrives) and sha256."""

    buffer: Any
    sha: Any = field(default_factory=hashlib.sha256)
    filled: int = 0
    digest: str = ""

    view: memoryview = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.view = memoryview(self.buffer).cast("B")


@dataclass
class Received:
    parts: list[Part]
    header: dict | None = None  # a bundle's JSON


class BodySink:
    """Receives one request body (``kind``: ``"image"`` or ``"bundle"``) of ``length`` bytes."""

    def __init__(self, kind: str, length: int, loop: asyncio.AbstractEventLoop) -> None:
        self.kind = kind
        self.length = length
        self.arrived = 0
        self.parts: list[Part] = []
        self.header: dict | None = None
        self._head = bytearray()  # a bundle's length prefix and JSON, until complete
        self._current = 0
        self._error: BodyError | None = None
        self._done: asyncio.Future = loop.create_future()
        self._hashed: concurrent.futures.Future = concurrent.futures.Future()
        self._queue: queue_module.SimpleQueue | None = None
        if length >= THREAD_FROM:
            self._queue = queue_module.SimpleQueue()
            threading.Thread(target=self._hash_work, name="ctrlgen-hash", daemon=True).start()
        if kind == "image":
            self._plan([length])

    # -- the protocol's side (event loop thread) ---------------------------------------------
    def feed(self, chunk: bytes) -> None:
        if self._error is not None:
            return
        self.arrived += len(chunk)
        view = memoryview(chunk)
        try:
            if self.header is None and self.kind == "bundle":
                view = self._read_head(view)
            while len(view):
                if self._current >= len(self.parts):
                    raise BodyError(400, "invalid_request", "the body is longer than its Content-Length")
                part = self.parts[self._current]
                take = min(len(view), len(part.buffer) - part.filled)
                start = part.filled
                part.view[start:start + take] = view[:take]
                part.filled += take
                self._hash(part, start, start + take)
                view = view[take:]
                if part.filled == len(part.buffer):
                    self._current += 1
        except BodyError as exc:
            self._fail(exc)

    def finish(self) -> None:
        """The whole body has arrived (``on_message_complete``)."""
        if self._error is None and self.header is None and self.kind == "bundle":
            self._fail(BodyError(422, "invalid_request", "the bundle ended inside its JSON header"))
        elif self._error is None and (self.arrived != self.length or self._current < len(self.parts)):
            self._fail(BodyError(400, "invalid_request", f"the body ended after {self.arrived} of "
                                 f"{self.length} bytes; send it again"))
        self._end_hashing()
        if not self._done.done():
            self._done.set_result(None)

    def abort(self, status: int, code: str, message: str) -> None:
        """The connection ended or was cut off before the body was complete."""
        self._fail(BodyError(status, code, message))

    # -- the route's side ----------------------------------------------------------------------
    async def received(self) -> Received:
        """The body's images and digests once it has arrived; raises :class:`BodyError`."""
        await asyncio.shield(self._done)
        await asyncio.wrap_future(self._hashed)
        if self._error is not None:
            raise self._error
        for part in self.parts:
            part.digest = part.sha.hexdigest()
        return Received(self.parts, self.header)

    # -- internals ---------------------------------------------------------------------------
    def _plan(self, lengths: list[int]) -> None:
        self.parts = [Part(new_buffer(length)) for length in lengths]
        if sum(lengths) == 0:
            self._current = len(self.parts)

    def _read_head(self, view: memoryview) -> memoryview:
        """Take a bundle's length prefix and JSON header from the front of ``view``; the rest."""
        while self.header is None:
            need = 4
            if len(self._head) >= 4:
                need += int.from_bytes(self._head[:4], "little")
                if len(self._head) == need:
                    self._parse_head()
                    break
            if not len(view):
                break
            take = min(len(view), need - len(self._head))
            self._head += view[:take]
            view = view[take:]
            if len(self._head) == 4:
                size = int.from_bytes(self._head, "little")
                if size > MAX_BUNDLE_HEADER or 4 + size > self.length:
                    raise BodyError(422, "invalid_request", f"the bundle's JSON header announces {size} bytes: "
                                    f"more than the body or {MAX_BUNDLE_HEADER}; see docs/protocol.md#bundles")
        return view

    def _parse_head(self) -> None:
        try:
            header = json.loads(bytes(self._head[4:]))
            images = header["images"]
            lengths = [int(item["length"]) for item in images]
            if not isinstance(header.get("request"), dict) or any(length < 0 for length in lengths):
                raise ValueError("no request object, or a negative length")
        except (ValueError, KeyError, TypeError) as exc:
            raise BodyError(422, "invalid_request", "the bundle's JSON header is not {\"request\": {...}, "
                            "\"images\": [{\"id\", \"width\", \"height\", \"channels\", \"length\"}, ...]} "
                            f"({exc}); see docs/protocol.md#bundles") from None
        if len(self._head) + sum(lengths) != self.length:
            raise BodyError(422, "invalid_request", f"the bundle's images add up to {sum(lengths)} bytes, but "
                            f"{self.length - len(self._head)} follow its header; each image's length must be its "
                            "byte count")
        self.header = header
        self._plan(lengths)

    def _hash(self, part: Part, start: int, end: int) -> None:
        if self._queue is not None:
            self._queue.put((part, start, end))
        # small bodies: hashed at the end, in one go (_end_hashing)

    def _end_hashing(self) -> None:
        if self._queue is not None:
            self._queue.put(None)
            return
        if self._error is None:
            for part in self.parts:
                part.sha.update(part.buffer)
        if not self._hashed.done():
            self._hashed.set_result(None)

    def _hash_work(self) -> None:
        try:
            while (item := self._queue.get()) is not None:  # type: ignore[union-attr]
                part, start, end = item
                part.sha.update(part.view[start:end])
            self._hashed.set_result(None)
        except BaseException as exc:  # handed to the route
            self._hashed.set_exception(exc)

    def _fail(self, error: BodyError) -> None:
        if self._error is None:
            self._error = error
        self._end_hashing()
        if not self._done.done():
            self._done.set_result(None)
