"""Upscaler models: identified from their headers, found in the folders ComfyUI and A1111 keep them
in, loaded with spandrel and run in tiles (tiny random weights in the real layouts)."""

from __future__ import annotations

import numpy as np
import pytest

from ctrlgen.core.errors import JobError, ModelFormatError, UnsafeModelError
from ctrlgen.core.models.identify import identify_file
from ctrlgen.core.models.store import ModelStore
from ctrlgen.core.models.upscalers import load_upscaler, resample, upscale_image
from ctrlgen.core.plugins.specs import ModelRoot
from ctrlgen.testing.tiny_upscalers import write_tiny_upscaler

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.mark.parametrize(("family", "scale"), [("real_esrgan", 4), ("esrgan", 4), ("esrgan", 2), ("compact", 4),
                                               ("compact", 2)])
def test_an_upscaler_is_identified_from_its_header_with_its_family_and_scale(tmp_path, family, scale):
    path = write_tiny_upscaler(tmp_path, family, scale=scale)
    identity = identify_file(path)
    assert (identity.kind, identity.variant, identity.details["scale"]) == ("upscaler", family, scale)
    # spandrel, reading the tensors, agrees on the scale
    assert load_upscaler(path).scale == scale


def test_diffusion_files_are_not_taken_for_upscalers(tiny_sd15):
    for path in (tiny_sd15.checkpoint, tiny_sd15.controlnet_checkpoint):
        assert identify_file(path).kind != "upscaler"


@pytest.mark.parametrize(("layout", "folder"), [("comfyui", "models/upscale_models"), ("a1111", "models/ESRGAN"),
                                                ("a1111", "models/RealESRGAN")])
def test_the_store_finds_upscalers_in_the_folders_people_have(tmp_path, layout, folder):
    root = tmp_path / "install"
    (root / ("custom_nodes" if layout == "comfyui" else "extensions")).mkdir(parents=True)
    (root / "models" / ("checkpoints" if layout == "comfyui" else "Stable-diffusion")).mkdir(parents=True)
    write_tiny_upscaler(root / folder, "real_esrgan", name="4x-tiny")
    store = ModelStore([ModelRoot(root)])
    entry = store.find("4x-tiny", category="upscale_models")
    assert entry.category == "upscale_models" and entry.identity.kind == "upscaler"
    assert [e.name for e in store.entries("upscale_models")] == ["4x-tiny"]


def test_an_upscaler_in_a_flat_folder_is_found_by_its_header(tmp_path):
    write_tiny_upscaler(tmp_path / "anything", "compact", name="general-x4")
    entry = ModelStore([ModelRoot(tmp_path / "anything")]).find("general-x4")
    assert (entry.category, entry.identity.variant) == ("upscale_models", "compact")


def test_a_pickled_upscaler_is_listed_but_not_opened_unless_pickles_are_allowed(tmp_path):
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(write_tiny_upscaler(tmp_path / "src", "compact")))
    folder = tmp_path / "models" / "upscale_models"
    folder.mkdir(parents=True)
    (tmp_path / "custom_nodes").mkdir()
    torch.save({"params": tensors}, folder / "x4.pth")  # BasicSR's way of saving
    entry = ModelStore([ModelRoot(tmp_path)]).find("x4", category="upscale_models")
    assert entry.category == "upscale_models" and "pickle" in entry.identity.details["error"]
    with pytest.raises(UnsafeModelError, match="allow_pickle"):
        load_upscaler(entry.path)
    assert load_upscaler(entry.path, allow_pickle=True).scale == 4


def test_a_file_spandrel_does_not_know_gets_an_error_naming_it(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "odd.safetensors"
    save_file({"weight": np.zeros((3, 3), np.float32)}, str(path))
    with pytest.raises(ModelFormatError, match="odd.safetensors is not an upscaler model spandrel knows"):
        load_upscaler(path)


def test_the_model_enlarges_by_its_scale_and_tiles_do_not_change_the_result(tmp_path):
    # SRVGGNetCompact with 2 convolutions sees 3 pixels around each output pixel: with 4 pixels
    # of context per tile the tiled result is the whole-image result exactly.
    model = load_upscaler(write_tiny_upscaler(tmp_path, "compact", scale=4, blocks=2))
    image = (np.random.default_rng(0).random((37, 53, 3)) * 255).astype(np.uint8)
    whole = upscale_image(model, image, tile=64, pad=0)
    tiled = upscale_image(model, image, tile=16, pad=4)
    assert whole.shape == (148, 212, 3) and whole.dtype == np.uint8
    assert np.array_equal(tiled, whole)
    # without context the tile borders differ: the padding is what keeps them seamless
    assert not np.array_equal(upscale_image(model, image, tile=16, pad=0), whole)


def test_the_resamplers_need_no_model():
    image = np.zeros((10, 20, 3), np.uint8)
    image[:, 10:] = 200
    for method in ("lanczos", "bicubic", "bilinear", "nearest"):
        assert resample(image, 40, 20, method).shape == (20, 40, 3)
    assert set(np.unique(resample(image, 40, 20, "nearest"))) == {0, 200}
    with pytest.raises(JobError, match="resampler 'box' is not one of lanczos"):
        resample(image, 40, 20, "box")
