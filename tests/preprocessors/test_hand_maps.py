"""``hand_openpose`` and ``hand_depth`` (preprocessors/pose/hands.py): the hand's structure as
ControlNet maps, from mediapipe's real hand landmarks on insightface's ``t1.jpg`` and from
hands whose geometry is known."""

from __future__ import annotations

import numpy as np
import pytest

import ctrlgen
from ctrlgen.core.errors import ParamError
from ctrlgen.preprocessors.pose import hands as hand_maps

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def group_photo() -> np.ndarray:
    """insightface's ``t1.jpg`` (1280×886): three hands in view (tests/detectors/)."""
    import importlib.util
    from pathlib import Path

    from PIL import Image

    pytest.importorskip("mediapipe")
    spec = importlib.util.find_spec("insightface")
    if spec is None:
        pytest.fail("insightface is not installed (see requirements-nodeps.txt)")
    path = Path(spec.origin).parent / "data" / "images" / "t1.jpg"
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def landmarks(group_photo) -> list[np.ndarray]:
    found = ctrlgen.detect("mediapipe_hands", group_photo)
    assert len(found) == 3
    return [d.keypoints for d in found]


def pixel(image: np.ndarray, point) -> np.ndarray:
    return image[int(point[1]), int(point[0])]


def test_openpose_skeleton_from_the_real_landmarks(group_photo, landmarks):
    result = ctrlgen.preprocess("hand_openpose", group_photo)
    assert result.image.shape == group_photo.shape
    assert len(result.data["hands"]) == 3
    for hand in landmarks:
        for point in hand:  # every joint is an OpenPose hand joint (blue), lines below them
            assert tuple(pixel(result.image, point)) == (0, 0, 255)
    drawn = result.image.any(axis=2)
    for hand in landmarks:  # nothing is drawn far from the hands
        x0, y0 = hand[:, :2].min(axis=0) - 30
        x1, y1 = hand[:, :2].max(axis=0) + 30
        drawn[max(0, int(y0)) : int(y1), max(0, int(x0)) : int(x1)] = False
    assert not drawn.any()


def test_depth_map_from_the_real_landmarks_is_near_bright(group_photo, landmarks):
    depth = ctrlgen.preprocess("hand_depth", group_photo).image
    assert (depth[..., 0] == depth[..., 1]).all() and (depth[..., 1] == depth[..., 2]).all()  # grey
    for hand in landmarks:
        values = np.array([int(pixel(depth, p)[0]) for p in hand])
        assert (values >= hand_maps.FAR - 2).all()  # every landmark is on the hand
        nearest = int(np.argmin(hand[:, 2]))
        assert values[nearest] >= hand_maps.NEAR - 2
        # the z-buffer: each landmark shows at least its own shade (a nearer bone may cover it)
        shade = hand_maps.FAR + (hand_maps.NEAR - hand_maps.FAR) * (hand[:, 2].max() - hand[:, 2]) / np.ptp(hand[:, 2])
        assert (values >= shade - 3).all()
    assert (depth[0] == 0).all()  # the background is black


def a_hand(tilt: float = 0.0, mirror: bool = False) -> np.ndarray:
    """The template hand fitted to a wrist at (100, 180) and a middle knuckle at (100, 120), its
    z tilted: positive ``tilt`` brings the fingertips nearer."""
    found = np.zeros((21, 3), np.float32)
    found[0], found[9] = (100, 180, 0), (100, 120, 0)
    found[5], found[17] = (80, 125, 0), (120, 125, 0)  # index knuckle on the left
    if mirror:
        found[5], found[17] = found[17].copy(), found[5].copy()
    hand = hand_maps.template_hand(found)
    hand[:, 2] = -tilt * (180 - hand[:, 1])
    return hand


def test_depth_ordering_follows_z():
    tilted = hand_maps.draw_hand_depth([a_hand(tilt=1.0)], 200, 200)[..., 0]
    tip, wrist = a_hand()[12], a_hand()[0]
    assert pixel(tilted, tip) > pixel(tilted, wrist) + 100
    away = hand_maps.draw_hand_depth([a_hand(tilt=-1.0)], 200, 200)[..., 0]
    assert pixel(away, tip) + 100 < pixel(away, wrist)
    assert tilted[:, :20].max() == 0 and tilted[195:].max() == 0  # only the hand is drawn


def test_template_hand_fits_wrist_knuckle_and_thumb_side():
    hand = a_hand()
    assert np.allclose(hand[0, :2], (100, 180)) and np.allclose(hand[9, :2], (100, 120))
    tips = hand[[4, 8, 12, 16, 20], :2]
    assert tips[:, 1].max() < 140  # the fingers point up, past the knuckles
    gaps = [np.hypot(*(a - b)) for i, a in enumerate(tips) for b in tips[i + 1 :]]
    assert min(gaps) > 10  # five separated fingertips
    assert hand[4, 0] < 100 and hand[20, 0] > 100  # thumb on the index knuckle's side (left) ...
    mirrored = a_hand(mirror=True)
    assert mirrored[4, 0] > 100 and mirrored[20, 0] < 100  # ... and on the right when it is there
    with pytest.raises(ParamError, match="cannot be oriented"):
        hand_maps.template_hand(np.zeros((21, 3), np.float32))


def test_template_param_draws_the_fitted_hand(landmarks, group_photo):
    result = ctrlgen.preprocess("hand_depth", np.zeros((886, 1280, 3), np.uint8), template=True,
                                keypoints=[hand.tolist() for hand in landmarks])
    for drawn, found in zip(result.data["hands"], landmarks, strict=True):
        drawn = np.array(drawn)
        assert np.allclose(drawn[[0, 9], :2], found[[0, 9], :2], atol=0.01)
        assert pixel(result.image, drawn[12])[0] > 0


def test_keypoints_are_checked():
    with pytest.raises(ParamError, match=r"keypoints: a hand is 21 points"):
        ctrlgen.preprocess("hand_openpose", np.zeros((64, 64, 3), np.uint8), keypoints=[[1, 2], [3, 4]])


def test_no_hand_gives_a_black_map():
    from skimage import data

    assert not ctrlgen.preprocess("hand_depth", data.astronaut()).image.any()
