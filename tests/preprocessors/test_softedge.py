"""softedge (HED, PiDiNet, and their safe variants): real loading and inference code on tiny
random weights in the real file formats, compared with controlnet_aux's detectors on the same
weights; the real files, where present, in ``weights`` tests."""

from __future__ import annotations

import numpy as np
import pytest

from ctrlgen.core.engine.preprocess import preprocess
from ctrlgen.core.errors import ModelFormatError, ModelNotFoundError
from ctrlgen.core.models import annotators
from ctrlgen.testing.contracts import PreprocessorContract
from ctrlgen.testing.roots import annotator_downloads, using_model_roots

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SMALL = {"detect_resolution": 64}
UPSTREAM_SIZE = {"detect_resolution": 64, "image_resolution": 64, "output_type": "np"}


@pytest.fixture(scope="session")
def softedge_weights(annotator_root):
    from ctrlgen.testing import tiny_lines

    return {
        "hed": tiny_lines.write_hed(annotator_downloads(annotator_root, "hed")),
        "pidinet": tiny_lines.write_pidinet(annotator_downloads(annotator_root, "pidinet")),
    }


@pytest.fixture(scope="module")
def tiny_store(annotator_root, softedge_weights):
    """The store on the tiny weights for this module's tests (networks load once, not per test)."""
    with using_model_roots(str(annotator_root)):
        yield annotator_root


@pytest.fixture(scope="module")
def photo():
    """The astronaut at 128×64: a multiple of 64, so neither side resizes at detect_resolution 64."""
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut()[:256], (128, 64), interpolation=cv2.INTER_AREA)


def hed_detector(path):
    from controlnet_aux.hed import HEDdetector

    return HEDdetector.from_pretrained(str(path.parent), filename=path.name)


def pidinet_detector(path):
    from controlnet_aux.pidi import PidiNetDetector

    return PidiNetDetector.from_pretrained(str(path.parent), filename=path.name)


@pytest.mark.usefixtures("tiny_store")
class TestHedContract(PreprocessorContract):
    preprocessor = "softedge_hed"
    params = SMALL


@pytest.mark.usefixtures("tiny_store")
class TestHedSafeContract(PreprocessorContract):
    preprocessor = "softedge_hed_safe"
    params = SMALL


@pytest.mark.usefixtures("tiny_store")
class TestPidinetContract(PreprocessorContract):
    preprocessor = "softedge_pidinet"
    params = SMALL


@pytest.mark.usefixtures("tiny_store")
class TestPidinetSafeContract(PreprocessorContract):
    preprocessor = "softedge_pidinet_safe"
    params = SMALL


@pytest.mark.usefixtures("tiny_store")
@pytest.mark.parametrize(("name", "network", "safe"), [
    ("softedge_hed", "hed", False),
    ("softedge_hed_safe", "hed", True),
    ("softedge_pidinet", "pidinet", False),
    ("softedge_pidinet_safe", "pidinet", True),
])
def test_matches_controlnet_aux_on_the_same_weights(softedge_weights, photo, name, network, safe):
    detector = (hed_detector if network == "hed" else pidinet_detector)(softedge_weights[network])
    expected = detector(photo, safe=safe, **UPSTREAM_SIZE)
    ours = preprocess(name, photo, **SMALL).image
    assert np.array_equal(ours, expected)
    assert len(np.unique(ours)) > (2 if safe else 20)  # the tiny weights give a varied map


@pytest.mark.usefixtures("tiny_store")
def test_safe_quantises_to_a_few_levels(photo):
    soft = preprocess("softedge_hed", photo, **SMALL).image
    safe = preprocess("softedge_hed_safe", photo, **SMALL).image
    # safe_step maps [0, 1] to {0, .5, 1, 1.5} (clipped): at most 0, 127 and 255.
    assert set(np.unique(safe)) <= {0, 127, 255}
    assert np.array_equal(safe == 255, soft >= 170)  # floor(3x) >= 2 <=> x >= 2/3 (to a level)


@pytest.mark.usefixtures("tiny_store")
def test_output_is_at_the_input_size_whatever_the_detector_size(photo):
    import cv2

    image = cv2.resize(photo, (200, 128))
    result = preprocess("softedge_pidinet", image, detect_resolution=64).image
    assert result.shape == (128, 200, 3)


@pytest.mark.usefixtures("tiny_store")
def test_variants_share_one_network_and_unload_frees_it(photo):
    from ctrlgen.core.plugins.manager import get_registry

    preprocess("softedge_hed", photo, **SMALL)
    preprocess("softedge_hed_safe", photo, **SMALL)
    preprocess("scribble_hed", photo, **SMALL)
    assert {owner for owner in annotators.LOADED.owners() if "ControlNetHED" in owner} == {
        "lines:ControlNetHED.pth"
    }
    get_registry("preprocessors").get("softedge_hed_safe").unload()
    assert not any("ControlNetHED" in owner for owner in annotators.LOADED.owners())


def test_missing_weight_names_the_file_the_folders_and_the_source(tmp_path, photo):
    with using_model_roots(str(tmp_path)), pytest.raises(ModelNotFoundError) as info:
        preprocess("softedge_pidinet", photo, **SMALL)
    message = str(info.value)
    assert "softedge_pidinet" in message and "table5_pidinet.pth" in message
    assert str(tmp_path) in message and "lllyasviel/Annotators" in message


def test_a_file_of_the_wrong_network_is_a_clear_error(tmp_path, photo, softedge_weights):
    import shutil

    shutil.copy(softedge_weights["pidinet"], annotator_downloads(tmp_path, "hed") / "ControlNetHED.pth")
    with using_model_roots(str(tmp_path)), pytest.raises(ModelFormatError) as info:
        preprocess("softedge_hed", photo, **SMALL)
    message = str(info.value)
    assert "softedge_hed" in message and "ControlNetHED.pth is not the ControlNetHED.pth it needs" in message
    assert "lllyasviel/Annotators" in message and "37 missing tensors, e.g. norm, block1.convs.0.weight" in message


@pytest.mark.weights
@pytest.mark.parametrize(("name", "safe"), [("softedge_hed", False), ("softedge_hed_safe", True)])
def test_real_hed_matches_controlnet_aux(real_weight, astronaut, name, safe):
    from ctrlgen.preprocessors.lines.softedge_networks import HED_WEIGHT

    expected = hed_detector(real_weight(HED_WEIGHT))(astronaut, safe=safe, detect_resolution=512,
                                                     image_resolution=512, output_type="np")
    assert np.array_equal(preprocess(name, astronaut, detect_resolution=512).image, expected)


@pytest.mark.weights
@pytest.mark.parametrize(("name", "safe"), [("softedge_pidinet", False), ("softedge_pidinet_safe", True)])
def test_real_pidinet_matches_controlnet_aux(real_weight, astronaut, name, safe):
    from ctrlgen.preprocessors.lines.softedge_networks import PIDINET_WEIGHT

    expected = pidinet_detector(real_weight(PIDINET_WEIGHT))(astronaut, safe=safe, detect_resolution=512,
                                                             image_resolution=512, output_type="np")
    assert np.array_equal(preprocess(name, astronaut, detect_resolution=512).image, expected)
