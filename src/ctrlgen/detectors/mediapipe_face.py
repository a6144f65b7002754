"""MediaPipe faces: face detection (short and full range) and face mesh (bundled weights, offline).

- ``mediapipe_face_short`` / ``mediapipe_face_full``: MediaPipe face detection with
  ``model_selection=0`` (faces within ~2 m, large in the frame) or ``1`` (up to ~5 m: group
  photos). Box, score and six keypoints (the eyes — the subject's right eye first —, nose
  tip, mouth centre, the ears); no mask. ADetailer's ``mediapipe_face_short`` /
  ``_full`` are the same models.
- ``mediapipe_face_mesh``: MediaPipe face mesh (478 landmarks); the mask is the face oval
  (the polygon through the mesh's outline landmarks), the box the oval's. The mesh gives no
  per-face score: each face it keeps has confidence 1.
"""

from __future__ import annotations

import threading

import numpy as np

from ctrlgen.core.models.annotators import loaded, unloader
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import Detection, DetectorSpec, Param
from ctrlgen.detectors.shapes import box_of_mask, outline_order, polygon_mask

OWNER = "mediapipe_face_detectors"
_LOCK = threading.Lock()  # a MediaPipe graph runs one image at a time
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear", "left_ear")

CONFIDENCE = Param("confidence", "float", default=0.3, min=0.01, max=1.0, step=0.01,
                   description="Detection score below which a face is ignored (ADetailer: 0.3)")
MESH_PARAMS = (
    CONFIDENCE,
    Param("max_faces", "int", default=10, min=1, max=50, step=1, description="Most faces the mesh looks for"),
)


def _face_detection(model_selection: int, confidence: float):
    import mediapipe as mp

    return mp.solutions.face_detection.FaceDetection(model_selection=model_selection,
                                                     min_detection_confidence=confidence)


def _detect_faces(image: np.ndarray, model_selection: int, confidence: float) -> list[Detection]:
    height, width = image.shape[:2]
    model = loaded(OWNER, lambda: _face_detection(model_selection, confidence), key=(model_selection, confidence))
    with _LOCK:
        found = model.process(image).detections or []
    detections = []
    for face in found:
        if face.score[0] < confidence:  # MediaPipe thresholds before its box blending; hold to the param
            continue
        box = face.location_data.relative_bounding_box
        points = np.array([(p.x * width, p.y * height) for p in face.location_data.relative_keypoints], np.float32)
        detections.append(Detection(
            box=(box.xmin * width, box.ymin * height, (box.xmin + box.width) * width,
                 (box.ymin + box.height) * height),
            confidence=float(face.score[0]), label="face", keypoints=points,
            data={"keypoint_names": list(KEYPOINT_NAMES)}))
    return detections


def run_face_short(image: np.ndarray, *, confidence: float) -> list[Detection]:
    return _detect_faces(image, 0, confidence)


def run_face_full(image: np.ndarray, *, confidence: float) -> list[Detection]:
    return _detect_faces(image, 1, confidence)


def _face_mesh(max_faces: int, confidence: float):
    import mediapipe as mp

    return mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=max_faces,
                                           refine_landmarks=True, min_detection_confidence=confidence)


def _oval():
    import mediapipe as mp

    return outline_order(mp.solutions.face_mesh.FACEMESH_FACE_OVAL)


def run_face_mesh(image: np.ndarray, *, confidence: float, max_faces: int) -> list[Detection]:
    height, width = image.shape[:2]
    mesh = loaded(OWNER, lambda: _face_mesh(max_faces, confidence), key=("mesh", max_faces, confidence))
    oval = loaded(OWNER, _oval, key="oval")
    with _LOCK:
        found = mesh.process(image).multi_face_landmarks or []
    detections = []
    for landmarks in found:
        points = np.array([(p.x * width, p.y * height, p.z * width) for p in landmarks.landmark], np.float32)
        mask = polygon_mask(points[oval], width, height)
        box = box_of_mask(mask)
        if box is None:  # the face lies outside the image
            continue
        detections.append(Detection(box=box, confidence=1.0, label="face", mask=mask, keypoints=points,
                                    data={"oval": oval}))
    return detections


@hookimpl
def ctrlgen_detectors():
    common = {"finds": ("face",), "requires": ("mediapipe", "cv2"), "unload": unloader(OWNER)}
    yield DetectorSpec(
        name="mediapipe_face_short", run=run_face_short, params=(CONFIDENCE,),
        description="MediaPipe face detection, short range (faces large in the frame): box, score, "
                    "6 keypoints (bundled weights, offline)", **common)
    yield DetectorSpec(
        name="mediapipe_face_full", run=run_face_full, params=(CONFIDENCE,),
        description="MediaPipe face detection, full range (small faces too: group photos): box, score, "
                    "6 keypoints (bundled weights, offline)", **common)
    yield DetectorSpec(
        name="mediapipe_face_mesh", run=run_face_mesh, params=MESH_PARAMS,
        description="MediaPipe face mesh: the face oval as mask, 478 3-D landmarks (bundled weights, offline)",
        **common)
