"""Raw image answers over 1 MiB go to the connection in slices (images.SlicedResponse): the
same bytes and Content-Length as one piece, each slice written after the previous drained."""

from __future__ import annotations

import asyncio
import hashlib
import json

import numpy as np

from ctrlgen.host_bridges.server.images import RAW_TYPE, SlicedResponse, image_response


def _messages(response, method: str = "GET") -> list[dict]:
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():  # pragma: no cover - never asked
        return {"type": "http.disconnect"}

    asyncio.run(response({"type": "http", "method": method}, receive, send))
    return sent


def test_a_big_raw_answer_is_sent_in_slices_with_the_same_bytes():
    pixels = np.random.default_rng(0).integers(0, 256, (700, 900, 3), dtype=np.uint8)  # 1.8 MiB
    response = image_response(pixels, None, "raw", {"X-Ctrlgen-Seed": "3"})
    assert isinstance(response, SlicedResponse)
    sent = _messages(response)
    start, bodies = sent[0], sent[1:]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    assert headers["content-length"] == str(pixels.nbytes) and headers["content-type"] == RAW_TYPE
    assert (headers["x-ctrlgen-width"], headers["x-ctrlgen-height"], headers["x-ctrlgen-channels"]) == ("900", "700",
                                                                                                      "3")
    assert len(bodies) == 2 and all(len(m["body"]) <= SlicedResponse.SLICE for m in bodies)
    assert [m["more_body"] for m in bodies] == [True, False]
    assert b"".join(bytes(m["body"]) for m in bodies) == pixels.tobytes()


def test_a_small_raw_answer_is_one_message():
    pixels = np.zeros((10, 10), np.uint8)
    sent = _messages(image_response(pixels, None, "raw", {}))
    assert len(sent) == 2 and bytes(sent[1]["body"]) == pixels.tobytes() and not sent[1].get("more_body")


def test_a_big_answer_arrives_whole_from_a_real_server(live_server):
    from ctrlgen.core.engine.preprocess import preprocess

    mask = np.zeros((640, 960), np.uint8)  # the RGB answer: 1.8 MiB
    mask[100:500, 200:700] = 255
    entry = {"id": "sha256:" + hashlib.sha256(mask.tobytes()).hexdigest(), "format": "raw", "width": 960,
             "height": 640, "channels": 1, "length": mask.nbytes}
    request = {"preprocessor": "tile_resample", "image": entry["id"], "params": {"down_sampling_rate": 1.0},
               "format": "raw"}
    header = json.dumps({"request": request, "images": [entry]}).encode()
    body = len(header).to_bytes(4, "little") + header + mask.tobytes()
    status, headers, answer = live_server.request("POST", "/v1/preprocess/bundle", body,
                                                  {"Content-Type": "application/vnd.ctrlgen.bundle"})
    assert status == 200, answer[:200]
    expected = np.ascontiguousarray(preprocess("tile_resample", mask, down_sampling_rate=1.0).image)
    assert headers["content-length"] == str(expected.nbytes) and answer == expected.tobytes()
    status, _, again = live_server.request("POST", "/v1/preprocess", request)  # the JSON route, same answer
    assert status == 200 and again == answer
