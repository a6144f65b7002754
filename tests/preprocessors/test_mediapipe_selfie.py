"""mediapipe_selfie: contract, and the astronaut (a real photo) split into person and background."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctrlgen.core.engine.preprocess import preprocess
from ctrlgen.testing.contracts import PreprocessorContract


class TestMediapipeSelfieContract(PreprocessorContract):
    preprocessor = "mediapipe_selfie"
    params = {"detect_resolution": 128}


class TestMediapipeSelfieSoftContract(PreprocessorContract):
    preprocessor = "mediapipe_selfie"
    params = {"threshold": 0.0, "model_selection": 1, "detect_resolution": 0}


@pytest.mark.parametrize("model_selection", [0, 1])
def test_astronaut_is_white_and_the_plain_background_black(astronaut, model_selection):
    result = preprocess("mediapipe_selfie", astronaut, model_selection=model_selection)
    json.dumps(result.data)
    person = result.image[:, :, 0] > 127
    assert set(np.unique(result.image)) <= {0, 255}
    # the face, the suit's chest and the left shoulder are the person ...
    for y, x in [(120, 225), (300, 200), (430, 100), (480, 250)]:
        assert person[y - 8 : y + 8, x - 8 : x + 8].all(), (y, x)
    # ... the dark sky in the top-left corner and the plain wall on the right are not
    for y0, x0 in [(0, 0), (0, 440), (200, 440)]:
        assert not person[y0 : y0 + 40, x0 : x0 + 40].any(), (y0, x0)
    assert 0.3 < result.data["person_fraction"] < 0.75
    x0, y0, x1, y1 = result.data["person_bbox"]
    assert x0 < 60 and y0 < 60 and y1 == 512


def test_matches_mediapipe_directly_at_native_size(astronaut):
    import mediapipe as mp

    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as segmenter:
        probability = segmenter.process(astronaut).segmentation_mask
    expected = (probability > 0.5).astype(np.uint8) * 255
    result = preprocess("mediapipe_selfie", astronaut, detect_resolution=0)
    assert np.array_equal(result.image[:, :, 0], expected)


def test_threshold_zero_gives_the_soft_probability(astronaut):
    soft = preprocess("mediapipe_selfie", astronaut, threshold=0.0).image[:, :, 0]
    hard = preprocess("mediapipe_selfie", astronaut, threshold=0.5).image[:, :, 0]
    assert len(np.unique(soft)) > 20
    assert np.array_equal(soft > 127, hard > 0) or (np.logical_xor(soft > 127, hard > 0).mean() < 0.002)


def test_a_higher_threshold_selects_less(astronaut):
    loose = preprocess("mediapipe_selfie", astronaut, threshold=0.1).data["person_fraction"]
    strict = preprocess("mediapipe_selfie", astronaut, threshold=0.95).data["person_fraction"]
    assert loose >= strict
