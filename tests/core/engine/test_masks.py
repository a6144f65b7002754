"""Mask operations for inpainting."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctrlgen.core.engine.masks import Region, composite, feather, fill, grow, masked_region, prepare_mask
from ctrlgen.core.errors import ImageError


def disc(size=64, radius=10, centre=(32, 32)):
    yy, xx = np.mgrid[0:size, 0:size]
    return (((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) <= radius**2).astype(np.uint8) * 255


def test_grow_and_shrink_change_the_radius():
    base = disc(radius=10)
    grown, shrunk = grow(base, 4), grow(base, -4)
    expected_area = int((disc(radius=14) > 0).sum())
    assert abs(int((grown > 0).sum()) - expected_area) / expected_area < 0.05
    assert (shrunk > 0).sum() < (base > 0).sum() < (grown > 0).sum()
    assert ((shrunk > 0) <= (base > 0)).all() and ((base > 0) <= (grown > 0)).all()
    assert np.array_equal(grow(base, 0), base)


def test_shrinking_keeps_masks_touching_the_border():
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :10] = 255
    assert grow(mask, -3)[:, 0].all()  # the image edge is not a mask edge


def test_prepare_binarises_and_inverts():
    soft = np.array([[0, 127, 128, 255]], np.uint8)
    assert prepare_mask(soft).tolist() == [[0, 0, 255, 255]]
    assert prepare_mask(soft, invert=True).tolist() == [[255, 255, 0, 0]]


def test_feather_is_soft_only_near_the_edge():
    alpha = feather(disc(radius=10), 6)
    assert alpha[32, 32] > 0.99 and alpha[0, 0] == 0.0
    ring = alpha[32, 42:48]
    assert (np.diff(ring) < 0).all() and 0 < ring[-1] < ring[0] < 1
    assert np.array_equal(feather(disc(), 0), disc() / 255.0)


def test_fill_replaces_only_masked_pixels_with_surrounding_colour():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:] = (200, 40, 40)
    image[28:36, 28:36] = (0, 255, 0)
    mask = np.zeros((64, 64), np.uint8)
    mask[26:38, 26:38] = 255
    filled = fill(image, mask)
    assert np.array_equal(filled[mask == 0], image[mask == 0])
    assert np.abs(filled[32, 32].astype(int) - (200, 40, 40)).max() < 20


def test_region_pads_fits_aspect_and_clamps():
    mask = np.zeros((100, 200), np.uint8)
    mask[40:50, 90:100] = 255
    region = masked_region(mask, padding=5)
    assert (region.x0, region.y0, region.x1, region.y1) == (85, 35, 105, 55)
    wide = masked_region(mask, padding=5, aspect=2.0)
    assert wide.width == 2 * wide.height == 40 and wide.x0 <= 85 and wide.x1 >= 105
    corner = np.zeros((100, 200), np.uint8)
    corner[0:4, 0:4] = 255
    clamped = masked_region(corner, padding=10, aspect=1.0)
    assert (clamped.x0, clamped.y0) == (0, 0) and clamped.width == clamped.height == 14
    with pytest.raises(ImageError, match="the mask is empty"):
        masked_region(np.zeros((8, 8), np.uint8), 4)


@given(st.integers(0, 40), st.integers(0, 40), st.integers(1, 20), st.integers(1, 20), st.integers(0, 12),
       st.floats(0, 8))
@settings(max_examples=60, deadline=None)
def test_composite_leaves_pixels_outside_the_feathered_mask_bit_identical(x, y, w, h, padding, blur):
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[y : y + h, x : x + w] = 255
    alpha = feather(mask, blur)
    region = masked_region(mask, padding)
    generated = rng.integers(0, 256, (region.height, region.width, 3), dtype=np.uint8)
    result = composite(original, generated, alpha, region)
    outside = alpha == 0
    assert np.array_equal(result[outside], original[outside])
    full = alpha == 1.0
    local = np.zeros_like(original)
    local[region.y0 : region.y1, region.x0 : region.x1] = generated
    assert np.array_equal(result[full], local[full])


def test_composite_checks_the_patch_size():
    with pytest.raises(ImageError, match="region is 4×4"):
        composite(np.zeros((8, 8, 3), np.uint8), np.zeros((3, 3, 3), np.uint8), np.ones((8, 8), np.float32),
                  Region(0, 0, 4, 4))
