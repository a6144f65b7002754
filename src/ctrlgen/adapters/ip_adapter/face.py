"""Face analysis for FaceID and InstantID: insightface's detector and ArcFace, from the model store.

insightface's ``FaceAnalysis`` loads every ONNX file of a pack (``antelopev2`` or ``buffalo_l``)
and runs detection, then recognition on the face aligned by its five keypoints. Only those two
models matter here, so they are loaded by insightface's own classes (``SCRFD``,
``ArcFaceONNX``) from the files the store finds, wherever the pack lives (ComfyUI's
``models/insightface/models/<pack>``, sd-webui-controlnet's annotator downloads, a flat folder).
``detector="mediapipe"`` finds the keypoints with MediaPipe's bundled detector instead (offline,
mouth corners estimated); the embedding still comes from ArcFace.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from ctrlgen.core.errors import CtrlgenError, JobError, ModelNotFoundError
from ctrlgen.core.models.annotators import loaded
from ctrlgen.core.plugins.specs import WeightFile

OWNER = "insightface"
_SOURCE = "https://github.com/deepinsight/insightface/tree/master/python-package#model-zoo ({pack}.zip)"
PACKS = {  # pack -> (detector file, recogniser file)
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
}


@dataclass(frozen=True)
class FaceInfo:
    """The largest face: box and five keypoints (image pixels) and ArcFace's raw embedding."""

    bbox: tuple[float, float, float, float]
    kps: np.ndarray
    embedding: np.ndarray

    @property
    def normed_embedding(self) -> np.ndarray:
        return self.embedding / max(float(np.linalg.norm(self.embedding)), 1e-12)


def _pack_file(store: Any, pack: str, index: int) -> str:
    name = PACKS[pack][index]
    weight = WeightFile(
        f"{pack}/{name}",
        folders=("insightface", "annotators"),
        source=_SOURCE.format(pack=pack),
        alternatives=(f"models/{pack}/{name}",),
    )
    try:
        return str(store.find_weight(weight))
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"face analysis needs insightface's {pack} pack. {exc}") from None


def _insightface() -> None:
    import importlib.util

    if importlib.util.find_spec("insightface") is None:
        raise CtrlgenError(
            "face analysis needs the insightface package (pip install insightface --no-deps; "
            "see requirements-nodeps.txt)"
        )


def _recogniser(store: Any, pack: str, device: str):
    path = _pack_file(store, pack, 1)

    def load():
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX

        model = ArcFaceONNX(model_file=path)
        if not device.startswith("cuda"):
            model.prepare(ctx_id=-1)
        return model

    return loaded(OWNER, load, key=("arcface", path, device))


def detect_faces(
    store: Any, image: np.ndarray, *, pack: str, detector: str, device: str, det_size: int = 640
) -> list[Any]:
    """Faces (``ctrlgen.preprocessors.face.detect.Face``) in an RGB image, largest first."""
    from ctrlgen.preprocessors.face import detect as _face

    if detector == "mediapipe":
        model = loaded(OWNER, lambda: _face.load_mediapipe_detector(0.5), key=("mediapipe", 0.5))
        faces = _face.detect_mediapipe(model, image)
    else:
        _insightface()
        path = _pack_file(store, pack, 0)
        model = loaded(OWNER, lambda: _face.load_scrfd(path, device), key=("scrfd", path, device))
        faces = _face.detect_scrfd(model, image, det_size, 0.5)
    return sorted(faces, key=lambda face: face.area, reverse=True)


def analyze_face(
    store: Any, image: np.ndarray, what: str, *, pack: str, detector: str, device: str
) -> FaceInfo:
    """The largest face in ``image`` (RGB) with its ArcFace embedding, or a JobError naming ``what``."""
    _insightface()
    faces = detect_faces(store, image, pack=pack, detector=detector, device=device)
    if not faces:
        raise JobError(
            f"{what}: no face found (detector={detector}); use a photo with a clearly visible face"
        )
    face = faces[0]
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    embedding = _recogniser(store, pack, device).get(bgr, SimpleNamespace(kps=face.kps.astype(np.float32)))
    return FaceInfo(face.bbox, face.kps, np.asarray(embedding, np.float32).reshape(-1))


def aligned_face(image: np.ndarray, kps: np.ndarray, size: int = 224) -> np.ndarray:
    """The face cropped and aligned by its keypoints, as IP-Adapter FaceID-Plus feeds CLIP."""
    from insightface.utils import face_align

    return face_align.norm_crop(image, landmark=kps.astype(np.float32), image_size=size)


def load_embedding(path: str, what: str) -> np.ndarray:
    """A precomputed 512-number face embedding from a ``.npy`` file."""
    try:
        embedding = np.asarray(np.load(path, allow_pickle=False), np.float32).reshape(-1)
    except (OSError, ValueError) as exc:
        raise JobError(f"{what}: cannot read {path} as a .npy array ({exc})") from None
    if embedding.shape != (512,):
        raise JobError(f"{what}: {path} holds {embedding.size} numbers; an insightface embedding has 512")
    return embedding
