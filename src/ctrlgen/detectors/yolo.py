"""YOLOv8 detection and segmentation models exported to ONNX, run with onnxruntime.

ADetailer's models (``face_yolov8n.pt``, ``hand_yolov8n.pt``, ``person_yolov8n-seg.pt``, ...
from Bingsu/adetailer) are ultralytics checkpoints; ctrlgen never imports ultralytics (AGPL).
Export them once, where ultralytics is installed, with ``yolo export model=face_yolov8n.pt
format=onnx``, and put the ``.onnx`` next to the ``.pt`` — ADetailer's ``models/adetailer``
folder, or ComfyUI-Impact-Pack's ``models/ultralytics/bbox`` / ``segm``.

The exported graph takes ``images`` (1×3×640×640 float RGB in [0, 1], letterboxed with grey
114) and gives ``output0`` (1×(4+nc[+32])×8400: box centre/size in input pixels, one score per
class, and for ``-seg`` models 32 mask coefficients) and, for ``-seg`` models, ``output1``
(1×32×160×160 mask prototypes). This module letterboxes, keeps the candidates above
``confidence``, applies per-class non-maximum suppression at ``iou``, maps boxes back to
the image and builds each mask as ultralytics does (sigmoid of coefficients × prototypes,
cropped to the box, threshold 0.5). Class names come from the ``names`` metadata the export
writes; without it a one-class model is named by its file (``face_yolov8n`` -> ``face``).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctrlgen.core.errors import ModelFormatError, ParamError
from ctrlgen.core.models.annotators import loaded, unloader, weight_path
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import Detection, DetectorSpec, Param, WeightFile

OWNER = "yolo"
FOLDERS = ("detectors",)
SOURCE = ("https://huggingface.co/Bingsu/adetailer (the .pt), exported with "
          "`yolo export model=NAME.pt format=onnx` where ultralytics is installed")
PAD_VALUE = 114
MAX_WH = 7680.0  # per-class box offset for one NMS over all classes, as ultralytics
MASK_THRESHOLD = 0.5

# The ADetailer models offered by name (detector name -> exported file).
ADETAILER_MODELS = {
    "face_yolov8n": ("face_yolov8n.onnx", ("face",), ("face_yolov8s.onnx", "face_yolov8m.onnx")),
    "hand_yolov8n": ("hand_yolov8n.onnx", ("hand",), ("hand_yolov8s.onnx",)),
    "person_yolov8n_seg": ("person_yolov8n-seg.onnx", ("person",), ("person_yolov8s-seg.onnx",
                                                                     "person_yolov8m-seg.onnx")),
}

COMMON_PARAMS = (
    Param("confidence", "float", default=0.3, min=0.01, max=1.0, step=0.01,
          description="Class score below which a box is ignored (ADetailer: 0.3)"),
    Param("iou", "float", default=0.7, min=0.01, max=1.0, step=0.01,
          description="Non-maximum suppression: drop a box overlapping a better one of its class by more "
                      "than this IoU (ultralytics: 0.7)"),
    Param("max_detections", "int", default=100, min=1, max=1000, step=1, description="Most boxes kept"),
    Param("classes", "str", default="",
          description="Only these class names, comma-separated (empty: every class)"),
)
MODEL = Param("model", "str", default="face_yolov8n.onnx",
              description="The exported .onnx file's name (or path below a model folder) in the model store, "
                          "e.g. hand_yolov8n.onnx, person_yolov8n-seg.onnx")


@dataclass
class YoloModel:
    """An onnxruntime session with what the export says about it."""

    session: Any
    input_name: str
    size: tuple[int, int]  # height, width
    names: dict[int, str]


def _names(metadata: dict[str, str], path: Path) -> dict[int, str]:
    text = metadata.get("names")
    if text:
        try:
            names = ast.literal_eval(text)
            return {int(k): str(v) for k, v in names.items()}
        except (ValueError, SyntaxError, AttributeError):
            pass
    stem = re.split(r"_yolo", path.stem, maxsplit=1)[0]
    return {0: stem or "object"}


def load_yolo(path: Path) -> YoloModel:
    """An onnxruntime session for an exported YOLOv8 ``.onnx`` (CUDA when onnxruntime has it)."""
    import onnxruntime as ort

    if path.suffix.lower() != ".onnx":
        raise ModelFormatError(f"{path.name} is not an ONNX file; export it with `yolo export model={path.name} "
                               "format=onnx` (ctrlgen does not run ultralytics checkpoints)")
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelFormatError(f"{path} could not be read as an ONNX model ({exc}); export it again with "
                               "`yolo export ... format=onnx`") from None
    inputs = session.get_inputs()
    outputs = session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or not 1 <= len(outputs) <= 2:
        raise ModelFormatError(f"{path.name} is not a YOLOv8 detection/segmentation export (one 4-D input "
                               "'images', outputs 'output0' and for -seg 'output1')")
    metadata = session.get_modelmeta().custom_metadata_map
    height, width = inputs[0].shape[2:]
    if not isinstance(height, int) or not isinstance(width, int):  # exported with dynamic=True
        size = ast.literal_eval(metadata.get("imgsz", "[640, 640]"))
        height, width = (size, size) if isinstance(size, int) else size
    return YoloModel(session, inputs[0].name, (int(height), int(width)), _names(metadata, path))


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float, tuple[int, int]]:
    """``image`` scaled to fit ``size`` (height, width), centred on grey as ultralytics' LetterBox;
    returns the canvas, the scale and the (left, top) padding."""
    import cv2

    height, width = image.shape[:2]
    scale = min(size[0] / height, size[1] / width)
    new_w, new_h = round(width * scale), round(height * scale)
    pad_w, pad_h = (size[1] - new_w) / 2, (size[0] - new_h) / 2
    if (new_w, new_h) != (width, height):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(pad_h - 0.1), round(pad_h + 0.1)
    left, right = round(pad_w - 0.1), round(pad_w + 0.1)
    canvas = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return canvas, scale, (left, top)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best score first."""
    x0, y0, x1, y1 = boxes.T
    areas = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        w = np.maximum(0.0, np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]))
        h = np.maximum(0.0, np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]))
        overlap = w * h / np.maximum(areas[best] + areas[rest] - w * h, 1e-9)
        order = rest[overlap <= iou]
    return keep


def decode(prediction: np.ndarray, protos: np.ndarray | None, *, image_size: tuple[int, int],
           input_size: tuple[int, int], scale: float, pad: tuple[int, int], names: dict[int, str],
           confidence: float, iou: float, max_detections: int, classes: set[str] | None) -> list[Detection]:
    """Detections from a YOLOv8 export's raw outputs (``prediction`` C×N, ``protos`` 32×h×w or None)."""
    import cv2

    height, width = image_size
    mask_dims = 0 if protos is None else protos.shape[0]
    class_count = prediction.shape[0] - 4 - mask_dims
    if class_count < 1:
        raise ModelFormatError(f"a YOLO output of {prediction.shape[0]} rows has no class scores "
                               f"(4 box rows + {mask_dims} mask coefficients)")
    rows = prediction.T  # N×C
    scores = rows[:, 4:4 + class_count]
    class_ids = scores.argmax(axis=1)
    best = scores[np.arange(len(rows)), class_ids]
    wanted = best >= confidence
    if classes:
        wanted &= np.isin(class_ids, [i for i, name in names.items() if name in classes])
    rows, class_ids, best = rows[wanted], class_ids[wanted], best[wanted]
    if not len(rows):
        return []
    cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)  # letterbox pixels
    keep = nms(boxes + class_ids[:, None] * MAX_WH, best, iou)[:max_detections]
    left, top = pad
    found = []
    for index in keep:
        x0, y0, x1, y1 = boxes[index]
        box = (float(np.clip((x0 - left) / scale, 0, width)), float(np.clip((y0 - top) / scale, 0, height)),
               float(np.clip((x1 - left) / scale, 0, width)), float(np.clip((y1 - top) / scale, 0, height)))
        mask = None
        if protos is not None:
            coefficients = rows[index, 4 + class_count:]
            logits = (coefficients @ protos.reshape(mask_dims, -1)).reshape(protos.shape[1:])
            soft = cv2.resize(1.0 / (1.0 + np.exp(-logits)), (input_size[1], input_size[0]),
                              interpolation=cv2.INTER_LINEAR)
            framed = np.zeros_like(soft)
            bx0, by0 = max(int(round(x0)), 0), max(int(round(y0)), 0)
            framed[by0:max(int(round(y1)), 0), bx0:max(int(round(x1)), 0)] = 1.0
            inside = soft * framed
            inside = inside[top:top + round(height * scale), left:left + round(width * scale)]
            inside = cv2.resize(inside, (width, height), interpolation=cv2.INTER_LINEAR)
            mask = (inside > MASK_THRESHOLD).astype(np.uint8) * 255
        class_id = int(class_ids[index])
        found.append(Detection(box=box, confidence=float(min(best[index], 1.0)),
                               label=names.get(class_id, f"class{class_id}"), mask=mask,
                               data={"class_id": class_id}))
    return found


def run_yolo_file(image: np.ndarray, weight: WeightFile, *, confidence: float, iou: float,
                  max_detections: int, classes: str) -> list[Detection]:
    path = weight_path(OWNER, weight)
    model = loaded(OWNER, lambda: load_yolo(path), key=str(path))
    canvas, scale, pad = letterbox(image, model.size)
    batch = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
    outputs = model.session.run(None, {model.input_name: batch})
    prediction = next(o for o in outputs if o.ndim == 3)[0]
    protos = next((o[0] for o in outputs if o.ndim == 4), None)
    wanted = {c.strip() for c in classes.split(",") if c.strip()} or None
    if wanted and not wanted & set(model.names.values()):
        raise ParamError(f"classes={classes!r}: {path.name} knows only {', '.join(sorted(model.names.values()))}")
    return decode(prediction, protos, image_size=image.shape[:2], input_size=model.size, scale=scale, pad=pad,
                  names=model.names, confidence=confidence, iou=iou, max_detections=max_detections,
                  classes=wanted)


def run_yolo(image: np.ndarray, *, model: str, **params: Any) -> list[Detection]:
    if not model.lower().endswith(".onnx"):
        raise ParamError(f"yolo model={model!r}: give the exported .onnx file (export the .pt with "
                         "`yolo export model=NAME.pt format=onnx`; ctrlgen does not run ultralytics)")
    return run_yolo_file(image, WeightFile(model, folders=FOLDERS, source=SOURCE), **params)


def _named(weight: WeightFile):
    def run(image: np.ndarray, **params: Any) -> list[Detection]:
        return run_yolo_file(image, weight, **params)

    return run


@hookimpl
def ctrlgen_detectors():
    common = {"requires": ("onnxruntime", "cv2"), "unload": unloader(OWNER)}
    yield DetectorSpec(
        name="yolo", run=run_yolo, finds=("face", "hand", "person", "the model's classes"),
        params=(MODEL, *COMMON_PARAMS),
        description="Any YOLOv8 detection/segmentation model exported to ONNX (model=FILE.onnx from the "
                    "model store), run with onnxruntime", **common)
    for name, (filename, finds, alternatives) in ADETAILER_MODELS.items():
        weight = WeightFile(filename, folders=FOLDERS, source=SOURCE, alternatives=alternatives)
        kind = "boxes and masks" if "seg" in name else "boxes"
        yield DetectorSpec(
            name=name, run=_named(weight), finds=finds, params=COMMON_PARAMS, weights=(weight,),
            description=f"ADetailer's {filename.removesuffix('.onnx')} exported to ONNX: {finds[0]} {kind} "
                        "(onnxruntime)", **common)



