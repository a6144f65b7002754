"""openpose, openpose_hand, openpose_face, openpose_full, openpose_faceonly.

The CMU networks are fixed-size VGG nets (~50M parameters each), so their tiny weights are
random tensors of the real shapes, saved as the real files (``body_pose_model.pth`` and
``hand_pose_model.pth`` with the CMU layer names, ``facenet.pth`` with controlnet-aux's) and
loaded through ctrlgen's real loading code, once per module. Random weights find nobody, so
the detection pipeline is compared with controlnet-aux's on *designed* network outputs
(heatmaps and part affinity fields of a known skeleton) given to both; the real networks'
forward passes run in the loading test and, at their real 4-scale hand size, in one slow test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ctrlgen.core.engine.preprocess import preprocess
from ctrlgen.core.errors import ModelFormatError, ModelNotFoundError
from ctrlgen.core.models import annotators
from ctrlgen.preprocessors.pose import openpose
from ctrlgen.preprocessors.pose.openpose import render_openpose
from ctrlgen.testing.contracts import PreprocessorContract, contract_image
from ctrlgen.testing.roots import annotator_downloads

SMALL = {"detect_resolution": 128}

# A standing person on a 128×128 canvas, OpenPose's 18 body points in pixels.
SKELETON = np.array([(64, 20), (64, 36), (48, 38), (42, 58), (38, 76), (80, 38), (86, 58), (90, 76),
                     (54, 76), (52, 98), (50, 120), (74, 76), (76, 98), (78, 120), (60, 16), (68, 16),
                     (55, 19), (73, 19)], float)
# controlnet-aux's limb -> part affinity field channels (its mapIdx minus the 19 heatmaps).
LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
         (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]
PAF_CHANNELS = [(12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5),
                (6, 7), (8, 9), (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37)]
# In the hand crop (which reaches past the wrist): the wrist, then 5 fingers of 4 joints.
HAND_POINTS = np.array([(0.5, 0.3)] + [(0.2 + 0.15 * (i // 4), 0.45 + 0.12 * (i % 4)) for i in range(20)])
FACE_POINTS = np.array([(0.5 + 0.35 * np.cos(a), 0.55 + 0.35 * np.sin(a))
                        for a in np.linspace(0, 2 * np.pi, 70, endpoint=False)])


def write_weights(folder):
    """Random tensors of the real shapes under the real names and key layouts."""
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    torch.manual_seed(0)
    for net_class, name, cmu_names in ((bodypose_model, "body_pose_model.pth", True),
                                       (handpose_model, "hand_pose_model.pth", True),
                                       (FaceNet, "facenet.pth", False)):
        state = net_class().state_dict()
        if cmu_names:  # the 2017 CMU conversions name layers without controlnet-aux's stage prefix
            state = {key.split(".", 1)[1]: value for key, value in state.items()}
        # Legacy (pre-zip) pickles, like the originals: the loader's non-mmap path.
        torch.save(state, folder / name, _use_new_zipfile_serialization=False)
    return folder


@pytest.fixture(scope="module", autouse=True)
def openpose_store(annotator_root):
    """The tiny weights in the model store for the whole module; nets stay loaded throughout."""
    folder = annotator_downloads(annotator_root, "openpose")
    if not (folder / "facenet.pth").is_file():
        write_weights(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CTRLGEN_MODEL_ROOTS", str(annotator_root))
        annotators.unload()
        annotators.reset_default_store()
        yield folder
        annotators.unload()
        annotators.reset_default_store()


def _memoized(module):
    """Make ``module.forward`` remember its outputs by input: the VGG forward costs seconds."""
    cache, original = {}, module.forward

    def clone(value):
        return type(value)(clone(v) for v in value) if isinstance(value, (list, tuple)) else value.clone()

    def forward(x):
        key = (tuple(x.shape), x.numpy().tobytes())
        if key not in cache:
            cache[key] = original(x)
        return clone(cache[key])

    module.forward = forward


@pytest.fixture(scope="module")
def memoized_networks(openpose_store):
    """The contract suite runs each variant ~10 times on the same picture; each distinct input
    still goes through the real body network once, repeats reuse its output. (The random body
    network finds nobody in it, so the hand and face networks are not asked.)"""
    _memoized(openpose._body().model)
    yield
    annotators.unload("openpose")


@pytest.mark.usefixtures("memoized_networks")
class TestOpenposeContract(PreprocessorContract):
    preprocessor = "openpose"
    params = SMALL


@pytest.mark.usefixtures("memoized_networks")
class TestOpenposeHandContract(PreprocessorContract):
    preprocessor = "openpose_hand"
    params = SMALL


@pytest.mark.usefixtures("memoized_networks")
class TestOpenposeFaceContract(PreprocessorContract):
    preprocessor = "openpose_face"
    params = SMALL


@pytest.mark.usefixtures("memoized_networks")
class TestOpenposeFullContract(PreprocessorContract):
    preprocessor = "openpose_full"
    params = SMALL


@pytest.mark.usefixtures("memoized_networks")
class TestOpenposeFaceonlyContract(PreprocessorContract):
    preprocessor = "openpose_faceonly"
    params = SMALL


def test_loaded_networks_equal_controlnet_aux_loading(openpose_store):
    """ctrlgen's loader (meta-device build, CMU key mapping) gives controlnet-aux's networks."""
    from controlnet_aux.open_pose.body import Body
    from controlnet_aux.open_pose.face import Face
    from controlnet_aux.open_pose.hand import Hand

    x = torch.rand(1, 3, 48, 48) - 0.5
    for ours, upstream_class, name in ((openpose._body(), Body, "body_pose_model.pth"),
                                       (openpose._hand(), Hand, "hand_pose_model.pth"),
                                       (openpose._face(), Face, "facenet.pth")):
        upstream = upstream_class(str(openpose_store / name)).model
        theirs = upstream.state_dict()
        assert ours.model.state_dict().keys() == theirs.keys()
        assert all(torch.equal(value, theirs[key]) for key, value in ours.model.state_dict().items())
        with torch.no_grad():
            mine, reference = ours.model(x), upstream(x)
        mine = mine if isinstance(mine, (list, tuple)) else [mine]
        reference = reference if isinstance(reference, (list, tuple)) else [reference]
        assert all(torch.equal(a, b) for a, b in zip(mine, reference, strict=True))


def _gaussians(points, cells_h, cells_w):
    ys, xs = np.mgrid[0:cells_h, 0:cells_w]
    return np.stack([np.exp(-((xs - px) ** 2 + (ys - py) ** 2) / 2.0) for px, py in points])


def designed_body(x, missing=()):
    """The body network's output for SKELETON: Gaussian heatmaps and unit-vector PAFs."""
    h, w = x.shape[2] // 8, x.shape[3] // 8
    cells = (SKELETON / 128.0) * [w, h] - 0.5
    heat = _gaussians(cells, h, w)
    heat[list(missing)] = 0
    heat = np.concatenate([heat, 1 - heat.max(0, keepdims=True)])
    paf = np.zeros((38, h, w))
    ys, xs = np.mgrid[0:h, 0:w]
    for (a, b), (cx, cy) in zip(LIMBS, PAF_CHANNELS, strict=True):
        if a in missing or b in missing:
            continue
        start, vec = cells[a], cells[b] - cells[a]
        length = np.hypot(*vec)
        t = np.clip(((xs - start[0]) * vec[0] + (ys - start[1]) * vec[1]) / length ** 2, 0, 1)
        near = np.hypot(xs - start[0] - t * vec[0], ys - start[1] - t * vec[1]) <= 1.0
        paf[cx][near], paf[cy][near] = vec[0] / length, vec[1] / length
    return torch.from_numpy(paf[None]).float(), torch.from_numpy(heat[None]).float()


def designed_hand(x):
    size = x.shape[2] // 8
    heat = _gaussians(HAND_POINTS * size - 0.5, size, size)
    return torch.from_numpy(np.concatenate([heat, 1 - heat.max(0, keepdims=True)])[None]).float()


def designed_face(x):
    heat = _gaussians(FACE_POINTS * 48 - 0.5, 48, 48)
    heat = np.concatenate([heat, np.zeros((1, 48, 48))])  # the background channel finds nothing
    return [torch.from_numpy(heat[None]).float()] * 6


@pytest.fixture
def designed_networks(monkeypatch, openpose_store):
    nets = openpose._body(), openpose._hand(), openpose._face()
    for net, designed in zip(nets, (designed_body, designed_hand, designed_face), strict=True):
        monkeypatch.setattr(net.model, "forward", designed)
    return nets


def person_image(size=128):
    import cv2

    return cv2.resize(np.full((128, 128, 3), 90, np.uint8), (size, size))


VARIANT_FLAGS = {name: flags[:3] for name, flags in openpose.VARIANTS.items()}


@pytest.mark.parametrize("name", list(VARIANT_FLAGS))
def test_matches_controlnet_aux_on_the_same_networks(designed_networks, name):
    """controlnet-aux's OpenposeDetector with the same (designed) networks draws the same map."""
    from controlnet_aux.open_pose import OpenposeDetector

    body, hands, face = VARIANT_FLAGS[name]
    image = person_image()
    expected = OpenposeDetector(*designed_networks)(image, detect_resolution=128, image_resolution=128,
                                                    include_body=body, include_hand=hands, include_face=face,
                                                    output_type="np")
    result = preprocess(name, image, **SMALL)
    assert expected.any()
    assert np.array_equal(result.image, expected)
    # ... and the map is exactly what the returned JSON renders to.
    assert np.array_equal(render_openpose(json.loads(json.dumps(result.data))), result.image)


def _points(values):
    return np.array(values, float).reshape(-1, 3)


def test_keypoints_are_in_the_input_pixels(designed_networks):
    """Detected at 128 px, reported and drawn at the input's 256 px, with limbs twice as wide."""
    result = preprocess("openpose_full", person_image(256), **SMALL)
    assert result.data["canvas_width"] == 256 and result.data["line_scale"] == 2.0
    (person,) = result.data["people"]
    body = _points(person["pose_keypoints_2d"])
    assert (body[:, 2] == 1).all()
    assert np.abs(body[:, :2] - SKELETON * 2).max() <= 6
    left, right = _points(person["hand_left_keypoints_2d"]), _points(person["hand_right_keypoints_2d"])
    assert left.shape == right.shape == (21, 3)
    assert np.hypot(*(right[0, :2] - body[4, :2])) < 24  # the right hand hangs at the right wrist
    assert np.hypot(*(left[0, :2] - body[7, :2])) < 24
    face = _points(person["face_keypoints_2d"])
    assert face.shape == (70, 3) and (face[:, 2] == 1).all()
    assert np.abs(face[:, :2].mean(0) - body[0, :2]).max() < 12  # around the nose
    # OpenPose's 4 px limb half-width at 128 px is 8 px at 256: the neck→hip limb covers ±6 px
    mid = ((body[1, :2] + body[8, :2]) / 2).astype(int)
    assert (result.image[mid[1], mid[0] - 6 : mid[0] + 7] > 0).any(axis=1).all()


def test_faceonly_returns_no_body_and_the_face_of_openpose_face(designed_networks):
    with_body = preprocess("openpose_face", person_image(), **SMALL).data["people"][0]
    faceonly = preprocess("openpose_faceonly", person_image(), **SMALL).data["people"][0]
    assert faceonly["face_keypoints_2d"] == with_body["face_keypoints_2d"]
    assert not any(faceonly["pose_keypoints_2d"]) and faceonly["hand_left_keypoints_2d"] is None


def test_face_keeps_70_ordered_landmarks_without_the_background_channel(designed_networks, monkeypatch):
    """controlnet-aux drops landmarks it does not find (shifting the rest) and keeps a peak of the
    network's background channel; ctrlgen keeps index order and leaves the background out."""
    def sparse_face(x):
        maps = designed_face(x)[-1].clone()
        maps[0, 5] = 0  # landmark 5 not found
        maps[0, 70, 10, 10] = 1.0  # a background peak
        return [maps]

    monkeypatch.setattr(designed_networks[2].model, "forward", sparse_face)
    face = _points(preprocess("openpose_face", person_image(), **SMALL).data["people"][0]["face_keypoints_2d"])
    assert face.shape == (70, 3)
    assert face[5].tolist() == [0, 0, 0] and (np.delete(face[:, 2], 5) == 1).all()


@pytest.mark.usefixtures("memoized_networks")
def test_nobody_gives_an_empty_map_and_json():
    result = preprocess("openpose_full", contract_image(), **SMALL)  # the random network finds nobody
    assert not result.image.any()
    assert result.data == {"people": [], "canvas_width": 97, "canvas_height": 75, "line_scale": 75 / 128}


@pytest.mark.slow
def test_real_hand_and_face_networks_run_at_their_real_sizes(designed_networks, monkeypatch):
    """The random hand (4 scales up to 736 px) and face (384 px) networks on a designed body."""
    from controlnet_aux.open_pose.hand import Hand

    body, hand, face = designed_networks
    for net in (hand, face):  # the real forward, not the module's memo or the designed maps
        monkeypatch.setattr(net.model, "forward", type(net.model).forward.__get__(net.model))
    # No left arm, so one hand crop: the 736 px scale alone takes seconds on a CPU core.
    monkeypatch.setattr(body.model, "forward", lambda x: designed_body(x, missing=(5, 6, 7)))
    calls, original = [], Hand.__call__
    monkeypatch.setattr(Hand, "__call__", lambda self, crop: calls.append(crop.shape) or original(self, crop))
    (person,) = preprocess("openpose_full", person_image(), **SMALL).data["people"]
    assert len(calls) == 1
    assert len(person["hand_right_keypoints_2d"]) == 63 and person["hand_left_keypoints_2d"] is None
    assert person["face_keypoints_2d"] is None or len(person["face_keypoints_2d"]) == 210


def test_missing_weights_name_the_file_and_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(annotators, "LOADED", annotators.LoadedModels())  # keep the module's nets
    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(tmp_path))
    annotators.reset_default_store()
    try:
        with pytest.raises(ModelNotFoundError) as info:
            preprocess("openpose_hand", np.zeros((64, 64, 3), np.uint8))
    finally:
        monkeypatch.undo()
        annotators.reset_default_store()
    message = str(info.value)
    assert "'openpose' needs its weights" in message and "body_pose_model.pth" in message
    assert str(tmp_path) in message and "lllyasviel/Annotators" in message


def test_a_file_of_the_wrong_network_is_a_clear_error(tmp_path, monkeypatch):

    folder = annotator_downloads(tmp_path, "openpose")
    torch.save({"conv1_1.weight": torch.zeros(1)}, folder / "body_pose_model.pth")
    monkeypatch.setattr(annotators, "LOADED", annotators.LoadedModels())
    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(tmp_path))
    annotators.reset_default_store()
    try:
        with pytest.raises(ModelFormatError, match="is not an OpenPose body_pose_model.pth"):
            openpose._network(openpose.BODY, "handpose_model", strip_first_key_part=True)
    finally:
        monkeypatch.undo()
        annotators.reset_default_store()


@pytest.mark.weights
@pytest.mark.parametrize("name", list(VARIANT_FLAGS))
def test_real_weights_match_controlnet_aux(real_weight, astronaut, name):
    from controlnet_aux.open_pose import OpenposeDetector
    from controlnet_aux.open_pose.body import Body
    from controlnet_aux.open_pose.face import Face
    from controlnet_aux.open_pose.hand import Hand

    body, hands, face = VARIANT_FLAGS[name]
    detector = OpenposeDetector(Body(str(real_weight(openpose.BODY))), Hand(str(real_weight(openpose.HAND))),
                                Face(str(real_weight(openpose.FACE))))
    expected = detector(astronaut, detect_resolution=512, image_resolution=512, include_body=body,
                        include_hand=hands, include_face=face, output_type="np")
    result = preprocess(name, astronaut, detect_resolution=512)
    assert result.data["people"], "the real networks find the astronaut"
    if face:  # controlnet-aux also draws a dot (radius 3) for the face network's background channel
        assert (result.image != expected).any(axis=2).sum() <= 40 * len(result.data["people"])
    else:
        assert np.array_equal(result.image, expected)
