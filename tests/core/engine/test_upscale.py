"""The upscale task and hires fix through the engine and `ctrlgen generate` (tiny SD1.5, tiny
upscalers in an A1111 root's models/ESRGAN, on the CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ctrlgen.core.engine.engine import Engine
from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.errors import JobError, ModelNotFoundError
from ctrlgen.core.models.store import ModelStore
from ctrlgen.core.plugins.specs import ModelRoot
from ctrlgen.testing.tiny_upscalers import write_tiny_upscaler

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_model_cache, tiny_sd15):
    from ctrlgen.testing.tiny import write_model_root

    made = write_model_root(tmp_path_factory.mktemp("upscale-root"), "a1111", architectures=("sd15",),
                            cache_dir=tiny_model_cache)
    write_tiny_upscaler(made.models_dir / "ESRGAN", "compact", scale=4, name="4x-compact")
    write_tiny_upscaler(made.models_dir / "ESRGAN", "esrgan", scale=2, name="2x-esrgan")
    return made


@pytest.fixture(scope="module")
def engine(root):
    return Engine(store=ModelStore([ModelRoot(root.root)]), device="cpu")


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("pictures") / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((64, 48)).save(path)
    return path


def job(root, picture, **fields):
    upscale = fields.pop("upscale", {})
    return parse_job({"task": "upscale", "model": "tiny-sd15", "image": str(picture), "prompt": "a photo",
                      "steps": 4, "seed": 7, "upscale": {"scale": 4, "tile_size": 128, "overlap": 32,
                                                         "denoise": 0.5, **upscale}, **fields})


def record_inputs(module):
    seen = []
    return seen, module.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))


def test_an_upscale_refines_the_enlarged_image_tile_by_tile(engine, root, picture):
    pipeline = engine.load_pipeline(engine.store.find("tiny-sd15"))
    seen, hook = record_inputs(pipeline.unet.conv_in)
    try:
        result = engine.run(job(root, picture))
    finally:
        hook.remove()
    image = result.images[0]
    assert image.size == (256, 192) and image.mode == "RGB"
    # 256×192 pixels are 32×24 latents; the UNet never saw more than a 128-pixel tile (16×16)
    assert seen and max(max(shape) for shape in seen) == 16
    assert len(seen) == 2 * 6  # 2 steps (4 × denoise 0.5) × 3×2 tiles
    assert "Upscale: 256x192" in result.infotexts[0] and "Tile size: 128" in result.infotexts[0]
    assert result.job.task == "upscale" and result.seeds == [7]
    again = engine.run(job(root, picture))
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(image))  # the seed decides
    plain = engine.run(job(root, picture, upscale={"denoise": 0}))
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(image))  # the refine changed it


def test_denoise_0_is_the_upscaler_alone_and_needs_no_checkpoint(engine, root, picture):
    from ctrlgen.core.models.upscalers import load_upscaler, upscale_image

    result = engine.run(parse_job({"task": "upscale", "image": str(picture),
                                   "upscale": {"upscaler": "4x-compact", "scale": 4, "denoise": 0}}))
    model = load_upscaler(root.models_dir / "ESRGAN" / "4x-compact.safetensors")
    expected = upscale_image(model, np.asarray(Image.open(picture).convert("RGB")))
    assert np.array_equal(np.asarray(result.images[0]), expected)


def test_a_2x_model_runs_twice_for_3x_and_the_result_is_resampled_to_the_size(engine, root, picture):
    result = engine.run(parse_job({"image": str(picture),
                                   "upscale": {"upscaler": "2x-esrgan", "width": 150, "height": 100, "denoise": 0}}))
    assert result.job.task == "upscale" and result.images[0].size == (150, 100)


def test_the_tile_controlnet_runs_per_tile_on_the_enlarged_image(engine, root, picture):
    controlnet = engine.load_controlnet(engine.store.find("tiny-controlnet-sd15"), "sd15")
    seen, hook = record_inputs(controlnet.controlnet_cond_embedding)
    try:
        result = engine.run(job(root, picture, control=[{"model": "tiny-controlnet-sd15", "weight": 1.0}]))
    finally:
        hook.remove()
    assert result.images[0].size == (256, 192)
    assert set(seen) == {(128, 128)} and len(seen) == 12  # pixel tiles: 2 steps × 6 tiles
    assert result.control_maps[0].shape == (192, 256, 3)  # the unit read the enlarged image


def test_an_upscale_keeps_the_pictures_alpha(engine, root, tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = 120
    rgba[:, 16:, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "cutout.png")
    result = engine.run(parse_job({"image": str(tmp_path / "cutout.png"),
                                   "upscale": {"scale": 2, "upscaler": "nearest", "denoise": 0}}))
    alpha = np.asarray(result.images[0])[..., 3]
    assert result.images[0].mode == "RGBA" and alpha[:, :30].max() == 0 and alpha[:, 34:].min() == 255


@pytest.mark.parametrize("upscaler", ["latent", "lanczos", "4x-compact"])
def test_hires_fix_generates_small_then_denoises_at_the_target_size(engine, upscaler):
    events = []
    result = engine.run(parse_job({"model": "tiny-sd15", "prompt": "a house", "width": 64, "height": 64, "steps": 4,
                                   "seed": 3, "batch_size": 2, "hires": {"scale": 2, "upscaler": upscaler,
                                                                         "steps": 6, "denoise": 0.5}}),
                        on_event=lambda event: events.append(event.data) if event.kind == "progress" else None)
    assert [image.size for image in result.images] == [(128, 128), (128, 128)]
    assert result.seeds == [3, 4]
    # the first pass (4 steps for both images), then each image's second pass (6 × 0.5 steps)
    assert [e["total"] for e in events] == [4] * 4 + [3] * 6
    assert f"Hires upscaler: {upscaler}" in result.infotexts[0] and "Hires upscale: 128x128" in result.infotexts[0]
    first = engine.run(parse_job({"model": "tiny-sd15", "prompt": "a house", "width": 64, "height": 64, "steps": 4,
                                  "seed": 3}))
    assert first.images[0].size == (64, 64)


def test_hires_fix_can_run_its_second_pass_in_tiles(engine):
    pipeline = engine.load_pipeline(engine.store.find("tiny-sd15"))
    seen, hook = record_inputs(pipeline.unet.conv_in)
    try:
        result = engine.run(parse_job({"model": "tiny-sd15", "width": 64, "height": 64, "steps": 2, "seed": 1,
                                       "hires": {"scale": 4, "steps": 2, "denoise": 0.5, "tile_size": 128,
                                                 "overlap": 32}}))
    finally:
        hook.remove()
    assert result.images[0].size == (256, 256)
    assert seen[:2] == [(8, 8), (8, 8)] and set(seen[2:]) == {(16, 16)}  # whole first pass, tiled second


def test_the_memory_plan_is_sized_for_a_tile_not_the_canvas(engine, root, picture, monkeypatch):
    """A tiled refine only ever puts one tile through the UNet and the VAE: the offload and VAE
    decisions (``Engine.memory_plan``) are made for the tile's size, so a 6–8 GB card is not
    pushed into offloading by the canvas; an untiled hires pass is planned at its whole size."""
    asked = []
    plan = Engine.memory_plan

    def recording(self, pipeline, architecture, width=None, height=None, *args, **kwargs):
        if width is not None:  # (a load asks without a size)
            asked.append((width, height))
        return plan(self, pipeline, architecture, width, height, *args, **kwargs)

    monkeypatch.setattr(Engine, "memory_plan", recording)
    engine.run(job(root, picture))  # 64×48 → 256×192 in 128-pixel tiles
    assert asked == [(128, 128)]
    asked.clear()
    engine.run(parse_job({"model": "tiny-sd15", "width": 64, "height": 64, "steps": 2, "seed": 1,
                          "hires": {"scale": 4, "steps": 2, "denoise": 0.5}}))
    assert asked == [(64, 64), (256, 256)]  # the first pass, then the whole second pass
    asked.clear()
    engine.run(parse_job({"model": "tiny-sd15", "width": 64, "height": 64, "steps": 2, "seed": 1,
                          "hires": {"scale": 4, "steps": 2, "denoise": 0.5, "tile_size": 128, "overlap": 32}}))
    assert asked == [(64, 64), (128, 128)]


@pytest.mark.parametrize(("fields", "message"), [
    ({"task": "upscale", "model": "m"}, "task 'upscale' needs job.image"),
    ({"task": "upscale", "model": "m", "image": "a.png", "mask": "m.png"}, "drop job.mask"),
    ({"image": "a.png", "upscale": {}, "model": "m", "image_offset": [0, 0], "canvas_size": [64, 64]},
     "drop job.image_offset and job.canvas_size"),
    ({"model": "m", "image": "a.png", "upscale": {"overlap": 128, "tile_size": 256}},
     "upscale.overlap 128 must be under half of tile_size 256"),
    ({"model": "m", "image": "a.png", "upscale": {"tile_size": 300}}, "multiple of 64"),
    ({"model": "m", "image": "a.png", "upscale": {"width": 512}}, "give both width and height"),
    ({"model": "m", "image": "a.png", "steps": 3, "upscale": {"denoise": 0.2}},
     "steps=3 × denoise=0.2 leaves no denoising step"),
    ({"image": "a.png", "upscale": {"denoise": 0.3}}, "job.model is missing"),
    ({"image": "a.png", "upscale": {"denoise": 0}, "adapters": [{"type": "ip_adapter"}]}, "drop them"),
    ({"task": "img2img", "model": "m", "image": "a.png", "hires": {}}, "hires fix is a txt2img pass"),
    ({"model": "m", "hires": {"steps": 1, "denoise": 0.5}}, "hires: steps=1 × denoise=0.5"),
    ({"model": "m", "image": "a.png", "task": "img2img", "upscale": {}}, "job.upscale configures task 'upscale'"),
])
def test_bad_upscale_and_hires_fields_are_named(fields, message):
    with pytest.raises(JobError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_job(fields)


def test_the_engine_checks_the_upscaler_before_anything_loads(engine, root, picture):
    with pytest.raises(ModelNotFoundError, match=r"upscale\.upscaler: .*no-such-model[\s\S]*lanczos"):
        engine.check(parse_job({"image": str(picture), "upscale": {"upscaler": "no-such-model", "denoise": 0}}))
    with pytest.raises(JobError, match=r"hires.upscaler: '.*tiny-sd15.safetensors' .* is a checkpoint, not an upscaler"):
        engine.check(parse_job({"model": "tiny-sd15", "hires": {"upscaler": str(root.checkpoint)}}))


def test_ctrlgen_generate_runs_an_upscale_job_file(root, picture, tmp_path, monkeypatch):
    from ctrlgen.core.cli.main import main

    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(root.root))
    job_file = tmp_path / "big.json"
    job_file.write_text(json.dumps({"task": "upscale", "model": "tiny-sd15", "image": str(picture), "steps": 2,
                                    "seed": 5, "upscale": {"upscaler": "4x-compact", "scale": 2, "denoise": 0.5}}))
    assert main(["generate", str(job_file), "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"]) == 0
    [written] = sorted((tmp_path / "out").glob("big-*.png"))
    with Image.open(written) as image:
        assert image.size == (128, 96)
        assert json.loads(image.info["ctrlgen-job"])["upscale"]["upscaler"] == "4x-compact"


def test_the_upscale_benchmark_runs(tmp_path):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_upscale.py"
    spec = importlib.util.spec_from_file_location("bench_upscale", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--sizes", "128,256", "--repeat", "1", "--json", str(tmp_path / "r.json")])
    assert [row["tiles_ratio"] for row in rows] == [9.0]  # 128² is one tile, 256² 3×3 (they overlap)
    assert rows[0]["ratio"] > 0 and (tmp_path / "r.json").is_file()
