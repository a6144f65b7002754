"""ControlNet inpaint on a regular checkpoint: the hint is the job's picture with -1 under the mask
(after grow/invert, cropped as only-masked crops), and the pixels outside the mask stay unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from ctrlgen.core.errors import JobError
from ctrlgen.testing.contracts import contract_image

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("cn-inpaint")
    picture = contract_image(64, 64)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:44, 12:40] = 255
    Image.fromarray(picture).save(folder / "photo.png")
    Image.fromarray(mask).save(folder / "mask.png")
    return {"image": str(folder / "photo.png"), "mask": str(folder / "mask.png"), "picture": picture, "raw": mask}


def _job(files, preprocessor="inpaint", architecture="sd15", **inpaint):
    return {"model": f"tiny-{architecture}", "prompt": "a cat", "seed": 5, "steps": 4, "width": 64, "height": 64,
            "image": files["image"], "mask": files["mask"], "strength": 1.0,
            "inpaint": {"feather_px": 0, **inpaint},
            "control": [{"model": f"tiny-controlnet-{architecture}", "preprocessor": preprocessor}]}


def _run_capturing_hint(engine, job):
    """Run ``job``; return the result and the control image the ControlNet got at the first step."""
    from ctrlgen.core.engine.jobs import parse_job

    parsed = parse_job(job)
    entry = engine.store.find(parsed.control[0].model, category=("controlnet",))
    model = engine.load_controlnet(entry, entry.identity.architecture)
    seen = []

    def capture(module, args, kwargs):
        if not seen:
            seen.append(kwargs["controlnet_cond"].clone())

    handle = model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        result = engine.run(parsed)
    finally:
        handle.remove()
    return result, seen[0]


def _expected_hint(job, width=64, height=64):
    """The hint built from the very image and mask the inpaint pipeline gets."""
    from ctrlgen.core.engine import tasks
    from ctrlgen.core.engine.engine import load_image_file
    from ctrlgen.core.engine.jobs import parse_job
    from ctrlgen.preprocessors.inpaint import control_hint

    inputs = tasks.prepare(parse_job(job), width, height, load_image_file, 4)
    picture = np.asarray(inputs.call_kwargs["image"].convert("RGB"))
    mask = np.asarray(inputs.call_kwargs["mask_image"].convert("L"))
    return control_hint(picture, mask), mask > 127


@pytest.mark.parametrize("options", [{}, {"grow_px": 3}, {"invert": True}, {"only_masked": True, "padding_px": 8},
                                     {"architecture": "sdxl"}])
def test_hint_is_minus_one_exactly_under_the_mask(engine, files, options):
    job = _job(files, **options)
    result, hint = _run_capturing_hint(engine, job)
    expected, masked = _expected_hint(job)
    assert hint.shape == (2, 3, 64, 64)  # [negative, positive] rows of classifier-free guidance
    for row in hint:
        got = row.permute(1, 2, 0).numpy()
        assert np.array_equal(got, expected)
        assert (got[masked] == -1.0).all()
        assert (got[~masked] >= 0.0).all() and (got[~masked] <= 1.0).all()
    # the map returned with the result shows the masked pixels black
    shown = result.control_maps[0]
    assert (shown[masked] == 0).all()


def test_hint_follows_grow_and_invert(engine, files):
    _, plain = _expected_hint(_job(files))
    _, grown = _expected_hint(_job(files, grow_px=3))
    _, inverted = _expected_hint(_job(files, invert=True))
    assert grown.sum() > plain.sum() and (grown | plain == grown).all()
    assert np.array_equal(inverted, ~plain)


def test_inpaint_job_keeps_pixels_outside_the_mask(engine, files):
    result, _ = _run_capturing_hint(engine, _job(files))
    output = np.asarray(result.images[0])
    outside = files["raw"] == 0
    assert np.array_equal(output[outside], files["picture"][outside])
    assert not np.array_equal(output[~outside], files["picture"][~outside])
    # the inpaint hint steers the repainted pixels: without the unit they come out different
    plain = {k: v for k, v in _job(files).items() if k != "control"}
    from ctrlgen.core.engine.jobs import parse_job

    without = np.asarray(engine.run(parse_job(plain)).images[0])
    assert not np.array_equal(output, without)


def test_inpaint_only_is_an_alias(engine, files):
    first, hint = _run_capturing_hint(engine, _job(files, preprocessor="inpaint"))
    second, alias_hint = _run_capturing_hint(engine, _job(files, preprocessor="inpaint_only"))
    assert np.array_equal(hint.numpy(), alias_hint.numpy())
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(second.images[0]))


def test_inpaint_unit_needs_a_mask(engine, files):
    from ctrlgen.core.engine.jobs import parse_job

    job = {k: v for k, v in _job(files).items() if k not in ("mask", "inpaint", "strength")}
    with pytest.raises(JobError, match=r"control\[0\].*repaints the job's mask.*job.mask"):
        engine.run(parse_job(job))


def test_inpaint_unit_takes_no_image_of_its_own(engine, files):
    from ctrlgen.core.engine.jobs import parse_job

    job = _job(files)
    job["control"][0]["image"] = files["image"]
    with pytest.raises(JobError, match=r"leave control\[0\].image unset"):
        engine.run(parse_job(job))


def test_other_units_maps_follow_the_only_masked_crop_and_the_outpainted_canvas(engine, files):
    """A canny unit in an only-masked job runs on the region that is repainted (as
    sd-webui-controlnet crops the control image before preprocessing), not on the whole
    picture; in an outpaint job its map covers the original picture at its place on the bigger
    canvas."""
    from ctrlgen.core.engine.jobs import parse_job
    from ctrlgen.core.engine.masks import masked_region, prepare_mask
    from ctrlgen.core.engine.preprocess import preprocess

    canny = [{"model": "tiny-controlnet-sd15", "preprocessor": "canny"}]
    base = _job(files) | {"control": canny}
    cropped = engine.run(parse_job(base | {"inpaint": {"only_masked": True, "padding_px": 4, "feather_px": 0}}))
    whole = engine.run(parse_job(base))
    region = masked_region(prepare_mask(files["raw"], 0, False), 4, aspect=1.0)
    assert whole.control_maps[0].shape[:2] == (64, 64)
    assert cropped.control_maps[0].shape[:2] == (region.height, region.width)
    assert np.array_equal(cropped.control_maps[0], preprocess("canny", region.crop(files["picture"])).image)
    assert not np.array_equal(cropped.control_maps[0], region.crop(whole.control_maps[0]))  # not a crop of it

    outpaint = {k: v for k, v in base.items() if k != "mask"} | {"outpaint": {"right": 32}, "width": 96}
    expanded = engine.run(parse_job(outpaint))
    grown = expanded.control_maps[0]
    assert grown.shape[:2] == (64, 96)
    assert np.array_equal(grown[:, :64], whole.control_maps[0]) and not grown[:, 64:].any()
