"""Face keypoints drawn as InstantID's keypoint image (the InstantID ControlNet's input).

``detector=insightface`` runs insightface's SCRFD (``scrfd_10g_bnkps.onnx`` from
antelopev2, as InstantID does, or buffalo_l's ``det_10g.onnx``) through insightface's own
``SCRFD`` class. ``detector=mediapipe`` needs no download: MediaPipe's bundled face
detector, its points mapped to the same five-point layout (mouth corners estimated).
Faces are drawn largest first; InstantID uses only the largest (``max_faces=1``).
"""

from __future__ import annotations

import importlib.util

from ctrlgen.core.errors import CtrlgenError, ModelNotFoundError
from ctrlgen.core.models.annotators import loaded, torch_device, unloader, weight_path
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import Param, PreprocessorSpec, PreprocessResult
from ctrlgen.preprocessors.face.detect import (
    SCRFD,
    detect_mediapipe,
    detect_scrfd,
    draw_kps,
    load_mediapipe_detector,
    load_scrfd,
)

OWNER = "face_keypoints"

PARAMS = (
    Param("detector", "choice", default="insightface", choices=("insightface", "mediapipe"),
          description="insightface: SCRFD as InstantID uses (needs antelopev2/buffalo_l); "
                      "mediapipe: bundled, offline, mouth corners estimated"),
    Param("max_faces", "int", default=1, min=1, max=32, step=1,
          description="Draw this many faces, largest first (InstantID draws only the largest)"),
    Param("min_confidence", "float", default=0.5, min=0.05, max=1.0, step=0.01,
          description="Detection score below which a face is ignored"),
    Param("det_size", "int", default=640, min=128, max=2048, step=32,
          description="Square size the insightface detector runs at, a multiple of 32 (InstantID: 640)"),
)


def _scrfd():
    if importlib.util.find_spec("insightface") is None:
        raise CtrlgenError("face_keypoints detector=insightface needs the insightface package "
                           "(pip install insightface); detector=mediapipe needs only mediapipe")
    try:
        path = weight_path(OWNER, SCRFD)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{exc}\nWithout it, detector=mediapipe runs offline.") from None
    return loaded(OWNER, lambda: load_scrfd(str(path), torch_device()), key=("scrfd", str(path)))


def run_face_keypoints(image, mask=None, *, detector: str, max_faces: int, min_confidence: float,
                       det_size: int) -> PreprocessResult:
    height, width = image.shape[:2]
    if detector == "insightface":
        faces = detect_scrfd(_scrfd(), image, det_size, min_confidence)
    else:
        model = loaded(OWNER, lambda: load_mediapipe_detector(min_confidence),
                       key=("mediapipe", min_confidence))
        faces = detect_mediapipe(model, image)
    faces = sorted(faces, key=lambda face: face.area, reverse=True)[:max_faces]
    canvas = draw_kps(height, width, [face.kps for face in faces])
    return PreprocessResult(canvas, {"detector": detector, "faces": [face.to_json() for face in faces]})


@hookimpl
def ctrlgen_preprocessors():
    yield PreprocessorSpec(
        name="face_keypoints",
        run=run_face_keypoints,
        params=PARAMS,
        family="face",
        description="Five face keypoints drawn as InstantID's keypoint image (insightface SCRFD, or "
                    "MediaPipe offline)",
        weights=(SCRFD,),
        requires=("cv2",),
        unload=unloader(OWNER),
    )
