"""YOLOv8 ONNX detectors: the decoding on hand-made outputs (box mapping, NMS, masks), then
tiny random exports at the real interface found by the model store where ADetailer and
ComfyUI-Impact-Pack keep them, run through onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

import ctrlgen
from ctrlgen.core.errors import ModelNotFoundError, ParamError
from ctrlgen.detectors.yolo import decode, letterbox, nms
from ctrlgen.testing.roots import using_model_roots
from ctrlgen.testing.tiny_detectors import write_tiny_yolo

pytest.importorskip("onnxruntime")


def _row(cx, cy, w, h, scores, coefficients=()):
    return [cx, cy, w, h, *scores, *coefficients]


def test_letterbox_centres_on_grey():
    image = np.full((320, 640, 3), 7, np.uint8)
    canvas, scale, pad = letterbox(image, (640, 640))
    assert canvas.shape == (640, 640, 3) and scale == 1.0 and pad == (0, 160)
    assert (canvas[:160] == 114).all() and (canvas[480:] == 114).all() and (canvas[160:480] == 7).all()
    canvas, scale, pad = letterbox(np.zeros((100, 50, 3), np.uint8), (640, 640))
    assert scale == 6.4 and pad == (160, 0)


def test_decode_maps_boxes_back_and_suppresses_per_class():
    # A 640×320 image letterboxed at scale 1 with 160 px of grey above it.
    prediction = np.array([
        _row(320, 260, 100, 50, (0.9, 0.0)),  # face at (270, 75, 370, 125) in the image
        _row(322, 262, 100, 50, (0.8, 0.0)),  # the same face again, less sure: suppressed
        _row(320, 260, 100, 50, (0.0, 0.7)),  # a hand on the same spot: another class, kept
        _row(100, 200, 40, 40, (0.2, 0.1)),  # below the threshold
    ], np.float32).T
    found = decode(prediction, None, image_size=(320, 640), input_size=(640, 640), scale=1.0, pad=(0, 160),
                   names={0: "face", 1: "hand"}, confidence=0.3, iou=0.7, max_detections=100, classes=None)
    assert [(d.label, round(d.confidence, 2)) for d in found] == [("face", 0.9), ("hand", 0.7)]
    assert found[0].box == pytest.approx((270, 75, 370, 125))
    assert found[0].mask is None and found[0].data["class_id"] == 0
    only_hands = decode(prediction, None, image_size=(320, 640), input_size=(640, 640), scale=1.0,
                        pad=(0, 160), names={0: "face", 1: "hand"}, confidence=0.3, iou=0.7,
                        max_detections=100, classes={"hand"})
    assert [d.label for d in only_hands] == ["hand"]


def test_decode_builds_masks_from_prototypes_inside_the_box():
    protos = np.ones((32, 160, 160), np.float32)  # every prototype 1: the mask is the coefficients' sum
    inside = _row(320, 320, 200, 100, (0.9,), [0.5] * 32)  # sigmoid(16) ≈ 1: on, but only inside its box
    off = _row(100, 100, 60, 60, (0.8,), [-0.5] * 32)  # sigmoid(-16) ≈ 0: an empty mask
    found = decode(np.array([inside, off], np.float32).T, protos, image_size=(320, 320),
                   input_size=(640, 640), scale=2.0, pad=(0, 0), names={0: "person"}, confidence=0.3,
                   iou=0.7, max_detections=100, classes=None)
    person, other = found
    assert person.box == pytest.approx((110, 135, 210, 185))
    assert person.mask.shape == (320, 320) and person.mask.dtype == np.uint8
    ys, xs = np.nonzero(person.mask)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (110, 135, 210, 185)
    assert other.mask.max() == 0


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    assert nms(boxes, np.array([0.5, 0.9, 0.4]), 0.5) == [1, 2]


@pytest.fixture
def yolo_root(use_detector_root):
    root = use_detector_root
    write_tiny_yolo(root / "models" / "adetailer" / "face_yolov8n.onnx", ("face",), score_bias=2.0)
    write_tiny_yolo(root / "models" / "adetailer" / "person_yolov8n-seg.onnx", ("person",), segmentation=True,
                    seed=1, score_bias=2.0)
    write_tiny_yolo(root / "models" / "ultralytics" / "bbox" / "hand_yolov8n.onnx", ("hand",), seed=2,
                    score_bias=2.0)
    return root


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union else 0.0


def test_adetailer_face_model_from_the_model_store(yolo_root, astronaut):
    found = ctrlgen.detect("face_yolov8n", astronaut, confidence=0.5, iou=0.5)
    assert found, "the tiny model with its score bias finds boxes"
    assert all(d.label == "face" and d.confidence >= 0.5 and d.mask is None for d in found)
    assert all(0 <= d.box[0] <= d.box[2] <= 512 and 0 <= d.box[1] <= d.box[3] <= 512 for d in found)
    inside = [d for d in found if 0 < d.box[0] and 0 < d.box[1] and d.box[2] < 512 and d.box[3] < 512]
    for i, a in enumerate(inside):  # (clipping at the edges can raise the overlap NMS saw)
        assert all(_iou(a.box, b.box) <= 0.5 + 1e-6 for b in inside[i + 1:])
    assert len(ctrlgen.detect("face_yolov8n", astronaut, confidence=0.5, max_detections=2)) == 2


def test_segmentation_model_gives_masks_inside_their_boxes(yolo_root, astronaut):
    found = ctrlgen.detect("person_yolov8n_seg", astronaut[:300], confidence=0.5)
    assert found and all(d.label == "person" for d in found)
    for detection in found:
        assert detection.mask.shape == (300, 512)
        ys, xs = np.nonzero(detection.mask)
        if len(xs):
            x0, y0, x1, y1 = detection.box
            assert x0 - 2 <= xs.min() and xs.max() <= x1 + 2 and y0 - 2 <= ys.min() and ys.max() <= y1 + 2


def test_generic_yolo_finds_a_model_in_comfyuis_folder(yolo_root, astronaut):
    found = ctrlgen.detect("yolo", astronaut, model="hand_yolov8n.onnx", confidence=0.5)
    assert found and {d.label for d in found} == {"hand"}
    with pytest.raises(ParamError, match="knows only hand"):
        ctrlgen.detect("yolo", astronaut, model="hand_yolov8n.onnx", classes="face")


def test_a_pt_file_is_refused_with_the_export_command(yolo_root, astronaut):
    with pytest.raises(ParamError, match="format=onnx"):
        ctrlgen.detect("yolo", astronaut, model="hand_yolov8n.pt")


def test_a_missing_model_says_where_to_get_it(tmp_path, fresh_plugins, astronaut):
    (tmp_path / "models" / "adetailer").mkdir(parents=True)
    with using_model_roots(str(tmp_path)), pytest.raises(ModelNotFoundError, match="(?s)hand_yolov8n.onnx.*format=onnx"):
        ctrlgen.detect("hand_yolov8n", astronaut)


def test_a_flat_folder_marks_yolo_exports_as_detectors(tmp_path, fresh_plugins, astronaut):
    from ctrlgen.core.models.annotators import default_store

    write_tiny_yolo(tmp_path / "downloads" / "adetailer" / "face_yolov8n.onnx", ("face",), score_bias=2.0)
    with using_model_roots(str(tmp_path)):
        (entry,) = [e for e in default_store().scan(refresh=True) if e.path.suffix == ".onnx"]
        assert entry.category == "detectors"
        assert ctrlgen.detect("face_yolov8n", astronaut, confidence=0.5)
