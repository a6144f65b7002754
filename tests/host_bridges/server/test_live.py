"""The live channel (GET /v1/live, a WebSocket) against a real `ctrlgen serve` with the tiny model."""

from __future__ import annotations

import base64
import json
import os
import socket

import numpy as np
import pytest

from ctrlgen.host_bridges.client import AuthError, Client, ClientError, LiveSession, RawImage


def canvas_image(size: int = 64, shade: int = 0) -> RawImage:
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 4 % 256, y * 4 % 256, (x + y + shade) % 256, np.full_like(x, 255)], -1).astype(np.uint8)
    return RawImage(pixels.tobytes(), size, size, 4)


def pixels_of(image: RawImage) -> np.ndarray:
    return np.frombuffer(bytes(image.data), np.uint8).reshape(image.height, image.width, image.channels)


def base_job(server, **overrides) -> dict:
    job = {"model": server.model, "prompt": "a red helmet", "seed": 5, "steps": 4, "strength": 0.5,
           "width": 64, "height": 64, "image": "live:canvas", "sampler": "LCM", "cfg_scale": 1.5}
    job.update(overrides)
    return job


@pytest.fixture
def client(live_server):
    with Client(live_server.url, token=live_server.token) as client:
        yield client


@pytest.fixture
def session(client):
    with LiveSession(client, timeout=60) as live:
        yield live


def test_rapid_frames_only_the_last_is_done_and_matches_an_ordinary_job(live_server, client, session):
    canvas = canvas_image()
    session.set(base_job(live_server), images={"canvas": canvas})
    ids = [session.send({"seed": seed}) for seed in (1, 2, 3, 4)]
    results = session.wait(ids[-1], timeout=120)

    statuses = {result.frame: result.status for result in results}
    assert statuses == {ids[0]: "superseded", ids[1]: "superseded", ids[2]: "superseded", ids[3]: "done"}
    done = results[-1]
    assert (done.image.width, done.image.height, done.image.channels) == (64, 64, 4)
    assert done.info["seed"] == 4

    job = base_job(live_server, seed=4)
    job.pop("image")
    ordinary = client.run(job, images={"image": canvas})[0]
    assert np.array_equal(pixels_of(done.image), pixels_of(ordinary))
    stats = session.stats()
    assert stats["done"] == 1 and stats["superseded"] == 3 and stats["frames"] == 4


def test_unchanged_inputs_are_not_sent_again_and_patches_apply(live_server, client, session):
    canvas = canvas_image(shade=9)
    first = session.send(base_job(live_server), images={"canvas": canvas})
    assert session.wait(first)[-1].status == "done"
    sent = session.bytes_sent
    second = session.send({"prompt": "a blue helmet"}, images={"canvas": canvas})  # same pixels: not re-sent
    assert session.wait(second)[-1].status == "done"
    assert session.bytes_sent - sent < 1000
    assert session.stats()["image_bytes"] == 64 * 64 * 4

    changed = pixels_of(canvas).copy()
    changed[10:18, 20:26] = (255, 0, 0, 255)  # a stroke: only its 6x8 box travels
    third = session.send(images={"canvas": RawImage(changed.tobytes(), 64, 64, 4)})
    done = session.wait(third)[-1]
    assert done.status == "done"
    stats = session.stats()
    assert stats["image_bytes"] == 64 * 64 * 4 + 6 * 8 * 4
    assert stats["images"] == {"canvas": [64, 64, 4]}
    job = base_job(live_server, prompt="a blue helmet")
    job.pop("image")
    ordinary = client.run(job, images={"image": RawImage(changed.tobytes(), 64, 64, 4)})[0]
    assert np.array_equal(pixels_of(done.image), pixels_of(ordinary))


def handshake(server, headers: dict[str, str]) -> tuple[int, bytes]:
    sock = socket.create_connection((server.host, server.port), timeout=30)
    try:
        lines = ["GET /v1/live HTTP/1.1", f"Host: 127.0.0.1:{server.port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}", "Sec-WebSocket-Version: 13"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        if status != 101:
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
            while len(body) < length:
                body += sock.recv(4096)
        return status, body
    finally:
        sock.close()


def test_the_upgrade_needs_the_token_and_a_local_origin(live_server):
    status, body = handshake(live_server, {})
    assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"
    status, _ = handshake(live_server, {"Authorization": "Bearer wrong"})
    assert status == 401
    status, body = handshake(live_server, {"Authorization": f"Bearer {live_server.token}",
                                           "Origin": "http://evil.example"})
    assert status == 403 and json.loads(body)["error"]["code"] == "forbidden_origin"
    assert handshake(live_server, {"Authorization": f"Bearer {live_server.token}"})[0] == 101
    with Client(live_server.url, token="wrong") as bad, pytest.raises(AuthError):
        LiveSession(bad)


def test_malformed_messages_get_errors_and_the_session_goes_on(live_server, session):
    session._write(0x1, [b"{not json"])
    reply = session._reply(30)
    assert reply["type"] == "error" and reply["error"]["code"] == "invalid_message"

    bad = session.send(base_job(live_server, steps=0), images={"canvas": canvas_image()})
    result = session.receive(30)
    assert (result.frame, result.status, result.error["code"]) == (bad, "error", "invalid_job")
    assert "steps" in result.error["message"]

    # pixels that do not match the description
    session._message({"type": "frame", "id": "short", "images": [{"name": "x", "width": 8, "height": 8,
                                                                  "channels": 4}]}, [b"\0" * 10])
    result = session.receive(30)
    assert (result.frame, result.status, result.error["code"]) == ("short", "error", "invalid_message")
    missing = session.send(base_job(live_server, image="live:nothing"))
    result = session.receive(60)
    assert (result.frame, result.status) == (missing, "error") and "nothing" in result.error["message"]

    good = session.send(base_job(live_server))  # the invalid job was never kept: the session's inputs hold
    assert session.wait(good, timeout=120)[-1].status == "done"
    assert not session.closed


def test_cancel_and_close(live_server, session):
    session.set(base_job(live_server), images={"canvas": canvas_image()})
    frame = session.send({"steps": 40, "strength": 1.0})
    session.cancel()
    assert session.wait(frame)[-1].status == "cancelled"
    session.close()
    with pytest.raises(ClientError):
        session.stats(timeout=5)


def test_frames_masked_with_a_random_key_arrive_the_same(live_server, client):
    """The client masks with a zero key on loopback; another host gets random keys (RFC 6455)."""
    canvas = canvas_image(shade=3)
    results = []
    for zero_key in (True, False):
        with LiveSession(client, timeout=60) as live:
            live._zero_key = zero_key
            frame = live.send(base_job(live_server, seed=8), images={"canvas": canvas})
            results.append(live.wait(frame)[-1])
            assert live.stats()["image_bytes"] == 64 * 64 * 4
    assert [result.status for result in results] == ["done", "done"]
    assert np.array_equal(pixels_of(results[0].image), pixels_of(results[1].image))


def test_a_protocol_violation_closes_only_that_session(live_server, client):
    with LiveSession(client, timeout=30) as live:
        live._sock.sendall(bytes([0x81, 0x02]) + b"{}")  # unmasked: RFC 6455 says the server must close
        with pytest.raises(ClientError):
            live.receive(10)
        assert live.close_reason.startswith("1002") and "masked" in live.close_reason
    with LiveSession(client, timeout=30) as again:  # the server goes on
        assert again.stats()["messages"] == 1
