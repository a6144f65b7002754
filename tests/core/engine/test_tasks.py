"""img2img and inpainting through the engine on the tiny models."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.engine.masks import feather, prepare_mask
from ctrlgen.core.errors import CtrlgenError, JobError

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("task-inputs")
    photo = np.asarray(Image.fromarray(data.astronaut()).resize((96, 80)))
    Image.fromarray(photo).save(folder / "photo.png")
    mask = np.zeros((80, 96), np.uint8)
    mask[20:50, 30:70] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(folder / "small_mask.png")
    Image.fromarray(np.zeros((80, 96), np.uint8)).save(folder / "empty_mask.png")
    return {"photo": str(folder / "photo.png"), "mask": str(folder / "mask.png"), "pixels": photo,
            "mask_pixels": mask, "small_mask": str(folder / "small_mask.png"),
            "empty_mask": str(folder / "empty_mask.png")}


def run(engine, events=None, **fields):
    job = {"model": "tiny-sd15", "prompt": "a cat", "seed": 9, "steps": 4, "width": 64, "height": 64, **fields}
    result = engine.run(parse_job(job), on_event=events.append if events is not None else None)
    return np.asarray(result.images[0])


def test_img2img_uses_the_input_and_strength(engine, files):
    events = []
    changed = run(engine, events, task="img2img", image=files["photo"], strength=0.5)
    assert changed.shape == (64, 64, 3)
    assert [e.data["step"] for e in events if e.kind == "progress"] == [1, 2]  # 4 steps × 0.5
    assert np.array_equal(changed, run(engine, task="img2img", image=files["photo"], strength=0.5))
    assert not np.array_equal(changed, run(engine, task="img2img", image=files["photo"], strength=1.0))
    assert not np.array_equal(changed, run(engine))


@pytest.mark.parametrize("only_masked", [False, True])
@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sdxl"])
def test_inpaint_changes_only_the_feathered_mask(engine, files, only_masked, model):
    inpaint = {"feather_px": 6, "grow_px": 2, "only_masked": only_masked, "padding_px": 8}
    result = run(engine, model=model, image=files["photo"], mask=files["mask"], strength=1.0, inpaint=inpaint)
    original = files["pixels"]
    assert result.shape == original.shape  # inpainting keeps the input's size
    alpha = feather(prepare_mask(files["mask_pixels"], 2), 6)
    outside, inside = alpha == 0, alpha > 0.99
    assert np.array_equal(result[outside], original[outside])
    assert np.abs(result[inside].astype(int) - original[inside].astype(int)).mean() > 5


def test_inpaint_options_change_what_is_repainted(engine, files):
    original = files["pixels"]
    inverted = run(engine, image=files["photo"], mask=files["mask"], inpaint={"invert": True, "feather_px": 0})
    assert np.array_equal(inverted[20:50, 30:70], original[20:50, 30:70])  # the mask is kept now
    assert not np.array_equal(inverted[:20], original[:20])
    plain = run(engine, image=files["photo"], mask=files["mask"], strength=0.6)
    filled = run(engine, image=files["photo"], mask=files["mask"], strength=0.6, inpaint={"fill": "fill"})
    assert not np.array_equal(plain, filled)


def test_inpaint_with_a_controlnet_unit(engine, files):
    control = [{"model": "tiny-controlnet-sd15", "preprocessor": "canny"}]
    result = run(engine, image=files["photo"], mask=files["mask"], control=control, inpaint={"feather_px": 0})
    outside = files["mask_pixels"] == 0
    assert np.array_equal(result[outside], files["pixels"][outside])
    assert not np.array_equal(result, run(engine, image=files["photo"], mask=files["mask"],
                                          inpaint={"feather_px": 0}))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"task": "img2img"}, "task 'img2img' needs job.image"),
        ({"task": "inpaint", "image": "x.png"}, "task 'inpaint' needs job.mask"),
        ({"task": "txt2img", "image": "x.png", "mask": "m.png"}, "a mask means inpainting"),
        ({"image": "x.png", "mask": "m.png", "strength": 0}, "job.strength: Input should be greater than 0"),
        ({"image": "x.png", "mask": "m.png", "inpaint": {"fill": "latent"}}, "job.inpaint.fill"),
    ],
)
def test_task_validation(fields, message):
    with pytest.raises(JobError) as info:
        parse_job({"model": "m", **fields})
    assert message in str(info.value)


def test_mask_problems_are_clear(engine, files):
    with pytest.raises(CtrlgenError, match="job.mask is 10×10 but the image is 96×80"):
        run(engine, image=files["photo"], mask=files["small_mask"])
    with pytest.raises(JobError, match="job.mask selects nothing"):
        run(engine, image=files["photo"], mask=files["empty_mask"])
    with pytest.raises(JobError, match="does not exist"):
        run(engine, image=files["photo"], mask=files["photo"] + ".missing")


def test_a_mask_selects_inpaint_and_an_image_alone_img2img():
    assert parse_job({"model": "m", "image": "a.png", "mask": "b.png"}).task == "inpaint"
    # An image nothing else reads is the picture to change (never silently ignored) ...
    assert parse_job({"model": "m", "image": "a.png"}).task == "img2img"
    assert parse_job({"model": "m", "image": "a.png", "control": [{"model": "c", "image": "c.png"}]}).task == "img2img"
    # ... but the source of control units without an image of their own keeps it txt2img.
    assert parse_job({"model": "m", "image": "a.png", "control": [{"model": "c"}]}).task == "txt2img"
    assert parse_job({"model": "m"}).task == "txt2img"
    with pytest.raises(JobError, match="task 'txt2img' does not use it"):
        parse_job({"model": "m", "task": "txt2img", "image": "a.png"})
