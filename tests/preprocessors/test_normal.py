"""Normal maps (BAE, MiDaS): ctrlgen's real loading and inference code on random weights in the
real file formats, compared with controlnet_aux's detectors loaded by their own
``from_pretrained`` from the same files; the real files, where present, in ``weights`` tests."""

from __future__ import annotations

import numpy as np
import pytest

from ctrlgen.core.engine.preprocess import preprocess
from ctrlgen.core.errors import ModelNotFoundError, ParamError
from ctrlgen.core.models import annotators
from ctrlgen.preprocessors.depth import networks as _depth
from ctrlgen.testing import tiny_depth as _depth_tiny
from ctrlgen.testing.contracts import PreprocessorContract
from ctrlgen.testing.roots import annotator_downloads, using_model_roots

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SMALL = {"detect_resolution": 64}
UPSTREAM = {"detect_resolution": 64, "image_resolution": 64, "output_type": "np"}


@pytest.fixture(scope="session")
def normal_files(annotator_root):
    files = {
        "bae": _depth_tiny.write_normal_bae(annotator_downloads(annotator_root, "normal_bae")),
        "midas": _depth_tiny.write_midas(annotator_downloads(annotator_root, "midas")),
    }
    annotators.reset_default_store()  # a store that scanned before would not see them
    return files


@pytest.fixture(scope="module")
def store(annotator_root, normal_files):
    """The model store on ``annotator_root`` for the whole module, so networks load once."""
    with using_model_roots(str(annotator_root)):
        yield annotator_root


@pytest.fixture(scope="module")
def photo():
    """The astronaut at 128×64: multiples of 64, so nothing resizes at detect_resolution 64."""
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut()[:256], (128, 64), interpolation=cv2.INTER_AREA)


@pytest.mark.usefixtures("store")
class TestNormalBaeContract(PreprocessorContract):
    preprocessor = "normal_bae"
    params = SMALL


@pytest.mark.usefixtures("store")
class TestNormalMidasContract(PreprocessorContract):
    preprocessor = "normal_midas"
    params = {**SMALL, "bg_threshold": 0.2}


@pytest.mark.usefixtures("store")
def test_normal_bae_matches_controlnet_aux(normal_files, photo):
    from controlnet_aux.normalbae import NormalBaeDetector

    path = normal_files["bae"]
    expected = NormalBaeDetector.from_pretrained(str(path.parent), filename=path.name)(photo, **UPSTREAM)
    ours = preprocess("normal_bae", photo, **SMALL).image
    assert np.array_equal(ours, expected)
    assert len(np.unique(ours.reshape(-1, 3), axis=0)) > 100  # the tiny weights give a varied map


@pytest.mark.usefixtures("store")
def test_normal_bae_pixels_are_unit_normals(photo):
    """The network ends in a normalisation, so every pixel decodes to a unit vector ``2c/255 - 1``."""
    normal = preprocess("normal_bae", photo, **SMALL).image.astype(np.float64) / 255.0 * 2.0 - 1.0
    length = np.linalg.norm(normal, axis=2)
    assert np.abs(length - 1.0).max() < 0.02


@pytest.fixture(scope="module")
def upstream_midas(normal_files):
    from controlnet_aux.midas import MidasDetector

    path = normal_files["midas"]
    return MidasDetector.from_pretrained(str(path.parent), filename=path.name)


@pytest.mark.usefixtures("store")
@pytest.mark.parametrize(("a", "bg_threshold"), [(2 * np.pi, 0.4), (1.0, 0.05)])
def test_normal_midas_matches_controlnet_aux(upstream_midas, photo, a, bg_threshold):
    _, expected = upstream_midas(photo, a=a, bg_th=bg_threshold, depth_and_normal=True, **UPSTREAM)
    ours = preprocess("normal_midas", photo, a=a, bg_threshold=bg_threshold, **SMALL).image
    assert np.array_equal(ours, expected)
    assert len(np.unique(ours.reshape(-1, 3), axis=0)) > 20


@pytest.mark.usefixtures("store")
def test_normal_midas_background_faces_the_camera(photo):
    """Below the threshold the depth gradient is dropped: the normal is (0, 0, 1), drawn in BGR."""
    depth = preprocess("depth_midas", photo, **SMALL).image[:, :, 0]
    normal = preprocess("normal_midas", photo, bg_threshold=0.5, **SMALL).image
    background = depth < 0.5 * 255 - 1  # clear of rounding at the threshold
    assert background.any() and not background.all()
    assert (normal[background] == (255, 127, 127)).all()
    everything = preprocess("normal_midas", photo, bg_threshold=1.0, **SMALL).image
    assert ((everything == (255, 127, 127)).all(axis=2)).mean() > 0.99  # all but the nearest pixel


@pytest.mark.usefixtures("store")
def test_normal_midas_flatness_makes_normals_face_the_camera(photo):
    steep = preprocess("normal_midas", photo, a=0.5, bg_threshold=0.0, **SMALL).image.astype(int)
    flat = preprocess("normal_midas", photo, a=5 * np.pi, bg_threshold=0.0, **SMALL).image.astype(int)
    # z (drawn in the red channel) grows with a; x and y shrink towards the middle grey
    assert flat[:, :, 0].mean() > steep[:, :, 0].mean()
    assert np.abs(flat[:, :, 1:] - 127.5).mean() < np.abs(steep[:, :, 1:] - 127.5).mean()


def test_normal_midas_params_match_sd_webui_controlnet():
    from ctrlgen.core.plugins.manager import get_registry

    params = {p.name: p for p in get_registry("preprocessors").get("normal_midas").params}
    assert params["a"].default == pytest.approx(2 * np.pi) and params["bg_threshold"].default == 0.4
    with pytest.raises(ParamError, match="bg_threshold"):
        preprocess("normal_midas", np.zeros((8, 8, 3), np.uint8), bg_threshold=1.5)


@pytest.mark.usefixtures("store")
def test_output_is_at_the_input_size_whatever_the_detector_size(photo):
    image = np.ascontiguousarray(np.repeat(photo, 2, axis=0)[:, :100])  # 100×128
    for name in ("normal_bae", "normal_midas"):
        assert preprocess(name, image, detect_resolution=64).image.shape == (128, 100, 3)


@pytest.mark.usefixtures("store")
def test_unload_frees_the_network(photo):
    from ctrlgen.core.plugins.manager import get_registry

    preprocess("normal_bae", photo, **SMALL)
    assert _depth.cache_owner(_depth.NORMAL_BAE) in annotators.LOADED.owners()
    get_registry("preprocessors").get("normal_bae").unload()
    assert _depth.cache_owner(_depth.NORMAL_BAE) not in annotators.LOADED.owners()


def test_missing_weight_names_the_file_the_folders_and_the_source(tmp_path, monkeypatch, photo):
    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(tmp_path))
    annotators.reset_default_store()
    with pytest.raises(ModelNotFoundError) as info:
        preprocess("normal_bae", photo, **SMALL)
    message = str(info.value)
    assert "'normal_bae' needs its weights" in message and "scannet.pt" in message
    assert str(tmp_path) in message and "lllyasviel/Annotators" in message


@pytest.mark.weights
def test_real_normal_bae_matches_controlnet_aux(real_weight, astronaut):
    from controlnet_aux.normalbae import NormalBaeDetector

    path = real_weight(_depth.NORMAL_BAE)
    expected = NormalBaeDetector.from_pretrained(str(path.parent), filename=path.name)(
        astronaut, detect_resolution=512, image_resolution=512, output_type="np")
    assert np.array_equal(preprocess("normal_bae", astronaut, detect_resolution=512).image, expected)


@pytest.mark.weights
def test_real_normal_midas_matches_controlnet_aux(real_weight, astronaut):
    from controlnet_aux.midas import MidasDetector

    path = real_weight(_depth.MIDAS)
    _, expected = MidasDetector.from_pretrained(str(path.parent), filename=path.name)(
        astronaut, bg_th=0.4, depth_and_normal=True, detect_resolution=512, image_resolution=512,
        output_type="np")
    assert np.array_equal(preprocess("normal_midas", astronaut, detect_resolution=512).image, expected)
