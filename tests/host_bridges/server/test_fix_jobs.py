"""Fix passes through `ctrlgen serve` (docs/fixing.md, docs/protocol.md): `fix` jobs and
generation jobs with `detail` passes, checked before queueing, their `detail` events on the
stream in the OpenAPI document's DetailEvent shape; the real mediapipe detectors on uploads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ctrlgen.host_bridges.server.models import DetailEvent

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((128, 128)))


def face_pass(**fields) -> dict:
    return {"detector": "mediapipe_face_short", "guide_size": 64, "max_size": 128, **fields}


def details(events) -> list[dict]:
    found = [data for _, kind, data in events if kind == "detail"]
    for data in found:
        DetailEvent.model_validate(data)  # the document's payload for the kind
        json.dumps(data)
    return found


def test_a_fix_job_runs_and_streams_its_detail_events(live_server, astronaut, tmp_path, bridge_model_root):
    pytest.importorskip("mediapipe")
    job = {"task": "fix", "model": live_server.model, "image": live_server.upload(astronaut), "steps": 4, "seed": 1,
           "detail": [face_pass()]}
    job_id = live_server.submit(job)
    events = live_server.wait(job_id)
    kinds = [kind for _, kind, _ in events]
    assert kinds[:2] == ["queued", "started"] and kinds[-1] == "finished", events[-1]
    passes = details(events)
    assert [d["phase"] for d in passes] == ["detected", "step", "done"]
    detected = passes[0]
    assert (detected["found"], detected["detections"], detected["pass_index"]) == (1, 1, 0)
    x0, y0, x1, y1 = detected["boxes"][0]
    assert 40 < (x0 + x1) / 2 < 75 and 10 < (y0 + y1) / 2 < 40  # the astronaut's face
    assert passes[1]["step"] == passes[1]["total"] == 1  # 4 steps × denoise 0.4
    assert events[-1][2]["results"][0]["seed"] == 1

    _, _, raw = live_server.request("GET", f"/v1/jobs/{job_id}/results/0")
    served = np.frombuffer(raw, np.uint8).reshape(128, 128, 3)
    # The same job in-process, reading the picture from a file: the same pixels.
    from ctrlgen.core.engine.engine import Engine
    from ctrlgen.core.engine.jobs import parse_job
    from ctrlgen.core.models.store import ModelStore
    from ctrlgen.core.plugins.specs import ModelRoot

    path = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    engine = Engine(store=ModelStore([ModelRoot(bridge_model_root)]), device="cpu")
    local = engine.run(parse_job({**job, "image": str(path)}))
    assert np.array_equal(served, np.asarray(local.images[0]))
    assert not np.array_equal(served, astronaut)


def test_a_generation_job_runs_its_passes_after_generating(live_server):
    pytest.importorskip("mediapipe")
    job = {"model": live_server.model, "prompt": "a face", "seed": 3, "steps": 3, "width": 64, "height": 64,
           "detail": [face_pass(), {"detector": "mediapipe_hands", "prompt": "[SKIP]"}]}
    events = live_server.wait(live_server.submit(job))
    assert events[-1][1] == "finished", events[-1]
    passes = details(events)
    detected = [d for d in passes if d["phase"] == "detected"]
    assert [(d["pass_index"], d["image_index"]) for d in detected] == [(0, 0), (1, 0)]
    kinds = [kind for _, kind, _ in events]
    assert kinds.index("detail") > max(i for i, kind in enumerate(kinds) if kind == "progress")


def test_a_hand_pass_feeds_the_tiny_controlnet_through_the_server(live_server):
    pytest.importorskip("mediapipe")
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("insightface")
    if spec is None:
        pytest.fail("insightface is not installed (see requirements-nodeps.txt)")
    photo = Image.open(Path(spec.origin).parent / "data" / "images" / "t1.jpg").convert("RGB")
    fist = np.asarray(photo.crop((680, 480, 808, 608)))
    job = {"task": "fix", "model": live_server.model, "image": live_server.upload(fist), "steps": 4, "seed": 2,
           "detail": [{"detector": "mediapipe_hands", "guide_size": 64, "max_size": 128, "hand_structure": "depth",
                       "hand_model": live_server.controlnet}]}
    events = live_server.wait(live_server.submit(job))
    assert events[-1][1] == "finished", events[-1]
    assert [d["phase"] for d in details(events)][-1] == "done"


@pytest.mark.parametrize(("fields", "message"), [
    ({"detector": "no_such_detector"}, "detail[0].detector"),
    ({"detector_params": {"max_hands": 0}, "detector": "mediapipe_hands"}, "detail[0].detector_params.max_hands"),
    ({"model": "no-such-model"}, "detail[0].model"),
    ({"hand_structure": "depth"}, "detail[0].hand_model is missing"),
])
def test_bad_passes_get_422_naming_the_field(live_server, astronaut, fields, message):
    job = {"task": "fix", "model": live_server.model, "image": live_server.upload(astronaut), "steps": 4,
           "detail": [face_pass(**fields)]}
    status, _, body = live_server.request("POST", "/v1/jobs", {"job": job})
    assert status == 422, body
    assert message in json.loads(body)["error"]["message"]
