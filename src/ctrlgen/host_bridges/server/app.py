"""``ctrlgen serve``: the HTTP bridge host apps talk to (protocol v1, docs/protocol.md).

FastAPI on uvicorn. Routes live under ``/v1/``; events are Server-Sent Events. Image bodies
are read straight into one buffer (hashed while they arrive) and raw pixels are used where
they landed; raw results go out as the image's bytes. One worker thread runs the jobs
(:mod:`.jobs`); uploads are held in memory, bounded (:mod:`.uploads`); the
token, Host and Origin checks wrap every route (:mod:`.security`).
"""

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ctrlgen._version import __version__
from ctrlgen.core.errors import CtrlgenError, JobError, ModelNotFoundError
from ctrlgen.host_bridges.server.files import FileStore, OutputWriter, private_folder
from ctrlgen.host_bridges.server.images import (
    RAW_TYPE,
    ApiError,
    decode_encoded,
    image_response,
    raw_shape,
    read_body,
)
from ctrlgen.host_bridges.server.jobs import TERMINAL, JobQueue, JobRecord, new_job_id
from ctrlgen.host_bridges.server.journal import Journal
from ctrlgen.host_bridges.server.models import (
    CancelAnswer,
    Capabilities,
    Health,
    JobDetail,
    JobList,
    PreprocessRequest,
    SubmitAnswer,
    SubmitRequest,
    UploadAnswer,
)
from ctrlgen.host_bridges.server.openapi import (
    RAW_IMAGE_HEADERS,
    binary,
    build_document,
    errors,
    event_stream_content,
)
from ctrlgen.host_bridges.server.security import Guard, load_or_create_token
from ctrlgen.host_bridges.server.uploads import REF_PREFIX, StoreFull, Upload, UploadStore, is_ref

log = logging.getLogger("ctrlgen.server")

PURGE_EVERY_S = 30.0


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 7421
    unix_socket: str | None = None
    allow_remote: bool = False
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    device: str | None = None
    result_ttl_s: float = 3600.0
    max_queue: int = 100
    max_results: int = 100
    max_upload_bytes: int = 256 * 2**20
    max_pixels: int = 8192 * 8192
    max_side: int = 8192
    max_upload_memory: int = 2 * 2**30
    keepalive_s: float = 15.0
    config_dir: Path | None = None
    state_dir: Path | None = None  # journal, uploads, results (default: CONFIG/server)
    outputs_dir: Path | None = None  # PNGs of every result (default: CONFIG/outputs)
    save_outputs: bool = True
    outputs_max_bytes: int = 20 * 2**30
    stall_timeout_s: float = 30.0  # headers must arrive, and a body must not pause, for longer
    log_level: str = "warning"
    extra: dict[str, Any] = field(default_factory=dict)


def _error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None):
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


_STATUS_CODES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "invalid_request",
                 409: "conflict", 413: "too_large", 422: "invalid_request", 429: "queue_full"}


def _validation_message(errors: list[dict]) -> str:
    lines = []
    for item in errors:
        if item.get("type") == "json_invalid":
            problem = (item.get("ctx") or {}).get("error", "JSON decode error")
            return f"the body is not valid JSON ({problem} at character {item['loc'][-1]}); send a JSON object"
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "request"
        lines.append(f"{where}: {item.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(lines)


def _image_fields(job) -> list[tuple[str, str]]:
    """(where, reference) of every image a job names: image, mask, control images, adapter images."""
    from ctrlgen.core.engine.jobs import _image_params

    found = []
    if job.image is not None:
        found.append(("job.image", job.image))
    if job.mask is not None:
        found.append(("job.mask", job.mask))
    for index, unit in enumerate(job.control):
        if unit.image is not None:
            found.append((f"job.control[{index}].image", unit.image))
    for index, use in enumerate(job.adapters):
        params = use.params()
        for name in _image_params(use.type):
            value = params.get(name)
            values = value if isinstance(value, list) else [value]
            for position, item in enumerate(values):
                if isinstance(item, str):
                    suffix = f"[{position}]" if isinstance(value, list) else ""
                    found.append((f"job.adapters[{index}].{name}{suffix}", item))
    return found


def create_app(config: ServerConfig, token: str):
    """The ASGI application (FastAPI wrapped in the security guard). Its state (journal, uploads,
    results) is in ``config.state_dir``; the jobs the journal holds are queued again."""
    from ctrlgen.core.config import config_dir

    base = config.config_dir or config_dir()
    state = private_folder(config.state_dir or base / "server")
    lock = _lock_state(state)
    journal = Journal(state)
    uploads = UploadStore(config.max_upload_memory, FileStore(state / "uploads"), journal,
                          ttl_s=config.result_ttl_s)
    outputs = (OutputWriter(config.outputs_dir or base / "outputs", config.outputs_max_bytes)
               if config.save_outputs else None)
    queue = JobQueue(uploads, device=config.device, max_queue=config.max_queue, max_kept=config.max_results,
                     result_ttl_s=config.result_ttl_s, journal=journal, results=FileStore(state / "results"),
                     outputs=outputs)
    restored = queue.restore()
    if restored["queued"] or restored["rerun"] or restored["interrupted"]:
        log.warning("restored from the journal in %s: %d queued job(s), %d running job(s) to run again, "
                    "%d interrupted", state, restored["queued"], restored["rerun"], restored["interrupted"])

    @contextlib.asynccontextmanager
    async def lifespan(app):
        queue.start(asyncio.get_running_loop())

        async def purge_regularly():
            while True:
                await asyncio.sleep(PURGE_EVERY_S)
                queue.purge()
                await run_in_threadpool(uploads.collect)

        purger = asyncio.create_task(purge_regularly())
        try:
            yield
        finally:
            purger.cancel()
            queue.stop()
            await run_in_threadpool(_close_state, queue, uploads, outputs, journal)

    app = FastAPI(title="ctrlgen bridge", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url="/openapi.json",
                  description="Protocol v1 of the ctrlgen host bridge; see docs/protocol.md. Every request "
                  "carries `Authorization: Bearer <token>`; every 4xx/5xx answer is `{\"error\": {\"code\", "
                  "\"message\"}}` (a method a path does not have: `405 invalid_request`).")
    app.state.queue = queue
    app.state.uploads = uploads
    app.state.lock = lock  # held as long as the app lives
    app.state.config = config

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return _error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        code = _STATUS_CODES.get(exc.status_code, "invalid_request")
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see GET /openapi.json for the routes"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see GET /openapi.json"
        return _error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        return _error_response(422, "invalid_request", _validation_message(exc.errors()))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request, exc: ClientDisconnect):
        # the client went away (or was cut off) before its body had arrived: nobody reads this
        return _error_response(400, "incomplete_body", "the client closed the connection before the body ended")

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception):
        log.exception("request %s %s failed", request.method, request.url.path)
        return _error_response(500, "internal_error", f"{type(exc).__name__}: {exc}")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # the routes' document, completed (openapi.py)

    def find_job(job_id: str) -> JobRecord:
        record = queue.jobs.get(job_id)
        if record is None:
            if job_id in queue.expired:
                raise ApiError(410, "result_expired",
                               f"job {job_id} ended more than --result-ttl seconds ago (or was pushed out by newer "
                               "jobs) and its results were dropped; run it again")
            raise ApiError(404, "not_found", f"no job {job_id!r}; GET /v1/jobs lists the known jobs")
        return record

    def job_item(record: JobRecord, details: bool = False) -> dict[str, Any]:
        item = {"id": record.id, "status": record.status, "position": queue.position(record),
                "created": record.created, "started": record.started, "ended": record.ended,
                "task": record.job.task, "model": record.job.model}
        if details:
            if record.status == "finished":
                item["results"] = record.result_info()
            if record.error is not None:
                item["error"] = record.error
        return item

    # -- health and capabilities ---------------------------------------------------------
    @app.get("/v1/health", operation_id="health", tags=["server"], response_model=Health)
    async def health() -> dict[str, Any]:
        """Server status and queue length."""
        return {"status": "ok", "version": __version__,
                "queue": {"running": queue.running_id, "queued": queue.queued_count()},
                "uploads": {"in_memory_bytes": uploads.used_bytes, "memory_limit_bytes": uploads.max_bytes}}

    @app.get("/v1/capabilities", operation_id="capabilities", tags=["server"], response_model=Capabilities)
    def capabilities() -> dict[str, Any]:
        """Preprocessors, adapters, models and samplers, with their parameter schemas, and the
        names withheld because several plugins provide them (``conflicts``)."""
        from ctrlgen.core.config import load_settings
        from ctrlgen.core.engine.samplers import SAMPLERS
        from ctrlgen.core.models.store import ModelStore
        from ctrlgen.core.plugins.manager import get_host, get_registry

        models = []
        for entry in ModelStore.from_settings(load_settings()).scan(refresh=True):
            identity = entry.identity.to_json()
            models.append({"name": entry.name, "category": entry.category,
                           "architecture": identity.get("architecture"), "kind": identity.get("kind"),
                           "variant": identity.get("variant"), "size_bytes": entry.size_bytes})
        return {
            "version": __version__,
            "preprocessors": [{"name": s.name, "description": s.description, "category": s.family,
                               "params": [p.to_json() for p in s.params], "needs_weights": s.needs_weights,
                               "weights": [w.to_json() for w in s.weights]}
                              for s in get_registry("preprocessors")],
            "adapters": [{"name": s.name, "description": s.description, "architectures": list(s.architectures),
                          "params": [p.to_json() for p in s.params]} for s in get_registry("adapters")],
            "detectors": [s.to_json() for s in get_registry("detectors")],
            "models": models,
            "samplers": list(SAMPLERS),
            "limits": {"max_upload_bytes": config.max_upload_bytes, "max_pixels": config.max_pixels,
                       "max_side": config.max_side, "max_queue": config.max_queue},
            "image_formats": ["raw", "png", "webp"],
            "conflicts": [c.to_json() for c in get_host().conflicts()],
        }

    @app.get("/v1/openapi.json", include_in_schema=False)
    async def openapi_v1() -> JSONResponse:
        return JSONResponse(app.openapi())

    # -- images ------------------------------------------------------------------------------
    Digest = PathParam(pattern=r"^[0-9a-f]{64}$", description="sha256 of the body, 64 lowercase hex digits")
    upload_body = {
        "requestBody": {"required": True, "description": f"the image: raw pixels ({RAW_TYPE}: uint8, rows top to "
                        "bottom, channels interleaved, exactly width × height × channels bytes), PNG or WebP",
                        "content": binary(RAW_TYPE, "image/png", "image/webp")},
        "parameters": [{"name": name, "in": "header", "required": False, "description": header["description"]
                        + f" (needed with {RAW_TYPE})", "schema": header["schema"]}
                       for name, header in RAW_IMAGE_HEADERS.items()]}
    image_answer = {"description": "the image (raw: with X-Ctrlgen-Width/Height/Channels)",
                    "content": binary(RAW_TYPE, "image/png", "image/webp"), "headers": RAW_IMAGE_HEADERS}

    @app.head("/v1/images/{sha256}", operation_id="image_known", tags=["images"], response_class=Response,
              responses={200: {"description": "the server has the image"},
                         **errors(404, 422, notes={404: "`not_found`: no such image; upload it"})})
    async def image_known(sha256: str = Digest) -> Response:
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
    async def put_image(request: Request, sha256: str = Digest) -> JSONResponse:
        """Upload an image under the sha256 of its body (raw pixels, PNG or WebP)."""
        known = uploads.get(sha256, touch=True)
        if known is not None:
            return JSONResponse(known.describe(existed=True), status_code=200)
        content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type not in (RAW_TYPE, "image/png", "image/webp"):
            raise ApiError(422, "invalid_request",
                           f"Content-Type {content_type or '(none)'!r} is not an image format the server reads; "
                           f"use {RAW_TYPE} (with X-Ctrlgen-Width/Height/Channels), image/png or image/webp")
        shape = raw_shape(request.headers, config) if content_type == RAW_TYPE else None
        length_text = request.headers.get("content-length")
        length = int(length_text) if length_text and length_text.isdigit() else None
        if length is not None and length > config.max_upload_bytes:
            raise ApiError(413, "too_large", f"the body has {length} bytes, over the server's limit of "
                           f"{config.max_upload_bytes}; start `ctrlgen serve` with a larger --max-upload-bytes")
        if shape is not None:
            expected = shape[0] * shape[1] * shape[2]
            if length is not None and length != expected:
                raise ApiError(422, "invalid_request",
                               f"a raw {shape[0]}×{shape[1]} image with {shape[2]} channel(s) has {expected} bytes, "
                               f"but the body has {length}")
        body = await read_body(request, length, sha256, config.max_upload_bytes)
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
            stored = uploads.add(Upload(sha256, pixels, max(len(body), pixels.nbytes)), body,
                                 "raw" if content_type == RAW_TYPE else content_type)
        except StoreFull as exc:
            raise ApiError(413, "too_large", str(exc)) from None
        existed = stored.pixels is not pixels
        return JSONResponse(stored.describe(existed=existed), status_code=200 if existed else 201)

    # -- preprocess -----------------------------------------------------------------------------
    @app.post("/v1/preprocess", operation_id="preprocess", tags=["preprocess"], response_class=Response, responses={
        200: {**image_answer, "description": "the control map (raw: RGB with X-Ctrlgen-Width/Height/Channels); "
              "data the preprocessor returns (keypoints, labels) is in X-Ctrlgen-Data",
              "headers": {**RAW_IMAGE_HEADERS, "X-Ctrlgen-Data": {
                  "description": "JSON: what the preprocessor returned besides the map (OpenPose keypoints, segment "
                                 "labels, ...); absent when nothing", "schema": {"type": "string"}}}},
        **errors(404, 422, notes={
            404: "`unknown_preprocessor`: no registered preprocessor has that name",
            422: "`invalid_request`: bad params, an image or mask that is not uploaded, a mask of another size, "
                 "a preprocessor whose Python packages are missing"})})
    async def preprocess(request: PreprocessRequest) -> Response:
        """Run one preprocessor on an uploaded image; answers the control map."""
        from ctrlgen.core.engine.preprocess import preprocess as run_preprocessor
        from ctrlgen.core.plugins.manager import get_registry
        from ctrlgen.core.plugins.registry import UnknownNameError
        from ctrlgen.core.plugins.specs import validate_params

        try:
            spec = get_registry("preprocessors").get(request.preprocessor)
        except UnknownNameError as exc:
            raise ApiError(404, "unknown_preprocessor", str(exc)) from None
        from ctrlgen.core.engine.preprocess import check_requirements
        from ctrlgen.core.images import to_mask

        image = _require_upload(request.image, "image")
        mask = _require_upload(request.mask, "mask") if request.mask is not None else None
        try:  # before queueing, so a bad request never waits for the worker
            params = validate_params(spec.params, request.params, "params")
            if mask is not None:
                to_mask(mask, (image.shape[1], image.shape[0]), "mask")
            check_requirements(spec)
        except CtrlgenError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None

        def work():
            return run_preprocessor(spec.name, image, mask, **params)

        try:
            result = await asyncio.wrap_future(queue.call(work))
        except CtrlgenError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        headers = {}
        if result.data:
            headers["X-Ctrlgen-Data"] = json.dumps(result.data, separators=(",", ":"), default=_json_default)
        if request.format == "raw":
            return image_response(result.image, None, "raw", headers)
        return await run_in_threadpool(image_response, result.image, None, request.format, headers)

    def _require_upload(ref: str, what: str) -> np.ndarray:
        if not is_ref(ref):
            raise ApiError(422, "invalid_request", f"{what} must be an upload reference 'sha256:<64 hex>', got {ref!r}")
        upload = uploads.get(ref[len(REF_PREFIX):], touch=True)
        if upload is None:
            raise ApiError(422, "invalid_request", f"{what}: image {ref} is not on the server; upload it first "
                           "with PUT /v1/images/<sha256>")
        return upload.pixels

    # -- jobs ------------------------------------------------------------------------------------
    @app.post("/v1/jobs", operation_id="submit_job", tags=["jobs"], status_code=202, response_model=SubmitAnswer,
              responses={200: {"model": SubmitAnswer, "description": "a repeated Idempotency-Key: the job that key "
                               "created (existed: true), not queued again"},
                         **errors(422, 429, notes={422: (
                             "`invalid_request` (the message starts with the field's path: `job.steps`, "
                             "`job.control[1].preprocessor_params.low_threshold`) or `model_not_found` (a model in "
                             "no model folder); the job was not queued")})})
    async def submit(request: SubmitRequest, idempotency_key: str | None = Header(
            None, alias="Idempotency-Key", max_length=200, description="a key of the client's choosing: a repeat of a submission with the "
            "same key answers the job it created (200) instead of queueing another")) -> Any:
        """Validate a job and queue it; its events follow at /v1/jobs/{id}/events."""
        from ctrlgen.core.engine.jobs import parse_job

        if idempotency_key:
            known = _job_with_key(idempotency_key)
            if known is not None:
                return known

        try:
            job = parse_job(request.job)
        except JobError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        digests = []
        for where, ref in _image_fields(job):
            if not is_ref(ref):
                raise ApiError(422, "invalid_request",
                               f"{where} is {ref!r}; the server reads images only from uploads: PUT the image "
                               "to /v1/images/<sha256> and use 'sha256:<sha256>' here")
            if uploads.get(ref[len(REF_PREFIX):], touch=True) is None:
                raise ApiError(422, "invalid_request",
                               f"{where}: image {ref} is not on the server; upload it first with "
                               "PUT /v1/images/<sha256>")
            digests.append(ref[len(REF_PREFIX):])
        # Everything that needs no weights, before the job is queued: models (by the names the
        # store knows, or paths inside the model folders), plugins, params, images, sizes. The
        # check reads the store and the images, so it runs off the event loop.
        try:
            await run_in_threadpool(lambda: queue.get_engine().check(job, uploads.resolve))
        except ModelNotFoundError as exc:
            raise ApiError(422, "model_not_found", str(exc)) from None
        except CtrlgenError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        for digest in digests:  # an accepted job's inputs are on disk before it is acknowledged
            upload = uploads.get(digest)
            if upload is not None:
                await asyncio.wrap_future(upload.saved)
        record = JobRecord(new_job_id(), job, request.preview, digests, idempotency_key=idempotency_key or None)
        try:
            position = queue.submit(record)
        except sqlite3.IntegrityError:  # the same key, submitted at the same moment by another request
            known = _job_with_key(idempotency_key or "")
            if known is None:
                raise
            return known
        except OverflowError:
            raise ApiError(429, "queue_full",
                           f"{config.max_queue} jobs are already waiting; retry later (or start `ctrlgen serve` "
                           "with a larger --max-queue)", headers={"Retry-After": "5"}) from None
        return {"id": record.id, "position": position, "status": record.status}

    def _job_with_key(key: str) -> JSONResponse | None:
        job_id = journal.job_with_key(key)
        if job_id is None:
            return None
        record = queue.jobs.get(job_id)
        status = record.status if record is not None else "expired"
        return JSONResponse({"id": job_id, "position": queue.position(record) if record is not None else 0,
                             "status": status, "existed": True}, status_code=200)

    @app.get("/v1/jobs", operation_id="list_jobs", tags=["jobs"], response_model=JobList)
    async def list_jobs() -> dict[str, Any]:
        """Queued, running and kept finished jobs, oldest first."""
        queue.purge()
        return {"jobs": [job_item(r) for r in queue.jobs.values()]}

    job_errors = errors(404, 410, notes={404: "`not_found`: no such job", 410: "`result_expired`: the job ended "
                                         "longer than --result-ttl ago, or was pushed out by newer ones"})

    @app.get("/v1/jobs/{job_id}", operation_id="get_job", tags=["jobs"], response_model=JobDetail,
             response_model_exclude_unset=True, responses=job_errors)
    async def get_job(job_id: str) -> dict[str, Any]:
        """One job: status, position, and its results or error once it ended."""
        return job_item(find_job(job_id), details=True)

    @app.post("/v1/jobs/{job_id}/cancel", operation_id="cancel_job", tags=["jobs"], response_model=CancelAnswer,
              responses=job_errors)
    async def cancel(job_id: str) -> dict[str, Any]:
        """Cancel a job. A queued one is dropped at once (answer: ``cancelled``); a running one
        stops at its next check and its ``cancelled`` event follows (answer: ``running``); an
        ended one keeps its status (the answer)."""
        record = find_job(job_id)
        return {"id": record.id, "status": queue.cancel(record)}

    @app.get("/v1/jobs/{job_id}/events", operation_id="job_events", tags=["jobs"], response_class=EventStream,
             responses={200: {"description": "the job's events: past ones first, then live, until it ends",
                              "content": event_stream_content()},
                        **job_errors, **errors(422, notes={422: "`invalid_request`: `after` is not a whole number "
                                                                "≥ 0"})})
    async def events(job_id: str,
                     after: int | None = Query(None, ge=0, description="replay only the events after this id "
                                               "(wins over Last-Event-ID)"),
                     last_event_id: str | None = Header(
                         None, alias="Last-Event-ID", description="the last event id the client saw: only later "
                         "events come (what EventSource sends on reconnecting); an id the server never issued "
                         "replays them all")):
        """The job's events as Server-Sent Events: past ones first, then live, until it ends."""
        record = find_job(job_id)
        last_seen = after
        if last_seen is None:
            header = (last_event_id or "").strip()
            last_seen = int(header) if header.isdigit() else 0
        if last_seen > len(record.events):  # an id from before a restart: replay the job's history
            last_seen = 0
        return EventStream(_event_stream(record, last_seen, config.keepalive_s),
                           headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/jobs/{job_id}/results/{index}", operation_id="get_result", tags=["jobs"], response_class=Response,
             responses={200: image_answer, **errors(404, 409, 410, 422, notes={
                 404: "`not_found`: no such job, or no result with this index",
                 409: "`job_not_finished`: the job has not finished, or ended without results",
                 410: "`result_expired`: the job ended longer than --result-ttl ago (or was pushed out by newer "
                      "ones), or its result file is gone",
                 422: "`invalid_request`: an index or format that is not valid"})})
    async def result(job_id: str, index: int = PathParam(ge=0),
                     format: Literal["raw", "png", "webp"] = Query("raw", description="raw (the default: the "
                                                                   "pixels, no encoding), png or webp")) -> Response:
        """One result image: raw RGB (with X-Ctrlgen-* headers), PNG or WebP."""
        record = find_job(job_id)
        if record.status != "finished":
            if record.status in TERMINAL:
                raise ApiError(409, "job_not_finished",
                               f"job {job_id} ended with status {record.status!r} and has no results")
            raise ApiError(409, "job_not_finished", f"job {job_id} is {record.status}; wait for its finished event")
        images = record.results or []
        if index >= len(images):
            raise ApiError(404, "not_found", f"job {job_id} has {len(images)} result(s); index {index} is out of range")
        try:
            pixels = queue.result_pixels(images[index])
        except (OSError, ValueError):
            raise ApiError(410, "result_expired", f"result {index} of job {job_id} is no longer on the server's "
                           "disk (deleted by hand?); run the job again") from None
        if format == "raw":
            return image_response(pixels, None, "raw", {})
        return await run_in_threadpool(image_response, pixels, None, format, {})

    return Guard(app, token=token, allowed_origins=config.allowed_origins,
                 allowed_hosts=None if (config.allow_remote and not config.allowed_hosts) else config.allowed_hosts)


def _lock_state(state: Path):
    """One server per state folder: two would run each other's journal. The lock goes with the
    process, however it ends."""
    handle = open(state / "lock", "a+b")  # noqa: SIM115 - kept open for the server's life
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise CtrlgenError(f"another ctrlgen serve is using {state} (its journal and files); stop it, or give this "
                           "one its own --state-dir (and --port)") from None
    return handle


def _close_state(queue: JobQueue, uploads: UploadStore, outputs: OutputWriter | None, journal: Journal) -> None:
    """At shutdown: let the worker end (a running job goes back to the queue), finish writing
    uploads and outputs, close the journal."""
    queue.join(timeout=30)
    uploads.close()
    if outputs is not None:
        outputs.close()
    journal.close()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


class EventStream(StreamingResponse):
    media_type = "text/event-stream"


def _sse(event_id: int, kind: str, data: dict) -> bytes:
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _event_stream(record: JobRecord, after: int, keepalive_s: float):
    sent = after
    while True:
        changed = record.changed
        for event_id, kind, data in record.events[sent:]:
            yield _sse(event_id, kind, data)
            sent = event_id
        if record.status in TERMINAL and sent >= len(record.events):
            return
        try:
            await asyncio.wait_for(changed.wait(), keepalive_s)
        except asyncio.TimeoutError:
            yield b": ping\n\n"


# -- running the server -------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every answer written in two parts waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise CtrlgenError(f"cannot listen on {host}:{port}: {exc.strerror}; is another server running there? "
                           "Pick another one with --port (0 lets the system choose)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _bind_unix(path: str) -> socket.socket:
    target = Path(path)
    if target.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(target))
        except OSError:
            target.unlink()  # a socket file left by a server that is gone
        else:
            raise CtrlgenError(f"another server is listening on the Unix socket {path}; stop it or pick another path")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)  # the socket file is created private (0600)
    try:
        sock.bind(str(target))
    finally:
        os.umask(previous)
    sock.listen(2048)
    return sock


def _server_json_path(folder: Path) -> Path:
    return folder / "server.json"


def _write_server_json(folder: Path, url: str, unix_socket: str | None) -> Path:
    """``server.json`` (mode 0600, written atomically): where the server listens, for clients."""
    from ctrlgen.host_bridges.client import process_alive

    path = _server_json_path(folder)
    with contextlib.suppress(OSError, ValueError):
        old_pid = json.loads(path.read_text(encoding="utf-8")).get("pid")
        if isinstance(old_pid, int) and old_pid != os.getpid() and not process_alive(old_pid):
            log.warning("replacing a stale %s (its server, pid %d, is gone)", path, old_pid)
    temporary = path.with_name(f".server.json.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"url": url, "unix_socket": unix_socket, "pid": os.getpid(),
                                 "version": __version__}, indent=2) + "\n")
    os.replace(temporary, path)
    return path


def _remove_server_json(folder: Path) -> None:
    path = _server_json_path(folder)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()


def serve(config: ServerConfig) -> int:
    """Run the server until interrupted. Writes server.json once listening; removes it on exit."""
    import uvicorn

    from ctrlgen.core.config import config_dir
    from ctrlgen.host_bridges.server.http import BridgeHttpProtocol

    if not config.allow_remote and not is_loopback(config.host):
        raise CtrlgenError(f"--host {config.host} is not a loopback address; binding there lets other machines "
                           "reach the server. Add --allow-remote if that is what you want")
    if config.allowed_hosts and not config.allow_remote:
        raise CtrlgenError("--allowed-host only matters for a server reachable from elsewhere; add --allow-remote "
                           "(and a non-loopback --host), or leave it out")
    folder = config.config_dir or config_dir()
    token = load_or_create_token(folder)
    if config.allow_remote and not is_loopback(config.host):
        print(f"WARNING: listening on {config.host}, reachable from other machines; anyone with the token can "
              "run jobs. Keep the token secret and prefer a firewall or an SSH tunnel.", file=sys.stderr)
    from ctrlgen.core.plugins.manager import get_host

    for conflict in get_host().conflicts():  # each withholds one name; the server serves the rest
        print(f"WARNING: {conflict.message}", file=sys.stderr)
    tcp = _bind_tcp(config.host, config.port)
    sockets = [tcp]
    if config.unix_socket:
        sockets.append(_bind_unix(config.unix_socket))
    port = tcp.getsockname()[1]
    shown_host = f"[{config.host.strip('[]')}]" if ":" in config.host else config.host
    url = f"http://{shown_host}:{port}"
    app = create_app(config, token)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                _write_server_json(folder, url, config.unix_socket)
                where = url + (f" and {config.unix_socket}" if config.unix_socket else "")
                print(f"ctrlgen {__version__} serving on {where} (token: {folder / 'token'})", flush=True)

        def handle_exit(self, sig, frame) -> None:
            # uvicorn would raise the signal again once it has stopped, ending the process by
            # that signal; a stop asked for with Ctrl+C or SIGTERM is a normal one: the running
            # job went back to the journal's queue, so clean up and exit 0.
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

        async def shutdown(self, sockets=None) -> None:
            _remove_server_json(folder)
            await super().shutdown(sockets=sockets)
            cleanup()

    protocol = type("Protocol", (BridgeHttpProtocol,), {"header_timeout_s": config.stall_timeout_s,
                                                         "body_idle_timeout_s": config.stall_timeout_s})
    uv_config = uvicorn.Config(app, log_level=config.log_level, http=protocol, ws="none", lifespan="on",
                               timeout_graceful_shutdown=3, access_log=False, server_header=False)
    def cleanup() -> None:
        _remove_server_json(folder)
        for sock in sockets:
            sock.close()
        if config.unix_socket:
            with contextlib.suppress(OSError):
                os.unlink(config.unix_socket)

    server = Server(uv_config)
    try:
        server.run(sockets=sockets)
    finally:
        cleanup()
    return 0
