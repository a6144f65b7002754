"""The GIMP plug-in's logic without GIMP: regions, masks, pixel formats, jobs, params, messages,
the cancel watchdog; and that the plug-in's package stands alone (GIMP's Python has no ctrlgen)."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ctrlgen.host_bridges.client import AuthError, JobFailed, ServerNotRunning
from ctrlgen.host_bridges.gimp.ctrlgen_gimp import logic
from ctrlgen.host_bridges.gimp.ctrlgen_gimp.logic import (
    Connection,
    GenerateSettings,
    ImageRefused,
    Rect,
    detector_for,
    error_message,
    fix_job,
    generate_job,
    generation_size,
    inpaint_job,
    inpaint_region,
    masked_result,
    param_fields,
    parse_params,
    pixels_for_server,
    progress_of,
    to_rgba,
)

PACKAGE = Path(logic.__file__).resolve().parent


def test_inpaint_region_is_the_selection_plus_context_inside_the_layer():
    layer = Rect(11, 7, 181, 141)
    assert inpaint_region(Rect(60, 40, 90, 64), layer, 8) == Rect(52, 32, 106, 80)
    # Near the layer's edge the crop shifts inside rather than shrinking below 64.
    assert inpaint_region(Rect(12, 8, 10, 10), layer, 0) == Rect(11, 7, 64, 64)
    # The part of the selection outside the layer does not count.
    assert inpaint_region(Rect(0, 0, 40, 40), layer, 0) == Rect(11, 7, 64, 64)
    with pytest.raises(ImageRefused, match="does not touch the active layer"):
        inpaint_region(Rect(300, 300, 10, 10), layer, 8)
    with pytest.raises(ImageRefused, match="at least 64×64"):
        inpaint_region(Rect(0, 0, 10, 10), Rect(0, 0, 50, 200), 8)


def test_generation_size_keeps_the_shape_near_the_models_area():
    assert generation_size(4096, 4096, "sd15") == (768, 768)
    assert generation_size(203, 157, "sd15") == (584, 456)
    assert generation_size(600, 600, "sd15") == (600, 600)
    assert generation_size(203, 157, "unknown") == (203, 157)


def test_masked_result_is_transparent_exactly_where_nothing_is_selected():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (20, 30, 4), np.uint8)
    rgba[..., 3] = rng.integers(1, 256, (20, 30))
    mask = rng.integers(0, 256, (20, 30), np.uint8)
    mask[:5] = 0
    out = np.frombuffer(masked_result(rgba.tobytes(), mask.tobytes()), np.uint8).reshape(20, 30, 4)
    assert np.array_equal(out[..., :3], rgba[..., :3])
    assert np.array_equal(out[..., 3], np.where(mask > 0, rgba[..., 3], 0))
    with pytest.raises(ValueError, match="mask pixels"):
        masked_result(rgba.tobytes(), mask.tobytes()[:-1])


def test_pixel_formats():
    rgb = bytes(range(12))
    assert to_rgba(rgb, 3) == bytes([0, 1, 2, 255, 3, 4, 5, 255, 6, 7, 8, 255, 9, 10, 11, 255])
    assert to_rgba(b"\x07\x09", 1) == b"\x07\x07\x07\xff\x09\x09\x09\xff"
    assert pixels_for_server(to_rgba(rgb, 3)) == (rgb, 3)
    translucent = b"\x01\x02\x03\x80\x04\x05\x06\xff"
    assert pixels_for_server(translucent) == (translucent, 4)


def test_jobs():
    settings = GenerateSettings(model="tiny-sd15", prompt="a cat", steps=4, seed=3)
    job = generate_job(settings, Rect(0, 0, 203, 157), "sd15")
    assert (job["task"], job["width"], job["height"]) == ("txt2img", 584, 456) and "strength" not in job
    settings.strength, settings.model_size = 0.5, False
    job = generate_job(settings, Rect(5, 6, 97, 75), "sd15")
    assert (job["task"], job["strength"], job["width"], job["height"]) == ("img2img", 0.5, 97, 75)
    job = inpaint_job(settings, Rect(0, 0, 106, 80), "sd15")
    assert job["inpaint"] == {"grow_px": 0, "feather_px": 0, "fill": "original"}
    job = fix_job(settings, "mediapipe_face_short", 0.4, 64)
    assert job["task"] == "fix" and "width" not in job
    assert job["detail"] == [{"detector": "mediapipe_face_short", "denoise": 0.4, "guide_size": 64, "max_size": 128}]
    with pytest.raises(ImageRefused, match="Choose a model"):
        generate_job(GenerateSettings(), Rect(0, 0, 64, 64), "sd15")
    with pytest.raises(ImageRefused, match="at most 1"):
        fix_job(settings, "x", 1.5)


def test_capabilities_lists():
    capabilities = {
        "models": [{"name": "b", "kind": "checkpoint"}, {"name": "cn", "kind": "controlnet"},
                   {"name": "a", "kind": "unknown", "category": "checkpoints"}],
        "detectors": [{"name": "yolo_face", "finds": ["face"]}, {"name": "mediapipe_face_full", "finds": ["face"]},
                      {"name": "mediapipe_hands", "finds": ["hand"]}],
    }
    assert logic.checkpoints(capabilities) == ["a", "b"]
    assert detector_for(capabilities, "faces") == "mediapipe_face_full"
    assert detector_for(capabilities, "faces", "yolo_face") == "yolo_face"
    with pytest.raises(ImageRefused, match="no detector 'yolo_face' for hands"):
        detector_for(capabilities, "hands", "yolo_face")
    with pytest.raises(ImageRefused, match="pip install ctrlgen"):
        detector_for({"detectors": []}, "hands")


def test_params_from_a_schema():
    schema = [{"name": "low_threshold", "type": "int", "default": 100, "min": 0, "max": 255},
              {"name": "detect_resolution", "type": "int", "default": None, "min": 64, "max": 4096},
              {"name": "mode", "type": "choice", "default": "a", "choices": ["a", "b"]},
              {"name": "invert", "type": "bool", "default": False},
              {"name": "points", "type": "json", "default": None},
              {"name": "reference", "type": "image", "default": None}]
    kinds = {field.name: field.kind for field in param_fields(schema)}
    # An optional number is an entry (empty: left out); image params come from layers, not widgets.
    assert kinds == {"low_threshold": "int", "detect_resolution": "text", "mode": "choice", "invert": "bool",
                     "points": "text"}
    assert parse_params('{"low_threshold": 40}', schema, "canny") == {"low_threshold": 40}
    assert parse_params("  ", schema, "canny") == {}
    with pytest.raises(ImageRefused, match="canny has no param 'nope'"):
        parse_params('{"nope": 1}', schema, "canny")
    with pytest.raises(ImageRefused, match="outside 0…255"):
        parse_params('{"low_threshold": 300}', schema, "canny")
    with pytest.raises(ImageRefused, match="not JSON"):
        parse_params("{low", schema, "canny")


def test_progress_and_messages():
    assert progress_of("progress", {"step": 3, "total": 4}) == (0.75, None)
    assert progress_of("queued", {"position": 2}) == (None, "ctrlgen: queued (2 ahead)")
    assert progress_of("detail", {"phase": "step", "step": 1, "total": 2, "detection": 0, "detections": 3}) == (
        0.5, "ctrlgen: fixing 1 of 3")
    assert "`ctrlgen serve`" in error_message(ServerNotRunning("nobody there"), "http://127.0.0.1:9")
    assert "refused the token" in error_message(AuthError(401, "unauthorized", "bad token"))
    assert error_message(JobFailed("out_of_memory", "CUDA.")).startswith("ctrlgen: out of memory: CUDA. Try a smaller")
    assert error_message(JobFailed("cancelled", "")) == "ctrlgen: cancelled; the image is unchanged."
    assert error_message(ImageRefused("indexed")) == "ctrlgen: indexed"


def test_connection_round_trip_and_an_unreachable_server():
    connection = Connection(url="http://127.0.0.1:9", token="t")
    assert Connection.from_bytes(connection.to_bytes()) == connection
    assert Connection.from_bytes(b"not json") == Connection()
    with pytest.raises(ServerNotRunning):
        connection.client(timeout=2)


def test_the_watchdog_cancels_the_job_when_the_plug_in_dies(live_server, tmp_path):
    """The plug-in is killed (GIMP's Cancel) while its job runs: the watchdog cancels it."""
    child = tmp_path / "plug_in.py"
    child.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(PACKAGE.parent)!r})\n"
        "from ctrlgen_gimp.watchdog import Watchdog\n"
        "from ctrlgen_gimp.client_import import Client\n"
        f"client = Client({live_server.url!r}, token={live_server.token!r})\n"
        f"job = client.submit({{'model': {live_server.model!r}, 'steps': 150, 'width': 512, 'height': 512}})\n"
        "Watchdog(client).arm(job)\n"
        "print(job, flush=True)\n"
        "time.sleep(600)\n")
    plug_in = subprocess.Popen([sys.executable, str(child)], stdout=subprocess.PIPE, text=True)
    job_id = plug_in.stdout.readline().strip()
    plug_in.kill()
    plug_in.wait()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        _, job = live_server.json("GET", f"/v1/jobs/{job_id}")
        if job["status"] not in ("queued", "running"):
            break
        time.sleep(0.2)
    assert job["status"] == "cancelled"


def test_the_plug_in_package_imports_nothing_of_ctrlgen():
    """GIMP's Python has no ctrlgen: only the fallback to the client and the shared host logic
    (source-tree runs) may name it."""
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ctrlgen"):
                assert (path.name, node.module) in (("client_import.py", "ctrlgen.host_bridges.client"),
                                                    ("client_import.py", "ctrlgen.host_bridges.hostlogic"),
                                                    ("watchdog.py", "ctrlgen_gimp.client_import")), (path, node.module)
            if isinstance(node, ast.Import):
                assert not any(alias.name.startswith("ctrlgen") for alias in node.names), path

