"""inpaint: contract (with a mask), the -1 convention of diffusers and sd-webui-controlnet, missing mask."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctrlgen.core.engine.preprocess import preprocess
from ctrlgen.core.errors import ImageError
from ctrlgen.preprocessors.inpaint import control_hint
from ctrlgen.testing.contracts import PreprocessorContract


def ellipse_mask(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((xx - width / 2) / max(1, width / 4)) ** 2 + ((yy - height / 2) / max(1, height / 4)) ** 2 <= 1
    return inside.astype(np.uint8) * 255


class TestInpaintContract(PreprocessorContract):
    preprocessor = "inpaint"

    def run_preprocessor(self, image, **overrides):
        shape = np.shape(image)
        mask = ellipse_mask(*shape[:2]) if len(shape) >= 2 and min(shape[:2]) > 0 else None
        return preprocess(self.preprocessor, image, mask=mask, **{**self.params, **overrides})


def diffusers_make_inpaint_condition(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The reference: diffusers' ControlNet inpaint docs (``make_inpaint_condition``), without torch."""
    image = image.astype(np.float32) / 255.0
    mask = mask.astype(np.float32) / 255.0
    image[mask > 0.5] = -1.0
    return image


def sd_webui_inpaint_protocol(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sd-webui-controlnet's hook: ``m = (mask > 0.5); hint = colour * (1 - m) - m``."""
    colour = image.astype(np.float32) / 255.0
    m = (mask.astype(np.float32) / 255.0 > 0.5).astype(np.float32)[:, :, None]
    return colour * (1 - m) - m


def test_map_blacks_out_the_masked_pixels_and_says_how_to_build_the_hint(astronaut):
    mask = np.zeros(astronaut.shape[:2], np.uint8)
    mask[100:200, 150:300] = 255
    mask[300:310, 0:10] = 128  # 128/255 > 0.5: masked, as upstream decides
    mask[400:410, 0:10] = 127  # 127/255 < 0.5: kept
    result = preprocess("inpaint", astronaut, mask=mask)
    assert (result.image[100:200, 150:300] == 0).all() and (result.image[300:310, 0:10] == 0).all()
    assert np.array_equal(result.image[400:410, 0:10], astronaut[400:410, 0:10])
    assert np.array_equal(result.image[:100], astronaut[:100])
    assert result.data["hint"] == "masked_minus_one"
    json.dumps(result.data)
    assert result.data["mask_bbox"] == [0, 100, 300, 310]
    assert result.data["masked_fraction"] == pytest.approx((100 * 150 + 100) / 512**2, abs=1e-6)


def test_control_hint_is_diffusers_and_sd_webui_convention(astronaut):
    mask = ellipse_mask(*astronaut.shape[:2])
    mask[0:5, 0:5] = 140
    hint_map = preprocess("inpaint", astronaut, mask=mask).image
    hint = control_hint(hint_map, mask)
    assert hint.dtype == np.float32 and hint.shape == astronaut.shape
    assert np.array_equal(hint, diffusers_make_inpaint_condition(astronaut, mask))
    assert np.allclose(hint, sd_webui_inpaint_protocol(astronaut, mask))
    assert (hint[mask > 127] == -1).all() and hint[mask <= 127].min() >= 0


def test_control_hint_fits_a_mask_of_another_size(astronaut):
    small_mask = np.zeros((64, 64), np.uint8)
    small_mask[:, 32:] = 255  # right half
    hint = control_hint(astronaut, small_mask)
    assert (hint[:, 260:] == -1).all() and (hint[:, :250] >= 0).all()


def test_without_a_mask_is_a_clear_error(astronaut):
    with pytest.raises(ImageError, match="inpaint needs a mask"):
        preprocess("inpaint", astronaut)


def test_empty_mask_gives_the_picture_and_no_box(astronaut):
    result = preprocess("inpaint", astronaut, mask=np.zeros(astronaut.shape[:2], np.uint8))
    assert np.array_equal(result.image, astronaut)
    assert result.data["mask_bbox"] is None and result.data["masked_fraction"] == 0
