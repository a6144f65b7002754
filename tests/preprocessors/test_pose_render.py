"""render_openpose: OpenPose JSON -> the map, as controlnet-aux draws it; editing and validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctrlgen.preprocessors.pose.openpose import PoseJSONError, render_openpose

STANDING = [(64, 20), (64, 36), (48, 38), (42, 58), (38, 76), (80, 38), (86, 58), (90, 76), (54, 76),
            (52, 98), (50, 120), (74, 76), (76, 98), (78, 120), (60, 16), (68, 16), (55, 19), (73, 19)]


def pose_json(body=STANDING, width=128, height=128, **parts):
    person = {"pose_keypoints_2d": [v for x, y in body for v in (x, y, 1.0)]}
    person.update(parts)
    return {"people": [person], "canvas_width": width, "canvas_height": height}


def random_people(rng, count=3, missing=0.2):
    """Random normalised poses (some points missing) as controlnet-aux PoseResults and as JSON."""
    from controlnet_aux.open_pose import PoseResult
    from controlnet_aux.open_pose.body import BodyResult, Keypoint

    def points(n, can_miss):
        return [None if can_miss and rng.random() < missing else
                Keypoint(float(rng.uniform(0.02, 0.98)), float(rng.uniform(0.02, 0.98))) for _ in range(n)]

    poses = [PoseResult(BodyResult(points(18, True), 0.0, 0), points(21, False), points(21, False),
                        points(70, False)) for _ in range(count)]

    def flat(keypoints):
        return [v for k in keypoints for v in ((0.0, 0.0, 0.0) if k is None else (k.x, k.y, 1.0))]

    people = [{"pose_keypoints_2d": flat(p.body.keypoints), "hand_left_keypoints_2d": flat(p.left_hand),
               "hand_right_keypoints_2d": flat(p.right_hand), "face_keypoints_2d": flat(p.face)} for p in poses]
    return poses, people


@pytest.mark.parametrize(("width", "height"), [(512, 512), (333, 517), (96, 64)])
def test_draws_exactly_what_controlnet_aux_draws(width, height):
    """Normalised coordinates and OpenPose's own limb width (line_scale 1): controlnet-aux's
    draw_poses, pixel for pixel, for body, hands and face alone and together."""
    from controlnet_aux.open_pose import draw_poses

    poses, people = random_people(np.random.default_rng(width))
    data = {"people": people, "canvas_width": width, "canvas_height": height}
    for body, hands, face in ((True, True, True), (True, False, False), (False, True, False), (False, False, True)):
        expected = draw_poses(poses, height, width, draw_body=body, draw_hand=hands, draw_face=face)
        got = render_openpose(data, body=body, hands=hands, face=face, line_scale=1.0)
        assert expected.any() and np.array_equal(got, expected), (body, hands, face)


def test_pixel_and_normalised_coordinates_draw_the_same():
    pixels = pose_json()
    normalised = pose_json([(x / 128, y / 128) for x, y in STANDING])
    assert np.array_equal(render_openpose(pixels), render_openpose(normalised))
    assert np.array_equal(render_openpose(normalised, coordinates="normalized"), render_openpose(pixels))
    # "pixels" forces pixel reading: the normalised pose then lies in the top-left pixel
    assert render_openpose(normalised, coordinates="pixels")[4:].sum() == 0


def test_editing_a_keypoint_moves_its_limb():
    before = render_openpose(pose_json())
    moved = list(STANDING)
    moved[4] = (20, 100)  # the right wrist, from (38, 76)
    after = render_openpose(pose_json(moved))
    changed = np.argwhere((before != after).any(axis=2))
    # only pixels around the right forearm (elbow (42, 58) -> wrist) changed ...
    assert changed[:, 1].max() <= 48 and changed[:, 0].min() >= 50
    # ... the old wrist is gone and the new one is drawn in the wrist's colour (170, 255, 0)
    assert tuple(before[76, 38]) == (170, 255, 0) and not after[76, 38].any()
    assert tuple(after[100, 20]) == (170, 255, 0)
    # the forearm limb (colour (255, 255, 0) × 0.6) now runs through the new midpoint (31, 79)
    assert tuple(after[79, 31]) == (153, 153, 0) and not before[79, 31].any()


def test_canvas_scales_to_the_requested_size_and_thicker_limbs():
    data = {**pose_json(), "line_scale": 1.0}
    small, large = render_openpose(data), render_openpose(data, 256, 256)
    assert large.shape == (256, 256, 3)
    # the same pose at twice the size with limbs twice as wide: about four times the pixels
    assert 3.5 < (large > 0).any(axis=2).sum() / (small > 0).any(axis=2).sum() < 4.5
    stretched = render_openpose(data, 256, 128)
    assert tuple(stretched[76, 76]) == (170, 255, 0)  # the right wrist (38, 76) -> (76, 76)


def test_line_scale_in_the_json_is_honoured():
    thin = render_openpose({**pose_json(), "line_scale": 0.25})
    thick = render_openpose({**pose_json(), "line_scale": 2.0})
    default = render_openpose(pose_json())  # 128 px: 128 / 512 = 0.25
    assert np.array_equal(thin, default)
    assert (thick > 0).sum() > 3 * (thin > 0).sum()
    assert np.array_equal(render_openpose(pose_json(), line_scale=2.0), thick)


def test_body_25_and_missing_points():
    body25 = [0.0] * 75
    for coco, b25 in enumerate((0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)):
        body25[3 * b25 : 3 * b25 + 3] = (*STANDING[coco], 1.0)
    body25[3 * 8 : 3 * 8 + 3] = (64, 76, 1.0)  # mid-hip: not in the 18-point layout
    from_25 = render_openpose({"people": [{"pose_keypoints_2d": body25}], "canvas_width": 128, "canvas_height": 128})
    assert np.array_equal(from_25, render_openpose(pose_json()))
    missing = pose_json()
    missing["people"][0]["pose_keypoints_2d"][12:15] = [0.0, 0.0, 0.0]  # the right wrist not found
    drawn = render_openpose(missing)
    assert not drawn[76, 38].any() and drawn[58, 42].any()


def test_hands_and_face_can_be_left_out():
    hand = [v for i in range(21) for v in (30 + i, 100 + (i % 4), 1.0)]
    face = [v for i in range(70) for v in (50 + i % 20, 10 + i // 20, 1.0)]
    data = pose_json(hand_right_keypoints_2d=hand, face_keypoints_2d=face, hand_left_keypoints_2d=None)
    everything = render_openpose(data)
    assert (everything == 255).all(axis=2).any() and (everything == (0, 0, 255)).all(axis=2).any()
    only_body = render_openpose(data, hands=False, face=False)
    assert np.array_equal(only_body, render_openpose(pose_json()))
    assert not render_openpose(data, body=False, hands=False, face=False).any()


def test_json_text_and_empty_people():
    assert np.array_equal(render_openpose(json.dumps(pose_json())), render_openpose(pose_json()))
    blank = render_openpose({"people": [], "canvas_width": 40, "canvas_height": 30})
    assert blank.shape == (30, 40, 3) and not blank.any()
    assert render_openpose({"people": []}, 20, 10).shape == (10, 20, 3)


@pytest.mark.parametrize(("data", "message"), [
    ([1, 2], "must be an object with 'people'"),
    ({"people": {}}, "'people' must be a list"),
    ({"people": ["x"], "canvas_width": 8, "canvas_height": 8}, r"people\[0\] must be an object"),
    ({"people": [{"pose_keypoints_2d": [1, 2, 1] * 17}], "canvas_width": 8, "canvas_height": 8},
     r"people\[0\].pose_keypoints_2d has 51 numbers; expected 18 points \(54 numbers\) or 25 points"),
    ({"people": [{"pose_keypoints_2d": [1, 2]}], "canvas_width": 8, "canvas_height": 8}, "has 2 numbers"),
    ({"people": [{"hand_left_keypoints_2d": "none"}], "canvas_width": 8, "canvas_height": 8},
     "hand_left_keypoints_2d must be a list"),
    ({"people": [{"face_keypoints_2d": [float("nan")] + [0.0] * 209}], "canvas_width": 8, "canvas_height": 8},
     r"face_keypoints_2d\[0\] is nan; keypoint values must be finite numbers"),
    ({"people": [{"pose_keypoints_2d": ["1"] + [0] * 53}], "canvas_width": 8, "canvas_height": 8},
     r"pose_keypoints_2d\[0\] is '1'"),
    ({"people": []}, "no canvas_width/canvas_height; pass width and height"),
    ({"people": [], "canvas_width": -5, "canvas_height": 8}, "canvas_width=-5 is not a size in pixels"),
    ({"people": [], "canvas_width": 8, "canvas_height": 8, "line_scale": "thick"}, "line_scale is 'thick'"),
    ("{not json", "not valid JSON"),
])
def test_invalid_json_is_a_clear_error(data, message):
    with pytest.raises(PoseJSONError, match=message):
        render_openpose(data)


def test_invalid_arguments_are_clear_errors():
    with pytest.raises(PoseJSONError, match="coordinates='cm'"):
        render_openpose(pose_json(), coordinates="cm")
    with pytest.raises(PoseJSONError, match="line_scale=0"):
        render_openpose(pose_json(), line_scale=0)
    with pytest.raises(PoseJSONError, match="cannot render at 20000×128"):
        render_openpose(pose_json(), 20000)
    assert issubclass(PoseJSONError, ValueError)
