"""``ctrlgen serve``: the HTTP bridge host apps talk to (protocol v1, docs/protocol.md).

FastAPI on uvicorn. Routes live under ``/v1/``; events are Server-Sent Events. Image bodies
are read straight into their buffers (hashed while they arrive, :mod:`.bodies`) and raw pixels
are used where they landed; raw results go out as the image's bytes (or a crop of them). One
worker thread runs the jobs (:mod:`.jobs`); uploads are held in memory within a byte budget
(:mod:`.uploads`); warm-up and shutdown are :mod:`.runtime`'s; the token, Host and Origin checks
wrap every route (:mod:`.security`). Running the server is :mod:`.serving`.
"""

import asyncio
import contextlib
import json
import logging
import sqlite3
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
from ctrlgen.host_bridges.server.image_routes import BUNDLE_ERRORS, add_image_routes, bundle_body
from ctrlgen.host_bridges.server.images import RAW_TYPE, ApiError, image_response, validation_message
from ctrlgen.host_bridges.server.jobs import (
    TERMINAL,
    JobQueue,
    JobRecord,
    ServerStopping,
    client_id,
    new_job_id,
)
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
)
from ctrlgen.host_bridges.server.openapi import (
    RAW_IMAGE_HEADERS,
    binary,
    build_document,
    errors,
    event_stream_content,
)
from ctrlgen.host_bridges.server.runtime import Runtime, Warmup
from ctrlgen.host_bridges.server.security import Guard
from ctrlgen.host_bridges.server.uploads import REF_PREFIX, UploadStore, is_ref
from ctrlgen.host_bridges.server.workers import RaySettings

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
    workers: int | None = None  # local workers on ``device`` (--workers; default 1, 0 with --ray)
    devices: tuple[str, ...] | None = None  # one local worker per entry (--devices)
    ray: str | None = None  # Ray workers on the cluster at this address (--ray)
    ray_workers: int | None = None
    ray_cpus: float | None = None
    result_ttl_s: float = 3600.0
    max_queue: int = 100
    max_results: int = 100
    max_upload_bytes: int = 256 * 2**20
    max_pixels: int = 8192 * 8192
    max_side: int = 8192
    max_upload_memory: int = 2 * 2**30  # memory for uploads and results (``--max-memory``)
    preload: str | None = None  # a model loaded while warming up
    warmup: bool = True  # import torch/diffusers (and load ``preload``) right after start
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
                     outputs=outputs, workers=config.workers,
                     devices=list(config.devices) if config.devices else None,
                     ray=RaySettings(config.ray, config.ray_workers, config.ray_cpus) if config.ray else None)
    restored = queue.restore()
    if restored["queued"] or restored["rerun"] or restored["interrupted"]:
        log.warning("restored from the journal in %s: %d queued job(s), %d running job(s) to run again, "
                    "%d interrupted", state, restored["queued"], restored["rerun"], restored["interrupted"])
    runtime = Runtime(queue, uploads, outputs, journal, lock, Warmup(queue, config.preload, config.warmup))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        runtime.start(asyncio.get_running_loop())

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
            runtime.begin_stop()
            await run_in_threadpool(runtime.close)

    app = FastAPI(title="ctrlgen bridge", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url="/openapi.json",
                  description="Protocol v1 of the ctrlgen host bridge; see docs/protocol.md. Every request "
                  "carries `Authorization: Bearer <token>`; every 4xx/5xx answer is `{\"error\": {\"code\", "
                  "\"message\"}}` (a method a path does not have: `405 invalid_request`).")
    app.state.queue = queue
    app.state.uploads = uploads
    app.state.lock = lock  # held as long as the app lives
    app.state.runtime = runtime
    app.state.config = config
    from ctrlgen.host_bridges.server.live import LiveHub  # the live channel (GET /v1/live, a WebSocket)

    app.state.live = LiveHub(queue, uploads, max_message_bytes=config.max_upload_bytes + 2**20,
                             max_side=config.max_side, max_pixels=config.max_pixels)

    @app.exception_handler(ServerStopping)
    async def stopping(request, exc: ServerStopping):
        return _error_response(503, "server_stopping", str(exc), {"Retry-After": "5"})

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
        return _error_response(422, "invalid_request", validation_message(exc.errors()))

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
        return {"status": "ok", "version": __version__, **runtime.warmup.describe(),
                "queue": {"running": queue.running_id, "queued": queue.queued_count()},
                "workers": queue.describe_workers(),
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
            **runtime.warmup.describe(),
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
            "features": _job_features(),
            "workers": queue.describe_workers(),
        }

    @app.get("/v1/openapi.json", include_in_schema=False)
    async def openapi_v1() -> JSONResponse:
        return JSONResponse(app.openapi())

    # -- images ------------------------------------------------------------------------------
    read_bundle = add_image_routes(app, config, uploads)
    image_answer = {"description": "the image (raw: with X-Ctrlgen-Width/Height/Channels)",
                    "content": binary(RAW_TYPE, "image/png", "image/webp"), "headers": RAW_IMAGE_HEADERS}

    # -- preprocess -----------------------------------------------------------------------------
    preprocess_answers = {
        200: {**image_answer, "description": "the control map (raw: RGB with X-Ctrlgen-Width/Height/Channels); "
              "data the preprocessor returns (keypoints, labels) is in X-Ctrlgen-Data",
              "headers": {**RAW_IMAGE_HEADERS, "X-Ctrlgen-Data": {
                  "description": "JSON: what the preprocessor returned besides the map (OpenPose keypoints, segment "
                                 "labels, ...); absent when nothing", "schema": {"type": "string"}}}},
        **errors(404, 422, notes={
            404: "`unknown_preprocessor`: no registered preprocessor has that name",
            422: "`invalid_request`: bad params, an image or mask that is not uploaded, a mask of another size, "
                 "a preprocessor whose Python packages are missing"}), **errors(503, notes={
            503: "`server_stopping`: the server is shutting down"})}

    @app.post("/v1/preprocess", operation_id="preprocess", tags=["preprocess"], response_class=Response,
              responses=preprocess_answers)
    async def preprocess(request: PreprocessRequest) -> Response:
        """Run one preprocessor on an uploaded image; answers the control map."""
        return await run_preprocess(request)

    @app.post("/v1/preprocess/bundle", operation_id="preprocess_bundle", tags=["preprocess"],
              response_class=Response, openapi_extra=bundle_body,
              responses={**preprocess_answers, **errors(400, 411, 413, 422, notes=BUNDLE_ERRORS)})
    async def preprocess_bundle(request: Request) -> Response:
        """``POST /v1/preprocess`` with the images it needs in the same request (a bundle: the
        request's JSON and the images' bytes; docs/protocol.md#bundles)."""
        body, _ = await read_bundle(request, PreprocessRequest)
        return await run_preprocess(body)

    async def run_preprocess(request: PreprocessRequest) -> Response:
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
        except ServerStopping:
            raise
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
    submit_answers = {200: {"model": SubmitAnswer, "description": "a repeated Idempotency-Key: the job that key "
                            "created (existed: true), not queued again"},
                      **errors(422, 429, 503, notes={422: (
                          "`invalid_request` (the message starts with the field's path: `job.steps`, "
                          "`job.control[1].preprocessor_params.low_threshold`) or `model_not_found` (a model in "
                          "no model folder); the job was not queued"), 503: "`server_stopping`: the server is "
                          "shutting down; the job was not queued"})}

    def client_header():
        return Header(None, alias="X-Ctrlgen-Client", max_length=200, description="who submits (any id the client "
                      "keeps for its life, e.g. a random one per Client): jobs start in submission order per "
                      "client, and clients take turns (docs/protocol.md#workers)")

    def idempotency_header():
        return Header(None, alias="Idempotency-Key", max_length=200, description="a key of the client's choosing: "
                      "a repeat of a submission with the same key answers the job it created (200) instead of "
                      "queueing another")

    @app.post("/v1/jobs", operation_id="submit_job", tags=["jobs"], status_code=202, response_model=SubmitAnswer,
              responses=submit_answers)
    async def submit(request: SubmitRequest, idempotency_key: str | None = idempotency_header(),
                     client: str | None = client_header()) -> Any:
        """Validate a job and queue it; its events follow at /v1/jobs/{id}/events."""
        return await submit_job(request, idempotency_key, client)

    @app.post("/v1/jobs/bundle", operation_id="submit_job_bundle", tags=["jobs"], status_code=202,
              response_model=SubmitAnswer, openapi_extra=bundle_body,
              responses={**submit_answers, **errors(400, 411, 413, 422, notes={
                  **BUNDLE_ERRORS, 422: BUNDLE_ERRORS[422] + "; and what POST /v1/jobs answers 422"})})
    async def submit_bundle(request: Request, idempotency_key: str | None = idempotency_header(),
                            client: str | None = client_header()) -> Any:
        """``POST /v1/jobs`` with the images the job needs in the same request (a bundle: the
        request's JSON and the images' bytes; docs/protocol.md#bundles)."""
        body, _ = await read_bundle(request, SubmitRequest)
        return await submit_job(body, idempotency_key, client)

    async def submit_job(request: SubmitRequest, idempotency_key: str | None, client: str | None = None) -> Any:
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
            await asyncio.wrap_future(uploads.persist(digest))
        record = JobRecord(new_job_id(), job, request.preview, digests, idempotency_key=idempotency_key or None,
                           client=client_id(client))
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
        return EventStream(_event_stream(record, last_seen, config.keepalive_s, queue),
                           headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/jobs/{job_id}/results/{index}", operation_id="get_result", tags=["jobs"], response_class=Response,
             responses={200: {**image_answer, "headers": {**RAW_IMAGE_HEADERS, "X-Ctrlgen-Box": {
                 "description": "x0,y0,x1,y1: where the crop lies in the result (with ?box= or ?changed=1)",
                 "schema": {"type": "string"}}}}, **errors(404, 409, 410, 422, notes={
                 404: "`not_found`: no such job, or no result with this index",
                 409: "`job_not_finished`: the job has not finished, or ended without results",
                 410: "`result_expired`: the job ended longer than --result-ttl ago (or was pushed out by newer "
                      "ones), or its result file is gone",
                 422: "`invalid_request`: an index, format or box that is not valid"})})
    async def result(job_id: str, index: int = PathParam(ge=0),
                     format: Literal["raw", "png", "webp"] = Query("raw", description="raw (the default: the "
                                                                   "pixels, no encoding), png or webp"),
                     box: str | None = Query(None, description="x0,y0,x1,y1: answer only this crop of the result "
                                             "(its own frame; x1/y1 exclusive)", examples=["0,0,64,64"]),
                     changed: bool = Query(False, description="answer only the result's changed_box (the whole "
                                           "image when it has none)")) -> Response:
        """One result image (or a crop of it): raw RGB (with X-Ctrlgen-* headers), PNG or WebP.
        A crop's place in the result is in ``X-Ctrlgen-Box``."""
        record = find_job(job_id)
        if record.status != "finished":
            if record.status in TERMINAL:
                raise ApiError(409, "job_not_finished",
                               f"job {job_id} ended with status {record.status!r} and has no results")
            raise ApiError(409, "job_not_finished", f"job {job_id} is {record.status}; wait for its finished event")
        images = record.results or []
        if index >= len(images):
            raise ApiError(404, "not_found", f"job {job_id} has {len(images)} result(s); index {index} is out of range")
        item = images[index]
        crop = crop_box(item, box, changed)
        try:
            pixels = queue.result_pixels(item)
        except (OSError, ValueError):
            raise ApiError(410, "result_expired", f"result {index} of job {job_id} is no longer on the server's "
                           "disk (deleted by hand?); run the job again") from None
        headers = {}
        if crop is not None:
            x0, y0, x1, y1 = crop
            pixels = pixels[y0:y1, x0:x1]
            headers["X-Ctrlgen-Box"] = f"{x0},{y0},{x1},{y1}"
        if format == "raw":
            return image_response(pixels, None, "raw", headers)
        return await run_in_threadpool(image_response, pixels, None, format, headers)

    guard = Guard(app, token=token, allowed_origins=config.allowed_origins,
                  allowed_hosts=None if (config.allow_remote and not config.allowed_hosts) else config.allowed_hosts)
    app.state.live.check = guard.check  # the live channel's upgrade passes the same checks
    return guard


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


def crop_box(item: dict, box: str | None, changed: bool) -> tuple[int, int, int, int] | None:
    """The crop ``?box=`` or ``?changed=1`` asks of a result (None: the whole image)."""
    width, height = item["width"], item["height"]
    if box is not None and changed:
        raise ApiError(422, "invalid_request", "box and changed=1 both choose a crop; send one of them")
    if changed:
        return tuple(item.get("changed_box") or (0, 0, width, height))  # type: ignore[return-value]
    if box is None:
        return None
    parts = box.split(",")
    if len(parts) != 4 or not all(part.strip().isdigit() for part in parts):
        raise ApiError(422, "invalid_request", f"box={box!r} is not four whole numbers x0,y0,x1,y1; "
                       f"for example box=0,0,{width},{height}")
    x0, y0, x1, y1 = (int(part) for part in parts)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ApiError(422, "invalid_request", f"box={box} is not inside the {width}×{height} result with x0 < x1 "
                       f"and y0 < y1; the largest box is 0,0,{width},{height}")
    return x0, y0, x1, y1


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


async def _event_stream(record: JobRecord, after: int, keepalive_s: float, queue: JobQueue):
    sent = after
    while True:
        if queue.stopping:  # the server stops: end the stream (the client reconnects later)
            yield b": server stopping\n\n"
            return
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


def _job_features() -> list[dict[str, Any]]:
    """Job features beyond the plugins' (upscale, hires fix), with their Param schemas."""
    from ctrlgen.core.engine.upscale_options import feature_capabilities

    return feature_capabilities()
