"""Segment Anything refinement: another detector's boxes, each turned into a mask.

``sam_refine`` runs ``detector`` (with ``detector_params``, JSON) and prompts SAM with each
box found (one mask per box, ``multimask`` off as SAM advises for a box); the detection
keeps its box, confidence, label, keypoints and data, and gets SAM's mask (its quality score
in ``data['sam_score']``). :func:`refine_with_sam` does the same for detections in hand —
the fix pass uses it for FaceDetailer's SAM refinement. The image's embedding is computed
once for all boxes (the ``sam`` preprocessor's predictor cache).
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from ctrlgen.core.engine.detect import detect
from ctrlgen.core.errors import ParamError
from ctrlgen.core.models.annotators import unloader
from ctrlgen.core.plugins.manager import get_registry, hookimpl
from ctrlgen.core.plugins.specs import Detection, DetectorSpec, Param
from ctrlgen.preprocessors.sam import MODEL, OWNER, SAM_WEIGHTS, run_sam

PARAMS = (
    Param("detector", "str", default="mediapipe_face_full",
          description="The detector whose boxes SAM turns into masks"),
    Param("detector_params", "json", default={},
          description="That detector's params, as a JSON object"),
    MODEL,
    Param("confidence", "float", default=0.3, min=0.0, max=1.0, step=0.01,
          description="Passed to the detector as its confidence when detector_params does not set it"),
)


def refine_with_sam(image: np.ndarray, detections: list[Detection], model: str = "auto") -> list[Detection]:
    """``detections`` with each mask replaced by SAM's segmentation of its box."""
    refined = []
    for detection in detections:
        result = run_sam(image, model=model, points="", box=json.dumps([float(v) for v in detection.box]),
                         multimask=False)
        refined.append(replace(detection, mask=np.ascontiguousarray(result.image[:, :, 0]),
                               data={**detection.data, "sam_score": result.data["score"]}))
    return refined


def run_sam_refine(image: np.ndarray, *, detector: str, detector_params, model: str,
                   confidence: float) -> list[Detection]:
    if detector.strip().lower() in ("sam_refine", "sam refine"):
        raise ParamError("sam_refine cannot refine itself; give detector=mediapipe_face_full, yolo, ...")
    if not isinstance(detector_params, dict):
        raise ParamError(f"sam_refine detector_params must be a JSON object, got {detector_params!r}")
    inner = dict(detector_params)
    if any(p.name == "confidence" for p in get_registry("detectors").get(detector).params):
        inner.setdefault("confidence", confidence)
    return refine_with_sam(image, detect(detector, image, **inner), model)


@hookimpl
def ctrlgen_detectors():
    yield DetectorSpec(
        name="sam_refine", run=run_sam_refine, finds=("what its detector finds",), params=PARAMS,
        weights=tuple(SAM_WEIGHTS.values()),
        description="Any detector's boxes refined into masks by Segment Anything (box prompts)",
        requires=("segment_anything", "torch", "cv2"), unload=unloader(OWNER))
