"""ctrlgen's bridge client, standard library only.

Host applications (Krita, GIMP, scripts) copy this single file into their own Python: it
imports nothing outside the standard library. It speaks protocol v1 (``docs/protocol.md``)::

    from client import Client, RawImage

    client = Client.discover()          # server.json + token from ctrlgen's config folder
    canvas = RawImage(rgba_bytes, width, height, 4)
    mask = RawImage(grey_bytes, width, height, 1)
    results = client.run({"model": "sd15", "prompt": "a red helmet", "strength": 1.0},
                         images={"image": canvas, "mask": mask},
                         on_event=lambda event: print(event.kind, event.data))
    results[0].data                      # RGB bytes, row-major, width * height * 3

Images travel raw (``bytes`` of ``uint8``, no encoding) and are content addressed: an image
is hashed and only sent when the server does not have it. ``run()`` and ``preprocess()`` send
the images the server does not have together with the request, in one request (a bundle);
``upload()`` asks the server first (``HEAD``). A server without bundles gets uploads then the
request, as before.
Each thread keeps one persistent HTTP/1.1 connection; event streams get their own and resume
after a dropped connection with ``Last-Event-ID``, so no event is lost or repeated.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
import os
import select
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROTOCOL_VERSION = 1
DEFAULT_URL = "http://127.0.0.1:7421"
RAW_CONTENT_TYPE = "application/vnd.ctrlgen.raw"
BUNDLE_CONTENT_TYPE = "application/vnd.ctrlgen.bundle"
_HASH_IN_PARALLEL_FROM = 4 * 2**20  # bytes: from here several images are hashed on threads
TERMINAL_EVENTS = ("finished", "error", "cancelled")

# Failures that mean "the connection is gone", after which a request may be sent again on a
# fresh connection (an idle keep-alive connection the server closed, a dropped stream).
_DROPPED = (ConnectionError, http.client.RemoteDisconnected, http.client.IncompleteRead,
            http.client.CannotSendRequest, http.client.ResponseNotReady, http.client.BadStatusLine,
            socket.timeout)


# -- discovery --------------------------------------------------------------------------------
def config_dir() -> Path:
    """ctrlgen's per-user folder, found exactly as ``ctrlgen.core.config.config_dir`` does."""
    override = os.environ.get("CTRLGEN_CONFIG_DIR")
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "ctrlgen"


def read_token(folder: Path | str | None = None) -> str | None:
    """The token in ``<config_dir>/token``, or None when the file does not exist."""
    path = Path(folder or config_dir()) / "token"
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def read_server_info(folder: Path | str | None = None) -> dict[str, Any]:
    """``<config_dir>/server.json`` as written by a running ``ctrlgen serve``.

    Raises ServerNotRunning when it does not exist (the server removes it when it stops)."""
    path = Path(folder or config_dir()) / "server.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ServerNotRunning(f"no ctrlgen server is running ({path} does not exist): "
                               "start it with `ctrlgen serve`") from None
    except (OSError, ValueError) as exc:
        raise ServerNotRunning(f"cannot read {path} ({exc}): restart the server with `ctrlgen serve`") from None
    if not isinstance(info, dict) or not (info.get("url") or info.get("unix_socket")):
        raise ServerNotRunning(f"{path} names no url or unix_socket: restart the server with `ctrlgen serve`")
    pid = info.get("pid")
    if isinstance(pid, int) and not process_alive(pid):
        raise ServerNotRunning(f"{path} is stale: the server that wrote it (pid {pid}) is no longer running; "
                               "start it with `ctrlgen serve`")
    return info


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (True where that cannot be told)."""
    if os.name != "posix" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


# -- errors -----------------------------------------------------------------------------------
class ClientError(Exception):
    """The server answered with an error (``status`` 4xx/5xx, ``code`` from its JSON body),
    or the client could not talk to it (``status`` 0)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]" if self.code else self.message


class AuthError(ClientError):
    """401: the token was missing or not the server's."""


class ServerNotRunning(ClientError):
    """No server answers at the address (or no ``server.json`` says where one is)."""

    def __init__(self, message: str):
        super().__init__(0, "server_not_running", message)


class JobFailed(ClientError):
    """A job ended with an ``error`` event (``code``: invalid_job, model_not_found, ...)."""

    def __init__(self, code: str, message: str, job_id: str | None = None):
        super().__init__(0, code, message)
        self.job_id = job_id


# -- data -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawImage:
    """Uncompressed ``uint8`` pixels: rows top to bottom, channels interleaved.

    ``channels`` is 1 (grey), 3 (RGB) or 4 (RGBA); ``data`` any bytes-like object of
    ``width * height * channels`` bytes (bytes, bytearray, memoryview, a numpy array's buffer)."""

    data: Any
    width: int
    height: int
    channels: int

    def __post_init__(self) -> None:
        if self.channels not in (1, 3, 4):
            raise ValueError(f"RawImage channels must be 1 (grey), 3 (RGB) or 4 (RGBA), not {self.channels!r}")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"RawImage size must be positive, got {self.width}x{self.height}")
        size = memoryview(self.data).nbytes
        expected = self.width * self.height * self.channels
        if size != expected:
            raise ValueError(f"RawImage data has {size} bytes; {self.width}x{self.height}x{self.channels} "
                             f"needs {expected}")


@dataclass(frozen=True)
class Event:
    """One server-sent event of a job: ``id`` counts 1, 2, 3... per job."""

    id: int
    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_EVENTS


class SSEParser:
    """Incremental ``text/event-stream`` parser (fields id, event, data, retry; comments).

    ``feed(line)`` takes one line without its line ending and returns a finished
    ``(id, event, data)`` triple at each blank line that ends an event, else None."""

    def __init__(self) -> None:
        self.last_id: str | None = None
        self.retry_ms: int | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str | None, str, str] | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            result = (self.last_id, self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return result
        if line.startswith(":"):
            return None  # a comment (keep-alive)
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


# -- connections ------------------------------------------------------------------------------
class _TCPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over TCP with Nagle off: headers and body go out in separate writes."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix domain socket (``Host: localhost``)."""

    def __init__(self, socket_path: str, timeout: float | None = None):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _error_from(status: int, body: bytes, token_hint: str) -> ClientError:
    code, message = f"http_{status}", ""
    try:
        error = json.loads(body)["error"]
        code, message = str(error.get("code") or code), str(error.get("message") or "")
    except (ValueError, KeyError, TypeError, AttributeError):
        message = body[:500].decode("utf-8", "replace").strip()
    if status == 401:
        return AuthError(status, code or "unauthorized",
                         f"the server refused the token ({message or 'unauthorized'}); {token_hint}")
    return ClientError(status, code, message or f"HTTP {status}")


def _detect_encoded(data: Any) -> str:
    head = bytes(memoryview(data)[:12])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    raise ValueError("bytes given to upload() are neither PNG nor WebP; pass a RawImage(data, width, height, "
                     "channels) for raw pixels")


def _raw_from_response(body: bytes, headers: http.client.HTTPMessage) -> RawImage:
    try:
        width, height = int(headers["X-Ctrlgen-Width"]), int(headers["X-Ctrlgen-Height"])
        channels = int(headers.get("X-Ctrlgen-Channels") or 3)
    except (TypeError, ValueError):
        raise ClientError(0, "bad_response", "a raw image answer lacks X-Ctrlgen-Width/Height headers") from None
    return RawImage(body, width, height, channels)


# -- the client -------------------------------------------------------------------------------
class Client:
    """A connection to one ``ctrlgen serve``. Thread-safe: each thread uses its own connection.

    ``Client(url, token=...)`` or ``Client(unix_socket=path, token=...)``; without a token the
    one in ``<config_dir>/token`` is used. ``Client.discover()`` reads the address too."""

    def __init__(self, url: str | None = None, token: str | None = None, *, unix_socket: str | None = None,
                 timeout: float = 120.0, config_folder: Path | str | None = None):
        self.config_folder = Path(config_folder) if config_folder else config_dir()
        self.unix_socket = str(unix_socket) if unix_socket else None
        self.url = (url or (f"http+unix://{self.unix_socket}" if self.unix_socket else DEFAULT_URL)).rstrip("/")
        if not self.unix_socket:
            parsed = urllib.parse.urlsplit(self.url)
            if parsed.scheme != "http" or not parsed.hostname:
                raise ValueError(f"server url {url!r} must look like http://127.0.0.1:7421 "
                                 "(https is not served; use unix_socket= for a socket)")
            self._host, self._port = parsed.hostname, parsed.port or 80
            self._prefix = parsed.path.rstrip("/")
        else:
            self._prefix = ""
        self.token = token if token is not None else read_token(self.config_folder)
        self.timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPConnection] = []
        self._streams: set[http.client.HTTPConnection] = set()
        self._known: set[str] = set()  # image hashes the server is known to hold
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None  # for upload_many
        self._bundles: bool | None = None  # whether the server takes bundles (None: not known yet)
        # Who submits: the server starts each client's jobs in order and lets clients take turns.
        self.client_id = os.urandom(8).hex()

    @classmethod
    def discover(cls, config_folder: Path | str | None = None, *, token: str | None = None,
                 timeout: float = 120.0) -> Client:
        """The server named by ``<config_dir>/server.json``, checked to answer ``/v1/health``."""
        folder = Path(config_folder) if config_folder else config_dir()
        info = read_server_info(folder)
        socket_path = info.get("unix_socket")
        if socket_path and os.path.exists(socket_path) and hasattr(socket, "AF_UNIX"):
            client = cls(token=token, unix_socket=socket_path, timeout=timeout, config_folder=folder)
        else:
            client = cls(info["url"], token=token, timeout=timeout, config_folder=folder)
        try:
            client.health()  # ServerNotRunning if server.json is stale
        except BaseException:
            client.close()
            raise
        return client

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def close(self) -> None:
        """Close every connection, event streams included (a waiting ``events()`` then ends)."""
        with self._lock:
            connections, self._connections = self._connections, []
            streams = list(self._streams)
        for conn in streams:
            _abort(conn)
        for conn in connections:
            conn.close()
        self._local = threading.local()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    # -- transport --------------------------------------------------------------------------
    def _new_connection(self, timeout: float | None = None) -> http.client.HTTPConnection:
        timeout = self.timeout if timeout is None else timeout
        if self.unix_socket:
            return UnixHTTPConnection(self.unix_socket, timeout=timeout)
        return _TCPConnection(self._host, self._port, timeout=timeout)

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity", "X-Ctrlgen-Client": self.client_id}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if extra:
            headers.update(extra)
        return headers

    def _token_hint(self) -> str:
        return (f"the token in {self.config_folder / 'token'} must match the running server's "
                "(restart the client after the server made a new one), or pass token= to Client()")

    def _not_running(self, exc: BaseException) -> ServerNotRunning:
        return ServerNotRunning(f"no ctrlgen server answers at {self.url} ({exc.__class__.__name__}: {exc}): "
                                "start it with `ctrlgen serve`")

    def _connect(self, conn: http.client.HTTPConnection) -> None:
        try:
            conn.connect()
        except (ConnectionRefusedError, FileNotFoundError, ConnectionResetError) as exc:
            conn.close()
            raise self._not_running(exc) from None
        except OSError as exc:
            conn.close()
            raise ClientError(0, "connection_failed", f"cannot connect to {self.url}: {exc}") from None

    def _thread_connection(self) -> tuple[http.client.HTTPConnection, bool]:
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None:
            if not _closed_by_peer(conn.sock):
                return conn, True
            self._drop_thread_connection()  # the server closed it while idle (keep-alive timeout)
        conn = self._new_connection()
        self._connect(conn)
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn, False

    def _drop_thread_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            with self._lock:
                if conn in self._connections:
                    self._connections.remove(conn)
            self._local.conn = None

    def request(self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None,
                *, ok: tuple[int, ...] = (200,)) -> tuple[int, http.client.HTTPMessage, bytes]:
        """Send one request on this thread's connection; ``(status, headers, body)``.

        A status outside ``ok`` raises ClientError (AuthError for 401). A reused connection the
        server has closed meanwhile is replaced and the request sent again, once."""
        target = self._prefix + path
        all_headers = self._headers(headers)
        for attempt in (0, 1):
            conn, reused = self._thread_connection()
            try:
                try:
                    conn.request(method, target, body=body, headers=all_headers)
                except OSError:
                    # The server may answer before reading a body it does not need (a repeated
                    # upload) and close; its answer is still there to read.
                    if body is None:
                        raise
                response = conn.getresponse()
                data = response.read()
            except _DROPPED as exc:
                self._drop_thread_connection()
                if reused and attempt == 0:
                    continue
                raise ClientError(0, "connection_lost", f"lost the connection to {self.url} during "
                                  f"{method} {path}: {exc}") from None
            except BaseException:
                self._drop_thread_connection()
                raise
            if response.will_close:
                self._drop_thread_connection()
            if response.status not in ok:
                raise _error_from(response.status, data, self._token_hint())
            return response.status, response.headers, data
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, method: str, path: str, payload: Any = None, *, ok: tuple[int, ...] = (200,)) -> Any:
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json"} if body is not None else None
        _, _, data = self.request(method, path, body, headers, ok=ok)
        return json.loads(data) if data else {}

    # -- server information -------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``{"status": "ok", "version", "queue": {"running", "queued"}}``."""
        return self._json("GET", "/v1/health")

    def capabilities(self) -> dict[str, Any]:
        """Preprocessors, adapters (with their Param schemas), models, samplers and limits."""
        return self._json("GET", "/v1/capabilities")

    # -- images -------------------------------------------------------------------------------
    def upload(self, image: RawImage | bytes | bytearray | memoryview | os.PathLike | Path) -> str:
        """Put an image on the server and return its reference ``"sha256:<hex>"``.

        ``image``: a RawImage, the bytes of a PNG/WebP file, or the path of one. Nothing is
        sent when the server already has these bytes (asked with HEAD, remembered here)."""
        view, headers = _image_body(image)
        digest = hashlib.sha256(view).hexdigest()
        ref = f"sha256:{digest}"
        if digest in self._known:
            return ref
        status, _, _ = self.request("HEAD", f"/v1/images/{digest}", ok=(200, 404))
        if status == 404:
            self.request("PUT", f"/v1/images/{digest}", view, headers, ok=(200, 201))
        self._known.add(digest)
        return ref

    def upload_many(self, images: list[Any]) -> list[str]:
        """upload() each image, at the same time (hashing one while another travels)."""
        if len(images) < 2:
            return [self.upload(image) for image in images]
        return list(self._upload_pool().map(self.upload, images))

    def forget_uploads(self) -> None:
        """Forget which images the server holds (it may evict old uploads); next uploads ask again."""
        self._known.clear()

    # -- jobs ---------------------------------------------------------------------------------
    def submit(self, job: Mapping[str, Any], preview: bool = False) -> str:
        """Queue a job (its images given as ``"sha256:..."`` references); returns the job id."""
        answer = self._json("POST", "/v1/jobs", {"job": dict(job), "preview": bool(preview)}, ok=(200, 201, 202))
        return answer["id"]

    def jobs(self) -> list[dict[str, Any]]:
        """Queued, running and recently finished jobs."""
        return self._json("GET", "/v1/jobs")["jobs"]

    def job(self, job_id: str) -> dict[str, Any]:
        """One job's status (with ``results`` when finished, ``error`` when it failed)."""
        return self._json("GET", f"/v1/jobs/{_quote(job_id)}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job (a running one stops within a step)."""
        return self._json("POST", f"/v1/jobs/{_quote(job_id)}/cancel")

    def events(self, job_id: str, after: int = 0, *, retries: int = 5, backoff_s: float = 0.1,
               read_timeout_s: float = 60.0) -> Iterator[Event]:
        """A job's events in order, past ones first, ending with finished/error/cancelled.

        A dropped connection is reopened with ``Last-Event-ID`` (at most ``retries`` times in a
        row, waiting ``backoff_s`` doubling each time), so every event arrives exactly once."""
        last_id = after
        failures = 0
        path = self._prefix + f"/v1/jobs/{_quote(job_id)}/events"
        while True:
            conn = self._new_connection(timeout=read_timeout_s)
            headers = self._headers({"Accept": "text/event-stream", "Cache-Control": "no-cache"})
            if last_id:
                headers["Last-Event-ID"] = str(last_id)
            with self._lock:
                self._streams.add(conn)
            try:
                try:
                    self._connect(conn)
                    conn.request("GET", path, headers=headers)
                    response = conn.getresponse()
                except ServerNotRunning:
                    if failures >= retries:
                        raise
                    response = None
                if response is not None and response.status != 200:
                    raise _error_from(response.status, response.read(), self._token_hint())
                if response is not None:
                    parser = SSEParser()
                    received = 0
                    for raw_line in iter(response.readline, b""):
                        parsed = parser.feed(raw_line.decode("utf-8").rstrip("\r\n"))
                        if parsed is None:
                            continue
                        event = _make_event(*parsed)
                        if event.id and event.id <= last_id:
                            continue  # replayed after a reconnect: already delivered
                        last_id = event.id or last_id
                        failures = 0
                        received += 1
                        yield event
                        if event.terminal:
                            return
                    if parser.retry_ms is not None:
                        backoff_s = parser.retry_ms / 1000
                    # The server closed a stream that had nothing new: an ended job whose events
                    # were all seen (``after`` at its last one). A job still going gets a reconnect.
                    if not received and self.job(job_id).get("status") in TERMINAL_EVENTS:
                        return
            except _DROPPED + (OSError,):
                if failures >= retries:
                    raise ClientError(0, "connection_lost", f"the event stream of job {job_id} dropped "
                                      f"{failures + 1} times in a row; last event id {last_id}") from None
            finally:
                with self._lock:
                    self._streams.discard(conn)
                conn.close()
            if self._closed_while_streaming(conn):
                raise ClientError(0, "closed", "the client was closed while following job events")
            failures += 1
            if failures > retries:
                raise ClientError(0, "connection_lost", f"the event stream of job {job_id} ended "
                                  f"{failures} times in a row before the job finished (last event id {last_id})")
            time.sleep(min(backoff_s * 2 ** (failures - 1), 5.0))

    def _closed_while_streaming(self, conn: http.client.HTTPConnection) -> bool:
        return getattr(conn, "_ctrlgen_aborted", False)

    def wait(self, job_id: str, on_event: Callable[[Event], Any] | None = None, *, after: int = 0,
             raise_on_error: bool = False) -> Event:
        """Follow a job to its end, calling ``on_event`` for each event; returns the last one.

        With ``raise_on_error`` an ``error`` event raises JobFailed."""
        final: Event | None = None
        for event in self.events(job_id, after=after):
            if on_event is not None:
                on_event(event)
            final = event
        if final is None:
            raise ClientError(0, "no_events", f"job {job_id} has ended and has no events after id {after}")
        if raise_on_error and final.kind == "error":
            raise JobFailed(str(final.data.get("code", "internal_error")), str(final.data.get("message", "")), job_id)
        return final

    def result(self, job_id: str, index: int = 0, format: str = "raw", *, changed_only: bool = False,
               box: tuple[int, int, int, int] | None = None) -> Any:
        """A finished job's image ``index``: a RawImage (RGB) for ``raw``, else PNG/WebP bytes.

        With ``changed_only`` (only the pixels the job may have changed: its result's
        ``changed_box``) or ``box=(x0, y0, x1, y1)`` (any crop, x1/y1 exclusive), the answer is
        ``(image, box)``: the crop and where it lies in the result (the result itself lies at its
        ``offset`` in the canvas, see ``job()``). A server without crops answers the whole image,
        and its box then covers it."""
        path = f"/v1/jobs/{_quote(job_id)}/results/{int(index)}?format={format}"
        if changed_only and box is not None:
            raise ValueError("pass changed_only=True or box=..., not both")
        if changed_only:
            path += "&changed=1"
        elif box is not None:
            path += "&box=" + ",".join(str(int(value)) for value in box)
        _, headers, data = self.request("GET", path)
        image = _raw_from_response(data, headers) if format == "raw" else data
        if not changed_only and box is None:
            return image
        return image, _box_from_response(headers, image)

    def preprocess(self, name: str, image: str | RawImage | bytes | Path, params: Mapping[str, Any] | None = None,
                   mask: str | RawImage | bytes | Path | None = None,
                   format: str = "raw") -> tuple[RawImage | bytes, dict[str, Any] | None]:
        """Run one preprocessor on the server: ``(control map, its data or None)``.

        ``image``/``mask`` are references or anything upload() takes."""
        payload = {"preprocessor": name, "image": image, "mask": mask if mask else None,
                   "params": dict(params or {}), "format": format}
        for key in ("image", "mask"):
            if isinstance(payload[key], str):
                payload[key] = self._ref(payload[key])  # checked: a reference, not a file name
        try:
            answer = self._send_bundle("/v1/preprocess", payload)
        except ClientError as exc:
            if exc.status != 422 or not self._known or "sha256:" not in exc.message:
                raise
            self.forget_uploads()
            answer = self._send_bundle("/v1/preprocess", payload)
        if answer is not None:
            headers, data = answer
        else:
            payload = {**payload, "image": self._ref(image), "mask": self._ref(mask) if mask else None}
            _, headers, data = self.request("POST", "/v1/preprocess", json.dumps(payload).encode("utf-8"),
                                            {"Content-Type": "application/json"})
        extra = headers.get("X-Ctrlgen-Data")
        info = json.loads(extra) if extra else None
        return (_raw_from_response(data, headers) if format == "raw" else data), info

    def _ref(self, image: Any) -> str:
        if isinstance(image, str):
            if not image.startswith("sha256:"):
                raise ValueError(f"image reference {image!r} is not 'sha256:<hex>'; pass a RawImage, PNG/WebP "
                                 "bytes or a pathlib.Path to upload it")
            return image
        return self.upload(image)

    def run(self, job: Mapping[str, Any], images: Mapping[str, Any] | None = None,
            on_event: Callable[[Event], Any] | None = None, *, preview: bool = False,
            format: str = "raw") -> list[RawImage | bytes]:
        """Upload, submit, follow and download in one call; returns the result images.

        ``images`` maps job fields to images: ``"image"``, ``"mask"``, or dotted paths into
        lists such as ``"control.0.image"`` and ``"adapters.1.image"``. Values are RawImage,
        PNG/WebP bytes, paths or ``"sha256:..."`` references; RawImage/bytes/Path values placed
        directly in ``job`` are uploaded too. A job error raises JobFailed."""
        filled = _deep_copy(job)
        for key, value in (images or {}).items():
            _set_path(filled, key, value)

        def send() -> str:
            answer = self._send_bundle("/v1/jobs", {"job": filled, "preview": bool(preview)})
            if answer is not None:
                return json.loads(answer[1])["id"]
            return self.submit(self._upload_values(filled), preview=preview)

        try:
            job_id = send()
        except ClientError as exc:
            # The server may have evicted an upload this client remembered: send them again.
            if exc.status != 422 or not self._known or "sha256:" not in exc.message:
                raise
            self.forget_uploads()
            job_id = send()
        final = self.wait(job_id, on_event, raise_on_error=True)
        if final.kind == "cancelled":
            raise JobFailed("cancelled", f"job {job_id} was cancelled", job_id)
        return [self.result(job_id, item.get("index", position), format=format)
                for position, item in enumerate(final.data.get("results", []))]

    def _upload_values(self, job: dict[str, Any]) -> dict[str, Any]:
        """The job with every RawImage/bytes/Path value replaced by its upload reference."""
        found: list[Any] = []
        _collect_images(job, found)
        return _replace_images(job, iter(self.upload_many(found)))

    # -- bundles: a request with the images it needs ---------------------------------------------
    def _hash_images(self, images: list[Any]) -> list[tuple[str, memoryview, dict[str, str]]]:
        """(reference, bytes, upload headers) of each image; big ones hashed side by side."""
        bodies = [_image_body(image) for image in images]
        views = [view for view, _ in bodies]
        if len(views) > 1 and sum(view.nbytes for view in views) >= _HASH_IN_PARALLEL_FROM:
            digests = list(self._upload_pool().map(lambda view: hashlib.sha256(view).hexdigest(), views))
        else:
            digests = [hashlib.sha256(view).hexdigest() for view in views]
        return [(f"sha256:{digest}", view, headers) for digest, (view, headers) in zip(digests, bodies, strict=True)]

    def _send_bundle(self, path: str, request: dict[str, Any],
                     carry: list[Any] = ()) -> tuple[http.client.HTTPMessage, bytes] | None:
        """POST ``request`` (its image values replaced by references) to ``path`` + ``/bundle``
        with the images the server is not known to hold (and ``carry``: images for later
        requests); None when the server has no bundles."""
        if self._bundles is False:
            return None
        found: list[Any] = []
        _collect_images(request, found)
        if not found and not carry:
            return None  # nothing to carry: the plain request does
        hashed = self._hash_images(found + list(carry))
        filled = _replace_images(request, iter(ref for ref, _, _ in hashed[:len(found)]))
        entries, bodies, sent = [], [], set()
        for ref, view, headers in hashed:
            if ref[7:] in self._known or ref in sent:
                continue
            sent.add(ref)
            entries.append(_bundle_entry(ref, view, headers))
            bodies.append(view)
        header = json.dumps({"request": filled, "images": entries}, separators=(",", ":")).encode("utf-8")
        parts = [len(header).to_bytes(4, "little") + header, *bodies]
        length = sum(memoryview(part).nbytes for part in parts)
        try:
            _, headers, data = self.request("POST", path + "/bundle", parts, {
                "Content-Type": BUNDLE_CONTENT_TYPE, "Content-Length": str(length)}, ok=(200, 201, 202))
        except ClientError as exc:
            if exc.status in (404, 405) and self._bundles is None:  # a server from before bundles
                self._bundles = False
                return None
            raise
        self._bundles = True
        self._known.update(ref[7:] for ref in sent)
        return headers, data

    def _upload_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                # Few, long-lived threads: each keeps its own connection open for the next call.
                self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="ctrlgen-upload")
            return self._pool


# -- helpers ----------------------------------------------------------------------------------
_IMAGE_VALUES = (RawImage, bytes, bytearray, memoryview, Path)


def _image_body(image: Any) -> tuple[memoryview, dict[str, str]]:
    """An image's bytes (as sent) and its upload headers."""
    if isinstance(image, RawImage):
        body: Any = image.data
        headers = {"Content-Type": RAW_CONTENT_TYPE, "X-Ctrlgen-Width": str(image.width),
                   "X-Ctrlgen-Height": str(image.height), "X-Ctrlgen-Channels": str(image.channels)}
    elif isinstance(image, (os.PathLike, Path)):
        body = Path(image).read_bytes()
        headers = {"Content-Type": _detect_encoded(body)}
    elif isinstance(image, (bytes, bytearray, memoryview)):
        body = image
        headers = {"Content-Type": _detect_encoded(body)}
    else:
        raise TypeError(f"upload() takes a RawImage, PNG/WebP bytes or a path, not {type(image).__name__}")
    return memoryview(body).cast("B"), headers


def _bundle_entry(ref: str, view: memoryview, headers: Mapping[str, str]) -> dict[str, Any]:
    """An image's entry in a bundle's header (docs/protocol.md#bundles)."""
    content_type = headers["Content-Type"]
    if content_type == RAW_CONTENT_TYPE:
        return {"id": ref, "format": "raw", "width": int(headers["X-Ctrlgen-Width"]),
                "height": int(headers["X-Ctrlgen-Height"]), "channels": int(headers["X-Ctrlgen-Channels"]),
                "length": view.nbytes}
    return {"id": ref, "format": content_type.split("/", 1)[1], "length": view.nbytes}


def _collect_images(value: Any, found: list[Any]) -> None:
    if isinstance(value, _IMAGE_VALUES):
        found.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _collect_images(item, found)
    elif isinstance(value, list):
        for item in value:
            _collect_images(item, found)


def _replace_images(value: Any, refs: Iterator[str]) -> Any:
    if isinstance(value, _IMAGE_VALUES):
        return next(refs)
    if isinstance(value, dict):
        return {key: _replace_images(item, refs) for key, item in value.items()}
    if isinstance(value, list):
        return [_replace_images(item, refs) for item in value]
    return value


def _box_from_response(headers: http.client.HTTPMessage, image: Any) -> tuple[int, int, int, int] | None:
    """A crop's box from ``X-Ctrlgen-Box``; without it (an older server sent the whole image) the
    image's own frame, when its size is known (raw, PNG)."""
    text = headers.get("X-Ctrlgen-Box")
    if text:
        try:
            x0, y0, x1, y1 = (int(part) for part in text.split(","))
            return x0, y0, x1, y1
        except ValueError:
            raise ClientError(0, "bad_response", f"X-Ctrlgen-Box {text!r} is not x0,y0,x1,y1") from None
    if isinstance(image, RawImage):
        return 0, 0, image.width, image.height
    head = bytes(memoryview(image)[:24])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return 0, 0, int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return None


def _quote(value: str) -> str:
    return urllib.parse.quote(str(value), safe="")


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether an idle connection has been closed by the other side (it reads as ready, with no data)."""
    try:
        ready, _, _ = select.select([sock], [], [], 0)
        return bool(ready) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _abort(conn: http.client.HTTPConnection) -> None:
    """Interrupt a connection another thread may be reading from."""
    conn._ctrlgen_aborted = True  # type: ignore[attr-defined]
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _make_event(event_id: str | None, kind: str, data: str) -> Event:
    try:
        payload = json.loads(data) if data else {}
    except ValueError:
        raise ClientError(0, "bad_event", f"event {kind!r} (id {event_id}) carries data that is not JSON: "
                          f"{data[:200]!r}") from None
    try:
        number = int(event_id) if event_id else 0
    except ValueError:
        number = 0
    return Event(number, kind, payload if isinstance(payload, dict) else {"value": payload})


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _deep_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_deep_copy(item) for item in value]
    return value


def _set_path(job: dict[str, Any], dotted: str, value: Any) -> None:
    """``job["control"][0]["image"] = value`` for ``"control.0.image"`` (lists grow as needed)."""
    parts = dotted.split(".")
    node: Any = job
    for position, part in enumerate(parts):
        last = position == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit():
                raise ValueError(f"images key {dotted!r}: {part!r} must be a list index")
            index = int(part)
            while len(node) <= index:
                node.append({})
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, [] if parts[position + 1].isdigit() else {})
        else:
            raise ValueError(f"images key {dotted!r}: the job has no object or list at {part!r}")


# -- the live channel (docs/protocol.md#live) ---------------------------------------------------
# A WebSocket (RFC 6455) on ``GET /v1/live``: one connection is one session on the server, which
# holds the job's fields and named images (``live:NAME`` in the job); each message sends only what
# changed. Frames are masked as RFC 6455 requires of clients, with a zero masking key on loopback
# and Unix sockets (the format allows any key; masking protects proxies that a local connection
# never crosses, and a pure-Python XOR over megabytes would cost more than the transfer). To
# another host the key is random and the XOR is one big-integer operation.
@dataclass(frozen=True)
class LiveResult:
    """What a frame ended as: ``status`` is ``done`` (``image`` holds the pixels, ``info`` the seed,
    offset, timings), ``superseded`` (a newer frame replaced it), ``cancelled`` or ``error``
    (``error`` is ``{"code", "message"}``)."""

    frame: Any
    status: str
    image: RawImage | None = None
    error: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)


class LiveSession:
    """A live-painting session: ``send()`` a frame (only what changed travels), ``receive()``
    results, latest wins. ``LiveSession(client)`` connects at once; use it as a context manager.

    ``send(job={...}, images={"canvas": RawImage})``: job fields are merged into the session's
    (``None`` removes one) and refer to images as ``"live:canvas"``. With ``diff=True`` (the
    default) the session keeps a copy of each image it sent: one equal to it is not sent again,
    a changed one goes as the sub-rectangle that changed. With ``diff=False`` every image given is
    sent whole, without copies (pass only those that changed). ``bytes_sent`` counts what went out."""

    def __init__(self, client: Client, *, timeout: float | None = 30.0, diff: bool = True,
                 on_progress: Callable[[Any, int, int], Any] | None = None):
        self.client = client
        self.diff = diff
        self.on_progress = on_progress
        self.bytes_sent = 0
        self.hello: dict[str, Any] = {}
        self._sent: dict[str, tuple[int, int, int, bytes]] = {}
        import collections

        # No reader thread: whoever waits for a result or a reply reads the socket (one thread
        # at a time), and what it reads for others waits in these.
        self._results: collections.deque[LiveResult] = collections.deque()
        self._replies: collections.deque[dict[str, Any]] = collections.deque()
        self._read_lock = threading.Lock()
        self._eof = False
        self._send_lock = threading.Lock()
        self._ids = iter(range(1, 2**62))
        self._closed = False
        self.close_reason: str | None = None
        loopback = bool(client.unix_socket) or client._host in ("127.0.0.1", "localhost", "::1")
        self._zero_key = loopback
        self._sock = self._handshake(timeout)
        self._timeout = timeout
        first = self._reply(timeout)
        if first is None or first.get("type") != "hello":
            self.close()
            raise ClientError(0, "live_failed", f"the live channel did not say hello: {first}")
        self.hello = first

    def __enter__(self) -> LiveSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connection ------------------------------------------------------------------------------
    def _handshake(self, timeout: float | None) -> socket.socket:
        import base64

        client = self.client
        conn = client._new_connection(timeout)
        client._connect(conn)
        sock = conn.sock
        conn.sock = None  # the socket is ours now
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        if client.unix_socket:
            host = "localhost"
        else:
            host = (f"[{client._host}]" if ":" in client._host else client._host) + f":{client._port}"
        lines = [f"GET {client._prefix}/v1/live HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if client.token:
            lines.append(f"Authorization: Bearer {client.token}")
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ClientError(0, "live_failed", "the server closed the connection during the handshake")
                head += chunk
            head, _, rest = head.partition(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split()[1])
            headers = {name.strip().lower(): value.strip()
                       for name, _, value in (line.partition(":") for line in header_lines)}
            if status != 101:
                length = int(headers.get("content-length", "0") or 0)
                while len(rest) < length:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
                raise _error_from(status, rest, client._token_hint())
            expected = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
                                                     .encode()).digest()).decode()
            if headers.get("sec-websocket-accept") != expected:
                raise ClientError(0, "live_failed", "the server's WebSocket handshake answer is wrong")
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        self._pending = bytearray(rest)
        return sock

    def close(self) -> None:
        """Say goodbye and close (results not received yet are dropped)."""
        if self._closed:
            return
        self._closed = True
        with _suppress(OSError):
            self._write(0x8, [_pack("!H", 1000)])
        with _suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- sending ---------------------------------------------------------------------------------
    def _write(self, opcode: int, parts: list[Any]) -> None:
        views = [memoryview(part).cast("B") for part in parts]
        length = sum(view.nbytes for view in views)
        if length < 126:
            head = bytes((0x80 | opcode, 0x80 | length))
        elif length < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + _pack("!H", length)
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + _pack("!Q", length)
        with self._send_lock:
            if self._zero_key:  # small parts go in one write with the header, big ones as they are
                first = [head, b"\0\0\0\0"]
                while views and views[0].nbytes < 65536:
                    first.append(views.pop(0))
                self._sock.sendall(b"".join(first))
                for view in views:
                    self._sock.sendall(view)
            else:
                key = os.urandom(4)
                data = b"".join(views)
                repeated = (key * (length // 4 + 1))[:length]
                masked = (int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")).to_bytes(length, "little")
                self._sock.sendall(head + key + masked)
            self.bytes_sent += len(head) + 4 + length

    def _message(self, header: dict[str, Any], blobs: list[Any]) -> None:
        if self._closed:
            raise ClientError(0, "live_closed", "the live session is closed; open another")
        text = json.dumps(header, separators=(",", ":")).encode()
        try:
            if not blobs:
                self._write(0x1, [text])
            else:
                self._write(0x2, [_pack("!I", len(text)), text, *blobs])
        except OSError as exc:
            raise ClientError(0, "live_closed", f"the live channel closed ({exc}); "
                              f"{self.close_reason or 'open another session'}") from None

    def _images(self, images: Mapping[str, Any] | None) -> tuple[list[dict[str, Any]], list[Any]]:
        described: list[dict[str, Any]] = []
        blobs: list[Any] = []
        for name, image in (images or {}).items():
            if not isinstance(image, RawImage):
                raise TypeError(f"live image {name!r} must be a RawImage, not {type(image).__name__}")
            entry: dict[str, Any] = {"name": name, "width": image.width, "height": image.height,
                                     "channels": image.channels}
            if not self.diff:  # the caller names only images that changed: sent as they are, no copy
                described.append(entry)
                blobs.append(image.data)
                continue
            data = bytes(memoryview(image.data).cast("B"))
            size = (image.width, image.height, image.channels)
            last = self._sent.get(name)
            if last is not None and last[:3] == size:
                if last[3] == data:
                    continue  # unchanged: the server reuses what it holds
                if self.diff:
                    x0, y0, x1, y1 = _changed_box(last[3], data, *size)
                    if (x1 - x0) * (y1 - y0) * 2 < image.width * image.height:
                        stride, channels = image.width * image.channels, image.channels
                        patch = b"".join(data[y * stride + x0 * channels:y * stride + x1 * channels]
                                         for y in range(y0, y1))
                        entry.update(width=x1 - x0, height=y1 - y0, x=x0, y=y0, patch=True)
                        self._sent[name] = (*size, data)
                        described.append(entry)
                        blobs.append(patch)
                        continue
            self._sent[name] = (*size, data)
            described.append(entry)
            blobs.append(data)
        return described, blobs

    def set(self, job: Mapping[str, Any] | None = None, images: Mapping[str, Any] | None = None) -> None:
        """Change the session's inputs without running them."""
        described, blobs = self._images(images)
        self._message({"type": "set", "job": dict(job or {}), "images": described}, blobs)

    def send(self, job: Mapping[str, Any] | None = None, images: Mapping[str, Any] | None = None,
             frame_id: Any = None) -> Any:
        """Change what is given and run a frame; returns its id at once (its result comes later)."""
        frame_id = next(self._ids) if frame_id is None else frame_id
        described, blobs = self._images(images)
        self._message({"type": "frame", "id": frame_id, "job": dict(job or {}), "images": described}, blobs)
        return frame_id

    def cancel(self) -> None:
        """Cancel the waiting and the running frame (answered ``cancelled``)."""
        self._message({"type": "cancel"}, [])

    def stats(self, timeout: float | None = 30.0) -> dict[str, Any]:
        """The server's counts for this session: bytes_received, image_bytes, frames, done, superseded..."""
        self._message({"type": "stats"}, [])
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            reply = self._reply(None if deadline is None else deadline - time.monotonic())
            if reply is None:
                raise TimeoutError(f"the server's stats did not come within {timeout} s")
            if reply.get("type") == "stats":
                return reply

    # -- receiving -------------------------------------------------------------------------------
    def receive(self, timeout: float | None = None) -> LiveResult | None:
        """The next frame's result, or None after ``timeout`` seconds. Raises ClientError once
        the channel has closed and every result was received."""
        return self._take(self._results, timeout)

    def _reply(self, timeout: float | None) -> dict[str, Any] | None:
        """The next message that is not a result (hello, set, stats, an error of no frame)."""
        return self._take(self._replies, timeout)

    def _take(self, box: Any, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            with self._read_lock:
                if box:
                    return box.popleft()
                if self._eof:
                    raise ClientError(0, "live_closed", f"the live channel closed: {self.close_reason}")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                # In slices, so that another thread waiting for something else gets its turn.
                self._read_message(0.05 if left is None else min(left, 0.05))

    def wait(self, frame_id: Any, timeout: float | None = 120.0) -> list[LiveResult]:
        """Every result up to and including ``frame_id``'s (its is the last one)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        received: list[LiveResult] = []
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            result = self.receive(left)
            if result is None:
                raise TimeoutError(f"frame {frame_id!r}'s result did not come within {timeout} s")
            received.append(result)
            if result.frame == frame_id:
                return received

    def _recv_exact(self, size: int) -> bytearray:
        buffer = bytearray(size)
        view = memoryview(buffer)
        have = min(len(self._pending), size)
        if have:
            view[:have] = self._pending[:have]
            del self._pending[:have]
        while have < size:
            got = self._sock.recv_into(view[have:])
            if not got:
                raise ConnectionError("the server closed the live channel")
            have += got
        return buffer

    def _read_message(self, wait_s: float) -> None:
        """Read one message if one starts within ``wait_s`` seconds (under the read lock), and
        file it; at the end of the channel, mark it closed."""
        if self._eof:
            return
        try:
            if not self._pending:
                ready, _, _ = select.select([self._sock], [], [], wait_s)
                if not ready:
                    return
            self._sock.settimeout(self._timeout)  # a message that began arrives whole
            parts: list[bytearray] = []
            opcode = 0
            while True:
                head = self._recv_exact(2)
                fin, frame_opcode, length = head[0] & 0x80, head[0] & 0x0F, head[1] & 0x7F
                if length == 126:
                    length = int.from_bytes(self._recv_exact(2), "big")
                elif length == 127:
                    length = int.from_bytes(self._recv_exact(8), "big")
                payload = self._recv_exact(length)
                if frame_opcode == 0x8:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                    self.close_reason = f"{code} {payload[2:].decode('utf-8', 'replace')}".strip()
                    self._eof = True
                    return
                if frame_opcode == 0x9:
                    self._write(0xA, [payload])
                    continue
                if frame_opcode == 0xA:
                    continue
                if frame_opcode:
                    opcode = frame_opcode
                parts.append(payload)
                if fin:
                    break
            self._dispatch(opcode, parts[0] if len(parts) == 1 else bytearray().join(parts))
        except (OSError, ValueError) as exc:
            self._eof = True
            if self.close_reason is None:
                self.close_reason = "closed" if self._closed else f"{type(exc).__name__}: {exc}"

    def _dispatch(self, opcode: int, message: bytearray) -> None:
        pixels = None
        if opcode == 0x2:
            length = int.from_bytes(message[:4], "big")
            header = json.loads(bytes(message[4:4 + length]))
            pixels = memoryview(message)[4 + length:]
        else:
            header = json.loads(bytes(message))
        kind = header.get("type")
        if kind == "result":
            image = None
            if pixels is not None:
                image = RawImage(pixels, header["width"], header["height"], header["channels"])
            info = {key: value for key, value in header.items() if key not in ("type", "frame", "status", "error")}
            self._results.append(LiveResult(header.get("frame"), header["status"], image, header.get("error"),
                                            info))
        elif kind == "error" and header.get("frame") is not None:
            self._sent.clear()  # the message may not have been taken whole: the next one sends all images
            self._results.append(LiveResult(header["frame"], "error", None, header.get("error")))
        elif kind == "progress":
            if self.on_progress is not None:
                self.on_progress(header.get("frame"), header.get("step", 0), header.get("total", 0))
        else:  # hello, set, stats, errors of no frame
            if kind == "error":
                self._sent.clear()
            self._replies.append(header)


def _changed_box(old: bytes, new: bytes, width: int, height: int, channels: int) -> tuple[int, int, int, int]:
    """The bounds ``(x0, y0, x1, y1)`` of the pixels that differ (the images differ): a few
    ``memcmp``-speed comparisons of halving ranges, never a loop over pixels."""
    stride = width * channels

    def first(a: int, b: int, unit: int, base: int) -> int:  # first differing unit in [a, b)
        while b - a > 1:
            mid = (a + b) // 2
            if old[base + a * unit:base + mid * unit] != new[base + a * unit:base + mid * unit]:
                b = mid
            else:
                a = mid
        return a

    def last(a: int, b: int, unit: int, base: int) -> int:  # last differing unit in [a, b)
        while b - a > 1:
            mid = (a + b) // 2
            if old[base + mid * unit:base + b * unit] != new[base + mid * unit:base + b * unit]:
                a = mid
            else:
                b = mid
        return a

    y0 = first(0, height, stride, 0)
    y1 = last(y0, height, stride, 0) + 1
    x0, x1 = width, 0
    for y in range(y0, y1):
        row = y * stride
        if x0 > 0 and old[row:row + x0 * channels] != new[row:row + x0 * channels]:
            x0 = first(0, x0, channels, row)
        if x1 < width and old[row + x1 * channels:row + stride] != new[row + x1 * channels:row + stride]:
            x1 = last(max(x1, x0), width, channels, row) + 1
    return x0, y0, max(x1, x0 + 1), y1


def _suppress(*exceptions: type[BaseException]) -> Any:  # (imported where used: this section is self-contained)
    import contextlib

    return contextlib.suppress(*exceptions)


def _pack(fmt: str, *values: Any) -> bytes:
    import struct

    return struct.pack(fmt, *values)
