"""Regions and AND with the rest of a job: IP-Adapter, reference-only, outpainting, SDXL inpaint,
batches and CFG 1; each leaves the cached pipeline as it found it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.testing.contracts import contract_image, pipeline_fingerprint

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("regions-compose")
    paths = {"image": folder / "picture.png", "left": folder / "left.png", "mask": folder / "mask.png"}
    Image.fromarray(contract_image(64, 64)).save(paths["image"])
    left = np.zeros((64, 64), np.uint8)
    left[:, :32] = 255
    Image.fromarray(left).save(paths["left"])
    square = np.zeros((64, 64), np.uint8)
    square[16:48, 16:48] = 255
    Image.fromarray(square).save(paths["mask"])
    return {name: str(path) for name, path in paths.items()}


def job(architecture="sd15", **extra):
    return parse_job({"model": f"tiny-{architecture}", "prompt": "a garden AND fog :0.4", "negative_prompt": "blurry",
                      "seed": 5, "steps": 3, "width": 64, "height": 64, **extra})


def region(files, prompt="a red house AND a tree :0.5"):
    return {"type": "region", "mask": files["left"], "prompt": prompt, "negative_prompt": "dark"}


def _clean_run(engine, architecture, the_job):
    """Run ``the_job`` on a cached pipeline; its fingerprint must be unchanged after. Returns the pixels."""
    engine.run(job(architecture, prompt="a garden"))
    base = next(p for key, p in engine._pipelines.items() if f"tiny-{architecture}" in key)
    before = pipeline_fingerprint(base)
    result = engine.run(the_job)
    assert pipeline_fingerprint(base) == before
    return np.asarray(result.images[0], np.int16)


@pytest.mark.parametrize("architecture", ["sd15", "sdxl"])
def test_regions_and_and_with_ip_adapter(tiny_model_root, ip_models, files, architecture):
    from ctrlgen.core.engine.engine import Engine
    from ctrlgen.core.models.store import ModelStore
    from ctrlgen.core.plugins.specs import ModelRoot

    engine = Engine(store=ModelStore([ModelRoot(tiny_model_root.root)]), device="cpu")
    ip = {"type": "ip_adapter", "model": f"tiny-ip-adapter_{architecture}", "image": files["image"], "scale": 0.8}
    with_region = _clean_run(engine, architecture, job(architecture, adapters=[ip, region(files)]))
    without = _clean_run(engine, architecture, job(architecture, adapters=[ip]))
    assert np.abs(with_region - without).max() > 4


def test_and_with_reference_only_and_a_controlnet(engine, files):
    the_job = job(image=files["image"], control=[{"model": "tiny-controlnet-sd15", "preprocessor": "canny"}],
                  adapters=[{"type": "reference", "image": files["image"]}, region(files)])
    _clean_run(engine, "sd15", the_job)


@pytest.mark.parametrize(("architecture", "extra"), [
    ("sd15", {"outpaint": {"right": 32}}),
    ("sdxl", {"mask": "mask", "inpaint": {"only_masked": True, "padding_px": 8}}),
    ("sdxl", {"task": "img2img", "strength": 0.6}),
])
def test_regions_in_inpaint_outpaint_and_img2img(engine, files, architecture, extra):
    extra = {k: files.get(v, v) if isinstance(v, str) else v for k, v in extra.items()}
    pixels = _clean_run(engine, architecture, job(architecture, image=files["image"], adapters=[region(files)],
                                                  **extra))
    assert pixels.shape[1] == (96 if "outpaint" in extra else 64)


def test_batches_and_cfg_one_fold_every_image(engine, files):
    batch = _clean_run(engine, "sd15", job(batch_size=2, adapters=[region(files)]))
    result = engine.run(job(batch_size=2, cfg_scale=1.0, adapters=[region(files)]))
    first, second = (np.asarray(image, np.int16) for image in result.images)
    assert np.abs(first - second).max() > 0  # two seeds, two pictures
    single = np.asarray(engine.run(job(adapters=[region(files)])).images[0], np.int16)
    assert np.abs(batch - single).max() <= 2  # the first of a batch is the single job's picture


def test_the_regions_benchmark_runs(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_regions.py"
    spec = importlib.util.spec_from_file_location("bench_regions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--size", "64", "--steps", "1", "--repeat", "1", "--json", str(tmp_path / "r.json")])
    assert [row["measure"].split(" vs ")[0] for row in rows] == [
        "AND, 2 sub-prompts", "AND, 3 sub-prompts", "1 region", "4 regions", "2 regions, one with AND"]
    assert all(row["ratio"] > 0 for row in rows) and (tmp_path / "r.json").is_file()


def test_a_regions_own_unit_in_an_only_masked_inpaint(engine, files):
    use = {**region(files), "control": [{"model": "tiny-controlnet-sd15", "preprocessor": "canny",
                                         "image": files["image"]}]}
    the_job = job(image=files["image"], mask=files["mask"], inpaint={"only_masked": True, "padding_px": 8},
                  adapters=[use])
    without = job(image=files["image"], mask=files["mask"], inpaint={"only_masked": True, "padding_px": 8},
                  adapters=[region(files)])
    pixels = _clean_run(engine, "sd15", the_job)
    assert np.abs(pixels - np.asarray(engine.run(without).images[0], np.int16)).max() > 0


@pytest.mark.parametrize("architecture", ["sd15", "sdxl"])
def test_a_regions_ip_adapter_is_the_ip_adapter_masked_by_the_region(tiny_model_root, ip_models, files,
                                                                       architecture):
    from ctrlgen.core.engine.engine import Engine
    from ctrlgen.core.errors import CtrlgenError
    from ctrlgen.core.models.store import ModelStore
    from ctrlgen.core.plugins.specs import ModelRoot

    engine = Engine(store=ModelStore([ModelRoot(tiny_model_root.root)]), device="cpu")
    ip = {"model": f"tiny-ip-adapter_{architecture}", "image": files["image"], "scale": 0.9}
    own = _clean_run(engine, architecture, job(architecture, adapters=[{**region(files), "ip_adapter": [ip]}]))
    masked = np.asarray(engine.run(job(architecture, adapters=[
        region(files), {"type": "ip_adapter", **ip, "mask": files["left"]}])).images[0], np.int16)
    unmasked = np.asarray(engine.run(job(architecture, adapters=[
        region(files), {"type": "ip_adapter", **ip}])).images[0], np.int16)
    assert np.abs(own - masked).max() <= 1 and np.abs(own - unmasked).max() > 2
    with pytest.raises(CtrlgenError, match=r"adapters\[0\] \(region\)\.ip_adapter\[0\]\.model"):
        engine.check(job(architecture, adapters=[{**region(files), "ip_adapter": [{**ip, "model": "nope"}]}]))
