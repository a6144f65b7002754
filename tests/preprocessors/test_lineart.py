"""lineart: the network variants on tiny random weights in the real formats (compared with
controlnet_aux's detectors, or sd-webui-controlnet's recipe for the manga network, on the same
weights), the weightless standard variant on drawings and photos, and ``invert``."""

from __future__ import annotations

import numpy as np
import pytest

from ctrlgen.core.engine.preprocess import preprocess
from ctrlgen.core.errors import ModelNotFoundError
from ctrlgen.testing.contracts import PreprocessorContract
from ctrlgen.testing.roots import annotator_downloads, using_model_roots

pytestmark = pytest.mark.usefixtures("torch_single_thread")
SMALL = {"detect_resolution": 64}
UPSTREAM_SIZE = {"detect_resolution": 64, "image_resolution": 64, "output_type": "np"}
NETWORK_VARIANTS = ("lineart_realistic", "lineart_coarse", "lineart_anime", "lineart_anime_denoise")


@pytest.fixture(scope="module")
def lineart_weights(annotator_root):
    from ctrlgen.testing import tiny_lines

    realistic, coarse = tiny_lines.write_lineart(annotator_downloads(annotator_root, "lineart"))
    return {
        "lineart_realistic": realistic,
        "lineart_coarse": coarse,
        "lineart_anime": tiny_lines.write_lineart_anime(annotator_downloads(annotator_root, "lineart_anime")),
        "lineart_anime_denoise": tiny_lines.write_manga_line(annotator_downloads(annotator_root, "manga_line")),
    }


@pytest.fixture(scope="module")
def tiny_store(annotator_root, lineart_weights):
    with using_model_roots(str(annotator_root)):
        yield annotator_root


@pytest.fixture(scope="module")
def photo():
    """The astronaut at 128×64: a multiple of 64, so neither side resizes at detect_resolution 64."""
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut()[:256], (128, 64), interpolation=cv2.INTER_AREA)


def load_state(path):
    import torch

    return {key.removeprefix("module."): value for key, value in torch.load(path, weights_only=True).items()}


def upstream_lines(name, path, image, **size):
    """What upstream gives for ``name`` with the weights at ``path``."""
    import functools

    import torch

    if name in ("lineart_realistic", "lineart_coarse"):
        from controlnet_aux.lineart import LineartDetector

        detector = LineartDetector.from_pretrained(str(path.parent))
        return detector(image, coarse=name == "lineart_coarse", **size)
    if name == "lineart_anime":
        from controlnet_aux.lineart_anime import LineartAnimeDetector, UnetGenerator

        state = load_state(path)
        norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
        network = UnetGenerator(3, 1, 8, state["model.model.0.weight"].shape[0], norm_layer=norm)
        network.load_state_dict(state)
        return LineartAnimeDetector(network.eval())(image, **size)
    # lineart_anime_denoise: controlnet_aux has no manga line detector; this is sd-webui-controlnet's
    # MangaLineExtration.__call__ (grey 0..255 in, 255 - output, already white lines on black).
    import cv2

    from ctrlgen.preprocessors.lines.manga import build_manga_line_network

    state = load_state(path)
    network = build_manga_line_network(state)
    network.load_state_dict(state)
    with torch.no_grad():
        grey = torch.from_numpy(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)).float()[None, None]
        line = (255 - network.eval()(grey).numpy()[0, 0]).clip(0, 255).astype(np.uint8)
    return np.repeat(line[:, :, None], 3, axis=2)


@pytest.mark.usefixtures("tiny_store")
class TestRealisticContract(PreprocessorContract):
    preprocessor = "lineart_realistic"
    params = SMALL


@pytest.mark.usefixtures("tiny_store")
class TestCoarseContract(PreprocessorContract):
    preprocessor = "lineart_coarse"
    params = {**SMALL, "invert": True}


@pytest.mark.usefixtures("tiny_store")
class TestAnimeContract(PreprocessorContract):
    preprocessor = "lineart_anime"
    params = SMALL


@pytest.mark.usefixtures("tiny_store")
class TestAnimeDenoiseContract(PreprocessorContract):
    preprocessor = "lineart_anime_denoise"
    params = SMALL


class TestStandardContract(PreprocessorContract):
    preprocessor = "lineart_standard"


class TestStandardContractAtDetectResolution(PreprocessorContract):
    preprocessor = "lineart_standard"
    params = {"detect_resolution": 64, "gaussian_sigma": 2.0, "invert": True}


@pytest.mark.usefixtures("tiny_store")
@pytest.mark.parametrize("name", NETWORK_VARIANTS)
def test_matches_upstream_on_the_same_weights(lineart_weights, photo, name):
    expected = upstream_lines(name, lineart_weights[name], photo, **UPSTREAM_SIZE)
    ours = preprocess(name, photo, **SMALL).image
    assert np.array_equal(ours, expected)
    assert len(np.unique(ours)) > 20  # the tiny weights give a varied map


@pytest.mark.usefixtures("tiny_store")
@pytest.mark.parametrize("name", [*NETWORK_VARIANTS, "lineart_standard"])
def test_invert_gives_black_lines_on_white(photo, name):
    normal = preprocess(name, photo, **SMALL).image
    assert np.array_equal(preprocess(name, photo, invert=True, **SMALL).image, 255 - normal)


def test_manga_network_has_the_real_erika_layout():
    """The default widths build the network sd-webui-controlnet loads erika.pth into (43.1 M values)."""
    import torch

    from ctrlgen.preprocessors.lines.manga import manga_line_network

    with torch.device("meta"):
        state = manga_line_network().state_dict()
    assert len(state) == 707 and sum(v.numel() for v in state.values()) == 43_134_934
    assert state["block0.model.0.conv1.model.2.weight"].shape == (24, 1, 3, 3)
    assert state["block4.model.11.residual.model.2.weight"].shape == (384, 384, 3, 3)
    assert state["block5.model.0.shortcut.model.0.weight"].shape == (192, 384, 1, 1)
    assert state["block9.model.1.conv1.model.2.weight"].shape == (16, 16, 3, 3)
    assert state["conv15.model.2.weight"].shape == (1, 16, 1, 1)
    assert "res1.model.0.weight" not in state  # same-width skips are plain sums


def test_standard_matches_controlnet_aux(astronaut):
    from controlnet_aux.lineart_standard import LineartStandardDetector

    for sigma, threshold, resolution in ((6.0, 8, 256), (2.0, 4, 512)):
        expected = LineartStandardDetector()(astronaut, guassian_sigma=sigma, intensity_threshold=threshold,
                                             detect_resolution=resolution, output_type="np")
        ours = preprocess("lineart_standard", astronaut, gaussian_sigma=sigma, intensity_threshold=threshold,
                          detect_resolution=resolution).image
        assert np.array_equal(ours, expected)


def test_standard_traces_pen_lines_exactly():
    import cv2

    drawing = np.full((128, 128, 3), 255, np.uint8)
    cv2.rectangle(drawing, (30, 30), (97, 97), (0, 0, 0), 2)
    cv2.line(drawing, (10, 120), (120, 10), (0, 0, 0), 2)
    lines = preprocess("lineart_standard", drawing, detect_resolution=0).image[:, :, 0] > 64
    assert np.array_equal(lines, drawing[:, :, 0] < 128)


def test_standard_draws_a_dark_shape_along_its_outline():
    image = np.full((128, 128, 3), 255, np.uint8)
    image[32:96, 32:96] = 40
    lines = preprocess("lineart_standard", image, detect_resolution=0).image[:, :, 0]
    ys, xs = np.nonzero(lines > 64)
    inside = (ys >= 32) & (ys < 96) & (xs >= 32) & (xs < 96)
    from_outline = np.minimum.reduce([ys - 32, 95 - ys, xs - 32, 95 - xs])
    assert inside.all() and from_outline.max() <= 9  # a band inside the dark edge, ~1.5 sigma
    ring = lambda d: lines[32 + d, 32 + d : 96 - d].mean()  # noqa: E731
    assert ring(0) > ring(4) > ring(8)  # strongest on the outline itself
    assert lines[56:72, 56:72].max() == 0  # nothing in the flat middle


def test_standard_lines_follow_the_photos_edges(astronaut):
    import cv2

    lines = preprocess("lineart_standard", astronaut).image[:, :, 0] > 64
    canny = cv2.Canny(astronaut, 100, 200) > 0
    near_canny = cv2.dilate(canny.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    near_lines = cv2.dilate(lines.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    assert 0.05 < lines.mean() < 0.4
    assert (lines & near_canny).sum() / lines.sum() > 0.7
    assert (canny & near_lines).sum() / canny.sum() > 0.8


def test_missing_weight_is_a_clear_error(tmp_path, photo):
    with using_model_roots(str(tmp_path)), pytest.raises(ModelNotFoundError) as info:
        preprocess("lineart_anime_denoise", photo, **SMALL)
    assert "erika.pth" in str(info.value) and str(tmp_path) in str(info.value)
    assert "lllyasviel/Annotators" in str(info.value)


@pytest.mark.weights
@pytest.mark.parametrize("name", NETWORK_VARIANTS)
def test_real_weights_match_upstream(real_weight, astronaut, name):
    from ctrlgen.core.plugins.manager import get_registry

    (weight,) = get_registry("preprocessors").get(name).weights
    path = real_weight(weight)
    if name == "lineart_realistic":
        real_weight(get_registry("preprocessors").get("lineart_coarse").weights[0])  # upstream loads both
    if name == "lineart_coarse":
        real_weight(get_registry("preprocessors").get("lineart_realistic").weights[0])
    expected = upstream_lines(name, path, astronaut, detect_resolution=512, image_resolution=512, output_type="np")
    ours = preprocess(name, astronaut, detect_resolution=512).image
    assert np.array_equal(ours, expected)
