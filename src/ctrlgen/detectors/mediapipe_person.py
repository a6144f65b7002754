"""People from MediaPipe selfie segmentation (bundled weights, offline).

The segmentation gives one person-probability map for the whole image; each connected
region above ``threshold`` covering at least ``min_area`` of the image is one detection:
its mask, its box, its mean probability as confidence. Two people who touch are one region.
"""

from __future__ import annotations

import numpy as np

from ctrlgen.core.models.annotators import unloader
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import Detection, DetectorSpec, Param
from ctrlgen.detectors.shapes import box_of_mask
from ctrlgen.preprocessors.segmentation.mediapipe_selfie import OWNER, person_probability

PARAMS = (
    Param("confidence", "float", default=0.3, min=0.0, max=1.0, step=0.01,
          description="Mean person probability below which a region is ignored"),
    Param("threshold", "float", default=0.5, min=0.01, max=0.99, step=0.01,
          description="Person probability above which a pixel belongs to a person"),
    Param("min_area", "float", default=0.01, min=0.0, max=1.0, step=0.001,
          description="Smallest region kept, as a fraction of the image"),
    Param("model_selection", "choice", default=0, choices=(0, 1),
          description="0 = general model (256×256), 1 = landscape model (144×256, faster)"),
)


def run_person(image: np.ndarray, *, confidence: float, threshold: float, min_area: float,
               model_selection: int) -> list[Detection]:
    import cv2

    height, width = image.shape[:2]
    probability = person_probability(image, model_selection)
    if probability.shape != (height, width):
        probability = cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR)
    count, labels = cv2.connectedComponents((probability > threshold).astype(np.uint8), connectivity=8)
    detections = []
    for region in range(1, count):
        inside = labels == region
        if inside.mean() < min_area:
            continue
        score = float(probability[inside].mean())
        if score < confidence:
            continue
        mask = inside.astype(np.uint8) * 255
        detections.append(Detection(box=box_of_mask(mask), confidence=min(score, 1.0), label="person", mask=mask))
    return detections


@hookimpl
def ctrlgen_detectors():
    yield DetectorSpec(
        name="mediapipe_person", run=run_person, finds=("person",), params=PARAMS,
        description="MediaPipe selfie segmentation: each person region's mask and box (bundled weights, offline)",
        requires=("mediapipe", "cv2"), unload=unloader(OWNER))
