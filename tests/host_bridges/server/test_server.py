"""`ctrlgen serve` against real requests on loopback, with the tiny SD1.5 model on CPU."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

RAW = "application/vnd.ctrlgen.raw"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((96, 96)))


def small_job(server, ref: str | None = None, **overrides) -> dict:
    job = {"model": server.model, "prompt": "an astronaut", "seed": 5, "steps": 2, "width": 64, "height": 64}
    if ref is not None:
        job["image"] = ref
        job["control"] = [{"model": server.controlnet, "preprocessor": "canny"}]
    job.update(overrides)
    return job


def raw_headers(width: int, height: int, channels: int) -> dict[str, str]:
    return {"Content-Type": RAW, "X-Ctrlgen-Width": str(width), "X-Ctrlgen-Height": str(height),
            "X-Ctrlgen-Channels": str(channels)}


def error_of(body: bytes) -> tuple[str, str]:
    error = json.loads(body)["error"]
    return error["code"], error["message"]


# -- the main flow ---------------------------------------------------------------------------------
def test_health_and_capabilities(live_server):
    status, health = live_server.json("GET", "/v1/health")
    assert status == 200 and health["status"] == "ok" and health["version"]
    assert set(health["queue"]) == {"running", "queued"}
    status, caps = live_server.json("GET", "/v1/capabilities")
    assert status == 200
    canny = next(p for p in caps["preprocessors"] if p["name"] == "canny")
    assert {p["name"] for p in canny["params"]} >= {"low_threshold", "high_threshold"}
    controlnet = next(a for a in caps["adapters"] if a["name"] == "controlnet")
    assert "sd15" in controlnet["architectures"] and controlnet["params"]
    models = {m["name"]: m for m in caps["models"]}
    assert models[live_server.model]["architecture"] == "sd15"
    assert models[live_server.model]["kind"] == "checkpoint"
    assert models[live_server.controlnet]["kind"] == "controlnet"
    assert "Euler a" in caps["samplers"]
    assert caps["image_formats"] == ["raw", "png", "webp"]
    assert caps["limits"]["max_queue"] == 100


def test_full_flow_matches_the_engine_in_process(live_server, photo, tmp_path, bridge_model_root,
                                                 torch_single_thread):
    ref = live_server.upload(photo)
    job = small_job(live_server, ref, steps=3)
    job_id = live_server.submit(job)
    events = live_server.wait(job_id)
    kinds = [kind for _, kind, _ in events]
    assert kinds == ["queued", "started", "progress", "progress", "progress", "finished"]
    assert [event_id for event_id, _, _ in events] == list(range(1, 7))
    assert [data["step"] for _, kind, data in events if kind == "progress"] == [1, 2, 3]
    assert events[-1][2] == {"results": [{"index": 0, "width": 64, "height": 64, "channels": 3, "seed": 5}]}

    status, headers, raw = live_server.request("GET", f"/v1/jobs/{job_id}/results/0")
    assert status == 200 and headers["content-type"] == RAW
    assert (headers["x-ctrlgen-width"], headers["x-ctrlgen-height"], headers["x-ctrlgen-channels"]) == ("64", "64", "3")
    served = np.frombuffer(raw, np.uint8).reshape(64, 64, 3)

    # The same job run here by the engine, reading the image from a file.
    from ctrlgen.core.engine.engine import Engine
    from ctrlgen.core.engine.jobs import parse_job
    from ctrlgen.core.models.store import ModelStore
    from ctrlgen.core.plugins.specs import ModelRoot

    path = tmp_path / "photo.png"
    Image.fromarray(photo).save(path)
    engine = Engine(store=ModelStore([ModelRoot(bridge_model_root)]), device="cpu")
    local = engine.run(parse_job({**job, "image": str(path)}))
    assert np.array_equal(served, np.asarray(local.images[0]))
    assert served.std() > 1.0

    for image_format in ("png", "webp"):
        status, headers, encoded = live_server.request("GET", f"/v1/jobs/{job_id}/results/0?format={image_format}")
        assert status == 200 and headers["content-type"] == f"image/{image_format}"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB")), served)

    status, item = live_server.json("GET", f"/v1/jobs/{job_id}")
    assert status == 200 and item["status"] == "finished" and item["results"][0]["seed"] == 5
    status, listing = live_server.json("GET", "/v1/jobs")
    assert any(j["id"] == job_id and j["status"] == "finished" and j["model"] == live_server.model
               for j in listing["jobs"])


def test_png_upload_gives_the_same_result_as_raw(live_server, photo):
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG")
    body = buffer.getvalue()
    digest = hashlib.sha256(body).hexdigest()
    status, _, answer = live_server.request("PUT", f"/v1/images/{digest}", body, {"Content-Type": "image/png"})
    assert status == 201
    assert json.loads(answer) == {"id": f"sha256:{digest}", "width": 96, "height": 96, "channels": 3,
                                  "existed": False}
    results = []
    for ref in (f"sha256:{digest}", live_server.upload(photo)):
        job_id = live_server.submit(small_job(live_server, ref))
        assert live_server.wait(job_id)[-1][1] == "finished"
        results.append(live_server.request("GET", f"/v1/jobs/{job_id}/results/0")[2])
    assert results[0] == results[1]


def test_preview_events_carry_small_pngs(live_server):
    job_id = live_server.submit(small_job(live_server, steps=2), preview=True)
    previews = [data for _, kind, data in live_server.wait(job_id) if kind == "preview"]
    assert previews, "a job that asked for previews got none"
    import base64

    for data in previews:
        image = Image.open(io.BytesIO(base64.b64decode(data["data"])))
        assert data["format"] == "png" and image.size == (data["width"], data["height"])
        assert max(image.size) <= 256 and 1 <= data["step"] <= 2


def test_uploads_are_deduplicated(live_server):
    pixels = np.arange(32 * 16 * 4, dtype=np.uint32).astype(np.uint8).reshape(16, 32, 4)
    body = pixels.tobytes()
    digest = hashlib.sha256(body).hexdigest()
    assert live_server.request("HEAD", f"/v1/images/{digest}")[0] == 404
    status, _, first = live_server.request("PUT", f"/v1/images/{digest}", body, raw_headers(32, 16, 4))
    assert status == 201
    assert json.loads(first) == {"id": f"sha256:{digest}", "width": 32, "height": 16, "channels": 4,
                                 "existed": False}
    assert live_server.request("HEAD", f"/v1/images/{digest}")[0] == 200
    status, _, second = live_server.request("PUT", f"/v1/images/{digest}", body, raw_headers(32, 16, 4))
    assert status == 200 and json.loads(second)["existed"] is True
    # A known hash is answered without looking at the body at all.
    status, _, third = live_server.request("PUT", f"/v1/images/{digest}", b"ignored", {"Content-Type": "image/png"})
    assert status == 200 and json.loads(third)["existed"] is True


def test_preprocess_only(live_server, photo):
    from ctrlgen.core.engine.preprocess import preprocess

    ref = live_server.upload(photo)
    status, headers, body = live_server.request(
        "POST", "/v1/preprocess", {"preprocessor": "canny", "image": ref, "params": {"low_threshold": 50}})
    assert status == 200, body
    assert (headers["x-ctrlgen-width"], headers["x-ctrlgen-height"], headers["x-ctrlgen-channels"]) == ("96", "96", "3")
    expected = preprocess("canny", photo, low_threshold=50).image
    assert np.array_equal(np.frombuffer(body, np.uint8).reshape(96, 96, 3), expected)
    status, headers, body = live_server.request(
        "POST", "/v1/preprocess", {"preprocessor": "canny", "image": ref, "format": "png"})
    assert status == 200 and headers["content-type"] == "image/png"
    # Structured results come along as JSON in X-Ctrlgen-Data.
    status, headers, body = live_server.request("POST", "/v1/preprocess",
                                                {"preprocessor": "shuffle", "image": ref, "params": {"seed": 9}})
    assert status == 200 and json.loads(headers["x-ctrlgen-data"]) == {"seed": 9}
    expected = preprocess("shuffle", photo, seed=9).image
    assert np.array_equal(np.frombuffer(body, np.uint8).reshape(96, 96, 3), expected)
    status, _, body = live_server.request("POST", "/v1/preprocess", {"preprocessor": "no-such", "image": ref})
    assert status == 404 and error_of(body)[0] == "unknown_preprocessor"
    for params, needle in (({"low_threshold": -5}, "low_threshold"), ({"mask": 1}, "mask"), ({"name": "x"}, "name")):
        status, _, body = live_server.request("POST", "/v1/preprocess",
                                              {"preprocessor": "canny", "image": ref, "params": params})
        assert status == 422 and needle in error_of(body)[1], body
    status, _, body = live_server.request("POST", "/v1/preprocess", {"preprocessor": "canny", "image": "sha256:" + "7" * 64})
    assert status == 422 and "7" * 64 in error_of(body)[1]


# -- cancel, reconnect, errors inside jobs ------------------------------------------------------------
def test_cancel_a_running_job_and_the_next_one_runs(live_server):
    job_id = live_server.submit(small_job(live_server, steps=150, width=128, height=128))
    seen = []
    for _, kind, data in live_server.events(job_id):
        seen.append(kind)
        if kind == "progress" and data["step"] == 2:
            status, answer = live_server.json("POST", f"/v1/jobs/{job_id}/cancel")
            assert status == 200 and answer["id"] == job_id
    assert seen[-1] == "cancelled"
    assert seen.count("progress") < 20  # it stopped within a step or so, not after 150
    status, item = live_server.json("GET", f"/v1/jobs/{job_id}")
    assert item["status"] == "cancelled"
    status, _, body = live_server.request("GET", f"/v1/jobs/{job_id}/results/0")
    assert status == 409 and error_of(body)[0] == "job_not_finished"
    after = live_server.submit(small_job(live_server))
    assert live_server.wait(after)[-1][1] == "finished"


def test_cancel_a_queued_job(live_server):
    running = live_server.submit(small_job(live_server, steps=40, width=96, height=96))
    queued = live_server.submit(small_job(live_server))
    status, answer = live_server.json("POST", f"/v1/jobs/{queued}/cancel")
    assert status == 200 and answer == {"id": queued, "status": "cancelled"}
    assert [kind for _, kind, _ in live_server.wait(queued)] == ["queued", "cancelled"]
    live_server.json("POST", f"/v1/jobs/{running}/cancel")
    assert live_server.wait(running)[-1][1] == "cancelled"


def test_cancel_answers_by_state_and_positions(live_server):
    """docs/protocol.md: cancelling a queued job answers `cancelled` at once, the running one
    `running` (its `cancelled` event follows), an ended one its status, unchanged. `position`
    counts what runs before a queued job, the running one included; running and ended jobs: 0."""
    done = live_server.submit(small_job(live_server))
    assert live_server.wait(done)[-1][1] == "finished"
    running = live_server.submit(small_job(live_server, steps=150, width=128, height=128))
    stream = live_server.events(running)
    assert next(kind for _, kind, _ in stream if kind == "progress")
    queued = live_server.submit(small_job(live_server))
    positions = {item["id"]: item["position"] for item in live_server.json("GET", "/v1/jobs")[1]["jobs"]}
    assert (positions[done], positions[running], positions[queued]) == (0, 0, 1)

    assert live_server.json("POST", f"/v1/jobs/{queued}/cancel") == (200, {"id": queued, "status": "cancelled"})
    assert live_server.json("GET", f"/v1/jobs/{queued}")[1]["status"] == "cancelled"
    assert live_server.json("POST", f"/v1/jobs/{running}/cancel") == (200, {"id": running, "status": "running"})
    rest = [kind for _, kind, _ in stream]
    assert rest[-1] == "cancelled" and rest.count("progress") < 20
    for job_id, status in ((running, "cancelled"), (queued, "cancelled"), (done, "finished")):
        assert live_server.json("POST", f"/v1/jobs/{job_id}/cancel") == (200, {"id": job_id, "status": status})
        item = live_server.json("GET", f"/v1/jobs/{job_id}")[1]
        assert (item["status"], item["position"]) == (status, 0)
    assert live_server.request("GET", f"/v1/jobs/{done}/results/0")[0] == 200
    assert [kind for _, kind, _ in live_server.wait(done)][-1] == "finished"  # no cancelled event after it


def test_event_stream_reconnects_where_it_left_off(live_server):
    job_id = live_server.submit(small_job(live_server, steps=6))
    # Drop the connection in the middle of the job, as a client losing its network would...
    first = []
    for event in live_server.events(job_id):
        first.append(event)
        if event[1] == "progress":
            break
    # ...and come back with Last-Event-ID: only what came later, nothing twice, nothing lost.
    rest = list(live_server.events(job_id, last_event_id=first[-1][0]))
    assert rest[0][0] == first[-1][0] + 1
    full = live_server.wait(job_id)
    assert first + rest == full
    assert [kind for _, kind, _ in full][-1] == "finished"
    assert list(live_server.events(job_id, after=4)) == full[4:]
    assert list(live_server.events(job_id, after=len(full))) == []


def test_quiet_event_streams_get_keepalive_comments(server_factory):
    server = server_factory("--keepalive", "0.2")
    running = server.submit(small_job(server, steps=150, width=128, height=128))
    waiting = server.submit(small_job(server))  # waits behind the long one: a quiet stream
    connection = server.connection(timeout=30)
    connection.request("GET", f"/v1/jobs/{waiting}/events", headers={"Authorization": f"Bearer {server.token}"})
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    lines = [response.readline() for _ in range(6)]
    connection.close()
    assert lines[:4] == [b"id: 1\n", b"event: queued\n", b'data: {"position":1}\n', b"\n"]
    assert lines[4:] == [b": ping\n", b"\n"]
    for job_id in (waiting, running):
        server.json("POST", f"/v1/jobs/{job_id}/cancel")


def test_a_job_error_leaves_the_server_serving(live_server):
    # A missing model is known before the job is queued: 422, with the job error's code.
    status, _, body = live_server.request("POST", "/v1/jobs", {"job": small_job(live_server, model="no-such-model")})
    assert status == 422 and error_of(body)[0] == "model_not_found" and "no-such-model" in error_of(body)[1]
    bad_unit = small_job(live_server, control=[{"model": "no-such-controlnet", "preprocessor": "none"}],
                         image=live_server.upload(np.zeros((64, 64, 3), np.uint8)))
    status, _, body = live_server.request("POST", "/v1/jobs", {"job": bad_unit})
    assert status == 422 and "control[0].model" in error_of(body)[1]
    # What only the loaded checkpoint tells (the tiny text encoder has too few layers for this
    # clip_skip) ends the job with an error event.
    job_id = live_server.submit(small_job(live_server, clip_skip=12))
    events = live_server.wait(job_id)
    assert [kind for _, kind, _ in events] == ["queued", "started", "error"]
    assert events[-1][2]["code"] == "invalid_job" and "job.clip_skip=12" in events[-1][2]["message"]
    status, item = live_server.json("GET", f"/v1/jobs/{job_id}")
    assert item["status"] == "error" and item["error"]["code"] == "invalid_job"
    ok = live_server.submit(small_job(live_server))
    assert live_server.wait(ok)[-1][1] == "finished"
    assert live_server.json("GET", "/v1/health")[0] == 200


# -- security ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/health", "/v1/capabilities", "/openapi.json", "/v1/jobs", "/v1/nope"])
def test_every_route_needs_the_token(live_server, path):
    for token in (None, "wrong-token", live_server.token[:-1]):
        status, headers, body = live_server.request("GET", path, token=token)
        assert status == 401 and error_of(body)[0] == "unauthorized"
        assert headers["www-authenticate"].startswith("Bearer")
    status, _, _ = live_server.request("GET", path, headers={"Authorization": f"Basic {live_server.token}"},
                                       token=None)
    assert status == 401


def test_foreign_origin_is_refused(live_server):
    status, _, body = live_server.request("GET", "/v1/health", headers={"Origin": "https://evil.example"})
    assert status == 403 and error_of(body)[0] == "forbidden_origin"


@pytest.mark.parametrize("host", ["evil.com", "evil.com:7421", "127.0.0.1.nip.io", "192.168.1.10"])
def test_non_loopback_host_header_is_refused(live_server, host):
    status, _, body = live_server.request("GET", "/v1/health", headers={"Host": host})
    assert status == 403 and error_of(body)[0] == "forbidden_host"


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]:7421", "LOCALHOST:80"])
def test_loopback_host_headers_are_accepted(live_server, host):
    assert live_server.request("GET", "/v1/health", headers={"Host": host})[0] == 200


def test_allowed_origin_and_host_options(server_factory):
    server = server_factory("--allowed-origin", "https://app.example")
    assert server.request("GET", "/v1/health", headers={"Origin": "https://app.example"})[0] == 200
    assert server.request("GET", "/v1/health", headers={"Origin": "https://other.example"})[0] == 403


# -- limits and malformed input ------------------------------------------------------------------------
def _raw_request(server, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send a hand-written request on a socket and read the whole answer."""
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        chunks = []
        sock.settimeout(30)
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                answer = b"".join(chunks)
                head_part, _, rest = answer.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head_part.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if length is not None and len(rest) >= length:
                    break
    answer = b"".join(chunks)
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


def test_oversize_upload_is_refused_before_it_is_read(live_server):
    digest = "ab" * 32
    head = (f"PUT /v1/images/{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {live_server.token}\r\n"
            f"Content-Type: image/png\r\nContent-Length: {300 * 2**20}\r\n\r\n")
    status, body = _raw_request(live_server, head, b"\x89PNG")
    assert status == 413 and error_of(body)[0] == "too_large"


def test_oversize_chunked_upload_is_cut_off(server_factory):
    server = server_factory("--max-upload-bytes", "64K")
    digest = "cd" * 32
    connection = server.connection()
    connection.putrequest("PUT", f"/v1/images/{digest}")
    for name, value in {"Authorization": f"Bearer {server.token}", "Content-Type": "image/png",
                        "Transfer-Encoding": "chunked"}.items():
        connection.putheader(name, value)
    connection.endheaders()
    for _ in range(4):
        connection.send(b"8000\r\n" + b"x" * 0x8000 + b"\r\n")
    connection.send(b"0\r\n\r\n")
    response = connection.getresponse()
    assert response.status == 413 and error_of(response.read())[0] == "too_large"
    connection.close()
    assert server.request("GET", "/v1/health")[0] == 200


@pytest.mark.parametrize(("headers", "body", "code"), [
    (raw_headers(8, 8, 3), b"\0" * (8 * 8 * 3 - 1), "invalid_request"),  # length does not match w*h*c
    (raw_headers(100000, 100000, 4), b"\0" * 16, "too_many_pixels"),
    (raw_headers(9000, 2, 1), b"\0" * 18000, "too_many_pixels"),
    (raw_headers(8, 8, 2), b"\0" * 128, "invalid_request"),  # two channels is no layout
    ({"Content-Type": RAW, "X-Ctrlgen-Width": "8"}, b"\0" * 64, "invalid_request"),
    ({"Content-Type": "image/png"}, b"not a png at all", "invalid_image"),
    ({"Content-Type": "image/gif"}, b"GIF89a", "invalid_request"),
])
def test_bad_uploads_get_422(live_server, headers, body, code):
    digest = hashlib.sha256(body).hexdigest()
    status, _, answer = live_server.request("PUT", f"/v1/images/{digest}", body, headers)
    assert status == 422 and error_of(answer)[0] == code, answer
    assert live_server.request("HEAD", f"/v1/images/{digest}")[0] == 404


def test_hash_mismatch_and_bad_digest(live_server):
    body = b"\1" * 12
    status, _, answer = live_server.request("PUT", f"/v1/images/{'0' * 64}", body, raw_headers(2, 2, 3))
    assert status == 400 and error_of(answer)[0] == "hash_mismatch"
    assert hashlib.sha256(body).hexdigest() in error_of(answer)[1]
    status, _, answer = live_server.request("PUT", "/v1/images/NOT-A-HASH", body, raw_headers(2, 2, 3))
    assert status == 422 and error_of(answer)[0] == "invalid_request"
    # Big bodies are hashed on a thread while they stream in: same answers.
    big = np.random.default_rng(3).integers(0, 256, (1024, 1280, 4), dtype=np.uint8)
    digest = hashlib.sha256(big.tobytes()).hexdigest()
    status, _, answer = live_server.request("PUT", f"/v1/images/{'1' * 64}", big.tobytes(), raw_headers(1280, 1024, 4))
    assert status == 400 and digest in error_of(answer)[1]
    assert live_server.upload(big) == f"sha256:{digest}"


def test_bad_jobs_get_422_with_a_readable_message(live_server):
    unknown = "sha256:" + "e" * 64
    cases = [
        (b"{not json", "JSON"),
        (json.dumps({"job": {"model": live_server.model, "steps": 0}}), "job.steps"),
        (json.dumps({"job": {"model": live_server.model, "sampler": "Nope"}}), "unknown sampler"),
        (json.dumps({"job": small_job(live_server, unknown)}), unknown),
        (json.dumps({"job": {**small_job(live_server), "mask": unknown, "image": unknown}}), "job.image"),
        (json.dumps({"job": small_job(live_server, "/etc/passwd")}), "uploads"),
        (json.dumps({"jobs": {}}), "job"),
        (json.dumps([1, 2]), "request"),
    ]
    for body, needle in cases:
        status, _, answer = live_server.request("POST", "/v1/jobs", body, {"Content-Type": "application/json"})
        assert status == 422, (body, answer)
        code, message = error_of(answer)
        assert code == "invalid_request" and needle in message, (body, message)
    assert live_server.json("GET", "/v1/health")[0] == 200


def test_unknown_jobs_and_results(live_server):
    status, _, body = live_server.request("GET", "/v1/jobs/nope")
    assert status == 404 and error_of(body)[0] == "not_found"
    assert live_server.request("GET", "/v1/jobs/nope/events")[0] == 404
    assert live_server.request("POST", "/v1/jobs/nope/cancel")[0] == 404
    job_id = live_server.submit(small_job(live_server))
    live_server.wait(job_id)
    status, _, body = live_server.request("GET", f"/v1/jobs/{job_id}/results/3")
    assert status == 404 and error_of(body)[0] == "not_found"
    status, _, body = live_server.request("GET", f"/v1/jobs/{job_id}/results/0?format=jpeg")
    assert status == 422 and error_of(body)[0] == "invalid_request"


def test_queue_full_gives_429_and_ended_jobs_expire(server_factory):
    server = server_factory("--max-queue", "1", "--result-ttl", "0")
    long_job = small_job(server, steps=150, width=128, height=128)
    running = server.submit(long_job)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the worker takes it once warmed up; then one more may wait
        if server.json("GET", "/v1/health")[1]["queue"]["running"] == running:
            break
        time.sleep(0.01)
    queued = server.submit(long_job)
    status, headers, body = server.request("POST", "/v1/jobs", {"job": long_job})
    assert status == 429 and error_of(body)[0] == "queue_full" and int(headers["retry-after"]) > 0
    status, health = server.json("GET", "/v1/health")
    assert health["queue"] == {"running": running, "queued": 1}
    status, _, body = server.request("GET", f"/v1/jobs/{queued}/results/0")
    assert status == 409 and error_of(body)[0] == "job_not_finished"
    assert server.json("POST", f"/v1/jobs/{queued}/cancel")[1]["status"] == "cancelled"
    # --result-ttl 0: an ended job is dropped at the next clean-up (listing the jobs runs one).
    status, listing = server.json("GET", "/v1/jobs")
    assert [job["id"] for job in listing["jobs"]] == [running]
    for path in (f"/v1/jobs/{queued}/results/0", f"/v1/jobs/{queued}"):
        status, _, body = server.request("GET", path)
        assert status == 410 and error_of(body)[0] == "result_expired"
    server.json("POST", f"/v1/jobs/{running}/cancel")
    assert server.request("POST", "/v1/jobs", {"job": long_job})[0] == 202  # room again


# -- start-up and shutdown ---------------------------------------------------------------------------------
def test_token_file_is_private_and_reused(server_factory, tmp_path):
    folder = tmp_path / "config"
    first = server_factory(config_dir=folder)
    token_file = folder / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert len(first.token) >= 32
    first.stop()
    second = server_factory(config_dir=folder)
    assert second.token == first.token
    assert second.request("GET", "/v1/health")[0] == 200


def test_server_json_written_while_listening_and_removed_on_shutdown(server_factory):
    server = server_factory()
    info = json.loads((server.config_dir / "server.json").read_text())
    assert info == {"url": server.url, "unix_socket": None, "pid": server.process.pid, "version": info["version"]}
    assert info["url"].startswith("http://127.0.0.1:")
    server.stop()
    assert not (server.config_dir / "server.json").exists()


def test_non_loopback_bind_needs_allow_remote(tmp_path, bridge_model_root, server_factory, launch_server):
    process = launch_server(tmp_path / "refused", bridge_model_root, "--host", "0.0.0.0", "--port", "0")
    assert process.wait(60) == 2
    log = (tmp_path / "refused" / "serve.log").read_text()
    assert "--allow-remote" in log and not (tmp_path / "refused" / "server.json").exists()
    server = server_factory("--host", "0.0.0.0", "--allow-remote")
    assert "WARNING" in server.log()
    connection = server.connection()
    connection.request("GET", "/v1/health", headers={"Authorization": f"Bearer {server.token}", "Host": "gpu-box"})
    assert connection.getresponse().status == 200  # --allow-remote without --allowed-host: any Host


def test_unix_socket(server_factory, tmp_path):
    import http.client
    import os

    path = str(tmp_path / "ctrlgen.sock")
    server = server_factory("--unix-socket", path)
    assert json.loads((server.config_dir / "server.json").read_text())["unix_socket"] == path
    assert os.stat(path).st_mode & 0o777 == 0o600

    class UnixConnection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(path)

    connection = UnixConnection("localhost")
    connection.request("GET", "/v1/health", headers={"Authorization": f"Bearer {server.token}"})
    response = connection.getresponse()
    assert response.status == 200 and json.loads(response.read())["status"] == "ok"
    connection.request("GET", "/v1/health")
    assert connection.getresponse().status == 401
    connection.close()
    server.stop()
    assert not os.path.exists(path)


def test_concurrent_uploads_and_requests_while_a_job_runs(live_server):
    """The HTTP side answers while the worker is busy."""
    job_id = live_server.submit(small_job(live_server, steps=30, width=96, height=96))
    errors: list[BaseException] = []

    def hammer(seed: int) -> None:
        try:
            pixels = np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)
            ref = live_server.upload(pixels)
            assert live_server.request("HEAD", f"/v1/images/{ref[7:]}")[0] == 200
            assert live_server.json("GET", "/v1/health")[0] == 200
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    status, item = live_server.json("GET", f"/v1/jobs/{job_id}")
    assert item["status"] in ("queued", "running")  # all of that happened while the job ran
    live_server.json("POST", f"/v1/jobs/{job_id}/cancel")
    assert live_server.wait(job_id)[-1][1] == "cancelled"


def test_upload_memory_is_bounded_and_spares_images_jobs_use(server_factory):
    server = server_factory("--max-upload-memory", "40K")
    images = [np.full((64, 64, 3), value, np.uint8) for value in (10, 20, 30, 40)]  # 12 KiB each
    refs = [server.upload(images[0])]
    job_id = server.submit(small_job(server, refs[0], steps=150, width=128, height=128))  # pins images[0]
    refs += [server.upload(image) for image in images[1:3]]  # 36 KiB in memory
    assert server.request("HEAD", f"/v1/images/{refs[1][7:]}")[0] == 200  # a use: now the newest
    refs.append(server.upload(images[3]))  # no room: the least recently used one no job needs leaves memory
    memory = server.json("GET", "/v1/health")[1]["uploads"]
    assert memory["memory_limit_bytes"] == 40 * 1024 and memory["in_memory_bytes"] <= 40 * 1024
    # ...but not the server: it is read back from its file when a job names it
    known = [server.request("HEAD", f"/v1/images/{ref[7:]}")[0] for ref in refs]
    assert known == [200, 200, 200, 200]
    evicted = server.submit(small_job(server, refs[2], steps=1))
    server.json("POST", f"/v1/jobs/{job_id}/cancel")
    assert server.wait(evicted)[-1][1] == "finished"
    big = np.zeros((128, 128, 3), np.uint8)  # 48 KiB: more than all upload memory
    status, _, body = server.request("PUT", f"/v1/images/{hashlib.sha256(big.tobytes()).hexdigest()}",
                                     big.tobytes(), raw_headers(128, 128, 3))
    assert status == 413 and error_of(body)[0] == "too_large"


def test_cli_help_imports_no_server_or_engine(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from ctrlgen.core.cli.main import build_parser; build_parser().format_help(); "
            "heavy = sorted(m for m in ('torch', 'diffusers', 'fastapi', 'uvicorn', 'starlette') if m in sys.modules); "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    help_text = subprocess.run([sys.executable, "-m", "ctrlgen.core.cli.main", "serve", "--help"],
                               capture_output=True, text=True, check=True).stdout
    for option in ("--unix-socket", "--allow-remote", "--allowed-origin", "--result-ttl", "--max-queue"):
        assert option in help_text


def test_capabilities_list_the_detectors(live_server):
    status, caps = live_server.json("GET", "/v1/capabilities")
    assert status == 200
    by_name = {d["name"]: d for d in caps["detectors"]}
    assert by_name["mediapipe_face_full"]["finds"] == ["face"]
    assert by_name["mediapipe_hands"]["finds"] == ["hand"]
    assert by_name["scrfd"]["needs_weights"] and by_name["scrfd"]["weights"]
    assert all(isinstance(d["params"], list) and "needs_weights" in d for d in caps["detectors"])
