"""BodySink: image and bundle bodies received in pieces of any size, straight into one buffer per
image, hashed while they arrive; every malformed bundle is a clear error."""

from __future__ import annotations

import asyncio
import hashlib
import json

import numpy as np
import pytest

from ctrlgen.host_bridges.server.bodies import THREAD_FROM, BodyError, BodySink


def bundle(request: dict, images: list[bytes], lengths: list[int] | None = None) -> bytes:
    entries = [{"id": "sha256:" + hashlib.sha256(data).hexdigest(), "width": 1, "height": len(data),
                "channels": 1, "length": length} for data, length in zip(images, lengths or map(len, images),
                                                                         strict=True)]
    header = json.dumps({"request": request, "images": entries}).encode()
    return len(header).to_bytes(4, "little") + header + b"".join(images)


def receive(kind: str, body: bytes, piece_sizes: list[int], length: int | None = None):
    """Feed ``body`` to a sink in pieces of the given sizes (cycled), as the protocol would."""
    async def run():
        sink = BodySink(kind, len(body) if length is None else length, asyncio.get_running_loop())
        position, index = 0, 0
        while position < len(body):
            size = piece_sizes[index % len(piece_sizes)]
            sink.feed(body[position:position + size])
            position += size
            index += 1
        sink.finish()
        return await sink.received()

    return asyncio.run(run())


@pytest.mark.parametrize("pieces", [[1], [3, 7, 1], [65536], [10**9]])
@pytest.mark.parametrize("big", [False, True])
def test_a_bundle_arrives_whole_in_any_pieces(pieces, big):
    rng = np.random.default_rng(4)
    size = THREAD_FROM if big else 1000  # big: hashed on a thread while it arrives
    images = [rng.integers(0, 256, size, dtype=np.uint8).tobytes(), b"", rng.bytes(333)]
    if big and pieces == [1]:
        pieces = [4093]
    received = receive("bundle", bundle({"preprocessor": "canny"}, images), pieces)
    assert received.header["request"] == {"preprocessor": "canny"}
    for part, data in zip(received.parts, images, strict=True):
        assert part.buffer.tobytes() == data
        assert part.digest == hashlib.sha256(data).hexdigest()


def test_an_image_body_is_one_part():
    data = np.random.default_rng(5).bytes(THREAD_FROM + 17)
    received = receive("image", data, [250_000])
    assert [part.digest for part in received.parts] == [hashlib.sha256(data).hexdigest()]
    assert received.header is None


@pytest.mark.parametrize("body, status, words", [
    (b"\x05\x00\x00\x00{nope", 422, "not {"),
    (len(b'{"images": []}').to_bytes(4, "little") + b'{"images": []}', 422, "no request object"),
    ((2**30).to_bytes(4, "little") + b"{}", 422, "announces"),
    (b"\x02\x00", 422, "ended inside its JSON header"),
])
def test_malformed_bundles_are_named(body, status, words):
    with pytest.raises(BodyError) as caught:
        receive("bundle", body, [3])
    assert caught.value.status == status and words in caught.value.message


def test_image_lengths_must_add_up_to_the_body():
    body = bundle({}, [b"abcd"], lengths=[5])
    with pytest.raises(BodyError, match="add up to 5 bytes, but 4 follow"):
        receive("bundle", body, [100])


def test_a_body_shorter_than_its_length_is_refused():
    with pytest.raises(BodyError, match="ended after 10 of 20 bytes"):
        receive("image", b"x" * 10, [4], length=20)
