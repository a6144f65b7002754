"""The image routes (``HEAD``/``PUT /v1/images/{sha256}``) and the bundles that carry a request
together with the images it needs (``POST /v1/jobs/bundle``, ``POST /v1/preprocess/bundle``;
docs/protocol.md#bundles): one request instead of a HEAD and a PUT per image and then the
request itself. Bodies arrive through :class:`~.bodies.BodySink` (the connection layer's fast
path) or, when it did not take them (no ``Content-Length``), through the ASGI body stream.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import Path as PathParam
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from ctrlgen.host_bridges.server.bodies import BUNDLE_TYPE, BodyError, BodySink, Received
from ctrlgen.host_bridges.server.images import (
    RAW_TYPE,
    ApiError,
    check_dims,
    decode_encoded,
    raw_shape,
    read_body,
    validation_message,
)
from ctrlgen.host_bridges.server.models import UploadAnswer
from ctrlgen.host_bridges.server.openapi import RAW_IMAGE_HEADERS, binary, errors
from ctrlgen.host_bridges.server.uploads import REF_PREFIX, StoreFull, Upload, UploadStore, is_ref

BUNDLE_IMAGES = 16  # a bundle may be this many --max-upload-bytes long
FORMATS = {"raw": RAW_TYPE, "png": "image/png", "webp": "image/webp"}

bundle_body = {"requestBody": {"required": True, "description": (
    f"{BUNDLE_TYPE}: a 4-byte little-endian length n, n bytes of JSON {{\"request\": <the route's JSON body>, "
    "\"images\": [{\"id\": \"sha256:<hex>\", \"width\", \"height\", \"channels\", \"length\", \"format\": raw|png|"
    "webp}, ...]}, then each image's bytes in that order. The images are stored as by PUT /v1/images (a known "
    "one is not stored twice) before the request is handled; the request names them by id. See "
    "docs/protocol.md#bundles"), "content": binary(BUNDLE_TYPE)}}
BUNDLE_ERRORS = {
    400: "`hash_mismatch` (an image's bytes do not hash to its id) or `invalid_request` (a body shorter or "
         "longer than its Content-Length)",
    411: "`length_required`: a bundle without Content-Length",
    413: "`too_large`: an image over --max-upload-bytes, a bundle over 16 times that, or image memory full",
    422: "`invalid_request` (a header that is not the bundle's JSON, an image entry without its fields, a raw "
         "image of the wrong length, a request body that is not valid: the message names the field), "
         "`invalid_image` or `too_many_pixels`",
}


def add_image_routes(app: Any, config: Any, uploads: UploadStore) -> Any:
    """Add HEAD/PUT /v1/images/{sha256} to ``app``; returns ``read_bundle(request, model)``,
    which stores a bundle's images and answers its request validated as ``model``."""
    digest_param = PathParam(pattern=r"^[0-9a-f]{64}$", description="sha256 of the body, 64 lowercase hex digits")
    upload_body = {
        "requestBody": {"required": True, "description": f"the image: raw pixels ({RAW_TYPE}: uint8, rows top to "
                        "bottom, channels interleaved, exactly width × height × channels bytes), PNG or WebP",
                        "content": binary(RAW_TYPE, "image/png", "image/webp")},
        "parameters": [{"name": name, "in": "header", "required": False, "description": header["description"]
                        + f" (needed with {RAW_TYPE})", "schema": header["schema"]}
                       for name, header in RAW_IMAGE_HEADERS.items()]}

    @app.head("/v1/images/{sha256}", operation_id="image_known", tags=["images"], response_class=Response,
              responses={200: {"description": "the server has the image"},
                         **errors(404, 422, notes={404: "`not_found`: no such image; upload it"})})
    async def image_known(sha256: str = digest_param) -> Response:
        """200 when an image with this hash is on the server, else 404."""
        if uploads.get(sha256, touch=True) is None:
            raise ApiError(404, "not_found", f"no image sha256:{sha256} on the server")
        return Response(status_code=200)

    @app.put("/v1/images/{sha256}", operation_id="put_image", tags=["images"], status_code=201,
             response_model=UploadAnswer, openapi_extra=upload_body, responses={
                 200: {"model": UploadAnswer, "description": "the server had the image already (existed: true); "
                       "the body was not read"},
                 **errors(400, 413, 422, notes={
                     400: "`hash_mismatch` (the body's sha256 is not the one in the URL) or `invalid_request` "
                          "(a body longer or shorter than its Content-Length)",
                     422: "`invalid_request` (a Content-Type other than raw, PNG or WebP; missing or bad "
                          "X-Ctrlgen-* headers; a raw body of the wrong length; a path that is no sha256), "
                          "`invalid_image` (a PNG/WebP that does not decode, an empty image) or "
                          "`too_many_pixels` (over --max-side/--max-pixels)"})})
    async def put_image(request: Request, sha256: str = digest_param) -> JSONResponse:
        """Upload an image under the sha256 of its body (raw pixels, PNG or WebP)."""
        known = uploads.get(sha256, touch=True)
        if known is not None:
            return JSONResponse(known.describe(existed=True), status_code=200)
        content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type not in FORMATS.values():
            raise ApiError(422, "invalid_request",
                           f"Content-Type {content_type or '(none)'!r} is not an image format the server reads; "
                           f"use {RAW_TYPE} (with X-Ctrlgen-Width/Height/Channels), image/png or image/webp")
        shape = raw_shape(request.headers, config) if content_type == RAW_TYPE else None
        length_text = request.headers.get("content-length")
        length = int(length_text) if length_text and length_text.isdigit() else None
        if length is not None and length > config.max_upload_bytes:
            raise ApiError(413, "too_large", f"the body has {length} bytes, over the server's limit of "
                           f"{config.max_upload_bytes}; start `ctrlgen serve` with a larger --max-upload-bytes")
        if shape is not None and length is not None and length != shape[0] * shape[1] * shape[2]:
            raise ApiError(422, "invalid_request", f"a raw {shape[0]}×{shape[1]} image with {shape[2]} channel(s) "
                           f"has {shape[0] * shape[1] * shape[2]} bytes, but the body has {length}")
        sink = request.scope.get("extensions", {}).get("ctrlgen.body")
        if sink is not None:
            part = (await _received(sink)).parts[0]
            if part.digest != sha256:
                raise ApiError(400, "hash_mismatch", f"the body's sha256 is {part.digest}, not {sha256} as in the "
                               "URL; hash exactly the bytes you send")
            body: Any = part.buffer
        else:
            body = await read_body(request, length, sha256, config.max_upload_bytes)
        stored, existed = await keep(sha256, body, content_type, shape)
        return JSONResponse(stored.describe(existed=existed), status_code=200 if existed else 201)

    async def keep(digest: str, body: Any, content_type: str, shape: tuple[int, int, int] | None):
        """Store an image body; (the upload kept, whether it was there already)."""
        if shape is not None:
            width, height, channels = shape
            if len(body) != width * height * channels:
                raise ApiError(422, "invalid_request", f"a raw {width}×{height} image with {channels} channel(s) "
                               f"has {width * height * channels} bytes, but the body has {len(body)}")
            pixels = np.frombuffer(body, np.uint8).reshape((height, width) if channels == 1 else
                                                            (height, width, channels))
            pixels.setflags(write=False)
        else:
            pixels = await run_in_threadpool(decode_encoded, body, content_type, config)
        try:
            stored = uploads.add(Upload(digest, pixels, max(len(body), pixels.nbytes)), body,
                                 "raw" if content_type == RAW_TYPE else content_type)
        except StoreFull as exc:
            raise ApiError(413, "too_large", str(exc)) from None
        return stored, stored.pixels is not pixels

    async def read_bundle(request: Request, model: type[BaseModel]) -> tuple[BaseModel, list[dict]]:
        """Store the images of a bundle and validate its request as ``model``; (the request, the
        images as PUT would have answered them)."""
        content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type != BUNDLE_TYPE:
            raise ApiError(422, "invalid_request", f"Content-Type {content_type or '(none)'!r} is not a bundle; "
                           f"send {BUNDLE_TYPE} (docs/protocol.md#bundles), or the JSON body to the route without "
                           "/bundle")
        length_text = request.headers.get("content-length", "")
        if not length_text.isdigit():
            raise ApiError(411, "length_required", "a bundle needs a Content-Length (its images are received "
                           "into buffers of their size)")
        if int(length_text) > BUNDLE_IMAGES * config.max_upload_bytes:
            raise ApiError(413, "too_large", f"the bundle has {length_text} bytes, over {BUNDLE_IMAGES} × "
                           "--max-upload-bytes; PUT the biggest images to /v1/images first and name them by id")
        sink = request.scope.get("extensions", {}).get("ctrlgen.body")
        if sink is None:  # the connection layer left it to the ASGI stream
            sink = BodySink("bundle", int(length_text), asyncio.get_running_loop())
            async for chunk in request.stream():
                sink.feed(chunk)
            sink.finish()
        received = await _received(sink)
        answers = []
        for index, (item, part) in enumerate(zip(received.header["images"], received.parts, strict=True)):
            answers.append(await keep_bundled(index, item, part))
        try:
            return model.model_validate(received.header["request"]), answers
        except ValidationError as exc:
            raise ApiError(422, "invalid_request", validation_message(exc.errors())) from None

    async def keep_bundled(index: int, item: Any, part) -> dict:
        where = f"images[{index}]"
        if not isinstance(item, dict) or not is_ref(item.get("id")):
            raise ApiError(422, "invalid_request", f"{where}.id must be 'sha256:<64 hex>' (the sha256 of its bytes)")
        digest = item["id"][len(REF_PREFIX):]
        if part.digest != digest:
            raise ApiError(400, "hash_mismatch", f"{where}: its bytes hash to sha256:{part.digest}, not {item['id']}; "
                           "hash exactly the bytes you send")
        if len(part.buffer) > config.max_upload_bytes:
            raise ApiError(413, "too_large", f"{where} has {len(part.buffer)} bytes, over the server's limit of "
                           f"{config.max_upload_bytes}; start `ctrlgen serve` with a larger --max-upload-bytes")
        known = uploads.get(digest, touch=True)
        if known is not None:
            return known.describe(existed=True)
        image_format = item.get("format", "raw")
        if image_format not in FORMATS:
            raise ApiError(422, "invalid_request", f"{where}.format {image_format!r} is not raw, png or webp")
        shape = None
        if image_format == "raw":
            values = [item.get(name) for name in ("width", "height", "channels")]
            if not all(isinstance(value, int) and not isinstance(value, bool) for value in values):
                raise ApiError(422, "invalid_request", f"{where}: a raw image needs whole numbers width, height "
                               "and channels")
            if values[2] not in (1, 3, 4):
                raise ApiError(422, "invalid_request", f"{where}.channels must be 1, 3 or 4, got {values[2]}")
            check_dims(values[0], values[1], config)
            shape = (values[0], values[1], values[2])
        stored, existed = await keep(digest, part.buffer, FORMATS[image_format], shape)
        return stored.describe(existed=existed)

    return read_bundle


async def _received(sink: BodySink) -> Received:
    try:
        return await sink.received()
    except BodyError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
