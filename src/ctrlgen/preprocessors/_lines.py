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

from ctrlgen.core import annotators
from ctrlgen.core.errors import ModelFormatError
from ctrlgen.core.images import detection_size, resize
from ctrlgen.core.specs import Param, WeightFile

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
    grey = resize(grey, width, height)
    if binary and grey.dtype == np.uint8:
        grey = np.where(grey > 127, 255, 0).astype(np.uint8)
    if invert:
        grey = 255 - grey
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


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

    ``owner`` (the preprocessor) is named in errors; the loaded network is cached under
    :func:`network_owner` so that e.g. softedge_hed and scribble_hed share one copy. Checkpoints trained with ``DataParallel`` carry a ``module.`` prefix; it is dropped. A
    file whose tensors do not fit the network is a :class:`ModelFormatError` naming it.
    """

    def load() -> Any:
        path = annotators.weight_path(owner, weight)
        state = {key.removeprefix("module."): value
                 for key, value in annotators.load_weights(owner, weight).items()}
        try:
            network = build(state)
            network.load_state_dict(state, strict=True)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ModelFormatError(
                f"{owner!r}: {path} does not hold the weights it needs ({weight.filename} from "
                f"{weight.source or 'its publisher'}): {str(exc).splitlines()[0]}"
            ) from None
        return network.float().eval().requires_grad_(False).to(annotators.torch_device())

    return annotators.loaded(network_owner(weight), load)


def tensor_device(network: Any) -> Any:
    return next(iter(network.parameters())).device
