"""Tiny random detector weights in the real files' layouts: YOLOv8 ONNX exports.

:func:`write_tiny_yolo` writes what ``yolo export model=face_yolov8n.pt format=onnx`` writes, at
the real interface: input ``images`` 1×3×640×640, output ``output0`` 1×(4+nc)×8400 (box centre
and size in input pixels, class scores in [0, 1]) and, for a segmentation model, 32 mask
coefficients more per box and ``output1`` 1×32×160×160 prototypes; the ``names``, ``task``,
``imgsz`` and ``stride`` metadata as ultralytics records them. The weights are random: the
boxes mean nothing, the code paths and shapes are the real ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctrlgen.testing.tiny_ip_adapter import _save_onnx

SIZE = 640
STRIDES = (8, 16, 32)  # 80² + 40² + 20² = 8400 anchors
MASK_DIMS = 32


def write_tiny_yolo(path: Path, names: tuple[str, ...] = ("face",), segmentation: bool = False,
                    seed: int = 0, score_bias: float = 0.0) -> Path:
    """A random YOLOv8 ONNX export at ``path``; ``score_bias`` shifts the class logits (more boxes
    above a threshold when positive)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    classes = len(names)
    channels = 4 + classes + (MASK_DIMS if segmentation else 0)
    nodes, weights, flats = [], [], []
    for stride in STRIDES:
        weights += [
            numpy_helper.from_array((rng.standard_normal((channels, 3, stride, stride)) * 0.05).astype(np.float32),
                                    f"w{stride}"),
            numpy_helper.from_array((rng.standard_normal(channels) * 0.5).astype(np.float32), f"b{stride}"),
        ]
        nodes += [
            helper.make_node("Conv", ["images", f"w{stride}", f"b{stride}"], [f"conv{stride}"],
                             kernel_shape=[stride, stride], strides=[stride, stride]),
            helper.make_node("Reshape", [f"conv{stride}", "flat_shape"], [f"flat{stride}"]),
        ]
        flats.append(f"flat{stride}")
    weights.append(numpy_helper.from_array(np.array([1, channels, -1], np.int64), "flat_shape"))
    nodes.append(helper.make_node("Concat", flats, ["raw"], axis=2))
    # Rows: centre (sigmoid × 640), size (sigmoid × 160), class scores (sigmoid), mask coefficients (as is).
    bounds = [0, 2, 4, 4 + classes, channels]
    for index, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        if start == end:
            continue
        weights += [numpy_helper.from_array(np.array([start], np.int64), f"start{index}"),
                    numpy_helper.from_array(np.array([end], np.int64), f"end{index}"),
                    numpy_helper.from_array(np.array([1], np.int64), f"axis{index}")]
        nodes.append(helper.make_node("Slice", ["raw", f"start{index}", f"end{index}", f"axis{index}"],
                                      [f"part{index}"]))
    weights += [numpy_helper.from_array(np.array(float(SIZE), np.float32), "centre_scale"),
                numpy_helper.from_array(np.array(SIZE / 4, np.float32), "size_scale"),
                numpy_helper.from_array(np.array(score_bias, np.float32), "score_bias")]
    nodes += [
        helper.make_node("Sigmoid", ["part0"], ["centre01"]),
        helper.make_node("Mul", ["centre01", "centre_scale"], ["centre"]),
        helper.make_node("Sigmoid", ["part1"], ["size01"]),
        helper.make_node("Mul", ["size01", "size_scale"], ["size"]),
        helper.make_node("Add", ["part2", "score_bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["scores"]),
    ]
    parts = ["centre", "size", "scores"] + (["part3"] if segmentation else [])
    nodes.append(helper.make_node("Concat", parts, ["output0"], axis=1))
    outputs = [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, channels, 8400])]
    if segmentation:
        weights += [
            numpy_helper.from_array((rng.standard_normal((MASK_DIMS, 3, 4, 4)) * 0.3).astype(np.float32), "wp"),
            numpy_helper.from_array(np.zeros(MASK_DIMS, np.float32), "bp"),
        ]
        nodes.append(helper.make_node("Conv", ["images", "wp", "bp"], ["output1"], kernel_shape=[4, 4],
                                      strides=[4, 4]))
        outputs.append(helper.make_tensor_value_info("output1", TensorProto.FLOAT, [1, MASK_DIMS, 160, 160]))
    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])
    graph = helper.make_graph(nodes, "tiny_yolov8", [image], outputs, weights)
    _save_onnx(graph, path)
    model = onnx.load(str(path))
    metadata = {"names": repr(dict(enumerate(names))), "task": "segment" if segmentation else "detect",
                "imgsz": f"[{SIZE}, {SIZE}]", "stride": "32", "author": "ctrlgen tiny test weights"}
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path
