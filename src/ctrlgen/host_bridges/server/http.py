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
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._stall = None
        self._rejection: tuple[int, str, str] | None = None
        self._header_bytes = 0
        self._in_body = False

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
        self._arm(self.body_idle_timeout_s, "body")

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._arm(self.body_idle_timeout_s, "body")

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_body = False
        super().on_message_complete()

    def eof_received(self) -> bool | None:
        if self._in_body and self.cycle is not None and self.cycle.more_body:
            self._disarm()
            received = len(self.cycle.body)
            self._abort(400, "incomplete_body", f"the connection closed after {received} more byte(s) of the "
                        "body, before the length the request announced; send the whole body")
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # -- what uvicorn sends for bytes it cannot parse -----------------------------------------
    def send_400_response(self, msg: str) -> None:
        status, code, message = self._rejection or (
            400, "invalid_http", "the request is not valid HTTP/1.1; check the request line and headers")
        self._disarm()
        self.transport.write(error_bytes(status, code, message))
        self.transport.close()
