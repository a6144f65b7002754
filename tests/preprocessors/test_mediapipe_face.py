"""mediapipe_face: contract, the mesh on the astronaut's face, and controlnet_aux's drawing exactly."""

from __future__ import annotations

import json

import numpy as np

from ctrlgen.core.engine.preprocess import preprocess
from ctrlgen.testing.contracts import PreprocessorContract

FACE = (170, 60, 280, 180)  # x0, y0, x1, y1 of the astronaut's face (MediaPipe's box, with a margin)


class TestMediapipeFaceContract(PreprocessorContract):
    preprocessor = "mediapipe_face"
    params = {"detect_resolution": 256}

    def contract_input(self):
        from skimage import data

        return np.ascontiguousarray(data.astronaut()[20:245:2, 110:335:2])  # the face, 113×113


def test_mesh_is_drawn_on_the_face_and_nowhere_else(astronaut):
    result = preprocess("mediapipe_face", astronaut)
    json.dumps(result.data)
    drawn = result.image.max(axis=2) > 0
    ys, xs = np.nonzero(drawn)
    assert len(ys) > 1500
    x0, y0, x1, y1 = FACE
    assert xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1
    (face,) = result.data["faces"]
    assert len(face["landmarks"]) == 478
    bx0, by0, bx1, by1 = face["bbox"]
    assert x0 <= bx0 < bx1 <= x1 and y0 <= by0 < by1 <= y1
    # the two pupils (iris centres 468, 473) are at eye height, left and right of the nose tip (1)
    right_pupil, left_pupil, nose = (np.array(face["landmarks"][i]) for i in (468, 473, 1))
    assert right_pupil[0] < nose[0] < left_pupil[0]
    assert abs(right_pupil[1] - left_pupil[1]) < 15 and right_pupil[1] < nose[1]


def test_matches_controlnet_aux_mediapipe_face(astronaut):
    from controlnet_aux.mediapipe_face.mediapipe_face_common import generate_annotation

    expected = generate_annotation(astronaut, 1, 0.5)  # astronaut is 512²: no resizing on either side
    result = preprocess("mediapipe_face", astronaut, detect_resolution=512, max_faces=1, min_confidence=0.5)
    assert np.array_equal(result.image, expected)
    colours = {tuple(c) for c in result.image.reshape(-1, 3)[result.image.reshape(-1, 3).any(axis=1)]}
    assert (10, 200, 10) in colours and (10, 180, 10) in colours  # face oval and lips, RGB


def test_max_faces_limits_how_many_are_drawn(astronaut):
    face = np.ascontiguousarray(astronaut[20:276, 90:346])  # 256² around the face
    pair = np.concatenate([face, face[:, ::-1]], axis=1)  # two faces side by side
    one = preprocess("mediapipe_face", pair, detect_resolution=256, max_faces=1).data["faces"]
    two = preprocess("mediapipe_face", pair, detect_resolution=256, max_faces=2).data["faces"]
    assert len(one) == 1 and len(two) == 2
    centres = sorted(np.mean(f["landmarks"], axis=0)[0] for f in two)
    assert centres[0] < 256 < centres[1]


def test_no_face_gives_a_black_map():
    flat = np.full((128, 128, 3), 90, np.uint8)
    result = preprocess("mediapipe_face", flat)
    assert not result.image.any() and result.data == {"faces": []}


def test_a_resized_map_is_controlnet_aux_drawing_at_the_detection_size_brought_back(astronaut):
    """Drawn in RGB directly (no flipped copy of the canvas): the same pixels as drawing
    controlnet_aux's way (BGR, then flipped) at the detection size and resizing back."""
    from controlnet_aux.mediapipe_face.mediapipe_face_common import generate_annotation

    from ctrlgen.core.images import resize

    big = resize(astronaut, 1024, 768)
    at_detection = generate_annotation(resize(big, 512, 384), 1, 0.5)
    result = preprocess("mediapipe_face", big, detect_resolution=384, max_faces=1, min_confidence=0.5)
    assert result.image.flags.c_contiguous
    assert np.array_equal(result.image, resize(at_detection, 1024, 768))
