"""DWPose whole-body keypoints (``dw_openpose_full``) on onnxruntime, drawn as OpenPose.

A YOLOX person detector (``yolox_l.onnx``) finds people; the DWPose estimator
(``dw-ll_ucoco_384.onnx``) gives each 133 whole-body keypoints, converted to OpenPose's
18 body, 2×21 hand and 70 face points. The pre- and post-processing is ctrlgen's own
(:mod:`ctrlgen.preprocessors.pose.dwpose_onnx`), with the thresholds sd-webui-controlnet uses.
"""

from __future__ import annotations

import threading

import numpy as np

from ctrlgen.core.images import DETECT_RESOLUTION, detection_size, resize
from ctrlgen.core.models.annotators import loaded, unloader, weight_path
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import Param, PreprocessorSpec, WeightFile
from ctrlgen.preprocessors.pose.openpose_json import line_scale_for, pose_result

OWNER = "dw_openpose_full"
DETECTOR = WeightFile("yolox_l.onnx", source="yzd-v/DWPose")
ESTIMATOR = WeightFile("dw-ll_ucoco_384.onnx", source="yzd-v/DWPose")

PARAMS = (
    DETECT_RESOLUTION,
    Param("body", "bool", default=True, description="Draw (and return) the body skeleton"),
    Param("hands", "bool", default=True, description="Draw (and return) the hand keypoints"),
    Param("face", "bool", default=True, description="Draw (and return) the face landmarks"),
)
_lock = threading.Lock()  # one onnxruntime run at a time per session pair keeps memory flat


def _device() -> str:
    from ctrlgen.core.config import load_settings

    return (load_settings().device or "auto").lower()


def _sessions():
    from ctrlgen.preprocessors.pose.dwpose_onnx import session

    def load():
        device = _device()
        return session(weight_path(OWNER, DETECTOR), device), session(weight_path(OWNER, ESTIMATOR), device)

    return loaded(OWNER, load, key="sessions")


def detect_people(image: np.ndarray, detect_resolution: int):
    """DWPose people in an RGB ``uint8`` image: ``(people, detect_width, detect_height)``."""
    from ctrlgen.preprocessors.pose.dwpose_onnx import estimate, person_boxes, to_people

    height, width = image.shape[:2]
    det_w, det_h = detection_size(width, height, detect_resolution)
    work = np.ascontiguousarray(resize(image, det_w, det_h))
    detector, estimator = _sessions()
    with _lock:
        boxes = person_boxes(detector, work)
        points, scores = estimate(estimator, work, boxes)
    return to_people(points, scores, det_w, det_h), det_w, det_h


def run_dwpose(image: np.ndarray, mask: np.ndarray | None = None, *, detect_resolution: int,
               body: bool, hands: bool, face: bool):
    people, det_w, det_h = detect_people(image, detect_resolution)
    height, width = image.shape[:2]
    return pose_result(people, width, height, line_scale_for(width, height, det_w, det_h),
                       body=body, hands=hands, face=face)


@hookimpl
def ctrlgen_preprocessors():
    yield PreprocessorSpec(
        name=OWNER,
        run=run_dwpose,
        params=PARAMS,
        family="openpose",
        description="DWPose whole-body keypoints (body, hands, face) drawn as OpenPose; JSON in the result data",
        weights=(DETECTOR, ESTIMATOR),
        requires=("onnxruntime", "cv2"),
        unload=unloader(OWNER),
    )
