"""The served OpenAPI document (``GET /openapi.json``): the contract clients are generated from.

FastAPI derives the routes, parameters and bodies from ``app.py`` and :mod:`.models`; this
module adds what lives outside the routes, so the document tells everything a client meets:

- the bearer token, which :class:`~.security.Guard` (an ASGI layer around the app) checks on
  every request: the ``bearer`` security scheme, required by every operation, and its ``401``
  and ``403`` answers;
- the answers of the connection layer (:mod:`.http`) before any route — ``400``, ``408``,
  ``414``, ``431`` — and ``500`` (a bug), on every operation, each with the error schema;
- the payload of each event kind of ``GET /v1/jobs/{job_id}/events``, as components named in
  the event stream's ``x-ctrlgen-events``.

Routes declare their own error answers with :func:`errors`.
"""

from __future__ import annotations

from typing import Any

from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from ctrlgen.host_bridges.server.models import EVENTS, ErrorAnswer

SCHEMAS = "#/components/schemas/"
ERROR_SCHEMA = {"$ref": SCHEMAS + "ErrorAnswer"}
SECURITY = [{"bearer": []}]

# What each status means anywhere in the protocol (docs/protocol.md#errors); a route may say more.
ERROR_DESCRIPTIONS = {
    400: "`invalid_http` (not an HTTP/1.1 request) or `incomplete_body` (the client closed before the body it "
         "announced had arrived)",
    401: "`unauthorized`: no `Authorization: Bearer <token>`, or a wrong token",
    403: "`forbidden_host` (a Host that is not a loopback name) or `forbidden_origin` (an Origin not allowed "
         "with --allowed-origin)",
    404: "`not_found`",
    408: "`timeout`: the headers, or a pause in the body, took longer than --stall-timeout; the connection "
         "is closed",
    409: "`job_not_finished`",
    411: "`length_required`: a body that must say its length did not (Content-Length)",
    410: "`result_expired`: the job ended longer than --result-ttl ago, or was pushed out by newer ones",
    413: "`too_large`: a body over --max-upload-bytes, or upload memory full of images jobs still need",
    414: "`url_too_long`: a URL over 16 KiB",
    422: "`invalid_request`: a parameter or body that is not valid (the message names it)",
    429: "`queue_full`: --max-queue jobs are waiting; retry after Retry-After seconds",
    431: "`headers_too_large`: request headers over 64 KiB",
    500: "`internal_error`: a bug; the message has the exception",
    503: "`server_stopping`: the server is shutting down; retry once it runs again",
}
# Answered before or around every route: the connection layer, the guard, a bug.
EVERY_OPERATION = (400, 401, 403, 408, 414, 431, 500)

HEADERS = {
    401: {"WWW-Authenticate": {"description": "`Bearer realm=\"ctrlgen\"`", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "seconds to wait before submitting again", "required": True,
                          "schema": {"type": "integer", "minimum": 0}}},
}

RAW_IMAGE_HEADERS = {
    f"X-Ctrlgen-{name}": {"description": f"{what} (raw images only)", "required": False,
                          "schema": {"type": "integer", "minimum": 1}}
    for name, what in (("Width", "width in pixels"), ("Height", "height in pixels"),
                       ("Channels", "1 (grey), 3 (RGB) or 4 (RGBA)"))}


def errors(*statuses: int, notes: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """A route's error answers, each with the error schema; ``notes`` (by status) replace the
    general description of a status with the route's own."""
    answers: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        answer: dict[str, Any] = {
            "description": (notes or {}).get(status, ERROR_DESCRIPTIONS[status]),
            "content": {"application/json": {"schema": ERROR_SCHEMA}}}
        if status in HEADERS:
            answer["headers"] = HEADERS[status]
        answers[status] = answer
    return answers


def binary(*media_types: str) -> dict[str, dict[str, Any]]:
    """Content of a binary body in each of ``media_types``."""
    return {media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in media_types}


def event_stream_content() -> dict[str, Any]:
    """The events route's ``text/event-stream``: each event's kind and the component its data follows."""
    kinds = ", ".join(f"`{kind}` ({SCHEMAS}{model.__name__})" for kind, model in EVENTS.items())
    return {"text/event-stream": {
        "schema": {"type": "string", "description": (
            "Server-Sent Events, each `id: <n>` (1, 2, 3, ... per job), `event: <kind>` and `data: <JSON>`, "
            "a blank line after each; `: ping` comment lines keep a quiet stream open. The data of each kind: "
            + kinds + ". The stream ends after `finished`, `error`, `cancelled` or `interrupted`.")},
        "x-ctrlgen-events": {kind: SCHEMAS + model.__name__ for kind, model in EVENTS.items()}}}


def build_document(app) -> dict[str, Any]:
    """FastAPI's document of ``app``, completed as the module docstring says."""
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                           tags=app.openapi_tags)
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    # 1. Schemas no route names by model: the error answer and the event payloads.
    _, definitions = models_json_schema([(ErrorAnswer, "serialization")]
                                        + [(model, "serialization") for model in EVENTS.values()],
                                        ref_template=SCHEMAS + "{model}")
    for name, schema in definitions.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    # 2. The token, on every operation.
    components["securitySchemes"] = {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "the token from the `token` file in `ctrlgen config-dir` (made on the first start)"}}
    document["security"] = SECURITY
    for operations in document["paths"].values():
        for method, operation in operations.items():
            operation["security"] = SECURITY
            # 3. What the layers around the routes answer, on every operation.
            responses = operation["responses"]
            # FastAPI's own 422 (HTTPValidationError) never goes out: the app answers every
            # validation error in the protocol's format, declared by the routes where it can occur.
            if "HTTPValidationError" in str(responses.get("422", {})):
                del responses["422"]
            for status, answer in errors(*EVERY_OPERATION).items():
                if str(status) in responses:  # the route says more; keep both
                    responses[str(status)]["description"] += "; " + answer["description"]
                else:
                    responses[str(status)] = answer
            if method == "head":  # HEAD answers have headers only
                for answer in responses.values():
                    answer.pop("content", None)
            operation["responses"] = dict(sorted(responses.items()))
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document
