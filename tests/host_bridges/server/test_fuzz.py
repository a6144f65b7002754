"""Fuzz every operation of the served OpenAPI document (schemathesis): valid-looking and invalid
requests alike get answers below 500 in the protocol's error format, each answer is one the
document declares (status, content type, headers, body schema), no job the fuzzer got accepted
ends as an ``internal_error``, and the server stays healthy."""

from __future__ import annotations

import json
import time

import pytest

schemathesis = pytest.importorskip("schemathesis")

EXAMPLES_PER_MODE = 8
TIME_LIMIT_S = 90.0


def test_fuzz_every_operation(server_factory):
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )
    from schemathesis.core.failures import FailureGroup

    # The answer is what the document declares for the operation; nothing less counts.
    conformance = [status_code_conformance, content_type_conformance, response_headers_conformance,
                   response_schema_conformance]

    # A bundle is bytes like any binary body (arbitrary ones: the server must refuse them cleanly).
    schemathesis.serializer.alias("application/vnd.ctrlgen.bundle", "application/octet-stream")
    server = server_factory("--max-queue", "5", "--max-upload-bytes", "1M", "--max-side", "512")
    status, _, document = server.request("GET", "/openapi.json")
    assert status == 200
    schema = schemathesis.openapi.from_dict(json.loads(document))
    operations = [result.ok() for result in schema.get_all_operations()]
    routes = {f"{op.method.upper()} {op.path}" for op in operations}
    assert {"GET /v1/health", "PUT /v1/images/{sha256}", "POST /v1/jobs", "GET /v1/jobs/{job_id}/events",
            "GET /v1/jobs/{job_id}/results/{index}", "POST /v1/preprocess", "POST /v1/jobs/bundle",
            "POST /v1/preprocess/bundle"} <= routes
    auth = {"Authorization": f"Bearer {server.token}"}
    deadline = time.monotonic() + TIME_LIMIT_S
    failures: list[str] = []
    calls = 0

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if time.monotonic() > deadline:
                break

            @settings(max_examples=EXAMPLES_PER_MODE, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(mode))
            def exercise(case) -> None:
                nonlocal calls
                if time.monotonic() > deadline:
                    return
                response = case.call(base_url=server.url, headers=auth, timeout=30)
                calls += 1
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                    f"{response.text[:300]}")
                elif response.status_code >= 400 and case.method != "HEAD":
                    error = response.json()["error"]  # every error answer has the protocol's shape
                    assert error["code"] and error["message"], response.text
                try:
                    case.validate_response(response, checks=conformance)
                except FailureGroup as group:
                    failures.extend(f"{case.method} {case.formatted_path} -> {response.status_code}: {failure.title}: "
                                    f"{failure.message[:300]}" for failure in group.exceptions)

            try:
                exercise()
            except Unsatisfiable:  # nothing invalid to send (an operation without parameters)
                assert mode == GenerationMode.NEGATIVE, operation.path
    assert calls > 60, f"only {calls} requests were made"
    assert not failures, "\n".join(failures[:10])
    assert server.alive()
    # Jobs the fuzzer got accepted run to an end that is never a crash: cancel what still waits,
    # let the running one end, then look at every job's outcome.
    deadline = time.monotonic() + 120
    while True:
        jobs = server.json("GET", "/v1/jobs")[1]["jobs"]
        unfinished = [job for job in jobs if job["status"] in ("queued", "running")]
        if not unfinished or time.monotonic() > deadline:
            break
        for job in unfinished:
            server.json("POST", f"/v1/jobs/{job['id']}/cancel")
        time.sleep(0.2)
    assert not unfinished, unfinished
    for job in jobs:
        detail = server.json("GET", f"/v1/jobs/{job['id']}")[1]
        assert (detail.get("error") or {}).get("code") != "internal_error", detail
    status, health = server.json("GET", "/v1/health")
    assert status == 200 and health["status"] == "ok"
    assert "Traceback" not in server.log(), server.log()[-3000:]
