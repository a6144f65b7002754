"""Regions in the enlarged passes: hires fix's second pass gets the masks resized to its size, and
the upscale task's tiled refine crops them per tile; measured on the attention weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from test_regions_attention import Recorder as AttentionRecorder

from ctrlgen.core.engine.jobs import parse_job

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _mask(path, box, size=(64, 64)):
    mask = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    Image.fromarray(mask).save(path)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from ctrlgen.testing.contracts import contract_image

    folder = tmp_path_factory.mktemp("regions-enlarged")
    image = folder / "picture.png"
    Image.fromarray(contract_image(64, 64)).save(image)
    return {"image": str(image), "left": _mask(folder / "left.png", (0, 0, 32, 64)),
            "corner": _mask(folder / "corner.png", (0, 0, 16, 16))}


@pytest.fixture(scope="module")
def engine(tiny_model_root):
    from ctrlgen.core.engine.engine import Engine
    from ctrlgen.core.models.store import ModelStore
    from ctrlgen.core.plugins.specs import ModelRoot

    return Engine(store=ModelStore([ModelRoot(tiny_model_root.root)]), device="cpu")


class Recorder(AttentionRecorder):
    """test_regions_attention's recorder, each record also saying which tile ran (None: untiled)."""

    def record(self, probs):
        from ctrlgen.core.engine.tiling import current_tile

        active = current_tile()
        self.records.append((None if active is None else active[0], probs))


def region_mass(probs):
    """The region block's share of each query pixel's attention (root first, one region): (b·h, side, side)."""
    side = math.isqrt(probs.shape[1])
    tokens = probs.shape[-1]
    return probs.reshape(probs.shape[0], side, side, 2, tokens // 2).sum(-1)[..., 1]


def base_unet(engine, job):
    return engine.load_pipeline(engine.resolve_checkpoint(job)).unet


def test_hires_second_pass_sees_the_region_mask_resized(engine, files):
    job = parse_job({"model": "tiny-sd15", "prompt": "a painting", "seed": 5, "steps": 2, "width": 64, "height": 64,
                     "hires": {"scale": 2, "upscaler": "lanczos", "steps": 2, "denoise": 0.5},
                     "adapters": [{"type": "region", "mask": files["left"], "prompt": "a red apple",
                                   "feather_px": 0}]})
    with Recorder(base_unet(engine, job)) as recorder:
        result = engine.run(job)
    assert result.images[0].size == (128, 128)
    second = [probs for _, probs in recorder.records if probs.shape[1] == 16 * 16]  # the 128² pass's top level
    assert second
    for probs in second:
        mass = region_mass(probs)
        assert float(mass[:, :, 9:].abs().max()) == 0.0  # right of the resized mask: never
        assert float(mass[:, :, :7].min()) > 0.0  # under it: always some


def test_upscale_tiles_crop_the_mask_and_a_tile_outside_uses_the_root_prompt(engine, files):
    job = parse_job({"task": "upscale", "model": "tiny-sd15", "image": files["image"], "prompt": "a painting",
                     "seed": 5, "steps": 2,
                     "upscale": {"scale": 3, "tile_size": 128, "overlap": 32, "denoise": 0.5},
                     "adapters": [{"type": "region", "mask": files["corner"], "prompt": "a red apple",
                                   "feather_px": 0}]})
    with Recorder(base_unet(engine, job)) as recorder:
        result = engine.run(job)
    assert result.images[0].size == (192, 192)
    tiles = {tile for tile, _ in recorder.records}
    assert None not in tiles and len(tiles) == 4  # 24² latent, 16² tiles at 0 and 8
    for tile, probs in recorder.records:
        if probs.shape[1] != 16 * 16:
            continue
        mass = region_mass(probs)
        if (tile.top, tile.left) == (0, 0):  # the mask (48 px = 6 latent px) cropped to this tile
            assert float(mass[:, :5, :5].min()) > 0.0
            assert float(mass[:, 7:, :].abs().max()) == 0.0 and float(mass[:, :, 7:].abs().max()) == 0.0
        else:  # outside the region: the root prompt alone
            assert float(mass.abs().max()) == 0.0, tile


def test_a_regions_controlnet_follows_hires_and_the_tiles(engine, files, monkeypatch):
    """The region's ControlNet map is fitted to the hires pass's size, and in the tiled refine each
    tile runs it on its part of the map with its part of the mask (zero outside the region)."""
    from ctrlgen.adapters.regions.control import RegionControl

    calls = []
    residuals = RegionControl._residuals

    def recording(self, sample, timestep, states, images, *args, window=None, **kwargs):
        down, mid = residuals(self, sample, timestep, states, images, *args, window=window, **kwargs)
        tile = None if window is None else window[0]
        calls.append((tile, tuple(images[0].shape[-2:]), float(mid.abs().max())))
        return down, mid

    monkeypatch.setattr(RegionControl, "_residuals", recording)
    unit = {"model": "tiny-controlnet-sd15", "preprocessor": "canny", "image": files["image"]}
    use = {"type": "region", "mask": files["corner"], "prompt": "a red apple", "feather_px": 0, "control": [unit]}
    engine.run(parse_job({"model": "tiny-sd15", "prompt": "a painting", "seed": 5, "steps": 2, "width": 64,
                          "height": 64, "hires": {"scale": 2, "upscaler": "lanczos", "steps": 2, "denoise": 0.5},
                          "adapters": [use]}))
    assert {size for _, size, _ in calls} == {(64, 64), (128, 128)}  # each pass's own size
    calls.clear()
    engine.run(parse_job({"task": "upscale", "model": "tiny-sd15", "image": files["image"], "prompt": "a painting",
                          "seed": 5, "steps": 2, "upscale": {"scale": 3, "tile_size": 128, "overlap": 32,
                                                             "denoise": 0.5}, "adapters": [use]}))
    assert len(calls) == 4 and {size for _, size, _ in calls} == {(128, 128)}
    for tile, _, strength in calls:
        assert (strength > 0) == ((tile.top, tile.left) == (0, 0)), (tile, strength)
