"""shuffle: contract, upstream's algorithm pixel for pixel, and a real rearrangement of the picture."""

from __future__ import annotations

import numpy as np

from ctrlgen.core.engine.preprocess import preprocess
from ctrlgen.testing.contracts import PreprocessorContract


class TestShuffleContract(PreprocessorContract):
    preprocessor = "shuffle"
    params = {"detect_resolution": 64}


class TestShuffleContractUnseeded(PreprocessorContract):
    preprocessor = "shuffle"
    params = {"seed": -1, "detect_resolution": 64}
    deterministic = False


def test_matches_controlnet_aux_content_shuffle_for_the_same_seed(astronaut):
    from controlnet_aux.shuffle import ContentShuffleDetector

    photo = np.ascontiguousarray(astronaut[::4, ::2][:128, :192])  # 128×192: upstream does not resize it
    np.random.seed(7)
    expected = ContentShuffleDetector()(photo, detect_resolution=128, image_resolution=128, output_type="np")
    result = preprocess("shuffle", photo, seed=7, detect_resolution=128)
    assert result.data == {"seed": 7}
    assert np.array_equal(result.image, expected)


def test_same_seed_same_map_other_seed_other_map(astronaut):
    photo = astronaut[::4, ::4]
    first = preprocess("shuffle", photo, seed=3, detect_resolution=128).image
    assert np.array_equal(first, preprocess("shuffle", photo, seed=3, detect_resolution=128).image)
    assert not np.array_equal(first, preprocess("shuffle", photo, seed=4, detect_resolution=128).image)


def test_unseeded_run_reports_the_seed_that_reproduces_it(astronaut):
    photo = astronaut[::4, ::4]
    result = preprocess("shuffle", photo, seed=-1, detect_resolution=128)
    again = preprocess("shuffle", photo, seed=result.data["seed"], detect_resolution=128)
    assert np.array_equal(result.image, again.image)


def test_shuffled_map_keeps_the_colours_but_moves_them():
    # Four flat quadrants: every output pixel is one of the four colours (remap only moves
    # pixels, bilinear blends only at the borders), yet the layout is no longer the input's.
    image = np.zeros((128, 128, 3), np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    for index, colour in enumerate(colours):
        image[(index // 2) * 64 : (index // 2 + 1) * 64, (index % 2) * 64 : (index % 2 + 1) * 64] = colour
    result = preprocess("shuffle", image, seed=1, detect_resolution=0, cell_size=32).image
    pure = np.zeros(result.shape[:2], bool)
    for colour in colours:
        pure |= (result == colour).all(axis=2)
    assert pure.mean() > 0.9
    assert (result != image).any(axis=2).mean() > 0.3
