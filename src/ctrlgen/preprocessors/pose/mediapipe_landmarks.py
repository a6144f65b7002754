"""mediapipe Pose + Hands + FaceMesh, converted to OpenPose's 18 body / 21 hand / 70 face points.

The legacy ``mediapipe.solutions`` graphs (bundled .tflite models, nothing to download)
find one person per call, so several people are found one face at a time: the whole
image gives the most prominent person; then every face the face detector finds (on the
whole image and on overlapping tiles, so small faces are not missed) gets a crop around
it, shrunk until Pose's nose lands on that face. Hands are mediapipe Hands on the same
crop, kept when their wrist is the body's wrist; the face is FaceMesh (with irises) on a
crop around the head. Body points need mediapipe's ``visibility`` ≥ ``min_confidence``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ctrlgen.preprocessors.pose.openpose_json import Person

NECK = -1
# OpenPose body index -> mediapipe Pose landmark (NECK: the shoulders' midpoint).
POSE_TO_OPENPOSE = (0, NECK, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7)
# The 68 iBUG/dlib face points from FaceMesh's 468 (jaw, brows, nose, eyes, outer and inner
# lips), then the two pupils from the iris landmarks: OpenPose's 70-point face.
FACE_FROM_MESH = (
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,
    78, 81, 13, 311, 308, 402, 14, 178,
    468, 473,
)
# Crops around a face (x, y, side) tried from wide to tight: (half width, rows below) in sides.
FACE_CROPS = ((3.0, 8.0), (2.0, 6.0), (1.4, 5.0))

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels


class Models:
    """The mediapipe graphs, created on first use (each loads its bundled .tflite)."""

    def __init__(self) -> None:
        self._graphs: dict[str, object] = {}

    def get(self, name: str):
        if name not in self._graphs:
            import mediapipe as mp

            solutions = mp.solutions
            factories = {
                "pose": lambda: solutions.pose.Pose(static_image_mode=True, model_complexity=1,
                                                    enable_segmentation=False, min_detection_confidence=0.5),
                "hands": lambda: solutions.hands.Hands(static_image_mode=True, max_num_hands=2,
                                                       model_complexity=1, min_detection_confidence=0.5),
                "face_mesh": lambda: solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                                                  refine_landmarks=True,
                                                                  min_detection_confidence=0.5),
                "faces": lambda: solutions.face_detection.FaceDetection(model_selection=1,
                                                                        min_detection_confidence=0.3),
            }
            self._graphs[name] = factories[name]()
        return self._graphs[name]

    def close(self) -> None:
        for graph in self._graphs.values():
            graph.close()
        self._graphs.clear()


def _landmarks(result_landmarks, box: Box) -> np.ndarray:
    """``(N, 3)`` x, y in image pixels and visibility, from landmarks normalised to ``box``."""
    x0, y0, x1, y1 = box
    return np.array([(x0 + p.x * (x1 - x0), y0 + p.y * (y1 - y0), getattr(p, "visibility", 1.0))
                     for p in result_landmarks.landmark], np.float64)


def _crop(image: np.ndarray, box: Box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def _clip(image: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> Box | None:
    height, width = image.shape[:2]
    box = (max(0, int(x0)), max(0, int(y0)), min(width, int(math.ceil(x1))), min(height, int(math.ceil(y1))))
    return box if box[2] - box[0] >= 16 and box[3] - box[1] >= 16 else None


def find_faces(models: Models, image: np.ndarray, min_confidence: float) -> list[Box]:
    """Face boxes, biggest first: the full-range detector on the image and on tiles."""
    height, width = image.shape[:2]
    windows: list[Box] = [(0, 0, width, height)]
    side = min(width, height) // 2
    if side >= 128:
        step = 0.66 * side
        xs = np.linspace(0, width - side, int(math.ceil((width - side) / step)) + 1).astype(int)
        ys = np.linspace(0, height - side, int(math.ceil((height - side) / step)) + 1).astype(int)
        windows += [(x, y, x + side, y + side) for y in ys for x in xs]
    found, scores = [], []
    for window in windows:
        result = models.get("faces").process(_crop(image, window))
        for detection in result.detections or []:
            if detection.score[0] < min_confidence:
                continue
            rel = detection.location_data.relative_bounding_box
            x0, y0 = window[0] + rel.xmin * (window[2] - window[0]), window[1] + rel.ymin * (window[3] - window[1])
            found.append((x0, y0, x0 + rel.width * (window[2] - window[0]), y0 + rel.height * (window[3] - window[1])))
            scores.append(detection.score[0])
    if not found:
        return []
    from ctrlgen.preprocessors.pose.dwpose_onnx import nms

    boxes = np.array(found)
    kept = [boxes[i] for i in nms(boxes, np.array(scores), 0.3)]
    kept.sort(key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
    return [tuple(int(round(v)) for v in b) for b in kept]


def _pose(models: Models, image: np.ndarray, box: Box) -> np.ndarray | None:
    result = models.get("pose").process(_crop(image, box))
    return None if result.pose_landmarks is None else _landmarks(result.pose_landmarks, box)


def _pose_for_face(models: Models, image: np.ndarray, face: Box) -> tuple[np.ndarray, Box] | None:
    x0, y0, x1, y1 = face
    side, centre = max(x1 - x0, y1 - y0), (x0 + x1) / 2
    for half_width, below in FACE_CROPS:
        box = _clip(image, centre - half_width * side, y0 - 0.7 * side, centre + half_width * side, y0 + below * side)
        if box is None:
            continue
        landmarks = _pose(models, image, box)
        if landmarks is not None and _inside(landmarks[0], face, margin=0.25 * side):
            return landmarks, box
    return None


def _inside(point: Sequence[float], box: Box, margin: float = 0.0) -> bool:
    return box[0] - margin <= point[0] <= box[2] + margin and box[1] - margin <= point[1] <= box[3] + margin


def _body(landmarks: np.ndarray, width: int, height: int, min_confidence: float) -> list:
    def point(index: int):
        if index == NECK:
            left, right = point(11), point(12)
            return None if left is None or right is None else ((left[0] + right[0]) / 2, (left[1] + right[1]) / 2)
        x, y, visibility = landmarks[index]
        if visibility < min_confidence or not (0 <= x < width and 0 <= y < height):
            return None
        return float(x) / width, float(y) / height

    return [point(index) for index in POSE_TO_OPENPOSE]


def _hand_candidates(models: Models, image: np.ndarray, box: Box) -> list[np.ndarray]:
    result = models.get("hands").process(_crop(image, box))
    return [_landmarks(hand, box)[:, :2] for hand in result.multi_hand_landmarks or []]


def _assign_hands(found: list[tuple[np.ndarray, list[np.ndarray]]]) -> list[dict[str, np.ndarray]]:
    """Each hand to the body whose wrist it starts at (mediapipe's handedness assumes a selfie).

    A hand seen in several people's crops is the same hand: it goes to the nearest wrist only.
    """
    pairs = []
    for person, (landmarks, hands) in enumerate(found):
        for hand in hands:
            size = float(np.hypot(*np.ptp(hand, axis=0)))
            for side, wrist in (("left", landmarks[15, :2]), ("right", landmarks[16, :2])):
                distance = float(np.hypot(*(hand[0] - wrist)))
                if distance <= 0.8 * size:
                    pairs.append((distance, person, side, hand, size))
    chosen: list[dict[str, np.ndarray]] = [{} for _ in found]
    taken: list[tuple[np.ndarray, float]] = []
    for _, person, side, hand, size in sorted(pairs, key=lambda pair: pair[0]):
        if side in chosen[person] or any(np.hypot(*(hand[0] - other)) < 0.3 * max(size, s) for other, s in taken):
            continue
        chosen[person][side] = hand
        taken.append((hand[0], size))
    return chosen


def _face(models: Models, image: np.ndarray, landmarks: np.ndarray, min_confidence: float) -> list | None:
    if landmarks[0, 2] < min_confidence:
        return None  # the nose is not seen: the person faces away
    head = landmarks[:11, :2]
    extent = float(np.max(np.ptp(head, axis=0)))
    centre = head.mean(axis=0)
    box = _clip(image, *(centre - 1.2 * extent), *(centre + 1.2 * extent))
    if box is None:
        return None
    result = models.get("face_mesh").process(_crop(image, box))
    if not result.multi_face_landmarks:
        return None
    mesh = _landmarks(result.multi_face_landmarks[0], box)
    if len(mesh) < 478 or not _inside(mesh[1], box):
        return None
    height, width = image.shape[:2]
    return [(float(mesh[i, 0]) / width, float(mesh[i, 1]) / height) for i in FACE_FROM_MESH]


def detect(models: Models, image: np.ndarray, *, max_people: int, min_confidence: float,
           hands: bool, face: bool) -> list[Person]:
    """People in an RGB ``uint8`` image, coordinates normalised to it."""
    height, width = image.shape[:2]
    whole: Box = (0, 0, width, height)
    found: list[tuple[np.ndarray, Box]] = []
    landmarks = _pose(models, image, whole)
    if landmarks is not None:
        found.append((landmarks, whole))
    if max_people > 1:
        for face_box in find_faces(models, image, min_confidence):
            if len(found) >= max_people:
                break
            if any(_inside(lm[0], face_box) for lm, _ in found):
                continue  # this face's person is already found
            match = _pose_for_face(models, image, face_box)
            if match is not None and not any(np.hypot(*(match[0][0, :2] - lm[0, :2])) < 4 for lm, _ in found):
                found.append(match)
    hands_by_person = _assign_hands([(landmarks, _hand_candidates(models, image, box) if hands else [])
                                     for landmarks, box in found])
    people = []
    for (landmarks, _), person_hands in zip(found, hands_by_person, strict=True):
        person = Person(body=_body(landmarks, width, height, min_confidence))
        if hands:
            person.left_hand, person.right_hand = (
                None if side not in person_hands else
                [(float(x) / width, float(y) / height) for x, y in person_hands[side]] for side in ("left", "right"))
        if face:
            person.face = _face(models, image, landmarks, min_confidence)
        people.append(person)
    return people
