"""Person/background map from MediaPipe selfie segmentation (real weights, bundled, offline).

MediaPipe 0.10.21's legacy ``mediapipe.solutions.selfie_segmentation`` ships its two
``.tflite`` models inside the package: ``model_selection=0`` (general, 256×256 input) and
``1`` (landscape, 144×256, faster). The person is white, the background black; with
``threshold=0`` the map is the soft person probability instead.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np

from ctrlgen.core.images import DETECT_RESOLUTION, detection_size, resize
from ctrlgen.core.models.annotators import loaded, unloader
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import Param, PreprocessorSpec, PreprocessResult

OWNER = "mediapipe_selfie"
_LOCK = threading.Lock()  # a MediaPipe graph runs one image at a time

PARAMS = (
    Param("model_selection", "choice", default=0, choices=(0, 1),
          description="0 = general model (256×256), 1 = landscape model (144×256, faster)"),
    Param("threshold", "float", default=0.5, min=0.0, max=1.0, step=0.01,
          description="Person probability above which a pixel is white; 0 gives the soft probability map"),
    replace(DETECT_RESOLUTION, default=512),
)


def _segmenter(model_selection: int):
    import mediapipe as mp

    return mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=model_selection)


def person_probability(image: np.ndarray, model_selection: int = 0) -> np.ndarray:
    """MediaPipe's person probability (``float32`` H×W in [0, 1]) for an RGB ``uint8`` image."""
    segmenter = loaded(OWNER, lambda: _segmenter(model_selection), key=model_selection)
    with _LOCK:
        result = segmenter.process(np.ascontiguousarray(image))
    return np.asarray(result.segmentation_mask, dtype=np.float32)


def run_selfie(
    image: np.ndarray, mask: np.ndarray | None = None, *, model_selection: int, threshold: float,
    detect_resolution: int,
) -> PreprocessResult:
    import cv2

    height, width = image.shape[:2]
    work = resize(image, *detection_size(width, height, detect_resolution, multiple=1))
    probability = person_probability(work, model_selection)
    if probability.shape != (height, width):
        probability = cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR)
    person = probability > threshold
    if threshold > 0:
        grey = person.astype(np.uint8) * 255
    else:
        grey = (np.clip(probability, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    ys, xs = np.nonzero(person)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None
    data = {"person_fraction": round(float(person.mean()), 6), "person_bbox": bbox}
    return PreprocessResult(np.repeat(grey[:, :, None], 3, axis=2), data)


@hookimpl
def ctrlgen_preprocessors():
    yield PreprocessorSpec(
        name="mediapipe_selfie",
        run=run_selfie,
        params=PARAMS,
        family="segmentation",
        description="Person (white) / background (black) map from MediaPipe selfie segmentation "
                    "(bundled weights, offline)",
        requires=("mediapipe", "cv2"),
        unload=unloader(OWNER),
    )
