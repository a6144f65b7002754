"""insightface SCRFD faces from the model store (antelopev2's ``scrfd_10g_bnkps.onnx`` or
buffalo_l's ``det_10g.onnx``), through insightface's own ``SCRFD`` class.

Box, score and the five keypoints (eyes — the one on the image's left first —, nose tip,
mouth corners); no mask. The same detector InstantID and the FaceID adapters use.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from ctrlgen.core.errors import CtrlgenError
from ctrlgen.core.models.annotators import loaded, torch_device, unloader, weight_path
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import Detection, DetectorSpec, Param
from ctrlgen.preprocessors.face.detect import SCRFD, detect_scrfd, load_scrfd

OWNER = "scrfd"
KEYPOINT_NAMES = ("eye_image_left", "eye_image_right", "nose_tip", "mouth_image_left", "mouth_image_right")

PARAMS = (
    Param("confidence", "float", default=0.3, min=0.01, max=1.0, step=0.01,
          description="Detection score below which a face is ignored (ADetailer: 0.3; insightface: 0.5)"),
    Param("det_size", "int", default=640, min=128, max=2048, step=32,
          description="Square size the detector runs at, rounded to a multiple of 32 (insightface: 640)"),
)


def _detector():
    if importlib.util.find_spec("insightface") is None:
        raise CtrlgenError("detector 'scrfd' needs the insightface package (pip install insightface); "
                           "mediapipe_face_full finds faces without it")
    path = weight_path(OWNER, SCRFD)
    return loaded(OWNER, lambda: load_scrfd(str(path), torch_device()), key=str(path))


def run_scrfd(image: np.ndarray, *, confidence: float, det_size: int) -> list[Detection]:
    faces = detect_scrfd(_detector(), image, det_size, confidence)
    return [Detection(box=face.bbox, confidence=min(max(face.score, 0.0), 1.0), label="face",
                      keypoints=face.kps.astype(np.float32), data={"keypoint_names": list(KEYPOINT_NAMES)})
            for face in faces]


@hookimpl
def ctrlgen_detectors():
    yield DetectorSpec(
        name="scrfd", run=run_scrfd, finds=("face",), params=PARAMS, weights=(SCRFD,),
        description="insightface SCRFD faces (antelopev2 / buffalo_l from the model store): box, score, "
                    "5 keypoints", requires=("insightface", "onnxruntime"), unload=unloader(OWNER))
