"""Masked content (A1111's "fill / original / latent noise / latent nothing") on the tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.engine.masks import feather, prepare_mask
from ctrlgen.core.engine.tasks import latent_fill
from ctrlgen.core.errors import JobError

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FEATHER = 4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("fill-inputs")
    photo = np.asarray(Image.fromarray(data.astronaut()).resize((96, 80)))
    Image.fromarray(photo).save(folder / "photo.png")
    mask = np.zeros((80, 96), np.uint8)
    mask[20:56, 28:72] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    alpha = feather(prepare_mask(mask), FEATHER)
    return {"photo": str(folder / "photo.png"), "mask": str(folder / "mask.png"), "pixels": photo,
            "outside": alpha == 0, "inside": alpha > 0.99}


def run(engine, files, fill, **fields):
    job = {"model": "tiny-sd15", "prompt": "a cat", "seed": 9, "steps": 4, "width": 64, "height": 64,
           "image": files["photo"], "mask": files["mask"], "strength": 0.75,
           **fields, "inpaint": {"fill": fill, "feather_px": FEATHER, **fields.get("inpaint", {})}}
    return [np.asarray(image) for image in engine.run(parse_job(job)).images]


# -- the latent fill itself ---------------------------------------------------------------


@pytest.fixture(scope="module")
def inpaint_pipe(engine):
    from ctrlgen.core.engine.tasks import pipeline_class

    base = engine.load_pipeline(engine.store.find("tiny-sd15"))
    return pipeline_class("sd15", "inpaint").from_pipe(base)


def _prepare(pipe, image, mask, mode, seeds):
    """Call the pipeline's prepare_latents as its __call__ does for strength < 1, under latent_fill."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    timestep = torch.tensor([500] * len(seeds))
    with latent_fill(pipe, mode, mask):
        _, _, image_latents = pipe.prepare_latents(
            len(seeds), 4, 64, 64, torch.float32, "cpu", generators, None, image=image, timestep=timestep,
            is_strength_max=False, return_noise=True, return_image_latents=True)
    return image_latents


@pytest.mark.parametrize("mode", ["latent_noise", "latent_nothing"])
def test_latent_fill_replaces_exactly_the_masked_latents(inpaint_pipe, mode):
    from diffusers.utils.torch_utils import randn_tensor

    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 8:40] = 255  # latent cells [2:6, 1:5]
    seeds = [5, 6]
    filled = _prepare(inpaint_pipe, image, mask, mode, seeds)

    # What the pipeline alone encodes (the same VAE call, the same generator) ...
    encoded = inpaint_pipe._encode_vae_image(image, [torch.Generator().manual_seed(s) for s in seeds])
    repaint = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    repaint[..., 2:6, 1:5] = True
    for index in range(len(seeds)):
        assert torch.equal(filled[index][~repaint[0].expand(4, 8, 8)], encoded[0][~repaint[0].expand(4, 8, 8)])
    # ... and under the mask: zeros, or each image's own noise from its seed.
    inside = filled[:, :, 2:6, 1:5]
    if mode == "latent_nothing":
        assert not inside.any()
    else:
        noise = randn_tensor((2, 4, 8, 8), generator=[torch.Generator().manual_seed(s) for s in seeds])
        assert torch.equal(inside, noise[:, :, 2:6, 1:5])
        assert not torch.equal(inside[0], inside[1])


def test_latent_fill_is_taken_off_afterwards_even_on_error(inpaint_pipe):
    mask = np.full((64, 64), 255, np.uint8)
    with latent_fill(inpaint_pipe, "latent_nothing", mask):
        assert "prepare_latents" in vars(inpaint_pipe)
    assert "prepare_latents" not in vars(inpaint_pipe)  # the class's method again
    with pytest.raises(RuntimeError), latent_fill(inpaint_pipe, "latent_noise", mask):
        raise RuntimeError("job failed")
    assert "prepare_latents" not in vars(inpaint_pipe)
    with pytest.raises(JobError, match="not one of latent_noise, latent_nothing"), \
            latent_fill(inpaint_pipe, "noise", mask):
        pass


def test_latent_fill_leaves_ready_latents_alone(inpaint_pipe):
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(_prepare(inpaint_pipe, latents, np.full((64, 64), 255, np.uint8), "latent_nothing", [1]),
                       latents)


# -- through the engine ---------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sdxl"])
def test_each_fill_mode_starts_differently_and_keeps_the_outside(engine, files, model):
    results = {fill: run(engine, files, fill, model=model)[0]
               for fill in ("original", "fill", "latent_noise", "latent_nothing")}
    original, outside, inside = files["pixels"], files["outside"], files["inside"]
    for fill, result in results.items():
        assert np.array_equal(result[outside], original[outside]), fill
    modes = list(results)
    for i, first in enumerate(modes):
        for second in modes[i + 1:]:
            assert np.abs(results[first][inside].astype(int) - results[second][inside].astype(int)).mean() > 0.5, \
                (first, second)


@pytest.mark.parametrize("fill", ["latent_noise", "latent_nothing"])
def test_latent_fills_are_deterministic_per_seed(engine, files, fill):
    first = run(engine, files, fill, batch_size=2)
    again = run(engine, files, fill, batch_size=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], first[1])  # each image of the batch has its own seed
    assert not np.array_equal(first[0], run(engine, files, fill, seed=10)[0])


def test_at_full_strength_the_latent_fills_change_nothing(engine, files):
    # diffusers starts from pure noise at strength 1 and keeps the image latents only outside
    # the mask; the fill noise comes from its own generators, so the job's noise is the same.
    original = run(engine, files, "original", strength=1.0)[0]
    for fill in ("latent_noise", "latent_nothing"):
        assert np.array_equal(run(engine, files, fill, strength=1.0)[0], original), fill


@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sdxl"])
def test_latent_fill_with_only_masked_and_a_controlnet(engine, files, model):
    control = [{"model": model.replace("tiny-", "tiny-controlnet-"), "preprocessor": "canny"}]
    original, outside = files["pixels"], files["outside"]
    for fields in ({"inpaint": {"only_masked": True, "padding_px": 8}}, {"control": control}):
        noise = run(engine, files, "latent_noise", model=model, **fields)[0]
        plain = run(engine, files, "original", model=model, **fields)[0]
        assert np.array_equal(noise[outside], original[outside]), fields
        assert not np.array_equal(noise, plain), fields
        assert np.array_equal(noise, run(engine, files, "latent_noise", model=model, **fields)[0]), fields


def test_fill_modes_are_validated():
    job = {"model": "m", "image": "a.png", "mask": "b.png"}
    for fill in ("original", "fill", "latent_noise", "latent_nothing"):
        assert parse_job({**job, "inpaint": {"fill": fill}}).inpaint.fill == fill
    with pytest.raises(JobError, match="job.inpaint.fill: Input should be 'original', 'fill', 'latent_noise'"):
        parse_job({**job, "inpaint": {"fill": "latent noise"}})
