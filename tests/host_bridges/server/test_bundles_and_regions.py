"""Bundles (a request with the images it needs, in one request) and region transport (a patch of
a canvas up, only the changed box down), against a real `ctrlgen serve` with the tiny model."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from ctrlgen.host_bridges.client import Client, ClientError, RawImage

BUNDLE = "application/vnd.ctrlgen.bundle"


def entry(pixels: np.ndarray, **overrides) -> dict:
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    item = {"id": "sha256:" + hashlib.sha256(pixels.tobytes()).hexdigest(), "format": "raw",
            "width": pixels.shape[1], "height": pixels.shape[0], "channels": channels, "length": pixels.nbytes}
    item.update(overrides)
    return item


def bundle_body(request: dict, images: list[np.ndarray], entries: list[dict] | None = None) -> bytes:
    header = json.dumps({"request": request, "images": entries or [entry(p) for p in images]}).encode()
    return len(header).to_bytes(4, "little") + header + b"".join(p.tobytes() for p in images)


def post_bundle(server, path: str, body: bytes, **headers):
    return server.request("POST", path, body, {"Content-Type": BUNDLE, **headers})


def canvas_and_mask(seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    canvas = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
    canvas[..., 3] = 255
    mask = np.zeros((size, size), np.uint8)
    mask[20:40, 24:44] = 255
    return canvas, mask


def inpaint_job(server, **overrides) -> dict:
    job = {"model": server.model, "prompt": "a red helmet", "seed": 3, "steps": 2, "width": 64, "height": 64,
           "strength": 1.0}
    job.update(overrides)
    return job


# -- bundles ---------------------------------------------------------------------------------------
def test_a_bundle_submits_a_job_with_its_images_in_one_request(live_server):
    canvas, mask = canvas_and_mask(1)
    job = inpaint_job(live_server, image=entry(canvas)["id"], mask=entry(mask)["id"])
    status, _, body = post_bundle(live_server, "/v1/jobs/bundle", bundle_body({"job": job}, [canvas, mask]))
    assert status == 202, body
    job_id = json.loads(body)["id"]
    assert live_server.wait(job_id)[-1][1] == "finished"
    # The images are stored as by PUT: known to HEAD, and a second bundle need not carry them.
    for pixels in (canvas, mask):
        assert live_server.request("HEAD", f"/v1/images/{entry(pixels)['id'][7:]}")[0] == 200
    status, _, body = post_bundle(live_server, "/v1/jobs/bundle", bundle_body({"job": job}, []))
    assert status == 202, body


def test_a_bundle_runs_a_preprocessor_like_the_json_route(live_server):
    canvas, mask = canvas_and_mask(2)
    rgb = np.ascontiguousarray(canvas[..., :3])
    request = {"preprocessor": "canny", "image": entry(rgb)["id"], "params": {}}
    status, headers, bundled = post_bundle(live_server, "/v1/preprocess/bundle", bundle_body(request, [rgb]))
    assert status == 200, bundled
    status, _, plain = live_server.request("POST", "/v1/preprocess", request)
    assert status == 200 and plain == bundled and headers["x-ctrlgen-width"] == "64"


@pytest.mark.parametrize("case, status, code, words", [
    ("wrong id", 400, "hash_mismatch", "images[0]: its bytes hash to"),
    ("bad request", 422, "invalid_request", "job.steps"),
    ("bad header", 422, "invalid_request", "bundle's JSON header"),
    ("short raw", 422, "invalid_request", "a raw 64×64 image with 4 channel(s) has 16384 bytes"),
    ("json body", 422, "invalid_request", "is not a bundle"),
])
def test_bad_bundles_get_clear_errors_and_queue_nothing(live_server, case, status, code, words):
    canvas, _ = canvas_and_mask(3)
    job = inpaint_job(live_server, image=entry(canvas)["id"])
    body = bundle_body({"job": job}, [canvas])
    headers = {}
    if case == "wrong id":
        body = bundle_body({"job": job}, [canvas], [entry(canvas, id="sha256:" + "0" * 64)])
    elif case == "bad request":
        body = bundle_body({"job": {**job, "steps": 0}}, [canvas])
    elif case == "bad header":
        body = (7).to_bytes(4, "little") + b"[1,2,3]" + canvas.tobytes()
    elif case == "short raw":
        half = canvas[:32]
        body = bundle_body({"job": job}, [half], [entry(half, height=64)])
    elif case == "json body":
        headers = {"Content-Type": "application/json"}
    before = len(live_server.json("GET", "/v1/jobs")[1]["jobs"])
    answer = post_bundle(live_server, "/v1/jobs/bundle", body, **headers)
    assert answer[0] == status, answer
    assert json.loads(answer[2])["error"]["code"] == code and words in json.loads(answer[2])["error"]["message"]
    assert len(live_server.json("GET", "/v1/jobs")[1]["jobs"]) == before


def test_the_client_sends_one_bundle_and_then_only_what_is_new(live_server):
    canvas, mask = canvas_and_mask(4)
    with Client(live_server.url, token=live_server.token) as client:
        sent = []
        original = client.request

        def counting(method, path, *args, **kwargs):
            sent.append(f"{method} {path}")
            return original(method, path, *args, **kwargs)

        client.request = counting
        images = {"image": RawImage(canvas.tobytes(), 64, 64, 4), "mask": RawImage(mask.tobytes(), 64, 64, 1)}
        first = client.run(inpaint_job(live_server), images=images)
        assert [line for line in sent if not line.startswith("GET")] == ["POST /v1/jobs/bundle"]
        sent.clear()
        again = client.run(inpaint_job(live_server), images=images)
        assert [line for line in sent if not line.startswith("GET")] == ["POST /v1/jobs/bundle"]
        assert first[0].data == again[0].data
        assert entry(canvas)["id"][7:] in client._known and entry(mask)["id"][7:] in client._known


# -- regions ---------------------------------------------------------------------------------------
def test_a_patch_job_reports_where_its_result_lies_and_serves_crops(live_server):
    canvas, mask = canvas_and_mask(5)
    job = inpaint_job(live_server, image_offset=[100, 40], canvas_size=[512, 256])
    with Client(live_server.url, token=live_server.token) as client:
        whole = client.run(job, images={"image": RawImage(canvas.tobytes(), 64, 64, 4),
                                        "mask": RawImage(mask.tobytes(), 64, 64, 1)})[0]
        job_id = client.jobs()[-1]["id"]
        info = client.job(job_id)["results"][0]
        assert info["offset"] == [100, 40] and info["canvas_size"] == [512, 256]
        x0, y0, x1, y1 = info["changed_box"]
        assert 0 <= x0 <= 24 and 0 <= y0 <= 20 and 44 <= x1 <= 64 and 40 <= y1 <= 64  # the mask, padded
        pixels = np.frombuffer(whole.data, np.uint8).reshape(64, 64, 4)
        crop, box = client.result(job_id, changed_only=True)
        assert box == (x0, y0, x1, y1) and (crop.width, crop.height) == (x1 - x0, y1 - y0)
        assert np.array_equal(np.frombuffer(crop.data, np.uint8).reshape(y1 - y0, x1 - x0, 4),
                              pixels[y0:y1, x0:x1])
        crop, box = client.result(job_id, box=(0, 0, 8, 4))
        assert box == (0, 0, 8, 4) and crop.data == pixels[:4, :8].tobytes()
        png, box = client.result(job_id, format="png", changed_only=True)
        assert png.startswith(b"\x89PNG") and box == (x0, y0, x1, y1)
        # Outside the changed box the result is the canvas, bit for bit.
        outside = np.ones((64, 64), bool)
        outside[y0:y1, x0:x1] = False
        assert np.array_equal(pixels[outside], canvas[outside])


def test_a_whole_new_image_has_no_changed_box_and_crops_are_checked(live_server):
    job_id = live_server.submit({"model": live_server.model, "prompt": "x", "seed": 1, "steps": 1, "width": 64,
                                 "height": 64})
    assert live_server.wait(job_id)[-1][1] == "finished"
    info = live_server.json("GET", f"/v1/jobs/{job_id}")[1]["results"][0]
    assert "changed_box" not in info and "offset" not in info
    status, headers, body = live_server.request("GET", f"/v1/jobs/{job_id}/results/0?changed=1")
    assert status == 200 and headers["x-ctrlgen-box"] == "0,0,64,64" and len(body) == 64 * 64 * 3
    for query, words in (("box=0,0,65,10", "not inside the 64×64 result"), ("box=5,5,5,9", "x0 < x1"),
                         ("box=a,b", "four whole numbers"), ("box=0,0,4,4&changed=1", "send one of them")):
        status, _, body = live_server.request("GET", f"/v1/jobs/{job_id}/results/0?{query}")
        assert status == 422 and words in json.loads(body)["error"]["message"], (query, body)


def test_a_patch_outside_its_canvas_is_refused_naming_both_fields(live_server):
    canvas, mask = canvas_and_mask(6)
    with Client(live_server.url, token=live_server.token) as client, pytest.raises(ClientError) as caught:
        client.run(inpaint_job(live_server, image_offset=[480, 0], canvas_size=[512, 256]),
                   images={"image": RawImage(canvas.tobytes(), 64, 64, 4),
                           "mask": RawImage(mask.tobytes(), 64, 64, 1)})
    assert caught.value.status == 422
    assert "image_offset" in caught.value.message and "canvas_size" in caught.value.message
