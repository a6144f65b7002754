"""What the connection layer answers: JSON errors for what is not HTTP or too big, and stalled
clients (slowloris) cut off, while the server keeps serving everyone else.

Raw sockets against a real `ctrlgen serve` (with ``--stall-timeout 1``)."""

from __future__ import annotations

import hashlib
import json
import socket
import time

import pytest

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def quick_server(server_factory):
    return server_factory("--stall-timeout", "1")


def exchange(server, data: bytes, *, then_shutdown: bool = False, pause_after: float = 0.0,
             timeout: float = 20.0) -> tuple[int, dict, float]:
    """Send raw bytes; returns (status, JSON body, seconds until the answer)."""
    with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
        started = time.monotonic()
        sock.sendall(data)
        if pause_after:
            time.sleep(pause_after)
        if then_shutdown:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    elapsed = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    assert headers.get("content-type") == "application/json", (head, body)
    return status, json.loads(body), elapsed


def request_head(server, method: str, path: str, extra: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.token}\r\n"
            f"{extra}").encode()


def test_garbage_is_a_json_400(quick_server):
    status, body, _ = exchange(quick_server, b"\x16\x03\x01 hello there\r\n\r\n")
    assert status == 400 and body["error"]["code"] == "invalid_http"


def test_an_over_long_url_is_a_json_414(quick_server):
    path = "/v1/jobs/" + "a" * 20_000
    status, body, _ = exchange(quick_server, request_head(quick_server, "GET", path) + b"\r\n")
    assert status == 414 and body["error"]["code"] == "url_too_long"


def test_over_large_headers_are_a_json_431(quick_server):
    flood = "".join(f"X-Filler-{i}: {'v' * 1000}\r\n" for i in range(80))
    status, body, _ = exchange(quick_server, request_head(quick_server, "GET", "/v1/health", flood) + b"\r\n")
    assert status == 431 and body["error"]["code"] == "headers_too_large"


def test_a_truncated_body_is_a_json_400(quick_server):
    data = request_head(quick_server, "POST", "/v1/jobs",
                        "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n") + b'{"job": {"mod'
    status, body, _ = exchange(quick_server, data, then_shutdown=True)
    assert status == 400 and body["error"]["code"] == "incomplete_body"
    assert "before the length" in body["error"]["message"]


def test_an_unparsable_body_is_a_json_422(quick_server):
    payload = b'{"job": {"model": '
    data = request_head(quick_server, "POST", "/v1/jobs",
                        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n") + payload
    status, body, _ = exchange(quick_server, data)
    assert status == 422 and "not valid JSON" in body["error"]["message"]


@pytest.mark.parametrize("stall", ["headers", "json body", "upload body"])
def test_a_stalled_client_is_cut_off_and_others_are_served(quick_server, stall):
    if stall == "headers":
        data = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # and then nothing
    elif stall == "json body":
        data = request_head(quick_server, "POST", "/v1/jobs",
                            "Content-Type: application/json\r\nContent-Length: 400\r\n\r\n") + b'{"job"'
    else:
        pixels = bytes(64 * 64 * 3)
        digest = hashlib.sha256(pixels).hexdigest()
        data = request_head(quick_server, "PUT", f"/v1/images/{digest}",
                            "Content-Type: application/vnd.ctrlgen.raw\r\nX-Ctrlgen-Width: 64\r\n"
                            "X-Ctrlgen-Height: 64\r\nX-Ctrlgen-Channels: 3\r\n"
                            f"Content-Length: {len(pixels)}\r\n\r\n") + pixels[:1000]
    # while one client stalls, the server answers another at once
    stalled = socket.create_connection((quick_server.host, quick_server.port), timeout=20)
    try:
        stalled.sendall(data)
        time.sleep(0.2)
        assert quick_server.json("GET", "/v1/health", timeout=5)[0] == 200
        started = time.monotonic()
        answer = b""
        while chunk := stalled.recv(65536):
            answer += chunk
        elapsed = time.monotonic() - started
    finally:
        stalled.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert json.loads(body)["error"]["code"] == "timeout"
    assert elapsed < 10
    assert quick_server.alive() and quick_server.json("GET", "/v1/health")[0] == 200
