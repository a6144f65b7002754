"""Five-point face keypoints: detection (insightface SCRFD or MediaPipe) and InstantID's drawing.

The five points are insightface's: the eye on the image's left, the other eye, the nose
tip, the mouth corner on the image's left, the other corner (ArcFace's alignment layout).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from ctrlgen.core.errors import ModelFormatError
from ctrlgen.core.plugins.specs import WeightFile

SCRFD = WeightFile(
    "antelopev2/scrfd_10g_bnkps.onnx",
    folders=("insightface", "annotators"),
    source="https://github.com/deepinsight/insightface/tree/master/python-package#model-zoo "
           "(antelopev2.zip; buffalo_l.zip has det_10g.onnx)",
    alternatives=("buffalo_l/det_10g.onnx", "scrfd_10g_bnkps.onnx", "det_10g.onnx"),
)

KPS_COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))  # eyes and mouth corners, each joined to the nose
# Half the mouth width over the eye distance in ArcFace's 112×112 alignment template
# (eyes 38.29/73.53, mouth corners 41.55/70.73): 29.18 / 35.24 / 2.
MOUTH_HALF_WIDTH = 0.414
_MEDIAPIPE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Face:
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    kps: np.ndarray  # 5×2 pixels
    score: float

    @property
    def area(self) -> float:
        return max(0.0, self.bbox[2] - self.bbox[0]) * max(0.0, self.bbox[3] - self.bbox[1])

    def to_json(self) -> dict:
        return {"bbox": [round(float(v), 2) for v in self.bbox],
                "kps": np.round(self.kps.astype(np.float64), 2).tolist(),
                "score": round(float(self.score), 4)}


def draw_kps(height: int, width: int, faces_kps: list[np.ndarray]) -> np.ndarray:
    """InstantID's ``draw_kps`` on a black ``height``×``width`` canvas, for one face or several.

    Each face's four limbs are filled ellipses (width 4) in the first point's colour, dimmed
    to 60 %, then each point is a disc of radius 10 — pixel for pixel what InstantID draws
    for one face. With several faces all limbs go first, so no disc is dimmed.
    """
    import cv2

    canvas = np.zeros((height, width, 3))
    for kps in faces_kps:
        kps = np.asarray(kps)
        for start, end in LIMBS:
            x, y = kps[[start, end], 0], kps[[start, end], 1]
            length = ((x[0] - x[1]) ** 2 + (y[0] - y[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(y[0] - y[1], x[0] - x[1]))
            polygon = cv2.ellipse2Poly((int(np.mean(x)), int(np.mean(y))), (int(length / 2), 4), int(angle),
                                       0, 360, 1)
            canvas = cv2.fillConvexPoly(canvas, polygon, KPS_COLORS[start])
    canvas = (canvas * 0.6).astype(np.uint8)
    for kps in faces_kps:
        for index, (x, y) in enumerate(np.asarray(kps)):
            canvas = cv2.circle(canvas, (int(x), int(y)), 10, KPS_COLORS[index], -1)
    return canvas


def load_scrfd(path: str, device: str):
    """insightface's own ``SCRFD`` detector on the ONNX file at ``path``."""
    from insightface.model_zoo.scrfd import SCRFD as ScrfdDetector

    detector = ScrfdDetector(model_file=str(path))
    if not device.startswith("cuda"):
        detector.prepare(ctx_id=-1)
    if not detector.use_kps:
        raise ModelFormatError(
            f"{path} is a face detector without keypoints; use scrfd_10g_bnkps.onnx or det_10g.onnx"
        )
    return detector


def detect_scrfd(detector, image: np.ndarray, det_size: int, min_confidence: float) -> list[Face]:
    """Faces found by SCRFD on an RGB image (insightface reads BGR), as InstantID's app.get does.
    ``det_size`` is rounded to a multiple of 32 (SCRFD's feature pyramid needs one)."""
    det_size = max(32, round(det_size / 32) * 32)
    boxes, kpss = detector.detect(np.ascontiguousarray(image[:, :, ::-1]), input_size=(det_size, det_size),
                                  max_num=0, det_thresh=min_confidence)
    return [Face(tuple(float(v) for v in box[:4]), np.asarray(kps, np.float64), float(box[4]))
            for box, kps in zip(boxes, kpss, strict=True)]


def load_mediapipe_detector(min_confidence: float):
    import mediapipe as mp

    # model 1 = full range (faces up to ~5 m away: group photos); 0 only finds close faces.
    return mp.solutions.face_detection.FaceDetection(model_selection=1,
                                                     min_detection_confidence=min_confidence)


def detect_mediapipe(detector, image: np.ndarray) -> list[Face]:
    """Faces from MediaPipe face detection, its six points mapped to the five-point layout.

    MediaPipe gives the eyes (the subject's right eye first, which is on the image's left,
    as insightface's first point), the nose tip, the mouth centre and the ears. The mouth
    corners are estimated from the centre along the eye line, at the template's proportion.
    """
    height, width = image.shape[:2]
    with _MEDIAPIPE_LOCK:
        detections = detector.process(np.ascontiguousarray(image)).detections or []
    faces = []
    for detection in detections:
        box = detection.location_data.relative_bounding_box
        points = np.array([(p.x * width, p.y * height) for p in detection.location_data.relative_keypoints])
        eye_a, eye_b, nose, mouth = points[0], points[1], points[2], points[3]
        half = MOUTH_HALF_WIDTH * (eye_b - eye_a)
        kps = np.stack([eye_a, eye_b, nose, mouth - half, mouth + half])
        bbox = (box.xmin * width, box.ymin * height, (box.xmin + box.width) * width,
                (box.ymin + box.height) * height)
        faces.append(Face(bbox, kps, float(detection.score[0])))
    return faces
