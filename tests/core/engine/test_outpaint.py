"""Outpainting: the canvas grows, the new area is inpainted, the original stays put."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.engine.masks import Expansion, expand_canvas, feather, outpaint_mask, prepare_mask
from ctrlgen.core.engine.tasks import inpaint_frame, prepare
from ctrlgen.core.errors import JobError

pytestmark = pytest.mark.usefixtures("torch_single_thread")

W, H = 64, 48  # the input photo


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("outpaint-inputs")
    photo = np.asarray(Image.fromarray(data.astronaut()).resize((W, H)))
    Image.fromarray(photo).save(folder / "photo.png")
    mask = np.zeros((H, W), np.uint8)
    mask[10:30, 10:30] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    return {"photo": str(folder / "photo.png"), "mask": str(folder / "mask.png"), "pixels": photo, "mask_pixels": mask}


def run(engine, files, outpaint, **fields):
    job = {"model": "tiny-sd15", "prompt": "a beach", "seed": 2, "steps": 4, "width": 64, "height": 64,
           "image": files["photo"], "strength": 1.0, "outpaint": outpaint, **fields}
    return np.asarray(engine.run(parse_job(job)).images[0])


# -- the canvas and the mask -----------------------------------------------------------


def test_expand_canvas_keeps_the_image_and_spreads_its_edges():
    image = np.zeros((20, 30, 3), np.uint8)
    image[:, :15] = (200, 0, 0)
    image[:, 15:] = (0, 0, 200)
    expansion = Expansion(left=12, top=5, right=40, bottom=0)
    canvas = expand_canvas(image, expansion)
    assert canvas.shape == (25, 82, 3)
    assert np.array_equal(canvas[5:25, 12:42], image)
    assert np.array_equal(canvas, expand_canvas(image, expansion))
    right, left = canvas[5:, 60:].reshape(-1, 3), canvas[5:, :4].reshape(-1, 3)
    assert right[:, 2].min() > 150 and right[:, 0].max() < 50  # blue continues on the right
    assert left[:, 0].min() > 150 and left[:, 2].max() < 50  # red on the left
    flat = np.full((10, 10, 3), 77, np.uint8)
    assert (expand_canvas(flat, Expansion(bottom=30, right=3)) == 77).all()


def test_outpaint_mask_covers_the_new_area_and_overlaps_expanded_sides_only():
    expansion = Expansion(left=8, top=0, right=4, bottom=6)
    mask = outpaint_mask(20, 10, expansion, overlap=3)
    assert mask.shape == (16, 32)
    keep = np.zeros_like(mask, dtype=bool)
    keep[0:7, 11:25] = True  # rows: top not expanded (no overlap), bottom overlaps 3; cols: 8+3 .. 8+20-3
    assert np.array_equal(mask == 0, keep)
    assert set(np.unique(mask)) == {0, 255}
    assert (outpaint_mask(4, 4, Expansion(left=2, right=2), overlap=10) == 255).all()  # overlap wider than the image


def test_frame_places_input_sized_maps_on_the_canvas(files):
    job = parse_job({"model": "m", "image": files["photo"], "outpaint": {"left": 16, "bottom": 8}})
    frame = inpaint_frame(job, files["pixels"], lambda ref, what: None)
    assert frame.canvas.shape == (H + 8, W + 16, 3) and frame.expansion == Expansion(left=16, bottom=8)
    assert frame.input_size == (W, H)
    control = np.full((H, W, 3), 9, np.uint8)
    placed = frame.to_region(control)
    assert placed.shape == frame.canvas.shape
    assert (placed[:H, 16:] == 9).all() and not placed[:, :16].any() and not placed[H:].any()
    assert np.array_equal(frame.to_region(np.full((H // 2, W // 2, 3), 9, np.uint8)), placed)  # resized first
    canvas_map = np.arange(frame.canvas.size, dtype=np.uint32).reshape(frame.canvas.shape).astype(np.uint8)
    assert np.array_equal(frame.to_region(canvas_map), canvas_map)  # already covers the canvas

    cropped = parse_job({"model": "m", "image": files["photo"], "outpaint": {"left": 16},
                         "inpaint": {"only_masked": True, "padding_px": 4, "feather_px": 0}})
    frame = inpaint_frame(cropped, files["pixels"], lambda ref, what: None)
    assert (frame.region.x0, frame.region.y0, frame.region.x1) == (0, 0, 16 + 8 + 4)  # new area + overlap + padding
    assert np.array_equal(frame.to_region(control), frame.region.crop(Expansion(left=16).place(control)))


# -- validation -------------------------------------------------------------------------


def test_an_image_and_outpaint_make_an_inpaint_job():
    job = parse_job({"model": "m", "image": "a.png", "outpaint": {"right": 64}})
    assert job.task == "inpaint" and job.mask is None
    assert (job.outpaint.left, job.outpaint.right, job.outpaint.overlap_px) == (0, 64, 8)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"outpaint": {"left": -8}}, "job.outpaint.left: Input should be greater than or equal to 0 (got -8)"),
        ({"outpaint": {}}, "outpaint adds no pixels"),
        ({"outpaint": {"top": 20000}}, "job.outpaint.top: Input should be less than or equal to 16384"),
        ({"outpaint": {"right": 8, "overlap_px": -1}}, "job.outpaint.overlap_px"),
        ({"outpaint": {"right": 8, "up": 3}}, "job.outpaint.up: Extra inputs are not permitted"),
        ({"outpaint": {"right": 8}, "task": "img2img"}, "outpaint inpaints the expanded canvas"),
        ({"outpaint": {"right": 8}, "image": None}, "task 'inpaint' needs job.image"),
    ],
)
def test_bad_outpaint_values_are_named(fields, message):
    with pytest.raises(JobError) as info:
        parse_job({"model": "m", "image": "a.png", **fields})
    assert message in str(info.value)


def test_a_canvas_over_the_size_limit_is_refused(files):
    job = parse_job({"model": "m", "image": files["photo"], "outpaint": {"right": 16384}})
    with pytest.raises(JobError, match=r"job.outpaint: .* is 16448×48, above the limit of 16384 pixels a side"):
        prepare(job, 64, 64, lambda ref, what: files["pixels"], 4)


# -- through the engine ------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sdxl"])
def test_outpaint_grows_the_canvas_and_keeps_the_original(engine, files, model):
    expansion = Expansion(left=16, top=0, right=8, bottom=16)
    outpaint = {"left": 16, "right": 8, "bottom": 16, "overlap_px": 6}
    result = run(engine, files, outpaint, model=model, width=88, height=64, inpaint={"feather_px": 4})
    assert result.shape == (H + 16, W + 24, 3)

    alpha = feather(outpaint_mask(W, H, expansion, overlap=6), 4)
    original_at_offset = result[0:H, 16:16 + W]
    untouched = alpha[0:H, 16:16 + W] == 0
    assert untouched.sum() >= (W - 2 * 12) * (H - 12)  # overlap 6 + the feather's reach (6) on expanded sides
    assert np.array_equal(original_at_offset[untouched], files["pixels"][untouched])

    start = expand_canvas(files["pixels"], expansion)
    new_area = alpha > 0.99
    assert np.abs(result[new_area].astype(int) - start[new_area].astype(int)).mean() > 10  # generated, not the fill
    assert np.array_equal(result, run(engine, files, outpaint, model=model, width=88, height=64,
                                      inpaint={"feather_px": 4}))


def test_outpaint_with_a_mask_only_masked_and_a_latent_fill(engine, files):
    pixels = files["pixels"]
    outpaint = {"right": 24, "overlap_px": 4}
    inpaint = {"feather_px": 2, "only_masked": True, "padding_px": 8, "fill": "latent_noise"}
    result = run(engine, files, outpaint, mask=files["mask"], strength=0.8, inpaint=inpaint)
    assert result.shape == (H, W + 24, 3)
    user_mask = np.pad(prepare_mask(files["mask_pixels"]), ((0, 0), (0, 24)))
    alpha = feather(np.maximum(user_mask, outpaint_mask(W, H, Expansion(right=24), 4)), 2)
    untouched = alpha[:, :W] == 0
    assert np.array_equal(result[:, :W][untouched], pixels[untouched])
    assert not np.array_equal(result[10:30, 10:30], pixels[10:30, 10:30])  # the masked square was repainted
    assert np.abs(result[:, W + 4:].astype(int) - expand_canvas(pixels, Expansion(right=24))[:, W + 4:]).mean() > 10
