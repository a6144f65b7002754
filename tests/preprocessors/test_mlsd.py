"""mlsd: the M-LSD network on tiny random weights in the real format (compared with
controlnet_aux's MLSDdetector and pred_lines on the same weights) and the weightless LSD
variant on shapes with known straight edges and on a photo."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctrlgen.core.engine.preprocess import preprocess
from ctrlgen.core.errors import ModelNotFoundError
from ctrlgen.testing.contracts import PreprocessorContract
from ctrlgen.testing.roots import annotator_downloads, using_model_roots

pytestmark = pytest.mark.usefixtures("torch_single_thread")
SMALL = {"detect_resolution": 64}
QUADRILATERAL = np.array([[40, 50], [200, 30], [230, 190], [90, 220]], np.float64)


@pytest.fixture(scope="module")
def mlsd_weight(annotator_root):
    from ctrlgen.testing import tiny_lines

    return tiny_lines.write_mlsd(annotator_downloads(annotator_root, "mlsd"))


@pytest.fixture(scope="module")
def tiny_store(annotator_root, mlsd_weight):
    with using_model_roots(str(annotator_root)):
        yield annotator_root


@pytest.fixture(scope="module")
def photo():
    """The astronaut at 128×64: a multiple of 64, so neither side resizes at detect_resolution 64."""
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut()[:256], (128, 64), interpolation=cv2.INTER_AREA)


def polygon(corners=QUADRILATERAL, inside=200, outside=40, size=256):
    """A filled, anti-aliased polygon with sub-pixel corners on a plain background."""
    import cv2

    image = np.full((size, size, 3), outside, np.uint8)
    cv2.fillPoly(image, [np.round(corners * 16).astype(np.int32)], (inside,) * 3, lineType=cv2.LINE_AA, shift=4)
    return image


def distance_to_segment(points, start, end):
    direction = end - start
    along = np.clip((points - start) @ direction / (direction @ direction), 0, 1)
    return np.linalg.norm(points - (start + along[:, None] * direction), axis=1)


def edges_of(corners):
    return [(corners[i], corners[(i + 1) % len(corners)]) for i in range(len(corners))]


def mlsd_network(path):
    import torch
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    network = MobileV2_MLSD_Large()
    network.load_state_dict(torch.load(path, weights_only=True))
    return network.eval()


@pytest.mark.usefixtures("tiny_store")
class TestMlsdContract(PreprocessorContract):
    preprocessor = "mlsd"
    params = SMALL


class TestLsdContract(PreprocessorContract):
    preprocessor = "mlsd_lsd"


class TestLsdContractAtDetectResolution(PreprocessorContract):
    preprocessor = "mlsd_lsd"
    params = {"detect_resolution": 64, "value_threshold": 0.05, "distance_threshold": 2.0}


@pytest.mark.usefixtures("tiny_store")
@pytest.mark.parametrize(("value", "distance"), [(0.1, 0.1), (0.81, 0.5), (0.83, 1.0)])
def test_mlsd_matches_controlnet_aux_on_the_same_weights(mlsd_weight, photo, value, distance):
    import torch
    from controlnet_aux.mlsd import MLSDdetector
    from controlnet_aux.mlsd.utils import pred_lines

    network = mlsd_network(mlsd_weight)
    expected = MLSDdetector(network)(photo, thr_v=value, thr_d=distance, detect_resolution=64,
                                     image_resolution=64, output_type="np")
    result = preprocess("mlsd", photo, value_threshold=value, distance_threshold=distance, **SMALL)
    assert np.array_equal(result.image, expected)
    with torch.no_grad():
        lines = pred_lines(photo, network, [64, 128], value, distance)
    assert len(result.data["lines"]) == len(lines) == len(result.data["scores"]) > 0
    assert np.allclose(result.data["lines"], lines, atol=0.006)  # same segments, same order


@pytest.mark.usefixtures("tiny_store")
def test_mlsd_lines_are_in_input_pixels(photo):
    small = preprocess("mlsd", photo, **SMALL).data["lines"]
    doubled = np.repeat(np.repeat(photo, 2, axis=0), 2, axis=1)  # shrinks back to photo exactly
    large = preprocess("mlsd", doubled, **SMALL).data["lines"]
    assert len(small) > 0 and np.allclose(np.array(large), 2 * np.array(small), atol=0.02)


def test_lsd_finds_each_straight_edge_of_a_polygon():
    result = preprocess("mlsd_lsd", polygon(), detect_resolution=0)
    lines = np.array(result.data["lines"])
    assert len(lines) == 4
    for start, end in edges_of(QUADRILATERAL):
        # the detected segment whose ends lie closest to this edge ...
        gaps = [max(distance_to_segment(line.reshape(2, 2), start, end)) for line in lines]
        line = lines[int(np.argmin(gaps))]
        assert min(gaps) < 1.5
        # ... runs parallel to it and covers nearly all of it
        angle = np.degrees(np.arctan2(*(line[2:] - line[:2])[::-1]) - np.arctan2(*(end - start)[::-1]))
        assert abs((angle + 90) % 180 - 90) < 1.0
        assert np.hypot(*(line[2:] - line[:2])) > 0.9 * np.hypot(*(end - start))
    assert np.allclose(result.data["scores"], 160 / 255, atol=0.02)  # the step across each edge


def test_lsd_map_draws_one_pixel_lines_on_the_edges():
    image = preprocess("mlsd_lsd", polygon(), detect_resolution=0).image
    assert set(np.unique(image)) == {0, 255}
    ys, xs = np.nonzero(image[:, :, 0])
    points = np.stack([xs, ys], axis=1).astype(float)
    nearest = np.min([distance_to_segment(points, s, e) for s, e in edges_of(QUADRILATERAL)], axis=0)
    assert nearest.max() < 2.0
    perimeter = sum(np.hypot(*(e - s)) for s, e in edges_of(QUADRILATERAL))
    assert 0.85 * perimeter < len(points) < 1.15 * perimeter  # one pixel wide


def test_lsd_lines_are_in_input_pixels_at_any_detect_resolution():
    lines = np.array(preprocess("mlsd_lsd", polygon(), detect_resolution=128).data["lines"])
    assert len(lines) == 4
    for start, end in edges_of(QUADRILATERAL):
        assert min(max(distance_to_segment(line.reshape(2, 2), start, end)) for line in lines) < 2.5


def test_lsd_value_threshold_is_the_contrast_across_a_segment():
    faint = polygon(inside=112, outside=100)  # a step of 12 grey levels = 0.047
    kept = preprocess("mlsd_lsd", faint, value_threshold=0.02, detect_resolution=0).data
    assert len(kept["lines"]) >= 4 and np.allclose(kept["scores"], 12 / 255, atol=0.015)
    assert preprocess("mlsd_lsd", faint, value_threshold=0.1, detect_resolution=0).data["lines"] == []


def test_lsd_distance_threshold_drops_short_segments():
    big = np.array([[60, 60], [180, 60], [180, 180], [60, 180]], np.float64)
    image = polygon(big)
    image[20:32, 20:32] = 200  # a 12 px square: its sides are ~11 px long
    assert len(preprocess("mlsd_lsd", image, distance_threshold=2.0, detect_resolution=0).data["lines"]) == 8
    # 10 units of M-LSD's half-resolution grid = 20 detector pixels: only the big square is left
    long_only = preprocess("mlsd_lsd", image, distance_threshold=10.0, detect_resolution=0).data["lines"]
    assert len(long_only) == 4 and all(np.hypot(x2 - x1, y2 - y1) > 100 for x1, y1, x2, y2 in long_only)


def test_lsd_on_a_photo_draws_on_its_edges(astronaut):
    import cv2

    result = preprocess("mlsd_lsd", astronaut)
    drawn = result.image[:, :, 0] > 0
    near_canny = cv2.dilate(cv2.Canny(astronaut, 100, 200), np.ones((5, 5), np.uint8)) > 0
    assert 100 < len(result.data["lines"]) < 3000
    assert (drawn & near_canny).sum() / drawn.sum() > 0.85
    json.dumps(result.data)  # hosts receive it as JSON
    strict = preprocess("mlsd_lsd", astronaut, value_threshold=0.3, distance_threshold=10.0)
    assert 0 < len(strict.data["lines"]) < len(result.data["lines"]) / 4


def test_missing_weight_is_a_clear_error(tmp_path, photo):
    with using_model_roots(str(tmp_path)), pytest.raises(ModelNotFoundError) as info:
        preprocess("mlsd", photo, **SMALL)
    assert "mlsd_large_512_fp32.pth" in str(info.value) and str(tmp_path) in str(info.value)


@pytest.mark.weights
def test_real_mlsd_matches_controlnet_aux(real_weight, astronaut):
    from controlnet_aux.mlsd import MLSDdetector

    from ctrlgen.preprocessors.lines.mlsd import MLSD_WEIGHT

    network = mlsd_network(real_weight(MLSD_WEIGHT))
    expected = MLSDdetector(network)(astronaut, detect_resolution=512, image_resolution=512, output_type="np")
    result = preprocess("mlsd", astronaut, detect_resolution=512)
    assert np.array_equal(result.image, expected)
    assert len(result.data["lines"]) > 10  # the real network finds the photo's straight edges
