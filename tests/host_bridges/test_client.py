"""The standard-library client's own logic: discovery, SSE parsing, uploads, reconnects.

The transport tests run against small ``http.server`` endpoints started here, which answer
exactly what a test needs (a dropped event stream, an idle connection closed by the server);
the full flow against the real server is in test_client_live.py.
"""

from __future__ import annotations

import ast
import hashlib
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ctrlgen.core.config import config_dir as core_config_dir
from ctrlgen.host_bridges import client as client_module
from ctrlgen.host_bridges.client import (
    AuthError,
    Client,
    ClientError,
    Event,
    RawImage,
    ServerNotRunning,
    SSEParser,
    _set_path,
)

CLIENT_SOURCE = Path(client_module.__file__)


# -- standard library only -------------------------------------------------------------------
@pytest.mark.parametrize("source", [CLIENT_SOURCE, CLIENT_SOURCE.with_name("hostlogic.py")], ids=lambda p: p.name)
def test_client_imports_only_the_standard_library(source):
    """client.py and hostlogic.py are copied alone into the Krita and GIMP plug-ins."""
    tree = ast.parse(source.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import in {source.name} (line {node.lineno}): hosts copy the file alone"
            modules.add(node.module.split(".")[0])
    assert modules, "found no imports at all: the parse is broken"
    foreign = sorted(m for m in modules if m not in sys.stdlib_module_names and m != "__future__")
    assert foreign == [], f"{source.name} must import only the standard library, imports {foreign}"


def test_client_file_works_when_copied_alone(tmp_path):
    """Krita's plugin copies the file: it must import and run outside the ctrlgen package."""
    (tmp_path / "ctrlgen_client.py").write_text(CLIENT_SOURCE.read_text())
    import subprocess

    code = ("import ctrlgen_client as c, sys; "
            "assert 'ctrlgen' not in sys.modules; "
            "print(c.RawImage(b'abcd', 2, 2, 1).width, c.config_dir().name)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={"CTRLGEN_CONFIG_DIR": str(tmp_path / "cfg"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "cfg"]


# -- discovery -------------------------------------------------------------------------------
@pytest.mark.parametrize("env", [{"CTRLGEN_CONFIG_DIR": "~/elsewhere"}, {"XDG_CONFIG_HOME": "/tmp/xdg"}, {}])
def test_config_dir_matches_ctrlgen_core(monkeypatch, env):
    for name in ("CTRLGEN_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert client_module.config_dir() == core_config_dir()


@pytest.mark.parametrize("platform", ["win32", "darwin", "linux"])
def test_config_dir_per_platform_matches_ctrlgen_core(monkeypatch, platform):
    monkeypatch.delenv("CTRLGEN_CONFIG_DIR", raising=False)
    monkeypatch.setenv("APPDATA", "/roaming")
    monkeypatch.setattr(sys, "platform", platform)
    assert client_module.config_dir() == core_config_dir()


def test_discover_without_server_json_says_how_to_start_one(tmp_path):
    with pytest.raises(ServerNotRunning, match="start it with `ctrlgen serve`") as info:
        Client.discover(tmp_path)
    assert str(tmp_path / "server.json") in str(info.value)


def test_discover_with_stale_server_json_is_server_not_running(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "server.json").write_text(json.dumps({"url": f"http://127.0.0.1:{port}", "pid": 1}))
    (tmp_path / "token").write_text("secret\n")
    with pytest.raises(ServerNotRunning, match="ctrlgen serve"):
        Client.discover(tmp_path)


def test_client_reads_the_token_file(tmp_path):
    (tmp_path / "token").write_text("abc123\n")
    assert Client("http://127.0.0.1:1", config_folder=tmp_path).token == "abc123"
    assert Client("http://127.0.0.1:1", token="given", config_folder=tmp_path).token == "given"


def test_bad_url_is_refused_with_the_expected_form():
    with pytest.raises(ValueError, match="http://127.0.0.1:7421"):
        Client("https://127.0.0.1:7421", token="x")


# -- data ------------------------------------------------------------------------------------
def test_raw_image_checks_its_size():
    assert RawImage(bytearray(24), 4, 2, 3).width == 4
    assert RawImage(memoryview(bytes(4)), 2, 2, 1).height == 2
    with pytest.raises(ValueError, match="needs 24"):
        RawImage(bytes(23), 4, 2, 3)
    with pytest.raises(ValueError, match="channels must be 1"):
        RawImage(bytes(8), 2, 2, 2)


def test_set_path_fills_nested_job_fields():
    job = {"control": [{"model": "a"}]}
    _set_path(job, "image", "sha256:1")
    _set_path(job, "control.0.image", "sha256:2")
    _set_path(job, "adapters.1.image", "sha256:3")
    assert job == {"image": "sha256:1", "control": [{"model": "a", "image": "sha256:2"}],
                   "adapters": [{}, {"image": "sha256:3"}]}
    with pytest.raises(ValueError, match="list index"):
        _set_path(job, "control.first.image", "x")


# -- SSE parsing -----------------------------------------------------------------------------
def feed_all(text: str) -> tuple[SSEParser, list]:
    parser = SSEParser()
    events = [parser.feed(line) for line in text.split("\n")]
    return parser, [e for e in events if e is not None]


def test_sse_parser_fields_comments_and_multiline_data():
    parser, events = feed_all(
        ": ping\n"
        "id: 1\nevent: queued\ndata: {\"position\": 2}\n\n"
        ": keep-alive between events\n\n"
        "id: 2\nevent: progress\ndata: {\"step\": 1,\ndata: \"total\": 4}\n\n"
        "retry: 2500\n"
        "data:no-space\n\n"
        "id: 9\nevent: ignored-no-data\n\n")
    assert events == [("1", "queued", '{"position": 2}'), ("2", "progress", '{"step": 1,\n"total": 4}'),
                      ("2", "message", "no-space")]
    assert json.loads(events[1][2]) == {"step": 1, "total": 4}
    assert parser.retry_ms == 2500
    assert parser.last_id == "9"  # an id without data still moves the last event id


# -- a scripted server -----------------------------------------------------------------------
class Script:
    """What the scripted server does; handlers record every request."""

    def __init__(self):
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.connections = 0
        self.images: dict[str, bytes] = {}
        self.events = [(1, "queued", {"position": 0}), (2, "started", {}), (3, "progress", {"step": 1, "total": 2}),
                       (4, "progress", {"step": 2, "total": 2}), (5, "finished", {"results": []})]
        self.drop_after: list[int] = []  # per connection: drop after sending this many events
        self.close_after_response = False
        self.close_silently = False  # close after answering, without saying so (a keep-alive timeout)
        self.status = "running"  # what GET /v1/jobs/j1 says


@pytest.fixture
def scripted():
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            script.connections += 1

        def log_message(self, *args):
            pass

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _answer(self, status: int, payload=None, extra=None):
            body = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            if script.close_after_response:
                self.send_header("Connection", "close")
                self.close_connection = True
            if script.close_silently:
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _record(self) -> bytes:
            body = self._body()
            script.requests.append((self.command, self.path, dict(self.headers), body))
            return body

        def do_GET(self):
            self._record()
            if self.headers.get("Authorization") != "Bearer good":
                return self._answer(401, {"error": {"code": "unauthorized", "message": "bad token"}})
            if self.path == "/v1/health":
                return self._answer(200, {"status": "ok", "version": "test", "queue": {"running": None, "queued": 0}})
            if self.path == "/v1/jobs/j1/events":
                return self._events()
            if self.path == "/v1/jobs/j1":
                return self._answer(200, {"id": "j1", "status": script.status})
            if self.path.startswith("/v1/jobs/j1/results/0"):
                return self._answer(200, {"error": {"code": "nope"}})
            return self._answer(404, {"error": {"code": "not_found", "message": f"no route {self.path}"}})

        def do_HEAD(self):
            self._record()
            digest = self.path.rsplit("/", 1)[-1]
            self._answer(200 if digest in script.images else 404)

        def do_PUT(self):
            body = self._record()
            digest = self.path.rsplit("/", 1)[-1]
            if hashlib.sha256(body).hexdigest() != digest:
                return self._answer(400, {"error": {"code": "hash_mismatch", "message": "hash differs"}})
            existed = digest in script.images
            script.images[digest] = body
            self._answer(200 if existed else 201, {"id": f"sha256:{digest}", "existed": existed})

        def _events(self):
            after = int(self.headers.get("Last-Event-ID") or 0)
            drop = script.drop_after.pop(0) if script.drop_after else None
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            # Replay one already-delivered event after a reconnect: the client must skip it.
            sent = 0
            for number, kind, data in script.events:
                if number < after or (after and number == after == script.events[-1][0]):
                    continue
                if drop is not None and sent == drop:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(f": ping\nid: {number}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()
                sent += 1

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    script.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield script
    finally:
        server.shutdown()
        server.server_close()


def test_requests_reuse_one_connection(scripted):
    with Client(scripted.url, token="good") as client:
        for _ in range(3):
            assert client.health()["status"] == "ok"
    assert scripted.connections == 1


def test_a_connection_closed_by_the_server_is_replaced(scripted):
    scripted.close_after_response = True
    with Client(scripted.url, token="good") as client:
        for _ in range(3):
            assert client.health()["version"] == "test"
    assert scripted.connections == 3


def test_an_idle_connection_the_server_dropped_is_replaced(scripted):
    scripted.close_silently = True
    with Client(scripted.url, token="good") as client:
        for _ in range(3):
            assert client.health()["status"] == "ok"
            time.sleep(0.05)  # the server's close arrives while the connection is idle
    assert scripted.connections == 3
    assert len(scripted.requests) == 3  # each request sent once: the dead connection was noticed before use


def test_wrong_token_is_auth_error_naming_the_token_file(scripted, tmp_path):
    with Client(scripted.url, token="bad", config_folder=tmp_path) as client, pytest.raises(AuthError) as info:
        client.health()
    assert info.value.status == 401 and info.value.code == "unauthorized"
    assert str(tmp_path / "token") in str(info.value) and "token=" in str(info.value)


def test_error_body_becomes_client_error(scripted):
    with Client(scripted.url, token="good") as client, pytest.raises(ClientError) as info:
        client.jobs()
    assert (info.value.status, info.value.code) == (404, "not_found")
    assert "no route /v1/jobs" in info.value.message


def test_upload_hashes_asks_and_sends_once(scripted):
    pixels = bytes(range(256)) * 12  # 32 x 32 RGB
    image = RawImage(pixels, 32, 32, 3)
    digest = hashlib.sha256(pixels).hexdigest()
    with Client(scripted.url, token="good") as client:
        assert client.upload(image) == f"sha256:{digest}"
        assert client.upload(image) == f"sha256:{digest}"  # remembered: no request at all
    methods = [(m, p) for m, p, _, _ in scripted.requests]
    assert methods == [("HEAD", f"/v1/images/{digest}"), ("PUT", f"/v1/images/{digest}")]
    put_headers, put_body = scripted.requests[1][2], scripted.requests[1][3]
    assert put_body == pixels
    assert put_headers["Content-Type"] == "application/vnd.ctrlgen.raw"
    assert (put_headers["X-Ctrlgen-Width"], put_headers["X-Ctrlgen-Height"], put_headers["X-Ctrlgen-Channels"]) == \
        ("32", "32", "3")

    with Client(scripted.url, token="good") as fresh:  # a new client asks, and the server has it
        fresh.upload(RawImage(memoryview(pixels), 32, 32, 3))
    assert [m for m, _, _, _ in scripted.requests] == ["HEAD", "PUT", "HEAD"]


def test_upload_png_bytes_and_path(scripted, tmp_path):
    png = b"\x89PNG\r\n\x1a\n" + b"rest-of-a-png"
    path = tmp_path / "a.png"
    path.write_bytes(png)
    with Client(scripted.url, token="good") as client:
        ref = client.upload(png)
        assert client.upload(path) == ref
        with pytest.raises(ValueError, match="neither PNG nor WebP"):
            client.upload(b"GIF89a....")
    assert scripted.requests[1][2]["Content-Type"] == "image/png"


def test_events_resume_after_drops_without_duplicates(scripted):
    # The first stream dies after 2 events; the second replays event 2 (to be skipped), sends 3, dies.
    scripted.drop_after = [2, 2]
    seen: list[Event] = []
    with Client(scripted.url, token="good") as client:
        final = client.wait("j1", seen.append)
    assert [e.id for e in seen] == [1, 2, 3, 4, 5]
    assert [e.kind for e in seen] == ["queued", "started", "progress", "progress", "finished"]
    assert final.kind == "finished" and final.terminal
    resumes = [h.get("Last-Event-ID") for m, p, h, _ in scripted.requests if p.endswith("/events")]
    assert resumes == [None, "2", "3"]


def test_events_give_up_after_the_retry_limit(scripted):
    scripted.drop_after = [0] * 10
    with Client(scripted.url, token="good") as client, pytest.raises(ClientError, match="in a row") as info:
        list(client.events("j1", retries=2, backoff_s=0.01))
    assert info.value.code == "connection_lost"
    assert sum(p.endswith("/events") for _, p, _, _ in scripted.requests) == 3


def test_events_of_an_ended_job_after_its_last_event_are_none(scripted):
    scripted.status = "finished"
    with Client(scripted.url, token="good") as client:
        assert list(client.events("j1", after=5, backoff_s=5.0)) == []
        with pytest.raises(ClientError, match="no events after id 5"):
            client.wait("j1", after=5)
    assert sum(p.endswith("/events") for _, p, _, _ in scripted.requests) == 2  # one stream each, no retries
