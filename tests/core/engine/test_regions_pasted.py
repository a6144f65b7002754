"""An inpaint result is the input plus the composited box, made whole only when read: a
PastedImage gives the pixels an eager paste gives, bit for bit, through every PIL read, and
crops of it (``result.crop()``) never copy the canvas."""

from __future__ import annotations

import copy
import io
import pickle

import numpy as np
import pytest
from PIL import Image

from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.engine.pasted import PastedImage
from ctrlgen.core.engine.regions import _paste_whole

SHAPES = [(50, 60, 4), (50, 60, 3), (50, 60), (50, 60, 1), (50, 60, 2)]


def _inputs(shape):
    rng = np.random.default_rng(len(shape) * 10 + (shape[2] if len(shape) == 3 else 0))
    base = rng.integers(0, 256, shape, dtype=np.uint8)
    if len(shape) == 3 and shape[2] in (2, 4):
        base[..., -1][rng.random(shape[:2]) < 0.5] = 255  # some opaque, some translucent pixels
    channels = 4 if len(shape) == 3 and shape[2] == 4 else 3
    box = (10, 5, 30, 25)
    done = rng.integers(0, 256, (20, 20, channels), dtype=np.uint8)
    return base, box, done


@pytest.mark.parametrize("shape", SHAPES)
def test_crops_are_computed_from_the_box_and_equal_the_eager_paste(shape):
    base, box, done = _inputs(shape)
    eager = _paste_whole(base, box, done)
    lazy = PastedImage(base, box, done, _paste_whole)
    assert isinstance(lazy, Image.Image)
    assert (lazy.size, lazy.mode) == (eager.size, eager.mode)
    for crop in [(12, 7, 28, 20), (0, 0, 15, 15), (25, 20, 60, 50), (40, 40, 60, 50), (0, 0, 60, 1)]:
        assert np.array_equal(np.asarray(lazy.crop(crop)), np.asarray(eager.crop(crop))), crop
        assert lazy.crop(crop).mode == eager.mode
    assert not lazy.materialised
    assert lazy.crop((3, 3, 3, 9)).size == (0, 6)
    assert lazy == eager and lazy.materialised


@pytest.mark.parametrize("shape", SHAPES)
def test_every_whole_read_makes_the_eager_pixels(shape):
    base, box, done = _inputs(shape)
    eager = _paste_whole(base, box, done)

    def lazy():
        return PastedImage(base, box, done, _paste_whole)

    assert np.array_equal(np.asarray(lazy()), np.asarray(eager))
    assert lazy().tobytes() == eager.tobytes()
    saved = io.BytesIO()
    lazy().save(saved, "PNG")
    assert np.array_equal(np.asarray(Image.open(saved)), np.asarray(eager))
    assert pickle.loads(pickle.dumps(lazy())) == eager
    assert copy.deepcopy(lazy()) == eager and copy.copy(lazy()) == eager
    assert lazy().convert("L") == eager.convert("L")
    assert lazy().resize((10, 10)) == eager.resize((10, 10))
    assert lazy().getpixel((15, 10)) == eager.getpixel((15, 10))
    changed, expected = lazy(), eager.copy()
    changed.paste((1, 2, 3), (0, 0, 3, 3))
    expected.paste((1, 2, 3), (0, 0, 3, 3))
    assert changed == expected
    loaded = lazy()
    loaded.load()
    base_copy = base.copy()
    base[...] = 0  # the input may change once the result has been read
    assert loaded == eager
    base[...] = base_copy


@pytest.mark.usefixtures("torch_single_thread")
def test_an_engine_result_read_through_its_changed_box_copies_no_canvas(engine):
    side = 512
    rng = np.random.default_rng(5)
    canvas = rng.integers(0, 256, (side, side, 4), dtype=np.uint8)
    canvas[..., 3] = 255
    mask = np.zeros((side, side), np.uint8)
    mask[300:340, 200:236] = 255
    job = parse_job({"model": "tiny-sd15", "prompt": "a cat", "seed": 3, "steps": 2, "width": 64, "height": 64,
                     "image": "image", "mask": "mask", "strength": 1.0, "sampler": "Euler",
                     "inpaint": {"only_masked": True, "padding_px": 12, "feather_px": 5, "grow_px": 2}})
    arrays = {"image": canvas, "mask": mask}
    result = engine.run(job, images=lambda ref, what: arrays[ref])
    image = result.images[0]
    assert isinstance(image, PastedImage) and image.size == (side, side) and image.mode == "RGBA"
    x0, y0, x1, y1 = result.changed_box
    patch = result.crop()
    assert not image.materialised  # size, mode and the changed box read without the canvas
    whole = np.asarray(image)
    assert image.materialised
    assert np.array_equal(patch, whole[y0:y1, x0:x1])
    outside = np.ones((side, side), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(whole[outside], canvas[outside])
