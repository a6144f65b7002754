"""scribble: HED/PiDiNet strokes (tiny random weights in the real formats, compared with
controlnet_aux's ``scribble=True`` on the same weights) and the weightless XDoG on drawings
and photos."""

from __future__ import annotations

import numpy as np
import pytest

from ctrlgen.core.engine.preprocess import preprocess
from ctrlgen.core.errors import ModelNotFoundError
from ctrlgen.testing.contracts import PreprocessorContract
from ctrlgen.testing.roots import annotator_downloads, using_model_roots

pytestmark = pytest.mark.usefixtures("torch_single_thread")
SMALL = {"detect_resolution": 64}
UPSTREAM_SIZE = {"detect_resolution": 64, "image_resolution": 64, "output_type": "np", "scribble": True}


@pytest.fixture(scope="module")
def edge_weights(annotator_root):
    from ctrlgen.testing import tiny_lines

    return {
        "hed": tiny_lines.write_hed(annotator_downloads(annotator_root, "hed")),
        "pidinet": tiny_lines.write_pidinet(annotator_downloads(annotator_root, "pidinet")),
    }


@pytest.fixture(scope="module")
def tiny_store(annotator_root, edge_weights):
    with using_model_roots(str(annotator_root)):
        yield annotator_root


@pytest.fixture(scope="module")
def photo():
    """The astronaut at 128×64: a multiple of 64, so neither side resizes at detect_resolution 64."""
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut()[:256], (128, 64), interpolation=cv2.INTER_AREA)


def drawing(size=128):
    """Black pen lines on white paper: a square outline and a diagonal, 2 px wide."""
    import cv2

    image = np.full((size, size, 3), 255, np.uint8)
    cv2.rectangle(image, (30, 30), (97, 97), (0, 0, 0), 2)
    cv2.line(image, (10, 120), (120, 10), (0, 0, 0), 2)
    return image


def upstream_detector(network, path):
    from controlnet_aux.hed import HEDdetector
    from controlnet_aux.pidi import PidiNetDetector

    detector = HEDdetector if network == "hed" else PidiNetDetector
    return detector.from_pretrained(str(path.parent), filename=path.name)


@pytest.mark.usefixtures("tiny_store")
class TestScribbleHedContract(PreprocessorContract):
    preprocessor = "scribble_hed"
    params = SMALL


@pytest.mark.usefixtures("tiny_store")
class TestScribblePidinetContract(PreprocessorContract):
    preprocessor = "scribble_pidinet"
    params = {**SMALL, "safe": True}


class TestScribbleXdogContract(PreprocessorContract):
    preprocessor = "scribble_xdog"


class TestScribbleXdogContractAtDetectResolution(PreprocessorContract):
    preprocessor = "scribble_xdog"
    params = {"detect_resolution": 64, "threshold": 8}


@pytest.mark.usefixtures("tiny_store")
@pytest.mark.parametrize("safe", [False, True])
@pytest.mark.parametrize("network", ["hed", "pidinet"])
def test_matches_controlnet_aux_scribble_on_the_same_weights(edge_weights, photo, network, safe):
    expected = upstream_detector(network, edge_weights[network])(photo, safe=safe, **UPSTREAM_SIZE)
    ours = preprocess(f"scribble_{network}", photo, safe=safe, **SMALL).image
    assert np.array_equal(ours, expected)
    assert 0 < (ours == 255).mean() < 1


@pytest.mark.usefixtures("tiny_store")
@pytest.mark.parametrize("name", ["scribble_hed", "scribble_pidinet", "scribble_xdog"])
def test_strokes_stay_binary_when_resized_back(photo, name):
    import cv2

    image = cv2.resize(photo, (200, 130))
    result = preprocess(name, image, detect_resolution=64).image
    assert result.shape == (130, 200, 3)
    assert set(np.unique(result)) <= {0, 255}


def test_xdog_strokes_are_the_pen_lines():
    image = drawing()
    strokes = preprocess("scribble_xdog", image, detect_resolution=0).image[:, :, 0] == 255
    pen = image[:, :, 0] < 128
    assert np.array_equal(strokes, pen)


def test_xdog_threshold_keeps_fainter_edges_when_lower(astronaut):
    import cv2

    canny = cv2.dilate(cv2.Canny(astronaut, 100, 200), np.ones((7, 7), np.uint8)) > 0
    counts = []
    for threshold in (8, 32, 64):
        strokes = preprocess("scribble_xdog", astronaut, threshold=threshold, detect_resolution=0).image[..., 0] > 0
        counts.append(strokes.mean())
        assert (strokes & canny).sum() / strokes.sum() > 0.7  # strokes follow the photo's edges
    assert counts[0] > counts[1] > counts[2] > 0.01


def test_xdog_is_sd_webui_controlnets_formula_without_its_uint8_wrap(astronaut):
    import cv2

    threshold = 32
    pixels = astronaut.astype(np.float32)
    dog = (255 - np.min(cv2.GaussianBlur(pixels, (0, 0), 5.0) - cv2.GaussianBlur(pixels, (0, 0), 0.5),
                        axis=2)).clip(0, 255).astype(np.uint8)
    upstream = np.where(2 * (255 - dog) > threshold, 255, 0)  # uint8 arithmetic, as upstream
    ours = preprocess("scribble_xdog", astronaut, threshold=threshold, detect_resolution=0).image[..., 0]
    wrapped = (255 - dog.astype(int)) >= 128  # where 2 * strength overflows uint8 upstream
    assert np.array_equal(ours[~wrapped], upstream[~wrapped])
    assert (ours[wrapped] == 255).all()


def test_missing_weight_is_a_clear_error(tmp_path, photo):
    with using_model_roots(str(tmp_path)), pytest.raises(ModelNotFoundError, match="ControlNetHED.pth"):
        preprocess("scribble_hed", photo, **SMALL)


@pytest.mark.weights
@pytest.mark.parametrize("network", ["hed", "pidinet"])
def test_real_scribble_matches_controlnet_aux(real_weight, astronaut, network):
    from ctrlgen.preprocessors.lines.softedge_networks import HED_WEIGHT, PIDINET_WEIGHT

    path = real_weight(HED_WEIGHT if network == "hed" else PIDINET_WEIGHT)
    expected = upstream_detector(network, path)(astronaut, detect_resolution=512, image_resolution=512,
                                                output_type="np", scribble=True)
    assert np.array_equal(preprocess(f"scribble_{network}", astronaut, detect_resolution=512).image, expected)
