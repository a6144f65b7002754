"""A real `ctrlgen serve` with a conflicting and a failing third-party plugin installed: the
conflict withholds one name, is reported (start-up warning, capabilities), and nothing else breaks."""

from __future__ import annotations

import json
import os

import numpy as np

CANNY_CLONE = """
from ctrlgen import hookimpl, PreprocessorSpec

@hookimpl
def ctrlgen_preprocessors():
    yield PreprocessorSpec(name="Canny", run=lambda image, mask=None: image, description="a second canny")
"""

RAISING_HOOKS = """
from ctrlgen import hookimpl

@hookimpl
def ctrlgen_preprocessors():
    raise RuntimeError("boom in ctrlgen_preprocessors")

@hookimpl
def ctrlgen_adapters():
    raise RuntimeError("boom in ctrlgen_adapters")
"""


def test_conflict_and_failure_affect_only_what_they_name(make_distribution, monkeypatch, server_factory):
    site = make_distribution("ctrlgen-clone", "0.9", {"clone": "cg_clone"}, {"cg_clone": CANNY_CLONE})
    make_distribution("ctrlgen-broken", "0.1", {"broken": "cg_broken"}, {"cg_broken": RAISING_HOOKS})
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    server = server_factory()

    # 1. The start-up warning names both providers and the fix.
    log = server.log()
    assert "WARNING: Conflicting plugins provide the preprocessor 'canny'" in log, log
    assert "ctrlgen-clone 0.9 (plugin 'clone')" in log and "CTRLGEN_DISABLE_PLUGINS=clone" in log

    # 2. Capabilities answer, list the conflict and everything but the withheld name.
    status, caps = server.json("GET", "/v1/capabilities")
    assert status == 200, caps
    (conflict,) = caps["conflicts"]
    assert conflict["kind"] == "preprocessors" and conflict["name"] == "canny"
    assert [p["plugin"] for p in conflict["providers"]] == ["ctrlgen.preprocessors.canny", "clone"]
    assert [p["distribution"] for p in conflict["providers"]] == ["ctrlgen", "ctrlgen-clone"]
    assert "CTRLGEN_DISABLE_PLUGINS=clone" in conflict["message"]
    preprocessors = {p["name"]: p for p in caps["preprocessors"]}
    assert "canny" not in preprocessors and {"blur_gaussian", "depth_midas", "softedge_hed"} <= set(preprocessors)
    assert {"controlnet", "reference", "lora"} <= {a["name"] for a in caps["adapters"]}
    assert caps["models"]  # the rest of the answer is intact

    # 3. Each preprocessor says whether it needs weights, and which files.
    assert preprocessors["blur_gaussian"]["needs_weights"] is False and preprocessors["blur_gaussian"]["weights"] == []
    hed = preprocessors["softedge_hed"]
    assert hed["needs_weights"] is True
    assert [w["filename"] for w in hed["weights"]] == ["ControlNetHED.pth"] and hed["weights"][0]["source"]

    # 4. Other preprocessors run; the withheld one is refused with the conflict's message.
    ref = server.upload(np.full((32, 32, 3), 128, np.uint8))
    status, headers, body = server.request("POST", "/v1/preprocess", {"preprocessor": "blur_gaussian", "image": ref})
    assert status == 200, body
    assert len(body) == 32 * 32 * 3
    status, answer = server.json("POST", "/v1/preprocess", {"preprocessor": "canny", "image": ref})
    assert 400 <= status < 500, answer
    assert "Conflicting plugins provide the preprocessor 'canny'" in answer["error"]["message"]
    assert "CTRLGEN_DISABLE_PLUGINS=clone" in answer["error"]["message"]

    # 5. A job naming it is refused at the door with the message (not an internal error); a job
    #    without it runs to the end.
    job = {"model": server.model, "prompt": "a cat", "seed": 1, "steps": 2, "width": 64, "height": 64}
    status, answer = server.json("POST", "/v1/jobs", {"job": {
        **job, "image": ref, "control": [{"model": server.controlnet, "preprocessor": "canny"}]}})
    assert 400 <= status < 500, answer
    assert "Conflicting plugins provide the preprocessor 'canny'" in answer["error"]["message"]
    events = server.wait(server.submit(job))
    assert events[-1][1] == "finished", json.dumps(events[-3:])
    assert server.alive()
