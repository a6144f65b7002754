"""canny: contract suite plus edges where a picture really has them."""

from __future__ import annotations

import numpy as np
import pytest

from ctrlgen.core.engine.preprocess import preprocess
from ctrlgen.core.errors import ParamError
from ctrlgen.testing.contracts import PreprocessorContract


class TestCannyContract(PreprocessorContract):
    preprocessor = "canny"


class TestCannyContractAtDetectResolution(PreprocessorContract):
    preprocessor = "canny"
    params = {"detect_resolution": 64, "invert": True}


def square(size=96, lo=24, hi=72):
    image = np.zeros((size, size, 3), np.uint8)
    image[lo:hi, lo:hi] = 255
    return image


def test_edges_lie_on_the_square_outline():
    edges = preprocess("canny", square()).image[:, :, 0] > 0
    ys, xs = np.nonzero(edges)
    assert len(ys) > 150
    # every edge pixel is within one pixel of the square's outline ...
    on_outline = (np.minimum(np.abs(ys - 24), np.abs(ys - 71)) <= 1) | (np.minimum(np.abs(xs - 24), np.abs(xs - 71)) <= 1)
    inside_box = (ys >= 22) & (ys <= 73) & (xs >= 22) & (xs <= 73)
    assert (on_outline & inside_box).all()
    # ... and each side of the outline is found
    for fixed in (24, 71):
        assert edges[fixed - 1 : fixed + 2, 30:66].any(axis=0).all()
        assert edges[30:66, fixed - 1 : fixed + 2].any(axis=1).all()


def test_invert_gives_black_edges_on_white():
    normal = preprocess("canny", square()).image
    inverted = preprocess("canny", square(), invert=True).image
    assert np.array_equal(inverted, 255 - normal)


def test_thresholds_control_how_much_is_an_edge():
    from skimage import data

    photo = data.astronaut()
    sensitive = (preprocess("canny", photo, low_threshold=20, high_threshold=60).image > 0).mean()
    strict = (preprocess("canny", photo, low_threshold=150, high_threshold=250).image > 0).mean()
    assert sensitive > 2 * strict > 0


def test_output_matches_opencv_directly():
    import cv2
    from skimage import data

    photo = data.astronaut()
    direct = cv2.Canny(photo, 100, 200)
    assert np.array_equal(preprocess("canny", photo).image[:, :, 0], direct)


def test_low_above_high_is_a_clear_error():
    with pytest.raises(ParamError, match="low_threshold=210 is above canny.high_threshold=200"):
        preprocess("canny", square(), low_threshold=210)
