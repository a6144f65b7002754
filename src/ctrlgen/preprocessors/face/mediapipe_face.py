"""MediaPipe face mesh drawn like controlnet_aux's ``MediapipeFaceDetector`` (bundled weights, offline).

The map is the one the "mediapipe_face" ControlNet (CrucibleAI/ControlNetMediaPipeFace)
was trained on: face oval, eyes, eyebrows and lips as coloured lines, the pupils as small
squares, on black. Faces smaller than 64 detector pixels are skipped, as upstream does.
The data lists each face's box and its 478 landmarks in input pixels.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np

from ctrlgen.core.images import DETECT_RESOLUTION, detection_size, resize
from ctrlgen.core.models.annotators import loaded, unloader
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import Param, PreprocessorSpec, PreprocessResult

OWNER = "mediapipe_face"
MIN_FACE_SIZE_PX = 64
_LOCK = threading.Lock()

PARAMS = (
    replace(DETECT_RESOLUTION, default=512),
    Param("max_faces", "int", default=1, min=1, max=10, step=1, description="Most faces to draw"),
    Param("min_confidence", "float", default=0.5, min=0.01, max=1.0, step=0.01,
          description="Face detection confidence below which a face is ignored"),
)


def _styles():
    """Connection -> drawing spec and iris -> spec, as controlnet_aux's mediapipe_face_common defines them."""
    import mediapipe as mp

    spec = mp.solutions.drawing_styles.DrawingSpec
    mesh = mp.solutions.face_mesh
    colors = {  # upstream's BGR colours (it flips the finished map to RGB), reversed: drawn as RGB here
        "oval": (10, 200, 10), "left_eye": (10, 200, 180), "left_brow": (10, 220, 180),
        "right_eye": (180, 200, 10), "right_brow": (180, 220, 10), "lips": (10, 180, 10),
    }
    parts = [("oval", mesh.FACEMESH_FACE_OVAL), ("left_eye", mesh.FACEMESH_LEFT_EYE),
             ("left_brow", mesh.FACEMESH_LEFT_EYEBROW), ("right_eye", mesh.FACEMESH_RIGHT_EYE),
             ("right_brow", mesh.FACEMESH_RIGHT_EYEBROW), ("lips", mesh.FACEMESH_LIPS)]
    connections = {}
    for part, edges in parts:
        for edge in edges:
            connections[edge] = spec(color=colors[part], thickness=2, circle_radius=1)
    irises = {468: (250, 200, 10), 473: (10, 200, 250)}  # right, left pupil (RGB; upstream's BGR reversed)
    return connections, irises


def _face_mesh(max_faces: int, min_confidence: float):
    import mediapipe as mp

    return mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=max_faces,
                                           refine_landmarks=True, min_detection_confidence=min_confidence)


def _draw_pupils(canvas: np.ndarray, landmarks, irises: dict, halfwidth: int = 2) -> None:
    rows, cols = canvas.shape[:2]
    for index, color in irises.items():
        point = landmarks.landmark[index]
        if (point.HasField("visibility") and point.visibility < 0.9) or (
            point.HasField("presence") and point.presence < 0.5
        ):
            continue
        if not (0 <= point.x < 1.0 and 0 <= point.y < 1.0):
            continue
        px, py = int(cols * point.x), int(rows * point.y)
        canvas[py - halfwidth : py + halfwidth, px - halfwidth : px + halfwidth, :] = color


def run_mediapipe_face(
    image: np.ndarray, mask: np.ndarray | None = None, *, detect_resolution: int, max_faces: int,
    min_confidence: float,
) -> PreprocessResult:
    import mediapipe as mp

    height, width = image.shape[:2]
    work = resize(image, *detection_size(width, height, detect_resolution))
    work_h, work_w = work.shape[:2]
    mesh = loaded(OWNER, lambda: _face_mesh(max_faces, min_confidence), key=(max_faces, min_confidence))
    styles = loaded(OWNER, _styles, key="styles")
    with _LOCK:  # (resize returns the image itself at the detection size: no copy unless it needs one)
        found = mesh.process(work if work.flags.c_contiguous else np.ascontiguousarray(work)).multi_face_landmarks
    found = found or []
    # Drawn in RGB directly: upstream draws BGR and flips the finished map, a strided copy of a
    # canvas-sized array when the map is not resized afterwards.
    canvas = np.zeros((work_h, work_w, 3), np.uint8)
    faces = []
    for landmarks in found:
        points = np.array([(p.x, p.y) for p in landmarks.landmark], np.float64)
        left, top = points.min(axis=0)
        right, bottom = points.max(axis=0)
        if min((right - left) * work_w, (bottom - top) * work_h) < MIN_FACE_SIZE_PX:
            continue
        mp.solutions.drawing_utils.draw_landmarks(
            canvas, landmarks, connections=styles[0].keys(), landmark_drawing_spec=None,
            connection_drawing_spec=styles[0])
        _draw_pupils(canvas, landmarks, styles[1])
        scaled = points * (width, height)
        faces.append({
            "bbox": [round(float(v), 2)
                     for v in (left * width, top * height, right * width, bottom * height)],
            "landmarks": np.round(scaled, 2).tolist(),
        })
    return PreprocessResult(resize(canvas, width, height), {"faces": faces})


@hookimpl
def ctrlgen_preprocessors():
    yield PreprocessorSpec(
        name="mediapipe_face",
        run=run_mediapipe_face,
        params=PARAMS,
        family="face",
        description="MediaPipe face mesh (oval, eyes, brows, lips, pupils) for the mediapipe_face ControlNet "
                    "(bundled weights, offline)",
        requires=("mediapipe", "cv2"),
        unload=unloader(OWNER),
    )
