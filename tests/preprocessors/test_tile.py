"""tile_resample, tile_colorfix(+sharp), blur_gaussian: contract and what each does to a picture."""

from __future__ import annotations

import numpy as np
import pytest

from ctrlgen.core.engine.preprocess import preprocess
from ctrlgen.testing.contracts import PreprocessorContract


class TestTileResampleContract(PreprocessorContract):
    preprocessor = "tile_resample"
    params = {"down_sampling_rate": 2.5}


class TestTileColorfixContract(PreprocessorContract):
    preprocessor = "tile_colorfix"


class TestTileColorfixSharpContract(PreprocessorContract):
    preprocessor = "tile_colorfix+sharp"


class TestBlurGaussianContract(PreprocessorContract):
    preprocessor = "blur_gaussian"
    params = {"detect_resolution": 64}


def test_resample_below_1_1_is_the_picture_itself(astronaut):
    result = preprocess("tile_resample", astronaut, down_sampling_rate=1.05)
    assert np.array_equal(result.image, astronaut)


def test_resample_loses_detail_as_sd_webui_controlnet_does(astronaut):
    import cv2

    result = preprocess("tile_resample", astronaut, down_sampling_rate=4.0)
    assert result.data["sampled_size"] == [128, 128]
    upstream = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)  # sd-webui's tile_resample
    back_down = cv2.resize(result.image, (128, 128), interpolation=cv2.INTER_AREA)
    assert np.abs(back_down.astype(int) - upstream).mean() < 3

    def detail(img):
        return np.abs(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.CV_32F)).mean()

    assert detail(result.image) < 0.5 * detail(astronaut)


@pytest.mark.parametrize(("name", "params", "expected"), [
    ("tile_colorfix", {"variation": 12}, {"variation": 12, "sharpness": None}),
    ("tile_colorfix+sharp", {"variation": 5, "sharpness": 1.5}, {"variation": 5, "sharpness": 1.5}),
])
def test_colorfix_hint_is_the_picture_with_the_sampling_settings(astronaut, name, params, expected):
    result = preprocess(name, astronaut, **params)
    assert np.array_equal(result.image, astronaut)
    assert result.data == {"colorfix": expected}


def test_colorfix_x0_takes_the_reference_colours_and_keeps_the_detail():
    import torch

    from ctrlgen.preprocessors.tile import box_blur, colorfix_x0

    generator = torch.Generator().manual_seed(0)
    detail = torch.randn(2, 4, 32, 32, generator=generator) * 0.1
    x0 = detail + 3.0  # prediction: right detail, wrong colour (offset 3)
    reference = torch.zeros(2, 4, 32, 32)  # the hint's latent: colour 0
    fixed = colorfix_x0(x0, reference, variation=4)
    assert x0.mean() > 2.9 and abs(float(fixed.mean())) < 0.05  # the colour is the reference's
    assert torch.allclose(fixed, x0 - box_blur(x0, 4))  # the detail is the prediction's
    assert torch.allclose(colorfix_x0(x0, reference, variation=2, high_res_pass=True), fixed)
    # +sharp: only the unconditional rows move, toward their own blur
    uncond = torch.tensor([True, False])
    sharp = colorfix_x0(x0, reference, variation=4, sharpness=2.0, uncond=uncond)
    assert torch.equal(sharp[1], fixed[1])
    expected = 0.02 * box_blur(fixed, 4)[0] + 0.98 * fixed[0]
    assert torch.allclose(sharp[0], expected, atol=1e-6)


def test_box_blur_is_sd_webui_controlnets_blur():
    import torch

    from ctrlgen.preprocessors.tile import box_blur

    latent = torch.arange(2 * 6 * 7, dtype=torch.float32).reshape(1, 2, 6, 7)
    padded = torch.nn.functional.pad(latent, (2, 2, 2, 2), mode="replicate")
    expected = torch.nn.functional.avg_pool2d(padded, (5, 5), stride=(1, 1))
    assert torch.equal(box_blur(latent, 2), expected)
    assert box_blur(latent, 2).shape == latent.shape


def test_blur_gaussian_matches_opencv_at_native_size(astronaut):
    import cv2

    result = preprocess("blur_gaussian", astronaut, sigma=3.0, detect_resolution=0).image
    assert np.array_equal(result, cv2.GaussianBlur(astronaut, (0, 0), 3.0))


def test_blur_gaussian_stronger_sigma_blurs_more(astronaut):
    weak = preprocess("blur_gaussian", astronaut, sigma=1.0, detect_resolution=256).image.astype(int)
    strong = preprocess("blur_gaussian", astronaut, sigma=12.0, detect_resolution=256).image.astype(int)
    assert np.abs(np.diff(strong, axis=1)).mean() < 0.5 * np.abs(np.diff(weak, axis=1)).mean()
