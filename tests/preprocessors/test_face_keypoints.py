"""face_keypoints: MediaPipe (real, offline) on real photos; insightface's SCRFD through its own class
on a tiny random ONNX with the real I/O contract; InstantID's drawing as the reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ctrlgen.core.engine.preprocess import preprocess
from ctrlgen.core.errors import ModelNotFoundError
from ctrlgen.core.models import annotators
from ctrlgen.testing.contracts import PreprocessorContract
from ctrlgen.testing.roots import annotator_downloads
from ctrlgen.testing.tiny_ip_adapter import write_tiny_scrfd

FACE = (170, 60, 280, 180)  # the astronaut's face, x0, y0, x1, y1
# Faces in insightface's t1.jpg that MediaPipe's full-range detector finds (boxes by eye, generous)
T1_FACES = [(40, 270, 190, 410), (430, 270, 600, 430), (700, 340, 860, 500)]


def instantid_draw_kps(width, height, kps):
    """The reference: InstantID's ``draw_kps`` (pipeline_stable_diffusion_xl_instantid.py), on black."""
    import cv2

    color_list = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]
    stickwidth = 4
    limb_seq = np.array([[0, 2], [1, 2], [3, 2], [4, 2]])
    kps = np.array(kps)
    out_img = np.zeros([height, width, 3])
    for index in limb_seq:
        color = color_list[index[0]]
        x = kps[index][:, 0]
        y = kps[index][:, 1]
        length = ((x[0] - x[1]) ** 2 + (y[0] - y[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(y[0] - y[1], x[0] - x[1]))
        polygon = cv2.ellipse2Poly((int(np.mean(x)), int(np.mean(y))), (int(length / 2), stickwidth),
                                   int(angle), 0, 360, 1)
        out_img = cv2.fillConvexPoly(out_img.copy(), polygon, color)
    out_img = (out_img * 0.6).astype(np.uint8)
    for idx_kp, kp in enumerate(kps):
        x, y = kp
        out_img = cv2.circle(out_img.copy(), (int(x), int(y)), 10, color_list[idx_kp], -1)
    return out_img.astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_scrfd(annotator_root):
    """sd-webui-controlnet's InstantID layout: downloads/insightface/models/antelopev2/<file>."""
    folder = annotator_downloads(annotator_root, "insightface") / "models" / "antelopev2"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "scrfd_10g_bnkps.onnx"
    write_tiny_scrfd(path)
    return path


class TestFaceKeypointsMediapipeContract(PreprocessorContract):
    preprocessor = "face_keypoints"
    params = {"detector": "mediapipe"}

    def contract_input(self):
        from skimage import data

        return np.ascontiguousarray(data.astronaut()[20:245:2, 110:335:2])


@pytest.mark.usefixtures("tiny_scrfd", "use_annotator_root")
class TestFaceKeypointsInsightfaceContract(PreprocessorContract):
    preprocessor = "face_keypoints"
    params = {"det_size": 128, "max_faces": 3}


def assert_plausible_face(face):
    x0, y0, x1, y1 = face["bbox"]
    kps = np.array(face["kps"])
    assert ((kps[:, 0] >= x0) & (kps[:, 0] <= x1) & (kps[:, 1] >= y0) & (kps[:, 1] <= y1)).all(), face
    eye_a, eye_b, nose, mouth_a, mouth_b = kps
    assert eye_a[0] < nose[0] < eye_b[0] and mouth_a[0] < mouth_b[0]  # image-left point first
    assert max(eye_a[1], eye_b[1]) < nose[1] < min(mouth_a[1], mouth_b[1])  # eyes, nose, mouth downwards


def test_mediapipe_keypoints_land_on_the_astronauts_face(astronaut):
    result = preprocess("face_keypoints", astronaut, detector="mediapipe")
    (face,) = result.data["faces"]
    assert_plausible_face(face)
    x0, y0, x1, y1 = FACE
    assert x0 <= face["bbox"][0] < face["bbox"][2] <= x1 and y0 <= face["bbox"][1] < face["bbox"][3] <= y1
    # the map is InstantID's drawing of those points, and the discs sit on them
    assert np.array_equal(result.image, instantid_draw_kps(512, 512, face["kps"]))
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]
    for (x, y), colour in zip(face["kps"], colours, strict=True):
        assert tuple(result.image[int(y), int(x)]) == colour


def test_mediapipe_finds_faces_in_the_group_photo(group_photo):
    result = preprocess("face_keypoints", group_photo, detector="mediapipe", max_faces=10)
    json.dumps(result.data)
    faces = result.data["faces"]
    assert len(faces) >= 3
    for face in faces:
        assert_plausible_face(face)
    for x0, y0, x1, y1 in T1_FACES:  # every face we know is there is found, with its points inside
        assert any(all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in face["kps"]) for face in faces)
    areas = [(f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1]) for f in faces]
    assert areas == sorted(areas, reverse=True)
    largest = preprocess("face_keypoints", group_photo, detector="mediapipe").data["faces"]
    assert largest == faces[:1]


@pytest.mark.usefixtures("use_annotator_root")
def test_insightface_path_matches_scrfd_and_instantid_drawing(tiny_scrfd, astronaut):
    from insightface.model_zoo.scrfd import SCRFD

    detector = SCRFD(model_file=str(tiny_scrfd))
    detector.prepare(ctx_id=-1)
    boxes, kpss = detector.detect(astronaut[:, :, ::-1].copy(), input_size=(160, 160), det_thresh=0.5)
    assert len(boxes) >= 2
    largest = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    result = preprocess("face_keypoints", astronaut, det_size=160)
    json.dumps(result.data)
    (face,) = result.data["faces"]
    assert np.allclose(face["kps"], kpss[largest], atol=0.01)
    assert np.allclose(face["bbox"], boxes[largest, :4], atol=0.01)
    assert np.array_equal(result.image, instantid_draw_kps(512, 512, kpss[largest]))
    several = preprocess("face_keypoints", astronaut, det_size=160, max_faces=4).data["faces"]
    assert len(several) == min(4, len(boxes)) and several[0] == face


def test_buffalo_l_detector_in_comfyuis_insightface_folder_is_found(tiny_scrfd, tmp_path, monkeypatch, astronaut):
    import shutil

    folder = tmp_path / "models" / "insightface" / "models" / "buffalo_l"  # ComfyUI (InstantID / IPAdapter)
    folder.mkdir(parents=True)
    shutil.copy(tiny_scrfd, folder / "det_10g.onnx")
    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(tmp_path))
    annotators.unload()
    annotators.reset_default_store()
    try:
        result = preprocess("face_keypoints", astronaut, det_size=128)
    finally:
        annotators.unload()
        annotators.reset_default_store()
    assert len(result.data["faces"]) == 1 and result.image.any()


def test_missing_scrfd_names_the_file_the_folders_and_the_offline_choice(tmp_path, monkeypatch, astronaut):
    (tmp_path / "models" / "insightface").mkdir(parents=True)
    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(tmp_path))
    annotators.unload()
    annotators.reset_default_store()
    try:
        with pytest.raises(ModelNotFoundError) as info:
            preprocess("face_keypoints", astronaut)
    finally:
        annotators.reset_default_store()
    message = str(info.value)
    assert "antelopev2/scrfd_10g_bnkps.onnx" in message and "det_10g.onnx" in message
    assert str(tmp_path / "models" / "insightface") in message
    assert "detector=mediapipe" in message


@pytest.mark.weights
def test_real_scrfd_finds_the_astronauts_face_as_insightface_does(real_weight, astronaut):
    from insightface.model_zoo.scrfd import SCRFD

    from ctrlgen.preprocessors.face.detect import SCRFD as SCRFD_WEIGHT

    detector = SCRFD(model_file=str(real_weight(SCRFD_WEIGHT)))
    detector.prepare(ctx_id=-1)
    boxes, kpss = detector.detect(astronaut[:, :, ::-1].copy(), input_size=(640, 640), det_thresh=0.5)
    largest = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    result = preprocess("face_keypoints", astronaut)
    (face,) = result.data["faces"]
    assert_plausible_face(face)
    assert np.allclose(face["kps"], kpss[largest], atol=0.01)
    assert np.array_equal(result.image, instantid_draw_kps(512, 512, kpss[largest]))
