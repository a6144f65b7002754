"""What the line and edge preprocessors share (lineart, softedge, scribble, mlsd).

Not a plugin: helpers for bringing an image to the detector's size and the map back,
loading an annotator network once from the model store, and the post-processing steps
(``safe_step``, ``nms``, the scribble conversion) exactly as controlnet_aux and
sd-webui-controlnet do them. Heavy imports (torch, cv2) happen inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ctrlgen.core.errors import ModelFormatError
from ctrlgen.core.images import detection_size, resize
from ctrlgen.core.models import annotators
from ctrlgen.core.plugins.specs import Param, WeightFile

INVERT = Param("invert", "bool", default=False,
               description="Black lines on white (for sketch-style models) instead of white on black")
ANNOTATORS = "lllyasviel/Annotators"
NETWORK_REQUIRES = ("torch", "controlnet_aux")


def annotator_weight(filename: str) -> WeightFile:
    """A file from lllyasviel/Annotators, found under any annotator folder by its name."""
    return WeightFile(filename, folders=("annotators",), source=ANNOTATORS)


def detector_input(image: np.ndarray, detect_resolution: int, network: bool = False) -> np.ndarray:
    """``image`` at the detector's size: short side ``detect_resolution``, sides multiples of 64.

    ``detect_resolution=0`` keeps the input's size; for a ``network`` (whose strided layers
    need it) the sides are still rounded to multiples of 64.
    """
    height, width = image.shape[:2]
    if detect_resolution <= 0:
        if not network:
            return image
        detect_resolution = min(width, height)
    return resize(image, *detection_size(width, height, detect_resolution))


def output_map(grey: np.ndarray, width: int, height: int, *, invert: bool = False,
               binary: bool = False) -> np.ndarray:
    """An ``H×W`` ``uint8`` detector map as ``height×width×3``; ``binary`` maps stay 0/255."""
    import cv2

    grey = resize(grey, width, height)
    if binary:
        grey = cv2.threshold(grey, 127, 255, cv2.THRESH_BINARY)[1]
    if invert:
        grey = 255 - grey
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)  # much faster than numpy's repeat at 2048²


def safe_step(values: np.ndarray, step: int = 2) -> np.ndarray:
    """Quantise a soft edge map to ``step`` levels ("safe" HED/PiDiNet: hides hidden patterns)."""
    quantised = values.astype(np.float32) * float(step + 1)
    return quantised.astype(np.int32).astype(np.float32) / float(step)


def nms(edges: np.ndarray, threshold: int, sigma: float) -> np.ndarray:
    """Thin a soft edge map to its ridges (blur, keep local maxima in 4 directions, threshold)."""
    import cv2

    blurred = cv2.GaussianBlur(edges.astype(np.float32), (0, 0), sigma)
    kernels = (
        np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0]], np.uint8),
        np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], np.uint8),
        np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.uint8),
        np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], np.uint8),
    )
    ridges = np.zeros_like(blurred)
    for kernel in kernels:
        np.putmask(ridges, cv2.dilate(blurred, kernel=kernel) == blurred, blurred)
    return np.where(ridges > threshold, 255, 0).astype(np.uint8)


def scribble_from_edges(edges: np.ndarray) -> np.ndarray:
    """A soft edge map as scribble strokes: thin ridges, thickened, binary (as upstream)."""
    import cv2

    strokes = cv2.GaussianBlur(nms(edges, 127, 3.0), (0, 0), 3.0)
    return np.where(strokes > 4, 255, 0).astype(np.uint8)


def network_owner(weight: WeightFile) -> str:
    """Cache owner of a network: one copy per file, shared by every variant that runs it."""
    return f"lines:{weight.filename}"


def load_network(owner: str, weight: WeightFile, build: Callable[[dict[str, Any]], Any]) -> Any:
    """The network for ``weight``, loaded once: state dict from the store, ``build(state)``.

    ``owner`` (the preprocessor) is named in errors; the network is cached under
    :func:`network_owner`, so softedge_hed and scribble_hed share one copy. Checkpoints
    trained with ``DataParallel`` carry a ``module.`` prefix; it is dropped. A file whose
    tensors do not fit the network is a :class:`ModelFormatError` naming it.
    """

    def load() -> Any:
        path = annotators.weight_path(owner, weight)
        state = {key.removeprefix("module."): value
                 for key, value in annotators.load_weights(owner, weight).items()}
        try:
            network = build(state)
            problem = _mismatch(network.load_state_dict(state, strict=False))
        except KeyError as exc:
            problem = f"it has no tensor {exc}"
        except (RuntimeError, ValueError) as exc:  # shape mismatches
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            problem = lines[1] if len(lines) > 1 else lines[0]
        if problem:
            raise ModelFormatError(
                f"{owner!r}: {path} is not the {weight.filename} it needs (from "
                f"{weight.source or 'its publisher'}): {problem}"
            )
        return network.float().eval().requires_grad_(False).to(annotators.torch_device())

    return annotators.loaded(network_owner(weight), load)


def _mismatch(result: Any) -> str:
    missing = [key for key in result.missing_keys if not key.endswith("num_batches_tracked")]
    problems = [f"{len(names)} {what} tensors, e.g. {', '.join(names[:3])}"
                for what, names in (("missing", missing), ("unexpected", result.unexpected_keys)) if names]
    return "; ".join(problems)


def tensor_device(network: Any) -> Any:
    return next(iter(network.parameters())).device
