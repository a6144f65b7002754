"""Images over HTTP for the server: reading upload bodies (one buffer, hashed as they
arrive), checking and decoding them, and answering images as raw bytes, PNG or WebP."""

import asyncio
import concurrent.futures
import hashlib
import io
import queue as queue_module
import threading
from typing import Any

import numpy as np
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

RAW_TYPE = "application/vnd.ctrlgen.raw"


class ApiError(Exception):
    """An HTTP error answer: ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def validation_message(errors: list[dict]) -> str:
    lines = []
    for item in errors:
        if item.get("type") == "json_invalid":
            problem = (item.get("ctx") or {}).get("error", "JSON decode error")
            return f"the body is not valid JSON ({problem} at character {item['loc'][-1]}); send a JSON object"
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "request"
        lines.append(f"{where}: {item.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(lines)


def decode_encoded(body: bytearray, content_type: str, config: Any) -> np.ndarray:
    """Pixels of a PNG/WebP upload (grey, RGB or RGBA), after checking its size from the header."""
    from PIL import Image, UnidentifiedImageError

    kind = content_type.split("/", 1)[1].upper()
    try:
        with Image.open(io.BytesIO(body), formats=[kind]) as image:
            check_dims(image.width, image.height, config)
            image.load()
            if image.mode in ("L", "RGB", "RGBA"):
                pixels = np.asarray(image)
            elif image.mode in ("LA", "PA", "P") or "transparency" in image.info:
                pixels = np.asarray(image.convert("RGBA"))
            elif image.mode in ("I;16", "I;16B", "I", "F"):
                from ctrlgen.core.images import to_rgb

                pixels = to_rgb(image, "the uploaded image")  # 16-bit and float scaled to 8 bits
            else:
                pixels = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:  # ImageError is a ValueError
        raise ApiError(422, "invalid_image", f"the body is not a readable {kind} image ({exc}); "
                       f"send a valid {kind} file or raw pixels ({RAW_TYPE})") from None
    except Image.DecompressionBombError as exc:
        raise ApiError(422, "too_many_pixels", str(exc)) from None
    pixels.setflags(write=False)
    return pixels


def check_dims(width: int, height: int, config: Any) -> None:
    if width < 1 or height < 1:
        raise ApiError(422, "invalid_image", f"an image of {width}×{height} pixels is empty")
    if max(width, height) > config.max_side or width * height > config.max_pixels:
        raise ApiError(422, "too_many_pixels",
                       f"{width}×{height} is over the server's limits (longest side {config.max_side}, "
                       f"{config.max_pixels} pixels); scale it down or start `ctrlgen serve` with larger "
                       "--max-side/--max-pixels")


def raw_shape(headers, config: Any) -> tuple[int, int, int]:
    values = []
    for name in ("width", "height", "channels"):
        text = headers.get(f"x-ctrlgen-{name}")
        if text is None or not text.strip().isdigit():
            raise ApiError(422, "invalid_request",
                           f"raw uploads need the header X-Ctrlgen-{name.title()} as a whole number (got {text!r})")
        values.append(int(text))
    width, height, channels = values
    if channels not in (1, 3, 4):
        raise ApiError(422, "invalid_request",
                       f"X-Ctrlgen-Channels must be 1 (grey), 3 (RGB) or 4 (RGBA), got {channels}")
    check_dims(width, height, config)
    return width, height, channels


def encode_image(image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG", compress_level=1)
    else:
        image.save(buffer, format="WEBP", lossless=True, quality=50, method=0)
    return buffer.getvalue()


def image_response(pixels: np.ndarray | None, image, image_format: str, extra_headers: dict[str, str]):
    """An image answer from a uint8 array (H×W or H×W×C) or a PIL image: raw bytes with the
    X-Ctrlgen-* headers (an array's memory is sent as it is, without a copy), or PNG/WebP."""
    from PIL import Image

    if image_format == "raw":
        if pixels is not None:
            pixels = np.ascontiguousarray(pixels)
            height, width = pixels.shape[:2]
            channels = 1 if pixels.ndim == 2 else pixels.shape[2]
            body = memoryview(pixels).cast("B")
        else:
            width, height, channels = image.width, image.height, len(image.getbands())
            body = image.tobytes()
        headers = {"X-Ctrlgen-Width": str(width), "X-Ctrlgen-Height": str(height),
                   "X-Ctrlgen-Channels": str(channels), **extra_headers}
        return SlicedResponse(body, media_type=RAW_TYPE, headers=headers)
    if image is None:
        image = Image.fromarray(pixels)
    return Response(encode_image(image, image_format), media_type=f"image/{image_format}", headers=extra_headers)


class SlicedResponse(Response):
    """A response whose (big) body goes to the connection in slices, each written once the
    previous one has drained: asyncio's transport copies what the socket does not take at once
    into its own buffer, which for a body of tens of MiB means as many MiB of fresh memory (page
    faults) per answer; in slices it holds at most one slice, in memory it reuses. Same bytes,
    same ``Content-Length``."""

    SLICE = 1 << 20

    async def __call__(self, scope, receive, send) -> None:
        body = self.body
        if scope["type"] != "http" or len(body) <= self.SLICE:
            return await super().__call__(scope, receive, send)
        view = memoryview(body).cast("B")
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        for start in range(0, len(view), self.SLICE):
            end = start + self.SLICE
            await send({"type": "http.response.body", "body": view[start:end], "more_body": end < len(view)})
        if self.background is not None:
            await self.background()


class _Hasher:
    """sha256 of a body as it arrives. Big bodies are hashed on a thread of their own while the
    rest still streams in (hashlib lets go of the GIL), so hashing overlaps the network."""

    THREAD_FROM = 4 * 2**20

    def __init__(self, expected_length: int | None) -> None:
        self._sha = hashlib.sha256()
        self._queue: queue_module.SimpleQueue | None = None
        if expected_length is not None and expected_length >= self.THREAD_FROM:
            self._queue = queue_module.SimpleQueue()
            self._done: concurrent.futures.Future = concurrent.futures.Future()
            threading.Thread(target=self._work, name="ctrlgen-hash", daemon=True).start()

    def _work(self) -> None:
        try:
            while (chunk := self._queue.get()) is not None:
                self._sha.update(chunk)
            self._done.set_result(None)
        except BaseException as exc:  # handed to the request
            self._done.set_exception(exc)

    def update(self, chunk) -> None:
        if self._queue is None:
            self._sha.update(chunk)
        else:
            self._queue.put(chunk)

    async def hexdigest(self) -> str:
        if self._queue is not None:
            self._queue.put(None)
            await asyncio.wrap_future(self._done)
        return self._sha.hexdigest()


async def read_body(request, length: int | None, digest: str, limit: int) -> bytearray:
    """The request body in one buffer, hashed as it arrives; 413 past ``limit``, 400 on a wrong hash."""
    hasher = _Hasher(length)
    try:
        body = await _receive_body(request, length, limit, hasher)
    except ClientDisconnect:
        raise ApiError(400, "invalid_request", "the client went away before the body was complete") from None
    finally:
        actual = await hasher.hexdigest()  # also ends the hashing thread
    if actual != digest:
        raise ApiError(400, "hash_mismatch", f"the body's sha256 is {actual}, not {digest} as in the "
                       "URL; hash exactly the bytes you send")
    return body


async def _receive_body(request, length: int | None, limit: int, hasher) -> bytearray:
    if length is not None:
        body = bytearray(length)
        view = memoryview(body)
        filled = 0
        async for chunk in request.stream():
            end = filled + len(chunk)
            if end > length:
                raise ApiError(400, "invalid_request", "the body is longer than its Content-Length")
            view[filled:end] = chunk
            hasher.update(chunk)
            filled = end
        view.release()
        if filled != length:
            raise ApiError(400, "invalid_request", f"the body ended after {filled} of {length} bytes; send it again")
    else:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            hasher.update(chunk)
            if len(body) > limit:
                raise ApiError(413, "too_large", f"the body is over the server's limit of {limit} bytes; "
                               "start `ctrlgen serve` with a larger --max-upload-bytes")
    return body
