"""The standard-library client against a real `ctrlgen serve` (tiny SD1.5 model on CPU)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ctrlgen.host_bridges.client import (
    AuthError,
    Client,
    ClientError,
    JobFailed,
    RawImage,
    ServerNotRunning,
)


class CountingClient(Client):
    """A Client that records its requests and the event-stream connections it opens."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[str, str]] = []
        self.streams_opened = 0

    def request(self, method, path, *args, **kwargs):
        self.sent.append((method, path))
        return super().request(method, path, *args, **kwargs)

    def events(self, *args, **kwargs):
        original = self._new_connection

        def counted(timeout=None):
            self.streams_opened += 1
            return original(timeout)

        self._new_connection = counted
        try:
            yield from super().events(*args, **kwargs)
        finally:
            del self._new_connection


@pytest.fixture
def client(live_server):
    with CountingClient(live_server.url, token=live_server.token) as made:
        yield made


@pytest.fixture(scope="module")
def canvas() -> RawImage:
    from skimage import data

    photo = Image.fromarray(data.astronaut()).resize((64, 64)).convert("RGBA")
    return RawImage(photo.tobytes(), 64, 64, 4)


@pytest.fixture(scope="module")
def mask() -> RawImage:
    image = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(image).ellipse((16, 12, 48, 52), fill=255)
    return RawImage(image.tobytes(), 64, 64, 1)


def array_of(image: RawImage) -> np.ndarray:
    pixels = np.frombuffer(bytes(image.data), np.uint8)
    return pixels.reshape(image.height, image.width) if image.channels == 1 else \
        pixels.reshape(image.height, image.width, image.channels)


def inpaint_job(server, **overrides) -> dict:
    job = {"model": server.model, "prompt": "a red helmet", "seed": 11, "steps": 3, "width": 64, "height": 64,
           "strength": 1.0}
    job.update(overrides)
    return job


def test_run_inpaint_matches_the_engine_in_process(live_server, client, canvas, mask, bridge_model_root,
                                                   torch_single_thread):
    events = []
    job = inpaint_job(live_server)
    results = client.run(job, images={"image": canvas, "mask": mask}, on_event=events.append)

    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert [e.kind for e in events] == ["queued", "started", "progress", "progress", "progress", "finished"]
    assert [e.data["step"] for e in events if e.kind == "progress"] == [1, 2, 3]
    # RGBA in (as Krita sends its layers), RGBA out.
    finished = events[-1].data["results"]
    assert [{key: item[key] for key in ("index", "width", "height", "channels", "seed")} for item in finished] == [
        {"index": 0, "width": 64, "height": 64, "channels": 4, "seed": 11}]
    assert len(results) == 1
    served = results[0]
    assert (served.width, served.height, served.channels) == (64, 64, 4)
    assert isinstance(served.data, bytes) and len(served.data) == 64 * 64 * 4

    from ctrlgen.core.engine.engine import Engine
    from ctrlgen.core.engine.jobs import parse_job
    from ctrlgen.core.models.store import ModelStore
    from ctrlgen.core.plugins.specs import ModelRoot

    arrays = {"canvas": array_of(canvas), "mask": array_of(mask)}
    engine = Engine(store=ModelStore([ModelRoot(bridge_model_root)]), device="cpu")
    local = engine.run(parse_job({**job, "image": "canvas", "mask": "mask"}), images=lambda ref, what: arrays[ref])
    expected = np.asarray(local.images[0])
    assert np.array_equal(array_of(served), expected)
    # The region the engine says may have changed is reported as it is (docs/protocol.md#regions).
    assert finished[0]["changed_box"] == list(local.changed_box) and finished[0]["offset"] == [0, 0]
    # Inpainting keeps every pixel outside the (feathered) mask: the corners are the canvas's.
    assert np.array_equal(array_of(served)[:4, :4], array_of(canvas)[:4, :4])
    assert not np.array_equal(array_of(served), array_of(canvas))


def test_step_by_step_flow_and_upload_dedup(live_server, client, canvas, mask):
    # Bytes no other test uploaded to the shared server.
    stamp = os.urandom(8)
    canvas = RawImage(stamp + bytes(canvas.data)[8:], 64, 64, 4)
    mask = RawImage(stamp + bytes(mask.data)[8:], 64, 64, 1)
    canvas_ref = client.upload(canvas)
    mask_ref = client.upload(mask)
    assert client.upload(canvas) == canvas_ref  # known to this client: no request at all
    assert client.sent == [("HEAD", f"/v1/images/{canvas_ref[7:]}"), ("PUT", f"/v1/images/{canvas_ref[7:]}"),
                           ("HEAD", f"/v1/images/{mask_ref[7:]}"), ("PUT", f"/v1/images/{mask_ref[7:]}")]

    with CountingClient(live_server.url, token=live_server.token) as other:
        assert other.upload(RawImage(memoryview(bytes(canvas.data)), 64, 64, 4)) == canvas_ref
        assert other.sent == [("HEAD", f"/v1/images/{canvas_ref[7:]}")]  # the server has it: no PUT

    job_id = client.submit(inpaint_job(live_server, image=canvas_ref, mask=mask_ref, steps=2))
    final = client.wait(job_id)
    assert final.kind == "finished"
    listed = {item["id"]: item for item in client.jobs()}
    assert listed[job_id]["status"] == "finished"
    assert client.job(job_id)["results"][0]["seed"] == 11
    raw = client.result(job_id)
    png = client.result(job_id, format="png")
    import io

    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), array_of(raw))  # RGBA in, RGBA out
    # Events replay from the start, or after a given id.
    assert [e.id for e in client.events(job_id, after=2)] == [3, 4, 5]
    assert list(client.events(job_id, after=5)) == []


def test_cancel_from_the_event_callback(live_server, client):
    job_id = client.submit({"model": live_server.model, "prompt": "x", "seed": 1, "steps": 150,
                            "width": 128, "height": 128})
    seen = []

    def on_event(event):
        seen.append(event)
        if event.kind == "progress" and event.data["step"] == 2:
            assert client.cancel(job_id)["id"] == job_id

    final = client.wait(job_id, on_event)
    assert final.kind == "cancelled"
    assert sum(e.kind == "progress" for e in seen) < 20
    assert client.job(job_id)["status"] == "cancelled"
    with pytest.raises(ClientError) as info:
        client.result(job_id)
    assert (info.value.status, info.value.code) == (409, "job_not_finished")


def test_event_stream_resumes_after_the_connection_drops(live_server, client):
    job_id = client.submit({"model": live_server.model, "prompt": "x", "seed": 2, "steps": 20,
                            "width": 64, "height": 64})
    seen = []
    cut = []

    def on_event(event):
        seen.append(event)
        if event.kind == "progress" and not cut:
            # The network drops under the stream (not a close() of the client).
            for conn in list(client._streams):
                conn.sock.shutdown(socket.SHUT_RDWR)
                cut.append(event.id)

    final = client.wait(job_id, on_event)
    assert cut, "the stream was never cut"
    assert final.kind == "finished"
    assert [e.id for e in seen] == list(range(1, len(seen) + 1))  # nothing lost, nothing twice
    assert [e.data["step"] for e in seen if e.kind == "progress"] == list(range(1, 21))
    assert client.streams_opened >= 2


def test_job_error_raises_job_failed(live_server, client):
    # A missing model is refused at submission (422, the job error's code) ...
    with pytest.raises(ClientError) as refused:
        client.run({"model": "no-such-model", "prompt": "x", "steps": 2, "width": 64, "height": 64})
    assert (refused.value.status, refused.value.code) == (422, "model_not_found")
    assert "no-such-model" in str(refused.value) and not isinstance(refused.value, JobFailed)
    # ... what only the loaded checkpoint tells ends the job with an error event.
    with pytest.raises(JobFailed) as info:
        client.run({"model": live_server.model, "prompt": "x", "steps": 2, "width": 64, "height": 64, "clip_skip": 12})
    assert info.value.code == "invalid_job"
    assert "clip_skip" in str(info.value) and info.value.job_id
    assert client.health()["status"] == "ok"


def test_invalid_job_is_a_client_error_with_the_reason(live_server, client):
    with pytest.raises(ClientError) as info:
        client.submit({"model": live_server.model, "steps": 0})
    assert info.value.status == 422 and info.value.code == "invalid_request"
    assert "steps" in info.value.message


def test_preprocess_on_the_server_matches_in_process(live_server, client, canvas):
    from ctrlgen.core.engine.preprocess import preprocess

    result, data = client.preprocess("canny", canvas, params={"low_threshold": 50, "high_threshold": 150})
    assert (result.width, result.height, result.channels) == (64, 64, 3)
    expected = preprocess("canny", array_of(canvas), low_threshold=50, high_threshold=150).image
    assert np.array_equal(array_of(result), expected)
    with pytest.raises(ClientError) as info:
        client.preprocess("no-such-preprocessor", canvas)
    assert (info.value.status, info.value.code) == (404, "unknown_preprocessor")


def test_wrong_token_is_auth_error(live_server):
    with Client(live_server.url, token="wrong", config_folder=live_server.config_dir) as bad, \
            pytest.raises(AuthError) as info:
        bad.health()
    assert info.value.status == 401
    assert str(live_server.config_dir / "token") in str(info.value)


def test_discover_finds_the_running_server(live_server):
    with Client.discover(live_server.config_dir) as found:
        assert found.url == live_server.url
        assert found.token == live_server.token
        assert found.health()["status"] == "ok"


def test_no_server_is_server_not_running(tmp_path):
    with pytest.raises(ServerNotRunning, match="start it with `ctrlgen serve`"):
        Client.discover(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}", token="x") as nobody, \
            pytest.raises(ServerNotRunning, match="start it with `ctrlgen serve`"):
        nobody.capabilities()


def test_unix_socket_and_evicted_uploads(server_factory, tmp_path, canvas, mask):
    path = str(tmp_path / "ctrlgen.sock")
    server = server_factory("--unix-socket", path, "--max-upload-memory", "40K")
    with Client.discover(server.config_dir) as client:
        assert client.unix_socket == path  # discovery prefers the socket when there is one
        job = inpaint_job(server, steps=1)
        first = client.run(job, images={"image": canvas, "mask": mask})
        # Two other uploads push the canvas and mask out of the server's 40 KiB of upload memory,
        # and their files are deleted behind the server's back...
        for value in (1, 2):
            client.upload(RawImage(bytes([value]) * (64 * 64 * 4), 64, 64, 4))
        digest = client.upload(canvas)[7:]
        (server.config_dir / "server" / "uploads" / digest).unlink()
        status, _, _ = client.request("HEAD", f"/v1/images/{digest}", ok=(200, 404))
        assert status == 404
        # ...which this client still believes the server has: run() notices and uploads them again.
        again = client.run(job, images={"image": canvas, "mask": mask})
    assert again[0].data == first[0].data
