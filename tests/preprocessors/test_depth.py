"""Depth maps (MiDaS, ZoeDepth, LeReS, LeReS++, Depth Anything V2): ctrlgen's real loading and
inference code on random weights written in the real file formats, compared with
controlnet_aux's detectors (loaded by their own ``from_pretrained``) on the same files; the
real files, where present, in ``weights`` tests.

No depth weights can be had here, so nothing checks that a depth map is *right*; the tests
check that it is upstream's, with the size contract, the store and the cache around it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from ctrlgen.core.engine.preprocess import preprocess
from ctrlgen.core.errors import ModelFormatError, ModelNotFoundError
from ctrlgen.core.models import annotators
from ctrlgen.preprocessors.depth import depth_anything as _depth_anything
from ctrlgen.preprocessors.depth import networks as _depth
from ctrlgen.testing import tiny_depth as _depth_tiny
from ctrlgen.testing.contracts import PreprocessorContract
from ctrlgen.testing.roots import annotator_downloads, using_model_roots

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SMALL = {"detect_resolution": 64}
UPSTREAM = {"detect_resolution": 64, "image_resolution": 64, "output_type": "np"}


@pytest.fixture(scope="session")
def depth_files(annotator_root):
    da = annotator_downloads(annotator_root, "depth_anything_v2")
    files = {
        "midas": _depth_tiny.write_midas(annotator_downloads(annotator_root, "midas")),
        "leres": _depth_tiny.write_leres(annotator_downloads(annotator_root, "leres")),
        "leres_boost": _depth_tiny.write_leres_boost(annotator_downloads(annotator_root, "leres")),
        # small as the transformers folder, base as the original release file; large is absent
        "da_small": _depth_tiny.write_depth_anything_folder(
            da / "depth-anything" / "Depth-Anything-V2-Small-hf"),
        "da_base": _depth_tiny.write_depth_anything_original(da / "depth_anything_v2_vitb.pth"),
    }
    annotators.reset_default_store()  # a store that scanned before would not see them
    return files


@pytest.fixture(scope="session")
def zoe_file(annotator_root):
    path = _depth_tiny.write_zoe(annotator_downloads(annotator_root, "zoedepth"))
    annotators.reset_default_store()
    return path


@pytest.fixture(scope="module")
def store(annotator_root):
    """The model store on ``annotator_root`` for the whole module, so networks load once."""
    with using_model_roots(str(annotator_root)):
        yield annotator_root


@pytest.fixture(scope="module")
def photo():
    """The astronaut at 128×64: multiples of 64, so nothing resizes at detect_resolution 64."""
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut()[:256], (128, 64), interpolation=cv2.INTER_AREA)


@pytest.fixture
def small_zoe(zoe_file, store):
    """ctrlgen's cached ZoeDepth with its internal resize at 64 px instead of 384×512.

    The BEiT-L network costs ~30 s a call at its own size on one CPU thread; the file, the
    loading and everything around the network stay real.
    """
    from controlnet_aux.zoe.zoedepth.models.base_models.midas import Resize

    model = _depth.load("depth_zoe", _depth.ZOE, _depth.build_zoe)
    model.core.prep.resizer = Resize(64, 64, keep_aspect_ratio=True, ensure_multiple_of=32,
                                     resize_method="minimal")
    return model


class _CheapDepth:
    """Stand-ins for LeReS's networks in the boost's contract run (see TestLeresBoostContract)."""

    @staticmethod
    def depth_net():
        import torch

        net = torch.nn.Module()
        net.depth_model = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 5, padding=2), torch.nn.Softplus())
        with torch.no_grad():
            net.depth_model[0].weight.copy_(torch.linspace(-1, 1, 75).reshape(1, 3, 5, 5))
            net.depth_model[0].bias.zero_()
        return net.eval()

    @staticmethod
    def merge_net():
        import torch
        from controlnet_aux.leres.pix2pix.models.pix2pix4depth_model import Pix2Pix4DepthModel

        merge = Pix2Pix4DepthModel.__new__(Pix2Pix4DepthModel)  # upstream's class, without its 54M UNet
        merge.device, merge.visual_names, merge.model_names = torch.device("cpu"), ["fake_B"], ["G"]
        merge.netG = torch.nn.Conv2d(2, 1, 1).eval()
        with torch.no_grad():
            merge.netG.weight.copy_(torch.tensor([0.3, 0.7]).reshape(1, 2, 1, 1))
            merge.netG.bias.zero_()
        return merge


    @staticmethod
    def blend_mask(size):
        return np.ones(size, np.float32)


_CheapDepth.blend_mask.cached_by_ctrlgen = True  # ctrlgen leaves it as it is


@pytest.fixture(scope="class")
def cheap_leres_networks():
    """Stand-ins for LeReS, the merge UNet and the 3000² blending mask (upstream's fixed sizes)."""
    from controlnet_aux.leres.leres import depthmap

    real_load = _depth.load

    def load(owner, weight, build, prepare=None):
        return _CheapDepth.depth_net() if weight is _depth.LERES else real_load(owner, weight, build, prepare)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_depth, "load", load)
        patch.setattr(_depth, "build_pix2pix", lambda owner: _CheapDepth.merge_net())
        patch.setattr(depthmap, "generatemask", _CheapDepth.blend_mask)
        yield


# -- the contract ---------------------------------------------------------------------------

@pytest.mark.usefixtures("depth_files", "store")
class TestMidasContract(PreprocessorContract):
    preprocessor = "depth_midas"
    params = SMALL


@pytest.mark.usefixtures("depth_files", "store")
class TestLeresContract(PreprocessorContract):
    preprocessor = "depth_leres"
    params = {**SMALL, "remove_near": 5.0, "remove_background": 10.0}


@pytest.mark.usefixtures("depth_files", "store", "cheap_leres_networks")
class TestLeresBoostContract(PreprocessorContract):
    """The boost runs LeReS at 448 px twice and the merge UNet at 1024 px (~15 s a call here), so
    the contract runs ctrlgen's and upstream's boost code on stand-in networks; the real networks
    on the real files run in test_leres_boost_matches_controlnet_aux."""

    preprocessor = "depth_leres++"
    params = SMALL


@pytest.mark.slow
@pytest.mark.usefixtures("small_zoe")
class TestZoeContract(PreprocessorContract):
    preprocessor = "depth_zoe"
    params = SMALL


@pytest.mark.usefixtures("depth_files", "store")
class TestDepthAnythingFolderContract(PreprocessorContract):
    preprocessor = "depth_anything_v2"
    params = {"size": "small", "detect_resolution": 70}


@pytest.mark.usefixtures("depth_files", "store")
class TestDepthAnythingOriginalFileContract(PreprocessorContract):
    preprocessor = "depth_anything_v2"
    params = {"size": "base", "detect_resolution": 70}


# -- against controlnet_aux on the same files ------------------------------------------------

@pytest.mark.usefixtures("store")
def test_midas_matches_controlnet_aux(depth_files, photo):
    from controlnet_aux.midas import MidasDetector

    path = depth_files["midas"]
    expected = MidasDetector.from_pretrained(str(path.parent), filename=path.name)(photo, **UPSTREAM)
    ours = preprocess("depth_midas", photo, **SMALL).image
    assert np.array_equal(ours, expected)
    assert ours.min() == 0 and ours.max() == 255 and len(np.unique(ours)) > 100  # normalised per image


def leres_from_pretrained(path):
    from controlnet_aux.leres import LeresDetector

    argv, sys.argv = sys.argv, ["leres"]  # upstream parses pix2pix options from the command line
    try:
        return LeresDetector.from_pretrained(str(path.parent), filename=path.name)
    finally:
        sys.argv = argv


@pytest.fixture(scope="module")
def upstream_leres(depth_files):
    return leres_from_pretrained(depth_files["leres"])


@pytest.mark.usefixtures("store")
@pytest.mark.parametrize(("near", "background"), [(0.0, 0.0), (20.0, 30.0)])
def test_leres_matches_controlnet_aux(upstream_leres, photo, near, background):
    expected = upstream_leres(photo, thr_a=near, thr_b=background, **UPSTREAM)
    ours = preprocess("depth_leres", photo, remove_near=near, remove_background=background, **SMALL).image
    assert np.array_equal(ours, expected)
    assert len(np.unique(ours)) > 50


@pytest.mark.usefixtures("depth_files", "store")
def test_leres_thresholds_flatten_near_and_blacken_far(photo):
    plain = preprocess("depth_leres", photo, **SMALL).image[:, :, 0].astype(int)
    far_removed = preprocess("depth_leres", photo, remove_background=40.0, **SMALL).image[:, :, 0]
    assert np.array_equal(far_removed == 0, plain <= 0.4 * 255) and (far_removed == 0).any()
    near_removed = preprocess("depth_leres", photo, remove_near=40.0, **SMALL).image[:, :, 0]
    assert np.array_equal(near_removed == 255, plain >= 255 - 0.4 * 255) and (near_removed == 255).any()


@pytest.mark.slow
@pytest.mark.usefixtures("store")
def test_leres_boost_matches_controlnet_aux(upstream_leres, monkeypatch):
    """Both run the real networks: LeReS at 448 px twice and the merge UNet at 1024 px. At this
    size the boost returns its double estimate before the patch merging, the only user of the
    3000² blending mask, so a stand-in mask (16 s less) changes nothing."""
    import cv2
    from controlnet_aux.leres.leres import depthmap
    from skimage import data

    monkeypatch.setattr(depthmap, "generatemask", _CheapDepth.blend_mask)
    photo = cv2.resize(data.astronaut(), (192, 128), interpolation=cv2.INTER_AREA)  # boost needs ≥160 px
    expected = upstream_leres(photo, boost=True, detect_resolution=128, image_resolution=128,
                              output_type="np")
    ours = preprocess("depth_leres++", photo, detect_resolution=128).image
    assert np.array_equal(ours, expected)
    assert len(np.unique(ours)) > 20


@pytest.mark.usefixtures("depth_files", "store", "cheap_leres_networks")
def test_leres_boost_runs_on_images_too_small_for_upstream(photo):
    from controlnet_aux.leres.leres.depthmap import estimateboost

    tiny = photo[:48, :60]
    with pytest.raises(UnboundLocalError):  # upstream's resolution search needs 160 px
        estimateboost(tiny, _CheapDepth.depth_net(), 0, _CheapDepth.merge_net(), 60)
    assert preprocess("depth_leres++", tiny, detect_resolution=48).image.shape == (48, 60, 3)


@pytest.mark.usefixtures("store")
def test_boost_mask_is_upstreams_computed_once():
    from controlnet_aux.leres.leres import depthmap

    _depth.use_cached_boost_mask()
    _depth.use_cached_boost_mask()  # installs once
    cached = depthmap.generatemask
    assert cached.cached_by_ctrlgen and not getattr(cached.upstream, "cached_by_ctrlgen", False)
    first = cached((300, 200))
    first[:] = -1  # callers get copies
    assert np.array_equal(cached((300, 200)), cached.upstream((300, 200)))
    assert _depth.cache_owner(_depth.LERES_BOOST) in annotators.LOADED.owners()
    annotators.unload(_depth.cache_owner(_depth.LERES_BOOST))


@pytest.mark.slow
def test_zoe_loads_the_file_exactly_and_matches_controlnet_aux(small_zoe, zoe_file, photo):
    import torch
    from controlnet_aux.zoe import ZoeDetector

    saved = torch.load(zoe_file, map_location="cpu", weights_only=True, mmap=True)["model"]
    loaded = small_zoe.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[key], loaded[key]) for key in saved)
    expected = ZoeDetector(small_zoe)(photo, **UPSTREAM)
    ours = preprocess("depth_zoe", photo, **SMALL).image
    assert np.array_equal(ours, expected)
    assert len(np.unique(ours)) > 50


# -- Depth Anything V2 ---------------------------------------------------------------------

def reference_depth_anything(model, image, input_size):
    """The original ``DepthAnythingV2.infer_image`` (Depth-Anything-V2 ``dpt.py`` and
    ``util/transform.py``, as sd-webui-controlnet calls it), transcribed for the transformers
    model, followed by sd-webui-controlnet's ``(d - min) / (max - min) * 255``."""
    import cv2
    import torch
    import torch.nn.functional as F

    raw = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    h, w = raw.shape[:2]
    rgb = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB) / 255.0
    scale = max(input_size / h, input_size / w)  # Resize(lower_bound, keep_aspect_ratio)

    def constrain(x):
        y = int(np.round(x / 14) * 14)
        return int(np.ceil(x / 14) * 14) if y < input_size else y

    rgb = cv2.resize(rgb, (constrain(scale * w), constrain(scale * h)), interpolation=cv2.INTER_CUBIC)
    rgb = (rgb - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    tensor = torch.from_numpy(np.ascontiguousarray(np.transpose(rgb, (2, 0, 1))).astype(np.float32))[None]
    with torch.no_grad():
        depth = model(pixel_values=tensor).predicted_depth
    depth = F.interpolate(depth[:, None], (h, w), mode="bilinear", align_corners=True)[0, 0].numpy()
    return ((depth - depth.min()) / (depth.max() - depth.min()) * 255.0).astype(np.uint8)


@pytest.mark.usefixtures("depth_files", "store")
@pytest.mark.parametrize("size", ["small", "base"])
def test_depth_anything_follows_the_original_inference(photo, size):
    model = _depth_tiny.tiny_depth_anything()
    expected = reference_depth_anything(model, photo, 70)
    ours = preprocess("depth_anything_v2", photo, size=size, detect_resolution=70).image
    assert np.array_equal(ours[:, :, 0], expected)
    assert ours.min() == 0 and ours.max() == 255 and len(np.unique(ours)) > 100


def test_original_file_and_transformers_folder_load_the_same_model(depth_files):
    import torch
    from safetensors.torch import load_file

    folder = depth_files["da_small"]
    state = torch.load(depth_files["da_base"], map_location="cpu", weights_only=True)
    assert any(key.endswith("attn.qkv.weight") for key in state)  # the original layout, not transformers'
    from_original = _depth_anything.load_original(depth_files["da_base"], state)
    from_folder = _depth_anything.load_folder(folder)
    assert from_original.config.backbone_config.out_indices == [1, 2, 3, 4]
    assert from_original.state_dict().keys() == from_folder.state_dict().keys()
    folder_state = from_folder.state_dict()
    assert all(torch.equal(value, folder_state[key]) for key, value in from_original.state_dict().items())
    saved = load_file(folder / "model.safetensors")  # the -hf repos' on-disk names
    assert "backbone.encoder.layer.0.attention.attention.query.weight" in saved


def test_depth_anything_is_found_in_the_hugging_face_cache(tmp_path, monkeypatch, depth_files, photo):
    """The -hf repo as ``huggingface-cli download`` leaves it: blobs, a snapshot of symlinks, refs/main."""
    import shutil

    repo = tmp_path / "hub" / "models--depth-anything--Depth-Anything-V2-Small-hf"
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(depth_files["da_small"] / name, repo / "blobs" / name)
        (snapshot / name).symlink_to(Path("../../blobs") / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("CTRLGEN_MODEL_ROOTS", raising=False)
    annotators.reset_default_store()
    found = annotators.weight_path("depth_anything_v2", _depth_anything.WEIGHTS["small"])
    assert found == snapshot / "model.safetensors"
    ours = preprocess("depth_anything_v2", photo, size="small", detect_resolution=70).image
    assert np.array_equal(ours[:, :, 0], reference_depth_anything(_depth_tiny.tiny_depth_anything(), photo, 70))
    annotators.unload(_depth_anything.OWNER)
    annotators.reset_default_store()


@pytest.mark.parametrize(("size", "short_side", "expected"), [
    ((1000, 500), 518, (1036, 518)),   # short side reaches 518; sides multiples of 14
    ((500, 1000), 518, (518, 1036)),
    ((97, 75), 70, (84, 70)),
    ((64, 64), 518, (518, 518)),
])
def test_network_size_is_the_original_lower_bound_resize(size, short_side, expected):
    assert _depth_anything.network_size(*size, short_side) == expected


def test_depth_anything_defaults_are_the_large_model_at_518():
    from ctrlgen.core.plugins.manager import get_registry

    params = {param.name: param for param in get_registry("preprocessors").get("depth_anything_v2").params}
    assert params["size"].default == "large" and params["size"].choices == ("small", "base", "large")
    assert params["detect_resolution"].default == 518


# -- the store, the cache, errors -----------------------------------------------------------

@pytest.mark.usefixtures("depth_files", "store")
def test_output_is_at_the_input_size_whatever_the_detector_size(photo):
    image = np.ascontiguousarray(np.repeat(photo, 2, axis=0)[:, :100])  # 100×128
    for name in ("depth_midas", "depth_leres", "depth_anything_v2"):
        params = {"size": "small"} if name == "depth_anything_v2" else {}
        assert preprocess(name, image, detect_resolution=64, **params).image.shape == (128, 100, 3)


@pytest.mark.usefixtures("depth_files", "store")
def test_networks_load_once_and_unload_frees_them(photo):
    from ctrlgen.core.plugins.manager import get_registry

    preprocess("depth_midas", photo, **SMALL)
    network = _depth.load("depth_midas", _depth.MIDAS, _depth.build_midas)
    preprocess("normal_midas", photo, **SMALL)  # the same file, the same network
    assert _depth.load("normal_midas", _depth.MIDAS, _depth.build_midas) is network
    get_registry("preprocessors").get("depth_midas").unload()
    assert _depth.cache_owner(_depth.MIDAS) not in annotators.LOADED.owners()
    preprocess("depth_anything_v2", photo, size="small", detect_resolution=70)
    get_registry("preprocessors").get("depth_anything_v2").unload()
    assert _depth_anything.OWNER not in annotators.LOADED.owners()


def test_missing_weight_names_the_file_the_folders_and_the_source(tmp_path, monkeypatch, photo):
    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(tmp_path))
    annotators.reset_default_store()
    with pytest.raises(ModelNotFoundError) as info:
        preprocess("depth_zoe", photo, **SMALL)
    message = str(info.value)
    assert "'depth_zoe' needs its weights" in message and "ZoeD_M12_N.pt" in message
    assert str(tmp_path) in message and "lllyasviel/Annotators" in message


@pytest.mark.usefixtures("depth_files", "store")
def test_missing_depth_anything_size_names_both_forms(photo):
    with pytest.raises(ModelNotFoundError) as info:
        preprocess("depth_anything_v2", photo, size="large")
    message = str(info.value)
    assert "depth_anything_v2_vitl.pth" in message
    assert "depth-anything/Depth-Anything-V2-Large-hf/model.safetensors" in message
    assert "depth-anything/Depth-Anything-V2-Large" in message


def test_a_file_of_the_wrong_network_is_a_clear_error(tmp_path, monkeypatch, photo, depth_files):
    os.symlink(depth_files["leres"], annotator_downloads(tmp_path, "midas") / "dpt_hybrid-midas-501f0c75.pt")
    da = annotator_downloads(tmp_path, "depth_anything_v2")
    os.symlink(depth_files["midas"], da / "depth_anything_v2_vits.pth")
    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(tmp_path))
    annotators.reset_default_store()
    with pytest.raises(ModelFormatError, match=r"dpt_hybrid-midas-501f0c75\.pt does not hold the weights"):
        preprocess("depth_midas", photo, **SMALL)
    with pytest.raises(ModelFormatError, match=r"is not a Depth Anything V2 checkpoint"):
        preprocess("depth_anything_v2", photo, size="small")


# -- the real files ---------------------------------------------------------------------------

@pytest.mark.weights
def test_real_midas_matches_controlnet_aux(real_weight, astronaut):
    from controlnet_aux.midas import MidasDetector

    path = real_weight(_depth.MIDAS)
    expected = MidasDetector.from_pretrained(str(path.parent), filename=path.name)(
        astronaut, detect_resolution=512, image_resolution=512, output_type="np")
    ours = preprocess("depth_midas", astronaut, detect_resolution=512).image
    assert np.array_equal(ours, expected)
    assert ours[200:300, 200:300].mean() > ours[:50, 400:].mean()  # her face is nearer than the wall


@pytest.mark.weights
def test_real_zoe_matches_controlnet_aux(real_weight, astronaut):
    from controlnet_aux.zoe import ZoeDetector

    path = real_weight(_depth.ZOE)
    expected = ZoeDetector.from_pretrained(str(path.parent), filename=path.name)(
        astronaut, detect_resolution=512, image_resolution=512, output_type="np")
    assert np.array_equal(preprocess("depth_zoe", astronaut, detect_resolution=512).image, expected)


@pytest.mark.weights
@pytest.mark.parametrize(("name", "boost"), [("depth_leres", False), ("depth_leres++", True)])
def test_real_leres_matches_controlnet_aux(real_weight, astronaut, name, boost):
    path = real_weight(_depth.LERES)
    if boost:
        real_weight(_depth.LERES_BOOST)
    # ctrlgen first: upstream's boost then reuses the blending mask ctrlgen computed once
    ours = preprocess(name, astronaut, remove_near=10, remove_background=10, detect_resolution=512).image
    expected = leres_from_pretrained(path)(astronaut, thr_a=10, thr_b=10, boost=boost, detect_resolution=512,
                                           image_resolution=512, output_type="np")
    assert np.array_equal(ours, expected)


@pytest.mark.weights
@pytest.mark.parametrize("size", _depth_anything.SIZES)
def test_real_depth_anything_follows_the_original_inference(real_weight, astronaut, size):
    real_weight(_depth_anything.WEIGHTS[size])
    model = _depth_anything.load_model(size)
    expected = reference_depth_anything(model.cpu(), astronaut, 518)
    ours = preprocess("depth_anything_v2", astronaut, size=size).image[:, :, 0]
    assert np.abs(ours.astype(int) - expected).max() <= 1
    assert ours[200:300, 200:300].mean() > ours[:50, 400:].mean()
