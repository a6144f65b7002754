"""docs/protocol.md: its examples run against a real server, and it names every route, event
kind and error code the server has."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bridge_fixtures():
    """The bridge tests' fixtures (tests/host_bridges/conftest.py), which pytest only shows to
    tests below that folder."""
    spec = importlib.util.spec_from_file_location("ctrlgen_bridge_fixtures",
                                                  ROOT / "tests" / "host_bridges" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_fixtures = _bridge_fixtures()
bridge_model_root = _fixtures.bridge_model_root
live_server = _fixtures.live_server

DOC = ROOT / "docs" / "protocol.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)
SERVER_SOURCES = sorted((ROOT / "src" / "ctrlgen" / "host_bridges" / "server").glob("*.py"))


def test_examples_run_against_a_live_server(live_server, monkeypatch, capsys):
    monkeypatch.setenv("CTRLGEN_CONFIG_DIR", str(live_server.config_dir))
    blocks = PYTHON_BLOCK.findall(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 8
    namespace: dict = {"__name__": "protocol_doc"}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"protocol.md:python block {number}", "exec"), namespace)
    assert namespace["results"][0]["width"] == 64  # the job example really ran to the end
    assert "step 3/3" in capsys.readouterr().out


def test_every_route_is_documented(live_server):
    status, document = live_server.json("GET", "/openapi.json")
    assert status == 200
    text = re.sub(r"\{\w+\}", "{}", DOC.read_text(encoding="utf-8"))
    for path, operations in document["paths"].items():
        for method in operations:
            route = f"{method.upper()} {re.sub(r'{[a-z_0-9]+}', '{}', path)}"
            assert f"`{route}" in text, f"{route} is not in docs/protocol.md"


def test_every_error_code_and_event_is_documented():
    text = DOC.read_text(encoding="utf-8")
    source = "\n".join(path.read_text(encoding="utf-8") for path in SERVER_SOURCES)
    codes = set(re.findall(r'ApiError\(\d+, "(\w+)"', source))
    codes |= set(re.findall(r'_error\(\d+, "(\w+)"', source))
    codes |= set(re.findall(r'return "(\w+)"', source))  # job error codes (error_code())
    codes |= {"internal_error", "not_found", "unauthorized"}
    assert {"unauthorized", "forbidden_origin", "forbidden_host", "hash_mismatch", "too_large", "queue_full",
            "too_many_pixels", "result_expired", "invalid_job", "model_not_found", "out_of_memory"} <= codes
    for code in codes:
        assert f"`{code}`" in text, f"error code {code} is not in docs/protocol.md"
    for kind in ("queued", "started", "progress", "preview", "finished", "error", "cancelled"):
        assert f"| `{kind}` |" in text, f"event {kind} is not in the events table"
