"""Region-proportional inpainting: the frame found from boxes around the mask is the one the
whole canvas gives, bit for bit; nothing canvas-sized is computed; a patch sent with its place
on the canvas (image_offset/canvas_size) gives the whole canvas's result there."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctrlgen.core.engine import regions
from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.engine.masks import (
    Region,
    composite,
    composite_rgba,
    feather,
    mask_bounds,
    masked_region,
    prepare_mask,
)
from ctrlgen.core.errors import JobError
from ctrlgen.core.images import to_mask, to_rgb


def _picture(kind: str, height: int, width: int, rng) -> np.ndarray:
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if kind == "grey":
        return rgb[..., 0].copy()
    if kind == "rgb":
        return rgb
    alpha = np.full((height, width, 1), 255, np.uint8)
    alpha[rng.random((height, width)) < 0.2] = rng.integers(0, 255)  # a few transparent pixels
    return np.concatenate([rgb, alpha], axis=2)


def _mask(kind: str, binary: np.ndarray, rng) -> np.ndarray:
    grey = np.where(binary, rng.integers(128, 256), rng.integers(0, 128)).astype(np.uint8)
    if kind == "grey":
        return grey
    if kind == "rgb":
        return np.repeat(grey[..., None], 3, axis=2)
    return np.dstack([np.zeros_like(grey)] * 3 + [grey])


@given(picture_kind=st.sampled_from(["grey", "rgb", "rgba"]), mask_kind=st.sampled_from(["grey", "rgb", "rgba"]),
       box=st.tuples(st.integers(0, 70), st.integers(0, 50), st.integers(1, 30), st.integers(1, 30)),
       grow_px=st.integers(-4, 6), feather_px=st.sampled_from([0.0, 1.5, 4.0, 9.0]), invert=st.booleans(),
       only_masked=st.booleans(), padding=st.integers(0, 20), aspect=st.sampled_from([None, 1.0, 1.5, 0.5]))
@settings(max_examples=80, deadline=None)
def test_the_region_frame_is_the_whole_canvas_frame_cropped(picture_kind, mask_kind, box, grow_px, feather_px,
                                                            invert, only_masked, padding, aspect):
    rng = np.random.default_rng(sum(box) + grow_px)
    height, width = 72, 96
    pixels = _picture(picture_kind, height, width, rng)
    x, y, w, h = box
    binary = np.zeros((height, width), bool)
    binary[y : y + h, x : x + w] = True
    raw = _mask(mask_kind, binary, rng)
    # The whole-canvas computation (what inpaint_frame did before it worked on boxes).
    full_mask = prepare_mask(to_mask(raw), grow_px, invert)
    if not full_mask.any():
        with pytest.raises(JobError, match="selects nothing"):
            regions.grown_mask(raw, grow_px, invert)
        return
    full_alpha = feather(full_mask, feather_px)
    region = masked_region(full_mask, padding, aspect) if only_masked else Region(0, 0, width, height)
    job = parse_job({"model": "m", "image": "i.png", "mask": "m.png", "inpaint": {
        "grow_px": grow_px, "feather_px": feather_px, "invert": invert, "only_masked": only_masked,
        "padding_px": padding}})

    frame = regions.region_frame(job, pixels, raw, aspect)

    assert frame.region == region
    assert np.array_equal(frame.region_mask(), region.crop(full_mask))
    assert np.array_equal(frame.region_alpha(), region.crop(full_alpha))  # bit for bit
    assert np.array_equal(frame.region_canvas(), region.crop(to_rgb(pixels)))
    touched = np.argwhere(region.crop(full_alpha) > 0)
    (y0, x0), (y1, x1) = touched.min(axis=0), touched.max(axis=0) + 1
    assert frame.changed_box == Region(x0, y0, x1, y1).moved(region.x0, region.y0)
    assert not frame.cropped or (frame.canvas.shape[:2] == (region.height, region.width))
    # The paste-back equals the whole-canvas composite, and keeps the input outside the alpha.
    patch = rng.integers(0, 256, (region.height, region.width, 3), dtype=np.uint8)
    pasted = np.asarray(regions.paste(frame, patch))
    if picture_kind == "rgba":
        expected = composite_rgba(pixels, patch, full_alpha, region)
    else:
        expected = composite(to_rgb(pixels), patch, full_alpha, region)
    assert np.array_equal(pasted, expected)
    assert np.array_equal(pasted[full_alpha == 0], (pixels if picture_kind != "grey" else to_rgb(pixels))
                          [full_alpha == 0])


def test_mask_bounds_reads_each_mask_format():
    grey = np.zeros((40, 50), np.uint8)
    grey[5:9, 30:41] = 200
    grey[20, 2] = 127  # below the threshold: not selected
    assert mask_bounds(grey) == Region(30, 5, 41, 9)
    assert mask_bounds(np.dstack([grey] * 3)) == Region(30, 5, 41, 9)  # luminance
    assert mask_bounds(np.dstack([np.zeros_like(grey)] * 3 + [grey])) == Region(30, 5, 41, 9)  # alpha
    assert mask_bounds(np.zeros((4, 4), np.uint8)) is None
    assert mask_bounds(np.full((4, 4), 255, np.uint8), invert=True) is None
    assert mask_bounds(grey, invert=True) == Region(0, 0, 50, 40)
    # RGB: a red stroke is dark in luminance (76) though its red channel is 255.
    red = np.zeros((10, 10, 3), np.uint8)
    red[2:4, 2:4, 0] = 255
    red[6, 7] = 255
    assert mask_bounds(red) == Region(7, 6, 8, 7)
    assert mask_bounds(grey.astype(np.float32) / 255.0) == Region(30, 5, 41, 9)  # other types: converted


# -- through the engine --------------------------------------------------------------------------



@pytest.fixture(scope="module")
def canvas():
    from skimage import data

    from ctrlgen.core.images import resize

    picture = resize(data.astronaut(), 320, 256)
    alpha = np.full(picture.shape[:2] + (1,), 255, np.uint8)
    alpha[:, :40] = 0  # transparent margin, far from the mask
    rgba = np.concatenate([picture, alpha], axis=2)
    mask = np.zeros(picture.shape[:2], np.uint8)
    mask[120:150, 180:214] = 255
    return {"image": rgba, "mask": mask}


def _source(arrays):
    def load(reference, what):
        if reference not in arrays:
            raise JobError(f"{what}: unknown reference {reference!r}")
        return arrays[reference]

    return load


def _inpaint(**extra):
    return {"model": "tiny-sd15", "prompt": "a cat", "seed": 3, "steps": 3, "width": 64, "height": 64,
            "image": "image", "mask": "mask", "strength": 1.0, "sampler": "Euler",
            "inpaint": {"only_masked": True, "padding_px": 12, "feather_px": 5, "grow_px": 2},
            "control": [{"model": "tiny-controlnet-sd15", "preprocessor": "canny"}], **extra}


@pytest.mark.usefixtures("torch_single_thread")
def test_nothing_canvas_sized_is_computed_for_an_only_masked_job(engine, canvas, monkeypatch):
    """Every conversion, mask operation and preprocessor sees a box around the mask; the only
    canvas-sized work is the result's copy of the input."""
    import ctrlgen.core.engine.preprocess as preprocess_module

    seen: list[tuple[str, tuple[int, ...]]] = []

    def spy(name, function):
        def wrapper(*args, **kwargs):
            array = next(a for a in args if isinstance(a, np.ndarray))
            seen.append((name, array.shape[:2]))
            return function(*args, **kwargs)
        return wrapper

    for name in ("to_rgb", "to_mask", "feather", "prepare_mask"):
        monkeypatch.setattr(regions, name, spy(name, getattr(regions, name)))
    monkeypatch.setattr(preprocess_module, "preprocess", spy("preprocess", preprocess_module.preprocess))
    result = engine.run(parse_job(_inpaint()), images=_source(canvas))

    assert {name for name, _ in seen} == {"to_rgb", "to_mask", "feather", "prepare_mask", "preprocess"}
    height, width = canvas["mask"].shape
    assert all(h * w <= 0.25 * height * width for _, (h, w) in seen), seen
    assert result.images[0].size == (width, height) and result.images[0].mode == "RGBA"
    x0, y0, x1, y1 = result.changed_box
    assert (x0, y0) < (180, 120) and (x1, y1) > (214, 150) and x1 - x0 < 80
    outside = np.ones((height, width), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(np.asarray(result.images[0])[outside], canvas["image"][outside])
    assert result.offset == (0, 0)
    assert np.array_equal(result.crop(), np.asarray(result.images[0])[y0:y1, x0:x1])


@pytest.mark.usefixtures("torch_single_thread")
@pytest.mark.parametrize("unit", [True, False])
def test_a_patch_with_its_place_gives_the_whole_canvas_result_there(engine, canvas, unit):
    """The host sends the region and some context with image_offset/canvas_size: the result is
    the whole-canvas job's, cropped to the patch, bit for bit (canny runs on the same region)."""
    extra = {} if unit else {"control": []}
    whole = engine.run(parse_job(_inpaint(**extra)), images=_source(canvas))
    x, y, w, h = 150, 90, 110, 100  # holds the region (mask + grow + padding, square)
    patch = {"image": canvas["image"][y : y + h, x : x + w], "mask": canvas["mask"][y : y + h, x : x + w]}
    placed = engine.run(parse_job(_inpaint(image_offset=[x, y], canvas_size=[320, 256], **extra)),
                        images=_source(patch))

    assert placed.offset == (x, y)
    assert placed.images[0].size == (w, h)
    assert np.array_equal(np.asarray(placed.images[0]), np.asarray(whole.images[0])[y : y + h, x : x + w])
    wx0, wy0, wx1, wy1 = whole.changed_box
    assert placed.changed_box == (wx0 - x, wy0 - y, wx1 - x, wy1 - y)
    if unit:
        assert np.array_equal(placed.control_maps[0], whole.control_maps[0])


def test_placement_is_checked(engine, canvas):
    with pytest.raises(JobError, match="give both job.image_offset and job.canvas_size"):
        parse_job(_inpaint(image_offset=[0, 0]))
    with pytest.raises(JobError, match=r"job.image_offset \[400, 0\] lies outside job.canvas_size \[320, 256\]"):
        parse_job(_inpaint(image_offset=[400, 0], canvas_size=[320, 256]))
    with pytest.raises(JobError, match="job.outpaint expands the whole picture"):
        parse_job({k: v for k, v in _inpaint(image_offset=[0, 0], canvas_size=[320, 256]).items() if k != "mask"}
                  | {"outpaint": {"left": 8}})
    with pytest.raises(JobError, match=r"image's 320×256 reaches to \[330, 256\], outside job.canvas_size"):
        engine.check(parse_job(_inpaint(image_offset=[10, 0], canvas_size=[320, 256])), _source(canvas))
    checked = engine.check(parse_job(_inpaint(image_offset=[0, 0], canvas_size=[320, 256])), _source(canvas))
    assert checked.job.canvas_size == (320, 256)
