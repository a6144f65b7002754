"""DWPose on onnxruntime: YOLOX person boxes, then RTMPose-style whole-body keypoints.

The two ONNX files are yzd-v/DWPose's:

- ``yolox_l.onnx`` (Megvii YOLOX export): input ``images`` ``1×3×640×640`` float32, the
  image letterboxed top-left on grey 114, 0..255, no normalisation; output ``output``
  ``1×8400×85`` (per anchor of the stride 8/16/32 grids: x, y offsets, log w, log h,
  objectness, 80 COCO class scores, sigmoids applied).
- ``dw-ll_ucoco_384.onnx``: input ``input`` ``1×3×384×288`` (the box, padded 1.25× and
  widened to 3:4, warped to 288×384 and normalised with ImageNet mean/std); outputs
  ``simcc_x`` ``1×133×576`` and ``simcc_y`` ``1×133×768`` (SimCC, 2 bins a pixel) for the
  133 COCO-WholeBody points (17 body, 6 feet, 68 face, 21 + 21 hands).

Post-processing follows sd-webui-controlnet's DWPose: NMS 0.45 over boxes scoring > 0.1,
people are class 0 above 0.3; keypoints with score < 0.3 are dropped; the neck is the
shoulders' midpoint; the face gets the eyes as its pupils (68 + 2 = OpenPose's 70).
"""

from __future__ import annotations

import numpy as np

from ctrlgen.preprocessors.pose.openpose_json import Person

DETECTOR_SIZE = 640
STRIDES = (8, 16, 32)
POSE_SIZE = (288, 384)  # (width, height) when the model does not say
SIMCC_SPLIT = 2.0
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
KEYPOINT_THRESHOLD = 0.3
# OpenPose's 18 body points from COCO-WholeBody's 17 (index 17 = the computed neck).
OPENPOSE_FROM_COCO = (0, 17, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
FACE, LEFT_HAND, RIGHT_HAND = slice(23, 91), slice(91, 112), slice(112, 133)


def session(path, device: str = "cpu"):
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), providers=providers)


def letterbox(image: np.ndarray, size: int = DETECTOR_SIZE) -> tuple[np.ndarray, float]:
    """The detector's input (``1×3×size×size`` float32) and the image's scale in it."""
    import cv2

    ratio = min(size / image.shape[0], size / image.shape[1])
    new_w, new_h = int(image.shape[1] * ratio), int(image.shape[0] * ratio)
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32), ratio


def decode_yolox(raw: np.ndarray, size: int = DETECTOR_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(N, 4)`` xyxy in detector pixels and class scores ``(N, classes)``."""
    grids, strides = [], []
    for stride in STRIDES:
        cells = size // stride
        xs, ys = np.meshgrid(np.arange(cells), np.arange(cells))
        grids.append(np.stack((xs, ys), 2).reshape(-1, 2))
        strides.append(np.full((cells * cells, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    raw = raw.reshape(-1, raw.shape[-1]).astype(np.float64)
    if len(raw) != len(grid):
        from ctrlgen.core.errors import ModelFormatError

        raise ModelFormatError(f"the person detector gave {len(raw)} anchors; YOLOX at {size}² has {len(grid)}")
    centre = (raw[:, :2] + grid) * stride
    half = np.exp(raw[:, 2:4]) * stride / 2.0
    return np.concatenate([centre - half, centre + half], 1), raw[:, 4:5] * raw[:, 5:]


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression (YOLOX's, with its +1 pixel box areas)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        overlap = w * h / (areas[best] + areas[rest] - w * h)
        order = rest[overlap <= threshold]
    return keep


def person_boxes(detector, image: np.ndarray) -> np.ndarray:
    """``(N, 4)`` xyxy boxes of people in ``image`` (RGB ``uint8``)."""
    tensor, ratio = letterbox(image)
    raw = detector.run(None, {detector.get_inputs()[0].name: tensor})[0]
    boxes, scores = decode_yolox(raw)
    boxes /= ratio
    person = scores[:, 0]
    candidates = np.nonzero(person > 0.1)[0]
    keep = candidates[nms(boxes[candidates], person[candidates], 0.45)]
    return boxes[keep[person[keep] > 0.3]]


def pose_input_size(estimator) -> tuple[int, int]:
    shape = estimator.get_inputs()[0].shape
    height, width = shape[2:4] if len(shape) == 4 else (None, None)
    return (width, height) if isinstance(width, int) and isinstance(height, int) else POSE_SIZE


def crop(image: np.ndarray, box: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The box warped to the pose model's input; returns ``(tensor, centre, scale)``."""
    import cv2

    width, height = size
    centre = np.array([box[0] + box[2], box[1] + box[3]]) * 0.5
    scale = np.array([box[2] - box[0], box[3] - box[1]]) * 1.25
    aspect = width / height
    scale = np.array([scale[0], scale[0] / aspect]) if scale[0] > scale[1] * aspect else \
        np.array([scale[1] * aspect, scale[1]])
    zoom = width / scale[0]
    warp = np.array([[zoom, 0.0, width / 2 - zoom * centre[0]], [0.0, zoom, height / 2 - zoom * centre[1]]])
    patch = cv2.warpAffine(image, warp, (width, height), flags=cv2.INTER_LINEAR)
    tensor = ((patch.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)[None]
    return np.ascontiguousarray(tensor), centre, scale


def simcc_decode(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints ``(K, 2)`` in model-input pixels and scores ``(K,)`` from one person's SimCC."""
    x_bin, y_bin = simcc_x.argmax(-1), simcc_y.argmax(-1)
    scores = np.minimum(simcc_x.max(-1), simcc_y.max(-1))
    points = np.stack([x_bin, y_bin], -1).astype(np.float64)
    points[scores <= 0] = -1
    return points / SIMCC_SPLIT, scores


def estimate(estimator, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whole-body keypoints ``(N, 133, 2)`` in image pixels and scores ``(N, 133)``."""
    size = pose_input_size(estimator)
    name = estimator.get_inputs()[0].name
    outputs = [o.name for o in estimator.get_outputs()]
    wanted = ["simcc_x", "simcc_y"] if {"simcc_x", "simcc_y"} <= set(outputs) else outputs[:2]
    all_points, all_scores = [], []
    for box in boxes:
        tensor, centre, scale = crop(image, box, size)
        simcc_x, simcc_y = estimator.run(wanted, {name: tensor})
        points, scores = simcc_decode(simcc_x[0], simcc_y[0])
        all_points.append(points / np.array(size) * scale + centre - scale / 2)
        all_scores.append(scores)
    return np.array(all_points).reshape(-1, 133, 2), np.array(all_scores).reshape(-1, 133)


def to_people(points: np.ndarray, scores: np.ndarray, width: int, height: int) -> list[Person]:
    """OpenPose people (coordinates 0..1) from whole-body keypoints in a ``width``×``height`` image."""
    people = []
    for person_points, person_scores in zip(points, scores, strict=True):
        def part(indices, pts=person_points, scs=person_scores):
            found = [(float(pts[i][0]) / width, float(pts[i][1]) / height) if scs[i] >= KEYPOINT_THRESHOLD
                     else None for i in indices]
            return None if all(p is None for p in found) else found

        shoulders_seen = person_scores[5] > KEYPOINT_THRESHOLD and person_scores[6] > KEYPOINT_THRESHOLD
        neck = (person_points[5] + person_points[6]) / 2.0
        extended_points = np.concatenate([person_points[:17], neck[None]])
        extended_scores = np.concatenate([person_scores[:17], [1.0 if shoulders_seen else 0.0]])
        body = part(OPENPOSE_FROM_COCO, extended_points, extended_scores) or [None] * 18
        face = part(range(133)[FACE])
        if face is not None:
            face += [body[14], body[15]]  # OpenPose's face has the pupils as points 68 and 69
        person = Person(body=body, left_hand=part(range(133)[LEFT_HAND]),
                        right_hand=part(range(133)[RIGHT_HAND]), face=face)
        if any(p is not None for p in body) or person.left_hand or person.right_hand or face:
            people.append(person)
    return people
