"""Segment Anything: clicks/box in, object mask out (``sam``); automatic segments (``sam_auto``).

``sam`` is how a host turns a click into a selection: ``points`` and/or ``box`` (JSON
text, image pixels) go to segment_anything's ``SamPredictor``; the map is the mask
(white = selected). With neither but a ``mask`` given, the mask's bounding box is the
prompt (refine a rough selection). ``sam_auto`` runs ``SamAutomaticMaskGenerator`` and
paints each segment in a fixed palette, largest first, so a map is the same every run.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import replace

import numpy as np

from ctrlgen.core.errors import ParamError
from ctrlgen.core.images import DETECT_RESOLUTION, detection_size, resize
from ctrlgen.core.models.annotators import load_weights, loaded, torch_device, unloader, weight_path
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import Param, PreprocessorSpec, PreprocessResult
from ctrlgen.preprocessors.sam.model import (
    ANY_SAM,
    MODEL_CHOICES,
    SAM_WEIGHTS,
    build_sam,
    parse_box,
    parse_points,
)
from ctrlgen.preprocessors.segmentation.palettes import distinct_colors

OWNER = "sam"
_LOCK = threading.RLock()  # one predictor holds one image embedding at a time
MODEL = Param("model", "choice", default="auto", choices=MODEL_CHOICES,
              description="Checkpoint: vit_h (best), vit_l, vit_b (fastest); "
                          "auto takes the first found in that order")

SAM_PARAMS = (
    MODEL,
    Param("points", "str", default="", description="Clicks as JSON [[x, y, label], ...] in image pixels; "
                                                    "label 1 = on the object, 0 = not on it"),
    Param("box", "str", default="",
          description="Box around the object as JSON [x0, y0, x1, y1] in image pixels"),
    Param("multimask", "bool", default=True,
          description="Predict three candidate masks and keep the best (good for one click); "
                      "off for several clicks or a box"),
)
AUTO_PARAMS = (
    MODEL,
    replace(DETECT_RESOLUTION, default=512),
    Param("points_per_side", "int", default=32, min=1, max=128, step=1,
          description="Grid of points_per_side² clicks the automatic generator tries"),
    Param("pred_iou_thresh", "float", default=0.88, min=0.0, max=1.0, step=0.01,
          description="Drop masks the model rates below this quality"),
    Param("stability_score_thresh", "float", default=0.95, min=0.0, max=1.0, step=0.01,
          description="Drop masks that change much when their threshold moves"),
    Param("min_mask_region_area", "int", default=0, min=0, max=1_000_000, step=1,
          description="Remove islands and holes smaller than this (detector pixels; 0 = keep all)"),
)


def sam_model(model: str):
    """The loaded ``Sam`` for ``model`` (``auto`` = first checkpoint found of vit_h, vit_l, vit_b)."""
    weight = ANY_SAM if model == "auto" else SAM_WEIGHTS[model]
    path = weight_path(f"sam (model={model})", weight)
    device = torch_device()
    return loaded(OWNER, lambda: build_sam(load_weights(OWNER, weight), device), key=(str(path), device))


def _predictor(model: str, image: np.ndarray):
    """A ``SamPredictor`` holding ``image``'s embedding; clicks on the same image reuse it."""
    from segment_anything import SamPredictor

    sam = sam_model(model)
    predictor = loaded(OWNER, lambda: SamPredictor(sam), key=("predictor", id(sam)))
    digest = (image.shape, hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).digest())
    if getattr(predictor, "ctrlgen_image", None) != digest:
        predictor.set_image(image, image_format="RGB")
        predictor.ctrlgen_image = digest
    return predictor


def _box_of(selected: np.ndarray) -> list[int] | None:
    ys, xs = np.nonzero(selected)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None


def run_sam(image, mask=None, *, model: str, points: str, box: str, multimask: bool) -> PreprocessResult:
    height, width = image.shape[:2]
    clicks = parse_points(points, width, height)
    frame = parse_box(box, width, height)
    source = "prompt"
    if not clicks and frame is None:
        framed = _box_of(mask > 127) if mask is not None else None
        if framed is None:
            raise ParamError("sam needs a prompt: give points='[[x, y, 1]]' (a click on the object), "
                             "box='[x0, y0, x1, y1]', or a mask whose bounding box frames the object")
        frame, source = tuple(float(v) for v in framed), "mask_bbox"
    with _LOCK:
        masks, scores, _ = _predictor(model, image).predict(
            point_coords=np.array([c[:2] for c in clicks], np.float32) if clicks else None,
            point_labels=np.array([c[2] for c in clicks], np.int32) if clicks else None,
            box=np.array(frame, np.float32) if frame is not None else None,
            multimask_output=multimask,
        )
    best = int(np.argmax(scores))
    selected = masks[best]
    grey = selected.astype(np.uint8) * 255
    data = {"score": round(float(scores[best]), 6), "bbox": _box_of(selected), "area": int(selected.sum()),
            "prompt": source, "points": [list(c) for c in clicks], "box": list(frame) if frame else None}
    return PreprocessResult(np.repeat(grey[:, :, None], 3, axis=2), data)


def run_sam_auto(image, mask=None, *, model: str, detect_resolution: int, points_per_side: int,
                 pred_iou_thresh: float, stability_score_thresh: float, min_mask_region_area: int):
    import cv2
    from segment_anything import SamAutomaticMaskGenerator

    height, width = image.shape[:2]
    work = resize(image, *detection_size(width, height, detect_resolution, multiple=1))
    generator = SamAutomaticMaskGenerator(
        sam_model(model), points_per_side=points_per_side, pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_score_thresh, min_mask_region_area=min_mask_region_area)
    segments = sorted(generator.generate(work), key=lambda s: s["area"], reverse=True)
    labels = np.zeros(work.shape[:2], np.uint16)
    for rank, segment in enumerate(segments[:65535]):
        labels[segment["segmentation"]] = rank + 1  # smaller segments are painted over larger ones
    labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    table = np.concatenate([np.zeros((1, 3), np.uint8), distinct_colors(len(segments))])
    sx, sy = width / work.shape[1], height / work.shape[0]
    listed = []
    for rank, segment in enumerate(segments):
        x, y, w, h = segment["bbox"]  # XYWH in detector pixels
        listed.append({"id": rank + 1, "color": [int(c) for c in table[rank + 1]],
                       "bbox": [round(x * sx, 2), round(y * sy, 2),
                                round((x + w) * sx, 2), round((y + h) * sy, 2)],
                       "area": int(round(segment["area"] * sx * sy)),
                       "predicted_iou": round(float(segment["predicted_iou"]), 6),
                       "stability_score": round(float(segment["stability_score"]), 6)})
    return PreprocessResult(table[labels], {"segments": listed})


@hookimpl
def ctrlgen_preprocessors():
    common = {"family": "segmentation", "weights": tuple(SAM_WEIGHTS.values()),
              "requires": ("segment_anything", "torch", "cv2"), "unload": unloader(OWNER)}
    yield PreprocessorSpec(
        name="sam", run=run_sam, params=SAM_PARAMS,
        description="Segment Anything: clicks and/or a box in, the object's mask out (white = selected)",
        **common,
    )
    yield PreprocessorSpec(
        name="sam_auto", run=run_sam_auto, params=AUTO_PARAMS,
        description="Segment Anything automatic mode: every segment in its own fixed colour", **common,
    )
