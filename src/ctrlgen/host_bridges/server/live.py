"""The live channel: ``GET /v1/live`` upgraded to a WebSocket, for live painting (docs/protocol.md#live).

A connection is one *session*. It holds the inputs of a job — a job template (the fields of
``POST /v1/jobs``'s ``job``) and named images (``live:NAME`` in the job) — and every message
sends only what changed: fields to merge, images that are new, or a patch (a sub-rectangle at
an offset) of an image the session already holds. A ``frame`` message runs the inputs as they
stand on the server's job worker (``JobQueue.call``), *latest wins*: a newer frame replaces one
still waiting (answered ``superseded``) and interrupts the running one at its next step
(answered ``superseded`` too). Results come back as raw pixels on the same connection.

The WebSocket (RFC 6455) is spoken here, on the connection's transport, not by a library:
uvicorn runs with ``ws="none"`` (neither ``websockets`` nor ``wsproto`` is a dependency), and
:class:`~.http.BridgeHttpProtocol` hands an upgrade of ``/v1/live`` to :meth:`LiveHub.upgrade`
after the same Host/Origin/token checks every route has. Payloads land in one buffer per
message (no re-assembly copies); a client's masking key of zero skips the unmasking pass
(RFC 6455 allows any key; the standard-library client sends zero keys on loopback, where no
proxy can be confused), other keys are undone with numpy, a word at a time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import logging
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("ctrlgen.server")

LIVE_PATH = b"/v1/live"
LIVE_REF = "live:"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TEXT, _BINARY, _CLOSE, _PING, _PONG = 1, 2, 8, 9, 10
_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 426: "Upgrade Required"}
_session_ids = itertools.count(1)


def accept_key(key: bytes) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.strip() + _GUID).digest()).decode("ascii")


def frame_header(opcode: int, length: int) -> bytes:
    """An unmasked frame's header (server to client), FIN set."""
    if length < 126:
        return struct.pack("!BB", 0x80 | opcode, length)
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


def unmask(payload: Any, key: bytes) -> None:
    """Undo a client's masking in place (nothing to do for a zero key)."""
    if key == b"\0\0\0\0" or not payload:
        return
    words = len(payload) // 4
    if words:
        array = np.frombuffer(payload, dtype=np.uint32, count=words)
        array ^= np.frombuffer(key, dtype=np.uint32)[0]
    for index in range(words * 4, len(payload)):
        payload[index] ^= key[index % 4]


class LiveError(Exception):
    """A message the session cannot use: answered as an ``error`` (the session goes on)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class LiveStats:
    bytes_received: int = 0  # WebSocket payload bytes from the client
    image_bytes: int = 0  # of which image pixels
    messages: int = 0
    frames: int = 0
    done: int = 0
    superseded: int = 0
    cancelled: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Frame:
    id: Any
    job: Any  # the parsed Job
    images: dict[str, np.ndarray]
    cancel: threading.Event = field(default_factory=threading.Event)
    outcome: str = "superseded"  # what a cancel answers: superseded / cancelled / closed
    received: float = field(default_factory=time.perf_counter)
    began: float = 0.0  # when the message's first frame began to arrive
    started: float = 0.0  # when the worker took it

    def resolve(self, uploads):
        def resolve(ref: str, what: str) -> np.ndarray:
            from ctrlgen.core.errors import JobError

            if isinstance(ref, str) and ref.startswith(LIVE_REF):
                name = ref[len(LIVE_REF):]
                if name not in self.images:
                    raise JobError(f"{what}: the session holds no image {name!r}; send it in the frame's "
                                   f"images (it holds {sorted(self.images) or 'none'})")
                return self.images[name]
            return uploads.resolve(ref, what)

        return resolve


class LiveHub:
    """The server's live sessions. ``check`` is the security guard's (set by create_app)."""

    def __init__(self, queue: Any, uploads: Any, *, max_message_bytes: int, max_side: int, max_pixels: int) -> None:
        self.queue = queue
        self.uploads = uploads
        self.max_message_bytes = max_message_bytes
        self.max_side = max_side
        self.max_pixels = max_pixels
        self.check = None  # headers -> (status, body) | None
        self.sessions: set[LiveConnection] = set()

    def upgrade(self, protocol: Any) -> None:
        """Take over ``protocol``'s transport after an ``Upgrade: websocket`` request of /v1/live."""
        transport = protocol.transport
        protocol.connections.discard(protocol)
        headers = dict(protocol.headers or ())
        refused = self.check(headers) if self.check is not None else None
        if refused is None and protocol.scope.get("method") != "GET":
            refused = 400, _json_error("invalid_request", "open the live channel with GET /v1/live")
        if refused is None and (headers.get(b"sec-websocket-version") != b"13" or not headers.get(b"sec-websocket-key")):
            refused = 426, _json_error("invalid_request", "the live channel is a WebSocket (RFC 6455): send "
                                       "Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key")
        if refused is not None:
            status, body = refused
            extra = "www-authenticate: Bearer realm=\"ctrlgen\"\r\n" if status == 401 else ""
            extra += "sec-websocket-version: 13\r\n" if status == 426 else ""
            transport.write((f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\ncontent-type: application/json"
                             f"\r\ncontent-length: {len(body)}\r\n{extra}connection: close\r\n\r\n").encode() + body)
            transport.close()
            return
        transport.write(("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                         f"sec-websocket-accept: {accept_key(headers[b'sec-websocket-key'])}\r\n\r\n").encode())
        session = LiveConnection(self, protocol.loop)
        transport.set_protocol(session)
        session.connection_made(transport)

    def close_all(self) -> None:
        """The server is stopping: every session is closed (1001 going away)."""
        for session in list(self.sessions):
            session.close(1001, "the server is shutting down")


def _json_error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class LiveConnection(asyncio.BufferedProtocol):
    """One WebSocket connection and its session (the loop thread, except :meth:`_work`)."""

    def __init__(self, hub: LiveHub, loop: asyncio.AbstractEventLoop) -> None:
        self.hub = hub
        self.loop = loop
        self.id = f"live{next(_session_ids)}"
        self.transport: Any = None
        self.stats = LiveStats()
        self.job: dict[str, Any] = {}
        self.images: dict[str, np.ndarray] = {}
        # frame parsing
        self._head = bytearray(14)  # a frame's header: 2 to 14 bytes
        self._have = 0
        self._message_began = 0.0
        self._payload: Any = None  # a bytearray, or a numpy uint8 array for big payloads
        self._filled = 0
        self._frame: tuple[bool, int, bytes] = (True, 0, b"")
        self._parts: list[Any] = []
        self._message_opcode = 0
        self._closing = False
        # latest wins
        self._lock = threading.Lock()
        self._pending: _Frame | None = None
        self._running: _Frame | None = None
        self._scheduled = False

    # -- transport -------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.hub.sessions.add(self)
        self.send({"type": "hello", "protocol": 1, "session": self.id,
                   "max_message_bytes": self.hub.max_message_bytes})

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.sessions.discard(self)
        with self._lock:
            pending, self._pending = self._pending, None
            running = self._running
        for frame in (pending, running):
            if frame is not None:
                frame.outcome = "closed"
                frame.cancel.set()

    def send(self, message: dict[str, Any], pixels: Any = None) -> None:
        """A JSON message (text frame), or a JSON header and raw pixels (binary frame)."""
        if self.transport is None or self.transport.is_closing():
            return
        text = json.dumps(message, separators=(",", ":")).encode()
        if pixels is None:
            self.transport.write(frame_header(_TEXT, len(text)) + text)
            return
        body = memoryview(pixels).cast("B")
        self.transport.write(frame_header(_BINARY, 4 + len(text) + body.nbytes) + struct.pack("!I", len(text)) + text)
        self.transport.write(body)

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self.transport is None or self.transport.is_closing():
            return
        payload = struct.pack("!H", code) + reason.encode()[:120]
        self.transport.write(frame_header(_CLOSE, len(payload)) + payload)
        self._closing = True
        self.transport.close()

    # -- RFC 6455 frames ---------------------------------------------------------------------
    # A BufferedProtocol: the socket is read straight into the frame's header, then into the
    # payload's own buffer (one allocation per message, no copies), never past a frame's end.
    def get_buffer(self, sizehint: int) -> memoryview:
        if self._payload is not None:
            return memoryview(self._payload)[self._filled:]
        return memoryview(self._head)[self._have:self._head_need()]

    def _head_need(self) -> int:
        head = self._head
        if self._have < 2:
            return 2
        short = head[1] & 0x7F
        return 2 + (2 if short == 126 else 8 if short == 127 else 0) + (4 if head[1] & 0x80 else 0)

    def buffer_updated(self, nbytes: int) -> None:
        if self._closing:
            return
        if self._payload is not None:
            self._filled += nbytes
            if self._filled == len(self._payload):
                self._end_frame()
            return
        self._have += nbytes
        if self._have >= 2 and self._have == self._head_need():
            self._start_frame()

    def data_received(self, data: bytes) -> None:  # for transports that do not buffer
        view = memoryview(data)
        while view.nbytes and not self._closing:
            target = self.get_buffer(view.nbytes)
            take = min(target.nbytes, view.nbytes)
            target[:take] = view[:take]
            view = view[take:]
            self.buffer_updated(take)

    def _start_frame(self) -> None:
        head = self._head
        fin, opcode, masked, short = bool(head[0] & 0x80), head[0] & 0x0F, bool(head[1] & 0x80), head[1] & 0x7F
        at = 2
        length = short
        if short == 126:
            length, at = struct.unpack_from("!H", head, 2)[0], 4
        elif short == 127:
            length, at = struct.unpack_from("!Q", head, 2)[0], 10
        key = bytes(head[at:at + 4]) if masked else b""
        self._have = 0
        if head[0] & 0x70:
            return self.close(1002, "no WebSocket extension was agreed (RSV bits set)")
        if not masked:
            return self.close(1002, "a client's frames must be masked (RFC 6455 5.1); a zero key is fine")
        if opcode >= 8 and (length > 125 or not fin):
            return self.close(1002, "a control frame must be whole and at most 125 bytes")
        if opcode not in (0, _TEXT, _BINARY, _CLOSE, _PING, _PONG):
            return self.close(1002, f"unknown opcode {opcode}")
        if opcode in (_TEXT, _BINARY) and self._parts:
            return self.close(1002, "a new message began before the fragmented one ended")
        if opcode == 0 and not self._parts:
            return self.close(1002, "a continuation frame without a message to continue")
        total = length + sum(len(part) for part in self._parts)
        if total > self.hub.max_message_bytes:
            return self.close(1009, f"a message of over {self.hub.max_message_bytes} bytes (the server's "
                              "--max-upload-bytes); send smaller images or patches")
        self._frame = (fin, opcode, key)
        if not self._parts:
            self._message_began = time.perf_counter()
        # Big payloads: uninitialised memory (a bytearray would be zeroed first, a pass over every
        # page before the socket writes it); the pixels' arrays are views of it.
        self._payload = bytearray(length) if length < 65536 else np.empty(length, dtype=np.uint8)
        self._filled = 0
        if length == 0:
            self._end_frame()

    def _end_frame(self) -> None:
        payload, self._payload = self._payload, None
        fin, opcode, key = self._frame
        assert payload is not None
        unmask(payload, key)
        if opcode == _PING:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(frame_header(_PONG, len(payload)) + bytes(payload))
            return
        if opcode == _PONG:
            return
        if opcode == _CLOSE:
            code = struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else 1000
            self.close(code if code in (1000, 1001) else 1000)
            return
        if opcode != 0:
            self._message_opcode = opcode
        self._parts.append(payload)
        if not fin:
            return
        parts, self._parts = self._parts, []
        message = parts[0] if len(parts) == 1 else bytearray().join(parts)
        self.stats.bytes_received += len(message)
        self.stats.messages += 1
        try:
            self._message(self._message_opcode, message)
        except LiveError as exc:
            self.stats.errors += 1
            self.send({"type": "error", "frame": getattr(exc, "frame", None),
                       "error": {"code": exc.code, "message": str(exc)}})
        except Exception as exc:  # a bug here must not take the server down
            log.exception("live session %s: a message failed", self.id)
            self.stats.errors += 1
            self.send({"type": "error", "frame": None,
                       "error": {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}})

    # -- messages ----------------------------------------------------------------------------
    def _message(self, opcode: int, message: bytearray) -> None:
        blobs = memoryview(b"")
        try:
            if opcode == _TEXT:
                header = json.loads(bytes(message).decode("utf-8"))
            else:
                if len(message) < 4:
                    raise ValueError("a binary message starts with the 4-byte length of its JSON header")
                (length,) = struct.unpack_from("!I", message)
                if length > len(message) - 4:
                    raise ValueError(f"the JSON header's length {length} is past the message's end")
                header = json.loads(bytes(message[4:4 + length]).decode("utf-8"))
                blobs = memoryview(message)[4 + length:]
        except (ValueError, UnicodeDecodeError) as exc:
            raise LiveError("invalid_message", f"the message is not JSON, or not a JSON header and pixels: {exc}; "
                            "see docs/protocol.md#live") from None
        if not isinstance(header, dict) or not isinstance(header.get("type"), str):
            raise LiveError("invalid_message", "a message is a JSON object with a \"type\": set, frame, cancel or "
                            "stats")
        kind = header["type"]
        frame_id = header.get("id")
        try:
            if kind in ("set", "frame"):
                if kind == "frame" and (not isinstance(frame_id, (int, str)) or isinstance(frame_id, bool)):
                    raise LiveError("invalid_message", "a frame needs an \"id\" (an integer or a string of the "
                                    "client's choosing) that its result will carry")
                job = self._apply(header, blobs)
                if kind == "frame":
                    self._submit(frame_id, job)
                else:
                    self.send({"type": "set", "id": frame_id, "images": self._describe_images()})
            elif kind == "cancel":
                self._cancel_all("cancelled")
            elif kind == "stats":
                self.send({"type": "stats", "id": frame_id, **self.stats.as_dict(),
                           "images": self._describe_images()})
            else:
                raise LiveError("invalid_message", f"unknown message type {kind!r}; one of set, frame, cancel, "
                                "stats")
        except LiveError as exc:
            exc.frame = frame_id if kind == "frame" else None  # type: ignore[attr-defined]
            if kind == "frame":
                self.stats.frames += 1
            raise

    def _describe_images(self) -> dict[str, list[int]]:
        return {name: [pixels.shape[1], pixels.shape[0], 1 if pixels.ndim == 2 else pixels.shape[2]]
                for name, pixels in self.images.items()}

    def _apply(self, header: dict[str, Any], blobs: memoryview):
        """Merge the message's job fields and images into the session; the parsed job."""
        from ctrlgen.core.engine.jobs import parse_job
        from ctrlgen.core.errors import JobError

        changes = header.get("job", {})
        if not isinstance(changes, dict):
            raise LiveError("invalid_message", "\"job\" is an object of job fields to change (null removes one)")
        updates = header.get("images", [])
        if not isinstance(updates, list):
            raise LiveError("invalid_message", "\"images\" is a list of {name, width, height, channels[, x, y]}")
        images = dict(self.images)
        at = 0
        for index, item in enumerate(updates):
            pixels, size = self._image(item, index, blobs[at:], images)
            images[item["name"]] = pixels
            at += size
        if at != len(blobs):
            raise LiveError("invalid_message", f"the message carries {len(blobs)} bytes of pixels; its images "
                            f"describe {at}")
        self.images = images  # images that were whole and fit are kept, whatever the job says
        self.stats.image_bytes += at
        job = dict(self.job)
        job.update(changes)
        job = {key: value for key, value in job.items() if value is not None}
        try:
            parsed = parse_job(job) if job.get("model") or header["type"] == "frame" else None
        except JobError as exc:
            raise LiveError("invalid_job", str(exc)) from None
        self.job = job  # only a valid change of the job is kept
        return parsed

    def _image(self, item: Any, index: int, blobs: memoryview, images: dict[str, np.ndarray]):
        where = f"images[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise LiveError("invalid_message", f"{where} needs a \"name\" (job fields refer to it as live:NAME)")
        try:
            width, height, channels = (int(item[key]) for key in ("width", "height", "channels"))
            x, y = int(item.get("x", 0)), int(item.get("y", 0))
        except (KeyError, TypeError, ValueError):
            raise LiveError("invalid_message", f"{where} needs integer width, height and channels "
                            "(and x, y for a patch)") from None
        if channels not in (1, 3, 4) or width < 1 or height < 1 or max(width, height) > self.hub.max_side \
                or width * height > self.hub.max_pixels:
            raise LiveError("invalid_image", f"{where}: {width}x{height}x{channels} is not an image the server "
                            f"takes (channels 1, 3 or 4; sides up to {self.hub.max_side})")
        size = width * height * channels
        if len(blobs) < size:
            raise LiveError("invalid_message", f"{where}: {width}x{height}x{channels} needs {size} bytes of "
                            f"pixels; the message has {len(blobs)} left")
        shape = (height, width) if channels == 1 else (height, width, channels)
        pixels = np.frombuffer(blobs[:size], dtype=np.uint8).reshape(shape)
        if not item.get("patch"):
            return pixels, size
        base = images.get(item["name"])
        if base is None:
            raise LiveError("invalid_image", f"{where}: a patch of {item['name']!r}, which the session does not "
                            "hold yet; send the whole image first")
        bases = 1 if base.ndim == 2 else base.shape[2]
        if bases != channels or x < 0 or y < 0 or x + width > base.shape[1] or y + height > base.shape[0]:
            raise LiveError("invalid_image", f"{where}: a {width}x{height}x{channels} patch at ({x}, {y}) does not "
                            f"fit {item['name']!r} ({base.shape[1]}x{base.shape[0]}x{bases})")
        merged = base.copy()  # a running frame may still read the old one
        merged[y:y + height, x:x + width] = pixels
        return merged, size

    # -- latest wins ---------------------------------------------------------------------------
    def _submit(self, frame_id: Any, job: Any) -> None:
        self.stats.frames += 1
        frame = _Frame(frame_id, job, dict(self.images), began=self._message_began)
        with self._lock:
            old, self._pending = self._pending, frame
            running = self._running
            schedule = not self._scheduled
            self._scheduled = True
        if old is not None:
            self._answer(old, "superseded")
        if running is not None:
            running.outcome = "superseded"
            running.cancel.set()
        if schedule:
            future = self.hub.queue.call(self._work, counted=False)
            future.add_done_callback(self._call_ended)

    def _call_ended(self, future) -> None:
        exc = future.exception() if not future.cancelled() else None
        if exc is None:
            return
        with self._lock:  # the queue refused it (stopping): answer what waited
            frame, self._pending = self._pending, None
            self._scheduled = False
        if frame is not None:
            self.loop.call_soon_threadsafe(self._answer, frame, "error",
                                           {"code": "server_stopping", "message": str(exc)})

    def _cancel_all(self, outcome: str) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
            running = self._running
        if pending is not None:
            self._answer(pending, outcome)
        if running is not None:
            running.outcome = outcome
            running.cancel.set()

    def _answer(self, frame: _Frame, status: str, error: dict | None = None, pixels: Any = None,
                info: dict | None = None) -> None:
        counter = {"done": "done", "superseded": "superseded", "cancelled": "cancelled", "error": "errors"}
        if status in counter:
            setattr(self.stats, counter[status], getattr(self.stats, counter[status]) + 1)
        message: dict[str, Any] = {"type": "result", "frame": frame.id, "status": status}
        if error is not None:
            message["error"] = error
        message.update(info or {})
        self.send(message, pixels)

    def _work(self) -> None:
        """On the job worker: run the latest frame (if it is still wanted)."""
        from ctrlgen.core.errors import CancelledError
        from ctrlgen.host_bridges.server.jobs import error_code

        with self._lock:
            frame, self._pending = self._pending, None
            self._scheduled = False
            self._running = frame
        if frame is None:
            return
        post = self.loop.call_soon_threadsafe
        started = frame.started = time.perf_counter()
        try:
            if frame.cancel.is_set():
                raise CancelledError("cancelled before it ran")
            engine = self.hub.queue.get_engine()

            def on_event(event) -> None:
                if event.kind == "progress":
                    post(self.send, {"type": "progress", "frame": frame.id, "step": int(event.data["step"]),
                                     "total": int(event.data["total"])})

            result = engine.run(frame.job, on_event=on_event, cancel=frame.cancel, job_id=f"{self.id}-{frame.id}",
                                images=frame.resolve(self.hub.uploads))
            pixels = np.ascontiguousarray(np.asarray(result.images[0], dtype=np.uint8))
        except CancelledError:
            if frame.outcome != "closed":
                post(self._answer, frame, frame.outcome)
        except BaseException as exc:  # every failure is the frame's, never the worker's
            code = error_code(exc)
            message = str(exc) if code != "internal_error" else f"{type(exc).__name__}: {exc}"
            if code == "internal_error":
                log.exception("live frame %s of %s failed", frame.id, self.id)
            post(self._answer, frame, "error", {"code": code, "message": message})
        else:
            height, width = pixels.shape[:2]
            info = {"width": width, "height": height, "channels": 1 if pixels.ndim == 2 else pixels.shape[2],
                    "seed": int(result.seeds[0]), "offset": list(result.offset),
                    "changed_box": list(result.changed_box) if result.changed_box else None,
                    "receive_ms": round((frame.received - frame.began) * 1000, 2),
                    "wait_ms": round((started - frame.received) * 1000, 2),
                    "run_ms": round((time.perf_counter() - started) * 1000, 2),
                    "latency_ms": round((time.perf_counter() - frame.began) * 1000, 2)}
            post(self._answer, frame, "done", None, pixels, info)
        finally:
            with self._lock:
                if self._running is frame:  # with several workers a newer frame may run already
                    self._running = None

