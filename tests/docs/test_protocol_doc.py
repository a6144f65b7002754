"""docs/protocol.md: its examples run against a real server, it names every route, event
kind and error code the server has, and what it promises holds (how far an inpaint job
reaches beyond its mask, where the demo's models are and how the server finds them)."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

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
    for kind in ("queued", "started", "progress", "preview", "finished", "error", "cancelled", "interrupted"):
        assert f"| `{kind}` |" in text, f"event {kind} is not in the events table"



@pytest.mark.parametrize("options", [{"grow_px": 3, "feather_px": 4}, {"feather_px": 7, "only_masked": True},
                                     {"grow_px": 5, "feather_px": 0}, {"grow_px": -2, "feather_px": 2.5}],
                         ids=["grow-and-feather", "only-masked", "hard-edge", "shrink"])
def test_an_inpaint_job_changes_nothing_beyond_grow_plus_the_feather_reach(live_server, options):
    """'What an inpaint job changes', on real jobs: every pixel farther than grow_px +
    ceil(1.5 × feather_px) from every mask pixel (the larger of the horizontal and vertical
    distance) is the input's, bit for bit; nearer ones change."""
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[26:34, 20:30] = 255
    job = {"model": live_server.model, "prompt": "a stone", "seed": 3, "steps": 2, "strength": 1.0,
           "width": 64, "height": 64, "image": live_server.upload(image), "mask": live_server.upload(mask),
           "inpaint": options}
    job_id = live_server.submit(job)
    assert live_server.wait(job_id)[-1][1] == "finished"
    status, headers, body = live_server.request("GET", f"/v1/jobs/{job_id}/results/0")
    assert status == 200 and headers["x-ctrlgen-channels"] == "3"
    result = np.frombuffer(body, np.uint8).reshape(64, 64, 3)

    reach = max(options.get("grow_px", 0), 0) + math.ceil(1.5 * options.get("feather_px", 4.0))
    ys, xs = np.nonzero(mask)
    rows, columns = np.mgrid[0:64, 0:64]
    distance = np.min(np.maximum(np.abs(rows[..., None] - ys), np.abs(columns[..., None] - xs)), axis=-1)
    changed = np.any(result != image, axis=-1)
    assert not changed[distance > reach].any(), np.argwhere(changed & (distance > reach))[:5]
    assert changed[distance == 0].mean() > 0.9  # the mask itself was repainted
    if reach > 1:
        assert changed[(distance > 0) & (distance <= reach)].any()  # and the band around it blends


def _doc_demo_models() -> Path:
    """``demo_models`` as the doc's example finds it, in this process's environment."""
    block = next(block for block in PYTHON_BLOCK.findall(DOC.read_text(encoding="utf-8")) if "def cache_folder" in block)
    namespace: dict = {}
    exec(compile("import os, pathlib, sys\n" + block, "protocol.md: cache_folder", "exec"), namespace)
    return namespace["demo_models"]


def test_the_doc_finds_the_cache_folder_as_ctrlgen_does(monkeypatch, tmp_path):
    from ctrlgen.core.config import cache_dir

    for env in ({"CTRLGEN_CACHE_DIR": str(tmp_path / "cache")}, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, {}):
        for name in ("CTRLGEN_CACHE_DIR", "XDG_CACHE_HOME"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert _doc_demo_models() == cache_dir() / "demo-models", env


def test_serve_finds_the_demo_models_where_the_doc_says(monkeypatch, tmp_path, tiny_model_cache, tiny_sd15):
    """`ctrlgen demo` writes its models to CACHE/demo-models, and `CTRLGEN_MODEL_ROOTS=<that folder>
    ctrlgen serve` serves them (docs/protocol.md, 'Where the server finds models')."""
    import os
    import subprocess

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny-models").symlink_to(tiny_model_cache)  # the session's tiny models: built once
    monkeypatch.setenv("CTRLGEN_CACHE_DIR", str(cache))
    monkeypatch.delenv("CTRLGEN_MODEL_ROOTS", raising=False)
    env = {**os.environ, "CTRLGEN_CONFIG_DIR": str(tmp_path / "config"), "CTRLGEN_DEVICE": "cpu",
           "OMP_NUM_THREADS": "1"}
    demo = subprocess.run([sys.executable, "-m", "ctrlgen.core.cli.main", "demo", "--steps", "1", "--size", "64",
                           "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    demo_models = _doc_demo_models()
    assert (demo_models / "models" / "Stable-diffusion" / "tiny-sd15.safetensors").is_file()
    assert (demo_models / "models" / "ControlNet" / "tiny-controlnet-sd15.safetensors").is_file()

    server = _fixtures.start_server(tmp_path / "server-config", demo_models)  # CTRLGEN_MODEL_ROOTS=demo_models
    try:
        status, caps = server.json("GET", "/v1/capabilities")
        assert status == 200
        assert {"tiny-sd15", "tiny-controlnet-sd15"} <= {model["name"] for model in caps["models"]}
    finally:
        server.stop()
