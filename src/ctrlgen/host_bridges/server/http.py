"""The HTTP connection layer: uvicorn's httptools protocol, with JSON errors and stall timeouts.

uvicorn answers what it cannot parse with a ``text/plain`` 400 and waits for a client's
headers and body as long as the client likes. Here every answer the connection layer gives is
JSON with an error code, like the application's, and a stalled client is cut off:

- bytes that are not HTTP: ``400 invalid_http``;
- a URL over :data:`MAX_URL_BYTES`: ``414 url_too_long``; headers over
  :data:`MAX_HEADER_BYTES`: ``431 headers_too_large``;
- headers not complete within :data:`HEADER_TIMEOUT_S` of the first byte, or a body that
  stops for :data:`BODY_IDLE_TIMEOUT_S`: ``408 timeout``, and the connection is closed;
- a body that ends (the client closed its side) before its ``Content-Length``:
  ``400 incomplete_body``.

A stalled connection costs a socket, never a worker: the job worker only sees requests whose
body has fully arrived.

Image bodies (``PUT /v1/images/...`` and bundles) with a ``Content-Length`` up to
``max_body_bytes`` skip uvicorn's body path: a :class:`~.bodies.BodySink` in the request's
``scope["extensions"]["ctrlgen.body"]`` receives them (one copy, hashed as they arrive).
"""

from __future__ import annotations

import json
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ctrlgen.host_bridges.server.bodies import BUNDLE_TYPE, IMAGE_TYPES, BodySink

MAX_URL_BYTES = 16 * 1024
MAX_HEADER_BYTES = 64 * 1024
HEADER_TIMEOUT_S = 30.0
BODY_IDLE_TIMEOUT_S = 60.0

_REASONS = {400: "Bad Request", 408: "Request Timeout", 414: "URI Too Long", 431: "Request Header Fields Too Large"}


class _Rejected(Exception):
    """Raised inside a parser callback; httptools hands it back as a parser error."""


def error_bytes(status: int, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode("ascii")
    return head + body


class BridgeHttpProtocol(HttpToolsProtocol):
    """See the module docstring. The timeouts are class attributes so tests can shorten them."""

    header_timeout_s = HEADER_TIMEOUT_S
    body_idle_timeout_s = BODY_IDLE_TIMEOUT_S
    max_body_bytes = 256 * 2**20  # larger image bodies take uvicorn's path (and the route refuses them)
    live_hub = None  # a live.LiveHub (set by serving): ``GET /v1/live`` upgrades to its WebSocket

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._stall = None
        self._rejection: tuple[int, str, str] | None = None
        self._header_bytes = 0
        self._in_body = False
        self._sink: BodySink | None = None
        self._body_seen = 0.0  # when the body last moved (the body timer re-arms from it)

    # -- timers --------------------------------------------------------------------------
    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._stall = self.loop.call_later(seconds, self._stalled, what)

    def _disarm(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _stalled(self, what: str) -> None:
        self._stall = None
        if what == "body":
            quiet = time.monotonic() - self._body_seen
            if quiet < self.body_idle_timeout_s:  # it moved meanwhile: wait the rest
                self._stall = self.loop.call_later(self.body_idle_timeout_s - quiet, self._stalled, "body")
                return
        if what == "headers":
            message = (f"the request's headers did not arrive within {self.header_timeout_s:g} s of its first "
                       "byte; send the whole request at once")
        else:
            message = (f"the request's body stopped arriving for {self.body_idle_timeout_s:g} s; send the whole "
                       "body without pauses")
        self._abort(408, "timeout", message)

    def _abort(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` and close, while the application may still wait for the body."""
        self.logger.warning("closing a connection: %s", message)
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.response_started:
            self.transport.close()  # the application already answered part of this request
            return
        self.transport.write(error_bytes(status, code, message))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # its later answer is dropped; its body reader sees a disconnect
            cycle.message_event.set()
        if self._sink is not None:
            self._sink.abort(400, "incomplete_body", message)
        self.transport.close()

    # -- parser callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._in_body = False
        self._arm(self.header_timeout_s, "headers")

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > MAX_URL_BYTES:
            self._rejection = (414, "url_too_long", f"the URL is longer than {MAX_URL_BYTES} bytes; send "
                               "long values in a request body")
            raise _Rejected()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEADER_BYTES:
            self._rejection = (431, "headers_too_large", f"the request's headers are over {MAX_HEADER_BYTES} "
                               "bytes")
            raise _Rejected()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        self._in_body = True
        self._sink = self._direct_sink()
        if self._sink is not None:
            self.scope.setdefault("extensions", {})["ctrlgen.body"] = self._sink
            if self.cycle.waiting_for_100_continue:  # the route never asks uvicorn for the body: say go on now
                self.cycle.waiting_for_100_continue = False
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._body_seen = time.monotonic()
        self._arm(self.body_idle_timeout_s, "body")

    def _direct_sink(self) -> BodySink | None:
        """A sink for an image or bundle body of known length, else None (uvicorn's path)."""
        headers = dict(self.scope.get("headers", ()))
        content_type = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower().decode("latin-1")
        length = headers.get(b"content-length", b"")
        if not length.isdigit() or int(length) > self.max_body_bytes or b"transfer-encoding" in headers:
            return None
        method = self.scope.get("method")
        if content_type == BUNDLE_TYPE and method == "POST":
            return BodySink("bundle", int(length), self.loop)
        if content_type in IMAGE_TYPES and method == "PUT":
            return BodySink("image", int(length), self.loop)
        return None

    def on_body(self, body: bytes) -> None:
        if self._sink is None:
            super().on_body(body)
        elif not self.cycle.response_complete:  # an answer sent early (a known image): the rest is dropped
            self._sink.feed(body)
        self._body_seen = time.monotonic()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_body = False
        if self._sink is not None:
            self._sink.finish()
            self._sink = None
        super().on_message_complete()

    def eof_received(self) -> bool | None:
        if self._in_body and self.cycle is not None and self.cycle.more_body:
            self._disarm()
            received = self._sink.arrived if self._sink is not None else len(self.cycle.body)
            self._abort(400, "incomplete_body", f"the connection closed after {received} more byte(s) of the "
                        "body, before the length the request announced; send the whole body")
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._sink is not None:
            self._sink.abort(400, "incomplete_body", "the client closed the connection before the body ended")
            self._sink = None
        super().connection_lost(exc)

    # -- the live channel (live.py): uvicorn's WebSocket hooks, for /v1/live only ----------------
    def _should_upgrade_to_ws(self) -> bool:
        return self.live_hub is not None and self.url.split(b"?", 1)[0] == b"/v1/live"

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        self._in_body = False
        self.live_hub.upgrade(self)  # the Host/Origin/token checks, then the handshake

    # -- what uvicorn sends for bytes it cannot parse -----------------------------------------
    def send_400_response(self, msg: str) -> None:
        status, code, message = self._rejection or (
            400, "invalid_http", "the request is not valid HTTP/1.1; check the request line and headers")
        self._disarm()
        self.transport.write(error_bytes(status, code, message))
        self.transport.close()
