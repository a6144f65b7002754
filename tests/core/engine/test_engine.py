"""The vertical slice: job -> model store -> canny -> ControlNet pipeline -> PNG, on tiny models."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from PIL import Image

from ctrlgen.core.engine.engine import Engine, round_size
from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.errors import CancelledError, CtrlgenError, JobError, ModelNotFoundError
from ctrlgen.core.models.store import ModelStore
from ctrlgen.core.plugins.specs import ModelRoot

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((128, 128)).save(path)
    return path


def make_job(photo, **overrides):
    job = {
        "model": "tiny-sd15",
        "prompt": "an astronaut",
        "negative_prompt": "blurry",
        "seed": 7,
        "steps": 3,
        "width": 64,
        "height": 64,
        "image": str(photo),
        "control": [{"model": "tiny-controlnet-sd15", "preprocessor": "canny", "weight": 1.0}],
    }
    job.update(overrides)
    if not job["control"] and "image" not in overrides:
        del job["image"]  # an image nothing reads would make it img2img
    return parse_job(job)


def pixels(result):
    return [np.asarray(image) for image in result.images]


def test_slice_produces_an_image_and_events_in_order(engine, photo):
    events = []
    result = engine.run(make_job(photo), on_event=events.append)
    (image,) = result.images
    assert image.size == (64, 64) and image.mode == "RGB"
    assert np.asarray(image).std() > 1.0  # an actual generated picture, not a blank
    kinds = [e.kind for e in events]
    assert kinds == ["started", "progress", "progress", "progress", "finished"]
    assert [e.data["step"] for e in events if e.kind == "progress"] == [1, 2, 3]
    assert result.control_maps[0].shape == (128, 128, 3)
    assert set(np.unique(result.control_maps[0])) <= set(range(256)) and result.control_maps[0].max() == 255


def test_fixed_seed_is_deterministic_and_seed_matters(engine, photo):
    first = pixels(engine.run(make_job(photo)))
    second = pixels(engine.run(make_job(photo)))
    other = pixels(engine.run(make_job(photo, seed=8)))
    assert np.array_equal(first[0], second[0])
    assert not np.array_equal(first[0], other[0])


def test_control_map_reaches_the_network(engine, photo, tmp_path):
    black = tmp_path / "black.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(black)
    with_edges = pixels(engine.run(make_job(photo)))[0]
    control = [{"model": "tiny-controlnet-sd15", "preprocessor": "none", "image": str(black)}]
    with_black = pixels(engine.run(make_job(photo, control=control)))[0]
    zero_weight = [{"model": "tiny-controlnet-sd15", "preprocessor": "canny", "weight": 0.0}]
    without = pixels(engine.run(make_job(photo, control=zero_weight)))[0]
    plain = pixels(engine.run(make_job(photo, control=[])))[0]
    assert not np.array_equal(with_edges, with_black)
    assert np.abs(without.astype(int) - plain.astype(int)).max() <= 1  # weight 0 == no ControlNet


def test_cached_pipeline_is_left_clean(engine, photo, tiny_model_root):
    plain_job = make_job(photo, control=[], sampler="DPM++ 2M")
    engine.run(make_job(photo))  # ControlNet job first, on the cached pipeline
    base = next(iter(engine._pipelines.values()))
    scheduler_before = type(base.scheduler)
    after = pixels(engine.run(plain_job))[0]
    assert type(base.scheduler) is scheduler_before and type(base).__name__ == "StableDiffusionPipeline"
    fresh = Engine(store=ModelStore([ModelRoot(tiny_model_root.root)]), device="cpu")
    assert np.array_equal(after, pixels(fresh.run(plain_job))[0])


def test_size_is_rounded_for_the_model_and_brought_back(engine, photo):
    assert round_size(70, 66) == (72, 72)
    result = engine.run(make_job(photo, width=70, height=66, control=[]))
    assert result.images[0].size == (70, 66)


def test_batch_uses_consecutive_seeds(engine, photo):
    result = engine.run(make_job(photo, batch_size=2, control=[]))
    assert result.seeds == [7, 8]
    single = pixels(engine.run(make_job(photo, seed=8, control=[])))[0]
    assert np.abs(pixels(result)[1].astype(int) - single.astype(int)).max() <= 2


def test_cancel_stops_and_engine_keeps_working(engine, photo):
    cancel = threading.Event()
    events = []

    def on_event(event):
        events.append(event)
        if event.kind == "progress" and event.data["step"] == 1:
            cancel.set()

    with pytest.raises(CancelledError):
        engine.run(make_job(photo, steps=20), on_event=on_event, cancel=cancel)
    steps = [e.data["step"] for e in events if e.kind == "progress"]
    assert steps == [1] and events[-1].kind == "cancelled"
    assert engine.run(make_job(photo)).images


def test_sdxl_controlnet_job(engine, photo):
    result = engine.run(make_job(photo, model="tiny-sdxl",
                                 control=[{"model": "tiny-controlnet-sdxl", "preprocessor": "canny"}]))
    assert result.images[0].size == (64, 64)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": "no-such-model"}, "no-such-model"),
        ({"control": [{"model": "tiny-controlnet-sdxl", "preprocessor": "canny"}]},
         "is a sdxl ControlNet but the checkpoint is sd15"),
        ({"control": [{"model": "tiny-controlnet-sd15", "preprocessor": "canny", "guidance_start": 0.8,
                       "guidance_end": 0.2}]}, "guidance_start=0.8 must be below guidance_end=0.2"),
        ({"control": [{"model": "tiny-controlnet-sd15", "preprocessor": "canny", "weight": 5}]},
         "control[0].weight=5.0 is above its maximum 2"),
        ({"control": [{"model": "tiny-controlnet-sd15", "preprocessor": "cany"}]}, "Did you mean 'canny'"),
        ({"control": [{"model": "tiny-controlnet-sd15", "preprocessor": "canny",
                       "preprocessor_params": {"low_threshold": 300}}]}, "control[0].preprocessor_params.low_threshold=300 is above"),
        ({"control": [{"model": "tiny-sd15", "preprocessor": "canny"}]}, "no-controlnet"),
    ],
)
def test_invalid_jobs_fail_with_clear_messages(engine, photo, overrides, message):
    if message == "no-controlnet":
        with pytest.raises(ModelNotFoundError, match="tiny-sd15"):
            engine.run(make_job(photo, **overrides))
        return
    with pytest.raises(CtrlgenError) as info:
        engine.run(make_job(photo, **overrides))
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"prompt": "x"}, "job.model is missing: name a checkpoint"),
        ({"model": "m", "steps": 500}, "job.steps: Input should be less than or equal to 150 (got 500)"),
        ({"model": "m", "sampler": "Eulr"}, "unknown sampler 'Eulr'; choose one of"),
        ({"model": "m", "colour": 1}, "job.colour: Extra inputs are not permitted"),
        ({"model": "m", "control": [{"model": "c"}]}, "control[0] has no image and the job has none"),
        ({"model": "m", "control": [{"model": "c", "image": "x.png", "resize_mode": "stretch"}]},
         "job.control[0].resize_mode: must be one of just_resize"),
    ],
)
def test_job_validation_messages(data, message):
    with pytest.raises(JobError) as info:
        parse_job(data)
    assert message in str(info.value)


def test_sampler_names_are_forgiving():
    assert parse_job({"model": "m", "sampler": "dpm++ 2m karras"}).sampler == "DPM++ 2M Karras"


def test_generate_cli_writes_pngs_with_parameters(tiny_model_root, photo, tmp_path, monkeypatch, capsys):
    from ctrlgen.core.cli.main import main
    from ctrlgen.core.plugins import manager as plugins

    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(tiny_model_root.root))
    monkeypatch.setenv("CTRLGEN_DEVICE", "cpu")
    plugins.reset()
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({
        "model": "tiny-sd15", "prompt": "a (red:1.2) car", "seed": 3, "steps": 2, "width": 64, "height": 64,
        "image": photo.name,
        "control": [{"model": "tiny-controlnet-sd15", "preprocessor": "canny", "weight": 0.7}],
    }))
    (tmp_path / photo.name).write_bytes(photo.read_bytes())  # relative paths resolve next to the job
    try:
        assert main(["generate", str(job_file), "--out", str(tmp_path / "out"), "--quiet", "--json"]) == 0
    finally:
        plugins.reset()
    output = json.loads(capsys.readouterr().out)
    (path,) = output["outputs"]
    with Image.open(path) as image:
        assert image.size == (64, 64)
        parameters = image.info["parameters"]
        job = json.loads(image.info["ctrlgen-job"])
    assert parameters.startswith("a (red:1.2) car\n")
    assert "Steps: 2, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 64x64, Model: tiny-sd15" in parameters
    assert 'ControlNet 0: "Module: canny, Model: tiny-controlnet-sd15, weight: 0.7"' in parameters
    assert job["seed"] == 3 and job["control"][0]["weight"] == 0.7


def test_generate_cli_bad_job_has_no_traceback(tmp_path, capsys):
    from ctrlgen.core.cli.main import main

    job_file = tmp_path / "job.json"
    job_file.write_text("{not json")
    assert main(["generate", str(job_file)]) == 2
    err = capsys.readouterr().err
    assert "is not valid JSON" in err and "line 1" in err and "Traceback" not in err


def test_preview_events_carry_a_cheap_rgb_thumbnail_of_the_latents(engine, photo):
    events = []
    result = engine.run(make_job(photo, steps=4, control=[]), on_event=events.append, preview=2)
    previews = [e for e in events if e.kind == "preview"]
    assert [(e.data["step"], e.data["total"]) for e in previews] == [(2, 4), (4, 4)]
    image = previews[-1].data["image"]
    assert image.dtype == np.uint8 and image.shape == (256, 256, 3)  # 8×8 latents shown at 256 px
    assert image.std() > 0
    plain = engine.run(make_job(photo, steps=4, control=[]))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(plain.images[0]))  # previews change nothing


def test_latents_to_rgb_is_the_linear_latent_projection():
    from ctrlgen.core.engine.preview import LATENT_RGB, latents_to_rgb

    latents = np.zeros((1, 4, 2, 3), np.float32)
    latents[0, 0, 1, 2] = 1.0  # one latent pixel, first channel only
    rgb = latents_to_rgb(latents, LATENT_RGB["sd"], max_side=3)
    factors, _ = LATENT_RGB["sd"]
    expected = ((np.clip(np.asarray(factors[0]), -1, 1) + 1) * 127.5 + 0.5).astype(np.uint8)
    assert rgb.shape == (2, 3, 3) and np.array_equal(rgb[1, 2], expected)
    assert np.array_equal(rgb[0, 0], [128, 128, 128])  # a zero latent is mid grey in SD1.5's space
    sdxl = latents_to_rgb(np.zeros((4, 4, 4), np.float32), LATENT_RGB["sdxl"], max_side=64)
    assert sdxl.shape == (64, 64, 3) and not np.array_equal(sdxl[0, 0], [128, 128, 128])  # SDXL has a bias
    with pytest.raises(ValueError, match="do not have the 4 channels"):
        latents_to_rgb(np.zeros((16, 4, 4)), LATENT_RGB["sd"])


def test_preprocess_task_returns_the_maps_without_a_checkpoint(engine, photo, tmp_path):
    from ctrlgen.core.engine.preprocess import preprocess

    job = parse_job({"task": "preprocess", "image": str(photo), "control": [
        {"preprocessor": "canny", "preprocessor_params": {"low_threshold": 50}},
        {"preprocessor": "mediapipe_openpose"},
    ]})
    events = []
    result = engine.run(job, on_event=events.append)
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    assert np.array_equal(np.asarray(result.images[0]), preprocess("canny", rgb, low_threshold=50).image)
    assert not result.data[0] and result.data[1]["canvas_width"] == 128  # canny has no data; OpenPose JSON
    assert [e.kind for e in events] == ["started", "progress", "progress", "finished"]
    paths = result.save(tmp_path)
    with Image.open(paths[0]) as first:
        assert "ctrlgen-data" not in first.text
    with Image.open(paths[1]) as saved:
        assert json.loads(saved.text["ctrlgen-data"])["canvas_height"] == 128


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({"task": "preprocess", "image": "x.png"}, "add at least one unit to job.control"),
        ({"task": "preprocess", "image": "x.png", "control": [{"preprocessor": "canny"}],
          "adapters": [{"type": "reference"}]}, "drop job.outpaint and job.adapters"),
        ({"prompt": "a cat"}, "job.model is missing: name a checkpoint"),
        ({"model": "m", "image": "x.png", "control": [{"preprocessor": "canny"}]}, "control[0].model is missing"),
        ({"model": "m", "task": "img2img", "image": "x.png", "steps": 1, "strength": 0.5},
         "steps=1 × strength=0.5 leaves no denoising step"),
    ],
)
def test_preprocess_and_model_rules_are_validated(job, message):
    import re

    with pytest.raises(JobError, match=re.escape(message)):
        parse_job(job)


def test_rgba_inputs_composite_on_white_exactly_and_opaque_ones_pass_through():
    from ctrlgen.core.images import to_rgb

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (32, 48, 4), dtype=np.uint8)
    colour, alpha = rgba[..., :3].astype(np.float64), rgba[..., 3:].astype(np.float64) / 255
    assert np.array_equal(to_rgb(rgba), np.floor(colour * alpha + 255 * (1 - alpha) + 0.5).astype(np.uint8))
    rgba[..., 3] = 255
    assert np.array_equal(to_rgb(rgba), rgba[..., :3])


def test_jobs_never_change_the_cached_pipelines_precision(tiny_model_root, photo):
    """Views share the cached modules: a view that cast itself (diffusers' from_pipe casts to
    float32 unless told otherwise) would turn a half-precision cache into float32 in place."""
    import torch

    half = Engine(store=ModelStore([ModelRoot(tiny_model_root.root)]), device="cpu", precision="bfloat16")
    result = half.run(make_job(photo, steps=2))
    base = next(iter(half._pipelines.values()))
    assert result.images[0].size == (64, 64)
    assert {p.dtype for p in base.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in next(iter(half._controlnets.values())).parameters()} == {torch.bfloat16}


@pytest.fixture(scope="module")
def masks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("masks")
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(folder / "small.png")
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(folder / "black.png")
    return folder


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"control": [{"model": "tiny-controlnet-sd15", "preprocessor": "nope"}]}, "control[0].preprocessor:"),
        ({"control": [{"model": "tiny-controlnet-sd15", "preprocessor": "canny",
                       "preprocessor_params": {"low_threshold": 300}}]},
         "control[0].preprocessor_params.low_threshold=300 is above its maximum 255"),
        ({"control": [{"model": "tiny-controlnet-sdxl", "preprocessor": "canny"}]}, "control[0].model"),
        ({"control": [{"model": "tiny-controlnet-sd15", "preprocessor": "canny", "guidance_start": 1.0}]},
         "control[0].guidance_start=1.0 must be below"),
        ({"adapters": [{"type": "nope"}]}, "adapters[0].type: Unknown adapter 'nope'"),
        ({"adapters": [{"type": "reference", "image": "x.png"}]}, "adapters[0] (reference).image: file x.png"),
        ({"adapters": [{"type": "reference", "image": "PHOTO", "guidance_end": 0.0}]},
         "adapters[0] (reference).guidance_start=0.0"),
        ({"adapters": [{"type": "ip_adapter", "model": "no-such-ip-adapter"}]}, "adapters[0] (ip_adapter).model"),
        ({"prompt": "a <lora:no-such-lora:0.5> cat"}, "prompt tag <lora:no-such-lora:0.5>: Model 'no-such-lora'"),
        ({"model": "no-such-model"}, "job.model: Model 'no-such-model' was not found"),
        ({"mask": "MASKS/small.png"}, "job.mask"),
        ({"mask": "MASKS/black.png"}, "job.mask selects nothing"),
        ({"outpaint": {"right": 16300}}, "job.outpaint: the outpainted canvas"),
        ({"task": "img2img", "image": "missing.png"}, "job.image: file missing.png does not exist"),
        ({"task": "img2img", "image": "MASKS"}, "as an image: Is a directory"),
        ({"prompt": "a (cat:.) <lora:x:nan>"}, "prompt tag <lora:x:nan>: 'nan' is not a number"),
    ],
)
def test_what_needs_no_weights_fails_before_anything_loads(tiny_model_root, photo, masks, overrides, message):
    """`ctrlgen generate` and the server fail such jobs at once: Engine.check runs first, and
    nothing is loaded (the pipeline and ControlNet caches stay empty)."""
    engine = Engine(store=ModelStore([ModelRoot(tiny_model_root.root)]), device="cpu")
    overrides = json.loads(json.dumps(overrides).replace("MASKS", str(masks)).replace("PHOTO", str(photo)))
    if "control" not in overrides:  # no unit: the job's image is the picture to change
        overrides = {"control": [], "image": str(photo), **overrides}
    job = make_job(photo, **overrides)
    events = []
    with pytest.raises(CtrlgenError) as info:
        engine.check(job)
    assert message in str(info.value)
    with pytest.raises(type(info.value)):
        engine.run(job, on_event=events.append)
    assert engine._pipelines == {} and engine._controlnets == {}
    assert [e.kind for e in events] == ["started", "error"]


def test_generate_cli_refuses_a_bad_job_without_loading_torch(tiny_model_root, photo, tmp_path):
    """`ctrlgen generate` on a job that needs no weights to be refused: it ends before torch
    (let alone a checkpoint) is even imported."""
    import os
    import subprocess
    import sys

    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({"model": "tiny-sd15", "image": str(photo), "steps": 2, "width": 64, "height": 64,
                                    "control": [{"model": "tiny-controlnet-sd15", "preprocessor": "canny",
                                                 "preprocessor_params": {"low_threshold": 300}}]}))
    script = ("import json, sys\nfrom ctrlgen.core.cli.main import main\n"
              "code = main(['generate', sys.argv[1], '--out', sys.argv[2], '--quiet'])\n"
              "print(json.dumps({'code': code, 'imported': [m for m in ('torch', 'diffusers') if m in sys.modules]}))")
    env = {**os.environ, "CTRLGEN_MODEL_ROOTS": str(tiny_model_root.root), "CTRLGEN_DEVICE": "cpu"}
    done = subprocess.run([sys.executable, "-c", script, str(job_file), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"code": 2, "imported": []}, done.stderr
    assert "control[0].preprocessor_params.low_threshold=300 is above" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
