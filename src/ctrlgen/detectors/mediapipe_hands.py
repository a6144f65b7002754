"""MediaPipe hands (bundled weights, offline): box, mask, the 21 3-D landmarks, handedness.

The landmarks are MediaPipe's (wrist, then four joints per finger from the thumb); their
third coordinate is MediaPipe's relative depth (the wrist at 0, smaller = nearer the camera)
in the same pixel scale as x. The mask is the landmarks' convex hull grown by a tenth of the
hand's size (the joints lie inside the fingers, the skin beyond them); the box is the mask's.
``data['handedness']`` is ``Left`` or ``Right`` as MediaPipe labels it for a mirrored
(selfie) image — on an ordinary photo ``Right`` is the person's left hand.
"""

from __future__ import annotations

import threading

import numpy as np

from ctrlgen.core.models.annotators import loaded, unloader
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import Detection, DetectorSpec, Param
from ctrlgen.detectors.shapes import box_of_mask, hull_mask

OWNER = "mediapipe_hands"
_LOCK = threading.Lock()
GROW = 0.1  # of the hand's size (the landmarks' larger extent)
LANDMARK_NAMES = (
    "wrist", "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip", "index_mcp", "index_pip", "index_dip",
    "index_tip", "middle_mcp", "middle_pip", "middle_dip", "middle_tip", "ring_mcp", "ring_pip", "ring_dip",
    "ring_tip", "pinky_mcp", "pinky_pip", "pinky_dip", "pinky_tip",
)

PARAMS = (
    Param("confidence", "float", default=0.3, min=0.01, max=1.0, step=0.01,
          description="Palm detection score below which a hand is ignored (ADetailer: 0.3)"),
    Param("max_hands", "int", default=10, min=1, max=50, step=1, description="Most hands to look for"),
    Param("model_complexity", "choice", default=1, choices=(0, 1),
          description="Landmark model: 1 = full (more accurate), 0 = lite (faster)"),
)


def _hands(max_hands: int, model_complexity: int, confidence: float):
    import mediapipe as mp

    return mp.solutions.hands.Hands(static_image_mode=True, max_num_hands=max_hands,
                                    model_complexity=model_complexity, min_detection_confidence=confidence)


def run_hands(image: np.ndarray, *, confidence: float, max_hands: int, model_complexity: int) -> list[Detection]:
    height, width = image.shape[:2]
    model = loaded(OWNER, lambda: _hands(max_hands, model_complexity, confidence),
                   key=(max_hands, model_complexity, confidence))
    with _LOCK:
        result = model.process(image)
    detections = []
    for landmarks, handedness in zip(result.multi_hand_landmarks or [], result.multi_handedness or [],
                                     strict=True):
        points = np.array([(p.x * width, p.y * height, p.z * width) for p in landmarks.landmark], np.float32)
        size = float(np.ptp(points[:, :2], axis=0).max())
        mask = hull_mask(points, width, height, grow_px=max(1, round(GROW * size)))
        box = box_of_mask(mask)
        if box is None:
            continue
        best = handedness.classification[0]
        detections.append(Detection(box=box, confidence=float(best.score), label="hand", mask=mask,
                                    keypoints=points, data={"handedness": best.label,
                                                            "keypoint_names": list(LANDMARK_NAMES)}))
    return detections


@hookimpl
def ctrlgen_detectors():
    yield DetectorSpec(
        name="mediapipe_hands", run=run_hands, finds=("hand",), params=PARAMS,
        description="MediaPipe hands: box, hull mask, 21 3-D landmarks, handedness (bundled weights, offline)",
        requires=("mediapipe", "cv2"), unload=unloader(OWNER))
