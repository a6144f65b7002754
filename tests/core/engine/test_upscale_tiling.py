"""Tiled denoising (core/engine/tiling.py): the grid, the seam check on the tiny model's UNet, the
restoring of what it patches, and the tiled VAE's settings."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ctrlgen.core.engine import tiling

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.mark.parametrize(("height", "width", "tile", "overlap"),
                         [(64, 96, 32, 8), (100, 37, 32, 8), (32, 32, 32, 8), (20, 300, 64, 16), (512, 512, 64, 8)])
def test_the_grid_covers_the_canvas_with_at_least_the_overlap(height, width, tile, overlap):
    grid = tiling.tile_grid(height, width, tile, overlap)
    covered = np.zeros((height, width), int)
    for t in grid:
        assert t.height == min(tile, height) and t.width == min(tile, width)
        assert t.top >= 0 and t.left >= 0 and t.top + t.height <= height and t.left + t.width <= width
        covered[t.top: t.top + t.height, t.left: t.left + t.width] += 1
    assert covered.min() >= 1
    lefts = sorted({t.left for t in grid})
    for a, b in zip(lefts, lefts[1:], strict=False):  # neighbours share at least `overlap` columns
        assert a + min(tile, width) - b >= overlap


def test_a_tile_must_be_larger_than_its_overlap():
    with pytest.raises(ValueError, match="larger than its overlap"):
        tiling.tile_grid(64, 64, 8, 8)


@pytest.fixture(scope="module")
def unet(tiny_sd15):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_sd15.pipeline_dir, subfolder="unet").eval()


def _smooth_latents(height: int, width: int):
    import torch

    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    return torch.stack([torch.sin(3 * x + 1), torch.cos(2 * y), x * y, torch.sin(2 * (x + y))])[None]


def _seam_and_interior(prediction: np.ndarray, grid, axis: int) -> tuple[float, float]:
    """Mean absolute difference between neighbouring latent pixels across the tiles' edges, and
    everywhere else; ``axis`` 2 looks across vertical edges, 1 across horizontal ones."""
    size = prediction.shape[axis]
    step = np.abs(np.diff(prediction, axis=axis)).mean(axis=tuple(a for a in range(3) if a != axis))
    edges = set()
    for t in grid:
        start, length = (t.left, t.width) if axis == 2 else (t.top, t.height)
        edges |= {e for e in (start, start + length) if 0 < e < size}
    at_edges = np.array([step[e - 1] for e in sorted(edges)])
    inside = np.delete(step, [e - 1 for e in edges])
    return float(at_edges.mean()), float(inside.mean())


@pytest.mark.parametrize(("blend", "seamless"), [("gaussian", True), ("none", False)])
def test_the_seam_check_blended_tiles_have_no_seams_plain_tiles_do(unet, blend, seamless):
    """On a smooth latent canvas the tiny UNet's prediction is smooth inside a tile; at a tile's
    edge it sees zero padding instead of the neighbour. Blended, the prediction that drives
    every step is as smooth across the tiles' edges as inside them; plain tiling puts the
    edge artefacts side by side, and the step across each edge is larger than inside."""
    import torch

    height, width, tile, overlap = 64, 96, 32, 8
    sample = _smooth_latents(height, width)
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(0))
    view = SimpleNamespace(unet=unet)
    with torch.no_grad(), tiling.tiled_denoising(view, tile, overlap, blend) as tiler:
        prediction = unet(sample, 500, text).sample[0].numpy()
    grid = tiling.tile_grid(height, width, tile, 0 if blend == "none" else overlap)
    assert tiler.calls == len(grid) > 1
    for axis in (1, 2):
        seam, inside = _seam_and_interior(prediction, grid, axis)
        if seamless:
            assert seam <= inside, (axis, seam, inside)
        else:
            assert seam > 1.3 * inside, (axis, seam, inside)


def test_the_unet_sees_only_tiles_and_gets_its_own_forward_back(unet):
    import torch

    seen = []  # what the UNet's first layer gets
    hook = unet.conv_in.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    view = SimpleNamespace(unet=unet)
    try:
        with torch.no_grad(), tiling.tiled_denoising(view, 32, 8, "gaussian"):
            blended = unet(_smooth_latents(40, 72), 500, torch.zeros(1, 77, 32)).sample
    finally:
        hook.remove()
    assert blended.shape == (1, 4, 40, 72)
    assert set(seen) == {(32, 32)} and len(seen) == len(tiling.tile_grid(40, 72, 32, 8))
    assert "forward" not in unet.__dict__  # the class's forward again


def test_the_sdxl_size_conditioning_says_the_tiles_size():
    import torch

    ids = torch.tensor([[1024.0, 2048.0, 0.0, 0.0, 1024.0, 2048.0]])
    tile = tiling.Tile(0, 0, 64, 32)
    assert tiling._tile_time_ids(ids, (128, 256), tile).tolist() == [[512.0, 256.0, 0.0, 0.0, 512.0, 256.0]]


def test_the_tiled_vae_uses_the_tile_and_puts_the_settings_back(tiny_sd15):
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_sd15.pipeline_dir, subfolder="vae").eval()
    before = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor)
    seen = []
    hook = vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    try:
        with torch.no_grad(), tiling.tiled_vae(vae, 128, 32):
            image = vae.decode(torch.randn(1, 4, 40, 56)).sample
    finally:
        hook.remove()
    assert image.shape == (1, 3, 320, 448)
    assert max(max(shape) for shape in seen) == 16 and len(seen) > 1  # 128-pixel tiles: 16 latent pixels
    assert (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor) == before
