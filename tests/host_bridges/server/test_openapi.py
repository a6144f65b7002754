"""The served OpenAPI document is the contract: it is valid OpenAPI, declares every answer of
every route (errors, headers, binary bodies, the token), carries the Job model the server
validates with and the event payloads, and a client generated from it runs a real job.

The client is generated with openapi-python-client: it reads the document from a local file
(no network), and it generates the whole client — typed models *and* one function per
operation, with the token, headers and binary bodies — where datamodel-code-generator would
generate the models only and leave the HTTP calls to hand-written code."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("openapi_python_client")

RAW = "application/vnd.ctrlgen.raw"
ERROR_REF = "#/components/schemas/ErrorAnswer"
EVERY_OPERATION = {"400", "401", "403", "408", "414", "431", "500"}
# The answers each operation has besides EVERY_OPERATION's.
ANSWERS = {
    "GET /v1/health": {"200"},
    "GET /v1/capabilities": {"200"},
    "HEAD /v1/images/{sha256}": {"200", "404", "422"},
    "PUT /v1/images/{sha256}": {"200", "201", "413", "422"},
    "POST /v1/preprocess": {"200", "404", "422", "503"},
    "POST /v1/preprocess/bundle": {"200", "404", "411", "413", "422", "503"},
    "POST /v1/jobs": {"200", "202", "422", "429", "503"},
    "POST /v1/jobs/bundle": {"200", "202", "411", "413", "422", "429", "503"},
    "GET /v1/jobs": {"200"},
    "GET /v1/jobs/{job_id}": {"200", "404", "410"},
    "POST /v1/jobs/{job_id}/cancel": {"200", "404", "410"},
    "GET /v1/jobs/{job_id}/events": {"200", "404", "410", "422"},
    "GET /v1/jobs/{job_id}/results/{index}": {"200", "404", "409", "410", "422"},
}
GENERATOR_CONFIG = """\
post_hooks: []
project_name_override: ctrlgen_api
package_name_override: ctrlgen_api
content_type_overrides:
  application/vnd.ctrlgen.raw: application/octet-stream
  application/vnd.ctrlgen.bundle: application/octet-stream
"""


@pytest.fixture(scope="module")
def document(live_server) -> dict:
    status, _, body = live_server.request("GET", "/openapi.json")
    assert status == 200
    return json.loads(body)


def operations(document: dict):
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield f"{method.upper()} {path}", operation


# -- the document --------------------------------------------------------------------------------------
def test_the_document_is_valid_openapi_and_served_twice(live_server, document):
    from openapi_spec_validator import validate

    validate(document)
    status, _, body = live_server.request("GET", "/v1/openapi.json")
    assert status == 200 and json.loads(body) == document
    assert {name for name, _ in operations(document)} == set(ANSWERS)


def test_every_operation_needs_the_token_and_declares_its_answers(document):
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer") and "token" in scheme["description"]
    assert document["security"] == [{"bearer": []}]
    for name, operation in operations(document):
        assert operation["security"] == [{"bearer": []}], name
        assert set(operation["responses"]) == EVERY_OPERATION | ANSWERS[name], name
        for status, answer in operation["responses"].items():
            assert answer["description"], (name, status)
            if status >= "400" and not name.startswith("HEAD"):
                assert answer["content"] == {"application/json": {"schema": {"$ref": ERROR_REF}}}, (name, status)
            if name.startswith("HEAD"):
                assert "content" not in answer, (name, status)  # HEAD answers have no body
    assert document["components"]["schemas"]["ErrorAnswer"]["properties"]["error"] == {
        "$ref": "#/components/schemas/ErrorBody"}
    assert "HTTPValidationError" not in document["components"]["schemas"]  # FastAPI's own shape never goes out


def test_headers_and_binary_bodies_are_declared(document):
    paths = document["paths"]
    binary = {"schema": {"type": "string", "format": "binary"}}
    upload = paths["/v1/images/{sha256}"]["put"]
    assert upload["requestBody"]["content"] == {RAW: binary, "image/png": binary, "image/webp": binary}
    assert {p["name"] for p in upload["parameters"] if p["in"] == "header"} == {
        "X-Ctrlgen-Width", "X-Ctrlgen-Height", "X-Ctrlgen-Channels"}
    assert upload["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/UploadAnswer")
    assert upload["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith("/UploadAnswer")
    for operation in (paths["/v1/jobs/{job_id}/results/{index}"]["get"], paths["/v1/preprocess"]["post"]):
        answer = operation["responses"]["200"]
        assert answer["content"] == {RAW: binary, "image/png": binary, "image/webp": binary}
        assert {"X-Ctrlgen-Width", "X-Ctrlgen-Height", "X-Ctrlgen-Channels"} <= set(answer["headers"])
    assert "X-Ctrlgen-Data" in paths["/v1/preprocess"]["post"]["responses"]["200"]["headers"]
    assert "X-Ctrlgen-Box" in paths["/v1/jobs/{job_id}/results/{index}"]["get"]["responses"]["200"]["headers"]
    assert {p["name"] for p in paths["/v1/jobs/{job_id}/results/{index}"]["get"]["parameters"]} == {
        "job_id", "index", "format", "box", "changed"}
    for path in ("/v1/jobs/bundle", "/v1/preprocess/bundle"):
        body = paths[path]["post"]["requestBody"]
        assert body["content"] == {"application/vnd.ctrlgen.bundle": binary} and "docs/protocol.md" in body[
            "description"]
    submit = paths["/v1/jobs"]["post"]
    assert submit["responses"]["429"]["headers"]["Retry-After"]["required"] is True
    assert [p["name"] for p in submit["parameters"]] == ["Idempotency-Key", "X-Ctrlgen-Client"]
    events = paths["/v1/jobs/{job_id}/events"]["get"]
    assert {(p["name"], p["in"]) for p in events["parameters"]} == {
        ("job_id", "path"), ("after", "query"), ("Last-Event-ID", "header")}
    assert "WWW-Authenticate" in paths["/v1/health"]["get"]["responses"]["401"]["headers"]


def test_the_job_schema_is_the_model_the_server_validates_with(document):
    from ctrlgen.core.engine.jobs import Job

    schemas = document["components"]["schemas"]
    submit = schemas["SubmitRequest"]
    assert submit["properties"]["job"]["$ref"] == "#/components/schemas/Job"
    expected = Job.model_json_schema(ref_template="#/components/schemas/{model}")
    nested = expected.pop("$defs")
    assert without_null_defaults(schemas["Job"]) == without_null_defaults(expected)
    assert {"ControlUnit", "AdapterUse", "InpaintOptions", "OutpaintOptions"} <= set(nested)
    for name, schema in nested.items():
        assert without_null_defaults(schemas[name]) == without_null_defaults(schema), name


def without_null_defaults(schema):
    """A schema without ``"default": null`` (FastAPI leaves those out; they say nothing more)."""
    if isinstance(schema, dict):
        return {key: without_null_defaults(value) for key, value in schema.items()
                if not (key == "default" and value is None)}
    if isinstance(schema, list):
        return [without_null_defaults(value) for value in schema]
    return schema


def test_answers_and_events_are_typed(document):
    schemas = document["components"]["schemas"]
    paths = document["paths"]

    def answer_ref(path, method, status="200"):
        return paths[path][method]["responses"][status]["content"]["application/json"]["schema"]["$ref"]

    assert answer_ref("/v1/health", "get").endswith("/Health")
    assert answer_ref("/v1/capabilities", "get").endswith("/Capabilities")
    assert answer_ref("/v1/jobs", "post", "202").endswith("/SubmitAnswer")
    assert answer_ref("/v1/jobs/bundle", "post", "202").endswith("/SubmitAnswer")
    assert set(schemas["Health"]["properties"]) >= {"state", "preload", "warmup_error", "warmup_s"}
    assert schemas["Capabilities"]["properties"]["state"]["enum"] == ["warming", "ready"]
    assert {"changed_box", "offset", "canvas_size"} <= set(schemas["ResultInfo"]["properties"])
    assert answer_ref("/v1/jobs", "get").endswith("/JobList")
    assert answer_ref("/v1/jobs/{job_id}", "get").endswith("/JobDetail")
    assert answer_ref("/v1/jobs/{job_id}/cancel", "post").endswith("/CancelAnswer")
    assert "interrupted" in schemas["JobItem"]["properties"]["status"]["enum"]
    assert set(schemas["JobDetail"]["properties"]) - set(schemas["JobItem"]["properties"]) == {"results", "error"}
    stream = paths["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    kinds = stream["x-ctrlgen-events"]
    assert set(kinds) == {"queued", "started", "progress", "preview", "detail", "finished", "error", "cancelled",
                          "interrupted"}
    for kind, ref in kinds.items():
        assert ref.removeprefix("#/components/schemas/") in schemas, kind
        assert ref in stream["schema"]["description"], kind
    assert schemas["ProgressEvent"]["required"] == ["step", "total"]
    assert schemas["DetailEvent"]["required"] == ["phase", "image_index", "pass_index", "detections"]


# -- a generated client ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api(document, tmp_path_factory):
    """The client openapi-python-client generates from the served document, imported."""
    folder = tmp_path_factory.mktemp("generated-client")
    (folder / "openapi.json").write_text(json.dumps(document))
    (folder / "config.yaml").write_text(GENERATOR_CONFIG)
    run = subprocess.run([sys.executable, "-m", "openapi_python_client", "generate", "--path", "openapi.json",
                          "--config", "config.yaml", "--output-path", "ctrlgen_api", "--meta", "none"],
                         cwd=folder, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    # It generates every operation; a warning is about the extra body types of PUT /v1/images only
    # (one binary body type per operation: raw, the fast one).
    warnings = [line for line in run.stdout.splitlines() + run.stderr.splitlines() if line.startswith("WARNING")]
    assert all("PUT /v1/images" in line for line in warnings), run.stdout + run.stderr
    sys.path.insert(0, str(folder))
    try:
        package = importlib.import_module("ctrlgen_api")
        yield package
    finally:
        sys.path.remove(str(folder))
        for name in [m for m in sys.modules if m == "ctrlgen_api" or m.startswith("ctrlgen_api.")]:
            del sys.modules[name]


def test_a_generated_client_runs_a_job(api, live_server, document):
    from ctrlgen_api.api.images import image_known, put_image
    from ctrlgen_api.api.jobs import get_job, get_result, job_events, submit_job, submit_job_bundle
    from ctrlgen_api.api.server import capabilities, health
    from ctrlgen_api.models import ControlUnit, GetResultFormat, Job, JobDetailStatus, SubmitRequest
    from ctrlgen_api.types import File

    client = api.AuthenticatedClient(base_url=live_server.url, token=live_server.token, timeout=120)
    assert health.sync(client=client).status == "ok"
    assert health.sync(client=client).state in ("warming", "ready")
    caps = capabilities.sync(client=client)
    model = next(m.name for m in caps.models if m.kind == "checkpoint")
    controlnet = next(m.name for m in caps.models if m.kind == "controlnet")
    assert "canny" in {p.name for p in caps.preprocessors}

    # 1. Upload an image as raw pixels; the second time the server has it (200, existed).
    pixels = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    digest = hashlib.sha256(pixels.tobytes()).hexdigest()
    answers = []
    for _ in range(2):
        answer = put_image.sync_detailed(digest, client=client, body=File(payload=io.BytesIO(pixels.tobytes())),
                                         x_ctrlgen_width=64, x_ctrlgen_height=64, x_ctrlgen_channels=3)
        answers.append((answer.status_code, answer.parsed.existed))
    assert answers[1] == (200, True) and answers[0][0] in (200, 201)
    assert image_known.sync_detailed(digest, client=client).status_code == 200
    ref = f"sha256:{digest}"

    # 2. Submit with the generated Job model (a ControlNet unit, its weight as an adapter param).
    unit = ControlUnit(model=controlnet, preprocessor="canny")
    unit["weight"] = 0.8
    job = Job(model=model, prompt="a lighthouse", seed=7, steps=2, width=64, height=64, image=ref, control=[unit])
    submitted = submit_job.sync_detailed(client=client, body=SubmitRequest(job=job))
    assert submitted.status_code == 202, submitted.content
    job_id = submitted.parsed.id

    # 3. Poll until it has finished, then download the result (raw, and PNG).
    deadline = time.monotonic() + 120
    while (detail := get_job.sync(job_id, client=client)).status not in (
            JobDetailStatus.FINISHED, JobDetailStatus.ERROR, JobDetailStatus.CANCELLED):
        assert time.monotonic() < deadline, detail
        time.sleep(0.1)
    assert detail.status == JobDetailStatus.FINISHED, detail.to_dict()
    assert [(r.width, r.height, int(r.channels), r.seed) for r in detail.results] == [(64, 64, 3, 7)]
    raw = get_result.sync_detailed(job_id, 0, client=client)
    assert raw.status_code == 200 and raw.headers["x-ctrlgen-width"] == "64"
    assert len(raw.parsed.payload.read()) == 64 * 64 * 3
    png = get_result.sync_detailed(job_id, 0, client=client, format_=GetResultFormat.PNG)
    assert png.content.startswith(b"\x89PNG")
    crop = get_result.sync_detailed(job_id, 0, client=client, box="0,0,32,16")
    assert crop.headers["x-ctrlgen-box"] == "0,0,32,16" and len(crop.parsed.payload.read()) == 32 * 16 * 3

    # 4. The same job again as a bundle: the request and a new image in one body.
    other = np.ascontiguousarray(pixels[::-1])
    other_ref = "sha256:" + hashlib.sha256(other.tobytes()).hexdigest()
    header = json.dumps({"request": {"job": {**job.to_dict(), "image": other_ref}}, "images": [
        {"id": other_ref, "format": "raw", "width": 64, "height": 64, "channels": 3, "length": other.nbytes}]}).encode()
    bundled = submit_job_bundle.sync_detailed(client=client, body=File(payload=io.BytesIO(
        len(header).to_bytes(4, "little") + header + other.tobytes())))
    assert bundled.status_code == 202, bundled.content
    assert image_known.sync_detailed(other_ref[7:], client=client).status_code == 200

    # 5. Its events, each payload read with the model the document names for its kind.
    stream = job_events.sync(job_id, client=client)
    kinds = document["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"][
        "text/event-stream"]["x-ctrlgen-events"]
    seen = []
    for block in stream.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        model_class = getattr(api.models, kinds[fields["event"]].rsplit("/", 1)[1])
        payload = model_class.from_dict(json.loads(fields["data"]))
        assert payload.to_dict() == json.loads(fields["data"])
        seen.append(fields["event"])
    assert seen[:2] == ["queued", "started"] and seen[-1] == "finished" and "progress" in seen


def test_a_generated_client_reads_error_answers(api, live_server):
    from ctrlgen_api.api.jobs import get_job, submit_job
    from ctrlgen_api.api.server import health
    from ctrlgen_api.models import ErrorAnswer, Job, SubmitRequest

    client = api.AuthenticatedClient(base_url=live_server.url, token=live_server.token, timeout=60)
    refused = submit_job.sync_detailed(client=client, body=SubmitRequest(job=Job(model=live_server.model, steps=0)))
    assert refused.status_code == 422 and isinstance(refused.parsed, ErrorAnswer)
    assert refused.parsed.error.code == "invalid_request" and "job.steps" in refused.parsed.error.message
    unknown = get_job.sync("no-such-job", client=client)
    assert isinstance(unknown, ErrorAnswer) and unknown.error.code == "not_found"
    stranger = api.AuthenticatedClient(base_url=live_server.url, token="wrong", timeout=60)
    answer = health.sync_detailed(client=stranger)
    assert answer.status_code == 401 and answer.parsed.error.code == "unauthorized"
