"""The fix pass's ``hand_structure`` (core/engine/detail.py): the detected hand's OpenPose
skeleton, depth-like map or fitted template hand, drawn at the repaint's crop, fed to the
pass's ControlNet unit; on the tiny models with the real mediapipe hand detector on a crop of
insightface's ``t1.jpg``. These prove the plumbing, not that hands come out better."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import ctrlgen
from ctrlgen.core.engine import detail
from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.errors import JobError
from ctrlgen.testing.contracts import pipeline_fingerprint

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SIZE = 128


@pytest.fixture(scope="module")
def fist() -> np.ndarray:
    """Chandler's fist in ``t1.jpg``: a 128×128 crop holding one hand."""
    import importlib.util
    from pathlib import Path

    pytest.importorskip("mediapipe")
    spec = importlib.util.find_spec("insightface")
    if spec is None:
        pytest.fail("insightface is not installed (see requirements-nodeps.txt)")
    photo = Image.open(Path(spec.origin).parent / "data" / "images" / "t1.jpg").convert("RGB")
    crop = np.asarray(photo.crop((680, 480, 680 + SIZE, 480 + SIZE)))
    assert len(ctrlgen.detect("mediapipe_hands", crop)) == 1
    return crop


def hand_pass(**fields):
    return {"detector": "mediapipe_hands", "guide_size": 64, "max_size": 128,
            "hand_model": "tiny-controlnet-sd15", **fields}


@pytest.fixture
def controlnet_inputs(monkeypatch):
    """The control images the ControlNet sees (uint8 H×W×3, the conditional row)."""
    from diffusers import ControlNetModel

    seen = []
    original = ControlNetModel.forward

    def spy(self, sample, timestep, encoder_hidden_states, controlnet_cond, *args, **kwargs):
        seen.append((controlnet_cond[-1].permute(1, 2, 0).float().numpy() * 255).round().astype(np.int16))
        return original(self, sample, timestep, encoder_hidden_states, controlnet_cond, *args, **kwargs)

    monkeypatch.setattr(ControlNetModel, "forward", spy)
    return seen


@pytest.fixture
def crop_maps(monkeypatch):
    """The hand maps drawn at a repaint's crop, with the crop."""
    seen = []
    original = detail.hand_map

    def spy(kind, hands, width, height, region=None):
        drawn = original(kind, hands, width, height, region)
        if region is not None:
            seen.append((kind, drawn, region))
        return drawn

    monkeypatch.setattr(detail, "hand_map", spy)
    return seen


@pytest.mark.parametrize("kind", ["openpose", "depth", "template"])
def test_the_unit_receives_the_hand_map_at_the_crop(engine, fist, kind, controlnet_inputs, crop_maps):
    result = ctrlgen.fix(fist, [hand_pass(hand_structure=kind)], model="tiny-sd15", engine=engine, steps=4,
                         seed=1)
    assert len(result.data[0]["detail"][0]["repainted"]) == 1
    ((drawn_kind, drawn, region),) = crop_maps
    assert drawn_kind == kind and drawn.any()
    assert controlnet_inputs, "the ControlNet never ran"
    for seen in controlnet_inputs:  # every step's ControlNet call got the crisp map
        assert seen.shape == drawn.shape and np.abs(seen - drawn).max() <= 1
    # the map is this hand's, in the crop's coordinates
    (found,) = ctrlgen.detect("mediapipe_hands", fist)
    wrist = (found.keypoints[0, :2] - (region.x0, region.y0)) * (drawn.shape[1] / region.width,
                                                                 drawn.shape[0] / region.height)
    assert drawn[int(wrist[1]), int(wrist[0])].any()


def test_template_defaults_to_weight_1_5_and_controlnet_more_important(engine, fist, monkeypatch):
    from ctrlgen.core.engine.engine import Engine

    jobs = []
    original = Engine._generate

    def spy(self, job, *args, **kwargs):
        jobs.append(job)
        return original(self, job, *args, **kwargs)

    monkeypatch.setattr(Engine, "_generate", spy)
    # one pass each (the tiny model's repaint leaves no hand for a second pass to find)
    for one in (hand_pass(hand_structure="template"),
                hand_pass(hand_structure="depth", hand_weight=0.7, hand_control_mode="prompt",
                          control=[{"model": "tiny-controlnet-sd15", "preprocessor": "canny"}])):
        ctrlgen.fix(fist, [one], model="tiny-sd15", engine=engine, steps=4, seed=1)
    template_unit, depth_unit = jobs[0].control[-1], jobs[1].control[-1]
    assert (template_unit.image, template_unit.adapter_params()) == (
        detail.HAND_REF, {"weight": 1.5, "control_mode": "controlnet"})
    assert depth_unit.adapter_params() == {"weight": 0.7, "control_mode": "prompt"}
    assert [u.preprocessor for u in jobs[1].control] == ["canny", "none"]  # the hand unit comes last


def test_a_hand_pass_leaves_the_cached_pipeline_clean(engine, fist):
    job = {"model": "tiny-sd15", "prompt": "a hand", "seed": 5, "steps": 4, "width": SIZE, "height": SIZE}
    base = engine.load_pipeline(engine.store.find("tiny-sd15"))
    plain = np.asarray(engine.run(parse_job(job)).images[0])
    before = pipeline_fingerprint(base)
    ctrlgen.fix(fist, [hand_pass(hand_structure="depth", hand_control_mode="controlnet")], model="tiny-sd15",
                engine=engine, steps=4, seed=1)
    assert pipeline_fingerprint(base) == before
    assert np.array_equal(np.asarray(engine.run(parse_job(job)).images[0]), plain)


@pytest.mark.parametrize(("fields", "message"), [
    ({"hand_structure": "depth", "hand_model": None}, r"detail\[0\].hand_model is missing"),
    ({"hand_weight": 1.5}, "go with hand_structure"),
    ({"hand_structure": "depth", "hand_weight": 3}, r"detail\[0\].hand_weight"),
])
def test_hand_fields_are_validated(fields, message):
    with pytest.raises(JobError, match=message):
        parse_job({"task": "fix", "model": "tiny-sd15", "image": "x.png", "detail": [hand_pass(**fields)]})


def test_a_detector_without_hand_landmarks_is_named(engine):
    from skimage import data

    pytest.importorskip("mediapipe")
    astronaut = np.asarray(Image.fromarray(data.astronaut()).resize((SIZE, SIZE)))
    with pytest.raises(JobError, match=r"detail\[0\].hand_structure needs 21 hand landmarks.*mediapipe_face_short"):
        ctrlgen.fix(astronaut, [hand_pass(detector="mediapipe_face_short", hand_structure="openpose")],
                    model="tiny-sd15", engine=engine, steps=4, seed=1)


@pytest.mark.parametrize(("fields", "message"), [
    ({"hand_model": "no-such-controlnet"}, "detail[0].hand_model"),
    ({"hand_model": "tiny-sd15"}, "detail[0].hand_model"),
    ({"hand_control_mode": "bogus"}, "detail[0].hand_control_mode"),
    ({"control": [{"model": "tiny-controlnet-sd15", "preprocessor": "cany"}]}, "detail[0].control[0].preprocessor"),
])
def test_engine_check_names_the_hand_fields(engine, fist, tmp_path, fields, message):
    path = tmp_path / "fist.png"
    Image.fromarray(fist).save(path)
    job = parse_job({"task": "fix", "model": "tiny-sd15", "image": str(path),
                     "detail": [hand_pass(hand_structure="depth", **fields)]})
    with pytest.raises(ctrlgen.CtrlgenError) as caught:
        engine.check(job)
    assert str(caught.value).startswith(message), str(caught.value)
