"""Regions through `ctrlgen serve`: in the capabilities with their Param schema, a job with an
uploaded mask runs, a bad one is refused before it is queued."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _bridge_fixtures():
    """The bridge tests' fixtures (tests/host_bridges/conftest.py), which pytest only shows to
    tests below that folder (as tests/docs/test_protocol_doc.py loads them)."""
    name = "ctrlgen_bridge_fixtures"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "host_bridges" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_fixtures = _bridge_fixtures()
bridge_model_root = _fixtures.bridge_model_root
live_server = _fixtures.live_server


def test_regions_are_in_the_capabilities_and_run_from_uploads(live_server):
    status, capabilities = live_server.json("GET", "/v1/capabilities")
    assert status == 200
    (entry,) = [a for a in capabilities["adapters"] if a["name"] == "region"]
    params = {p["name"]: p for p in entry["params"]}
    assert params["mask"]["type"] == "image" and params["feather_px"]["default"] == 16.0

    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255
    job = {"model": live_server.model, "prompt": "a garden AND fog :0.3", "seed": 2, "steps": 2, "width": 64,
           "height": 64, "adapters": [{"type": "region", "mask": live_server.upload(mask), "prompt": "a red house"}]}
    events = live_server.wait(live_server.submit(job))
    assert events[-1][1] == "finished", events[-1]


def test_a_region_mask_of_the_wrong_size_is_refused_before_queueing(live_server):
    mask = np.full((32, 48), 255, np.uint8)
    job = {"model": live_server.model, "prompt": "a garden", "steps": 2, "width": 64, "height": 64,
           "adapters": [{"type": "region", "mask": live_server.upload(mask), "prompt": "a red house"}]}
    status, answer = live_server.json("POST", "/v1/jobs", {"job": job})
    assert status == 422
    assert "adapters[0] (region).mask is 48×32 but the picture is 64×64" in str(answer)
