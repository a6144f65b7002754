"""mediapipe_openpose: real, offline (mediapipe's bundled models) on real photos.

Checked against things the pose models did not produce: faces from mediapipe's face
*detector* (a separate model) on the astronaut, hand-annotated faces and hands on
insightface's group photo, and mediapipe selfie segmentation's person mask.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctrlgen.core.engine.preprocess import preprocess
from ctrlgen.preprocessors.pose.openpose import render_openpose
from ctrlgen.testing.contracts import PreprocessorContract

# t1.jpg (1280×886), annotated by eye: the six faces and the hands one can see (x0, y0, x1, y1).
T1_FACES = {"rachel": (60, 285, 165, 395), "monica": (255, 160, 370, 275), "ross": (450, 275, 590, 420),
            "chandler": (720, 350, 850, 485), "joey": (870, 70, 1010, 210), "phoebe": (1115, 285, 1235, 405)}
T1_HANDS = [(175, 420, 260, 510), (295, 620, 365, 672), (610, 395, 690, 500), (690, 495, 780, 580),
            (910, 595, 1000, 655), (990, 425, 1095, 505), (1180, 560, 1260, 630)]


class TestMediapipeOpenposeContract(PreprocessorContract):
    preprocessor = "mediapipe_openpose"
    params = {"detect_resolution": 128}


class TestMediapipeOpenposeSinglePersonContract(PreprocessorContract):
    preprocessor = "mediapipe_openpose"
    params = {"detect_resolution": 0, "max_people": 1, "hands": False, "face": False}

    def contract_input(self):
        from skimage import data

        return data.astronaut()[::4, ::4].copy()  # a person, so the conversion runs in the contract too


def _inside(point, box, margin=0):
    return box[0] - margin <= point[0] <= box[2] + margin and box[1] - margin <= point[1] <= box[3] + margin


def _person_mask(image):
    import mediapipe as mp

    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as segmenter:
        return segmenter.process(image).segmentation_mask > 0.5


def _body(person):
    return np.array(person["pose_keypoints_2d"]).reshape(18, 3)


@pytest.fixture(scope="module")
def astronaut_pose(astronaut):
    return preprocess("mediapipe_openpose", astronaut)


@pytest.fixture(scope="module")
def group_pose(group_photo):
    return preprocess("mediapipe_openpose", group_photo)


def test_astronaut_skeleton_is_on_the_astronaut(astronaut, astronaut_pose):
    import mediapipe as mp

    with mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5) as detector:
        (detection,) = detector.process(astronaut).detections
    box = detection.location_data.relative_bounding_box
    face = (box.xmin * 512, box.ymin * 512, (box.xmin + box.width) * 512, (box.ymin + box.height) * 512)
    (person,) = astronaut_pose.data["people"]
    body = _body(person)
    nose, neck, right_shoulder, left_shoulder = body[0], body[1], body[2], body[5]
    assert nose[2] == neck[2] == right_shoulder[2] == left_shoulder[2] == 1
    assert _inside(nose, face)
    mask = _person_mask(astronaut)
    assert all(mask[int(y), int(x)] for x, y, _ in (nose, neck, right_shoulder, left_shoulder))
    # her right shoulder is on the image's left; the neck is between the shoulders, below the nose
    assert right_shoulder[0] < neck[0] < left_shoulder[0] and neck[1] > nose[1] + 40
    assert abs(neck[1] - (right_shoulder[1] + left_shoulder[1]) / 2) < 1
    face_points = np.array(person["face_keypoints_2d"]).reshape(70, 3)
    assert (face_points[:, 2] == 1).all() and all(_inside(p, face, margin=15) for p in face_points)
    # the 70-point layout: jaw 0-16 runs from her right (image left) over the chin (8) to her left
    assert face_points[0, 0] < face_points[8, 0] < face_points[16, 0] and face_points[8, 1] > face_points[30, 1]
    # pupils (68 right, 69 left) between the eye corners (36-39 and 42-45)
    assert face_points[36, 0] < face_points[68, 0] < face_points[39, 0] or \
        face_points[39, 0] < face_points[68, 0] < face_points[36, 0]
    assert min(face_points[42, 0], face_points[45, 0]) < face_points[69, 0] < max(face_points[42, 0],
                                                                                    face_points[45, 0])


def test_group_photo_finds_the_people_by_their_faces(group_photo, group_pose):
    people = group_pose.data["people"]
    assert 5 <= len(people) <= 6
    matched = set()
    for person in people:
        body = _body(person)
        nose, neck = body[0], body[1]
        assert nose[2] == 1 and neck[2] == 1
        name = next(name for name, box in T1_FACES.items() if _inside(nose, box))
        assert name not in matched, f"two skeletons on {name}'s face"
        matched.add(name)
        assert neck[1] > nose[1]
        if person["face_keypoints_2d"]:
            face = np.array(person["face_keypoints_2d"]).reshape(70, 3)
            assert _inside(face[:, :2].mean(0), T1_FACES[name])
    mask = _person_mask(group_photo)
    on_people = [mask[int(y), int(x)] for person in people for x, y, c in _body(person)[[0, 1, 2, 5]] if c]
    assert np.mean(on_people) >= 0.8


def test_group_photo_hands_are_hands(group_pose):
    hands = [np.array(points).reshape(21, 3) for person in group_pose.data["people"]
             for points in (person["hand_left_keypoints_2d"], person["hand_right_keypoints_2d"]) if points]
    assert len(hands) >= 3
    for hand in hands:
        centre = hand[:, :2].mean(0)
        assert any(_inside(centre, box) for box in T1_HANDS), f"a hand at {centre} where nobody has one"
    centres = [tuple(hand[:, :2].mean(0).round()) for hand in hands]
    assert len(set(centres)) == len(centres), "one hand given to two people"


def _has(image, colour):
    return bool((image == colour).all(axis=2).any())


def test_group_photo_map_has_the_standard_colours_and_matches_its_json(group_pose):
    image = group_pose.image
    assert _has(image, (153, 0, 0)) and _has(image, (255, 0, 0))  # neck→right shoulder limb (×0.6), nose
    assert _has(image, (255, 255, 255)) and _has(image, (0, 0, 255))  # face points, hand points
    assert np.array_equal(render_openpose(json.loads(json.dumps(group_pose.data))), image)


def test_one_person_without_hands_or_face(group_photo):
    result = preprocess("mediapipe_openpose", group_photo, max_people=1, hands=False, face=False,
                        detect_resolution=256)
    (person,) = result.data["people"]
    assert person["hand_left_keypoints_2d"] is None and person["face_keypoints_2d"] is None
    assert any(_inside(_body(person)[0], box) for box in T1_FACES.values())


def test_body_switch_draws_what_the_json_draws_without_its_body(astronaut):
    full = preprocess("mediapipe_openpose", astronaut, max_people=1)
    no_body = preprocess("mediapipe_openpose", astronaut, max_people=1, body=False)
    (person,) = no_body.data["people"]
    assert not any(person["pose_keypoints_2d"]) and person["face_keypoints_2d"]
    assert np.array_equal(no_body.image, render_openpose(full.data, body=False))
    assert not _has(no_body.image, (153, 0, 0)) and _has(full.image, (153, 0, 0))


def test_nobody_in_a_blank_picture():
    result = preprocess("mediapipe_openpose", np.full((96, 128, 3), 200, np.uint8))
    assert result.data["people"] == [] and not result.image.any()
