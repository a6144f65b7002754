"""dw_openpose_full: DWPose on onnxruntime, with ctrlgen's own YOLOX and SimCC processing.

The tiny models are ONNX files with the real ones' names, input/output names, ranks and
layouts (``yolox_l.onnx``: ``images`` 1×3×640×640 -> ``output`` 1×8400×85;
``dw-ll_ucoco_384.onnx``: ``input`` 1×3×384×288 -> ``simcc_x`` 1×133×576, ``simcc_y``
1×133×768), built with ``onnx.helper``. Random ones run the contract suite; hand-built ones
with known answers (one person box; a pose model that points every keypoint at the brightest
pixel) check the geometry end to end. No upstream DWPose runs here (controlnet-aux's needs
mmpose), so the real files are checked on a photo in the ``weights`` test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctrlgen.core.engine.preprocess import preprocess
from ctrlgen.core.errors import ModelNotFoundError
from ctrlgen.core.models import annotators
from ctrlgen.preprocessors.pose import dwpose
from ctrlgen.preprocessors.pose import dwpose_onnx as _dwpose
from ctrlgen.preprocessors.pose.openpose import render_openpose
from ctrlgen.testing.contracts import PreprocessorContract
from ctrlgen.testing.roots import annotator_downloads

ANCHORS = 8400
SMALL = {"detect_resolution": 128}


def _model(nodes, inputs, outputs, initializers):
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _tensor(name, array):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(array, np.float32) if np.asarray(array).dtype.kind == "f"
                                   else np.asarray(array), name)


def _io(name, shape):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def random_detector(seed=0) -> bytes:
    """YOLOX-shaped: per stride, average-pool the image and a 1×1 conv to 85 channels."""
    from onnx import helper

    rng = np.random.default_rng(seed)
    nodes, inits, flat = [], [], []
    for stride in (8, 16, 32):
        nodes += [helper.make_node("AveragePool", ["images"], [f"p{stride}"], kernel_shape=[stride, stride],
                                   strides=[stride, stride]),
                  helper.make_node("Conv", [f"p{stride}", f"w{stride}", f"b{stride}"], [f"c{stride}"]),
                  helper.make_node("Reshape", [f"c{stride}", "shape"], [f"r{stride}"])]
        # Boxes 12 cells wide that overlap (so NMS leaves a few), and few people scoring above 0.3.
        bias = np.concatenate([[0.5, 0.5, np.log(12), np.log(12), 1.0, -2.0], rng.normal(-2, 0.5, 79)])
        inits += [_tensor(f"w{stride}", rng.normal(0, 0.004, (85, 3, 1, 1))), _tensor(f"b{stride}", bias)]
        flat.append(f"r{stride}")
    inits += [_tensor("shape", np.array([1, 85, -1], np.int64)), _tensor("axis", np.array([2], np.int64)),
              _tensor("zero", np.array([0], np.int64)), _tensor("four", np.array([4], np.int64)),
              _tensor("end", np.array([85], np.int64))]
    nodes += [helper.make_node("Concat", flat, ["cat"], axis=2),
              helper.make_node("Transpose", ["cat"], ["raw"], perm=[0, 2, 1]),  # 1×8400×85
              helper.make_node("Slice", ["raw", "zero", "four", "axis"], ["box"]),
              helper.make_node("Slice", ["raw", "four", "end", "axis"], ["logits"]),
              helper.make_node("Sigmoid", ["logits"], ["probabilities"]),  # YOLOX exports apply them
              helper.make_node("Concat", ["box", "probabilities"], ["output"], axis=2)]
    return _model(nodes, [_io("images", [1, 3, 640, 640])], [_io("output", [1, ANCHORS, 85])], inits)


def random_estimator(seed=1) -> bytes:
    """SimCC-shaped: pooled features, a 1×1 conv to 133 keypoints, projections to the bins."""
    from onnx import helper

    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
             helper.make_node("Conv", ["pooled", "w", "b"], ["maps"]),  # 1×133×48×36
             helper.make_node("ReduceMean", ["maps", "ax2"], ["along_x"], keepdims=0),  # 1×133×36
             helper.make_node("ReduceMean", ["maps", "ax3"], ["along_y"], keepdims=0),  # 1×133×48
             helper.make_node("MatMul", ["along_x", "px"], ["simcc_x"]),
             helper.make_node("MatMul", ["along_y", "py"], ["simcc_y"])]
    inits = [_tensor("w", rng.normal(0, 0.5, (133, 3, 1, 1))), _tensor("b", rng.normal(0, 0.1, 133)),
             _tensor("ax2", np.array([2], np.int64)), _tensor("ax3", np.array([3], np.int64)),
             _tensor("px", rng.normal(0, 0.3, (36, 576))), _tensor("py", rng.normal(0, 0.3, (48, 768)))]
    return _model(nodes, [_io("input", [1, 3, 384, 288])],
                  [_io("simcc_x", [1, 133, 576]), _io("simcc_y", [1, 133, 768])], inits)


def one_box_detector(box, image_size) -> bytes:
    """Finds exactly one person, at ``box`` (xyxy in image pixels of a square ``image_size``)."""
    from onnx import helper

    ratio = 640 / image_size
    cx, cy = (box[0] + box[2]) / 2 * ratio, (box[1] + box[3]) / 2 * ratio
    w, h = (box[2] - box[0]) * ratio, (box[3] - box[1]) * ratio
    gx, gy = int(cx // 32), int(cy // 32)
    raw = np.zeros((1, ANCHORS, 85), np.float32)
    raw[0, 6400 + 1600 + gy * 20 + gx, :6] = (cx / 32 - gx, cy / 32 - gy, np.log(w / 32), np.log(h / 32), 1.0, 0.9)
    nodes = [helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"]),  # the output ignores the image
             helper.make_node("Add", ["answer", "nothing"], ["output"])]
    return _model(nodes, [_io("images", [1, 3, 640, 640])], [_io("output", [1, ANCHORS, 85])],
                  [_tensor("answer", raw), _tensor("zero", np.zeros((), np.float32))])


def brightest_pixel_estimator() -> bytes:
    """Every keypoint at the brightest pixel of the crop, on SimCC's 2 bins a pixel."""
    from onnx import helper

    up_x, up_y = np.zeros((288, 576), np.float32), np.zeros((384, 768), np.float32)
    up_x[np.arange(288), 2 * np.arange(288)] = 1
    up_y[np.arange(384), 2 * np.arange(384)] = 1
    nodes = [helper.make_node("ReduceMax", ["input", "ax1"], ["grey"], keepdims=1),  # 1×1×384×288
             helper.make_node("ReduceMax", ["grey", "ax2"], ["cols"], keepdims=0),  # 1×1×288
             helper.make_node("ReduceMax", ["grey", "ax3"], ["rows"], keepdims=0),  # 1×1×384
             helper.make_node("MatMul", ["cols", "up_x"], ["bx"]),
             helper.make_node("MatMul", ["rows", "up_y"], ["by"]),
             helper.make_node("Mul", ["bx", "ones"], ["simcc_x"]),
             helper.make_node("Mul", ["by", "ones"], ["simcc_y"])]
    inits = [_tensor("ax1", np.array([1], np.int64)), _tensor("ax2", np.array([2], np.int64)),
             _tensor("ax3", np.array([3], np.int64)), _tensor("up_x", up_x), _tensor("up_y", up_y),
             _tensor("ones", np.ones((1, 133, 1), np.float32))]
    return _model(nodes, [_io("input", [1, 3, 384, 288])],
                  [_io("simcc_x", [1, 133, 576]), _io("simcc_y", [1, 133, 768])], inits)


@pytest.fixture(scope="session")
def dwpose_weights(annotator_root):
    folder = annotator_downloads(annotator_root, "openpose")
    (folder / "yolox_l.onnx").write_bytes(random_detector())
    (folder / "dw-ll_ucoco_384.onnx").write_bytes(random_estimator())
    return folder


@pytest.mark.usefixtures("dwpose_weights", "use_annotator_root")
class TestDwposeContract(PreprocessorContract):
    preprocessor = "dw_openpose_full"
    params = SMALL


@pytest.mark.usefixtures("dwpose_weights", "use_annotator_root")
class TestDwposeBodyOnlyContract(PreprocessorContract):
    preprocessor = "dw_openpose_full"
    params = {**SMALL, "hands": False, "face": False}


@pytest.mark.usefixtures("dwpose_weights", "use_annotator_root")
def test_random_models_run_through_the_real_pipeline():
    """The random detector finds boxes, the estimator runs on each; JSON and map agree."""
    from ctrlgen.testing.contracts import contract_image

    result = preprocess("dw_openpose_full", contract_image(), **SMALL)
    detector, _ = dwpose._sessions()
    assert len(_dwpose.person_boxes(detector, contract_image())) >= 1
    for person in result.data["people"]:
        assert len(person["pose_keypoints_2d"]) == 54
        for key, count in (("hand_left_keypoints_2d", 21), ("hand_right_keypoints_2d", 21),
                           ("face_keypoints_2d", 70)):
            assert person[key] is None or len(person[key]) == 3 * count
    assert np.array_equal(render_openpose(json.loads(json.dumps(result.data))), result.image)


@pytest.fixture
def known_answer_models(tmp_path, monkeypatch):
    """A detector that finds one box and a pose model that follows the brightest pixel."""
    def install(box, image_size):
        folder = annotator_downloads(tmp_path, "openpose")
        (folder / "yolox_l.onnx").write_bytes(one_box_detector(box, image_size))
        (folder / "dw-ll_ucoco_384.onnx").write_bytes(brightest_pixel_estimator())
        monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(tmp_path))
        annotators.unload(dwpose.OWNER)
        annotators.reset_default_store()

    yield install
    annotators.unload(dwpose.OWNER)
    annotators.reset_default_store()


@pytest.mark.parametrize(("dot", "box"), [((100, 150), (60, 80, 140, 240)), ((30, 40), (0, 0, 120, 90))])
def test_keypoints_come_back_where_the_model_saw_them(known_answer_models, dot, box):
    """Box -> 1.25× padded 3:4 crop -> 288×384 warp -> SimCC bins -> back to image pixels."""
    image = np.zeros((256, 256, 3), np.uint8)
    image[dot[1] - 1 : dot[1] + 2, dot[0] - 1 : dot[0] + 2] = 255
    known_answer_models(box, 256)
    result = preprocess("dw_openpose_full", image, detect_resolution=256)
    (person,) = result.data["people"]
    body = np.array(person["pose_keypoints_2d"]).reshape(18, 3)
    assert (body[:, 2] == 1).all()
    assert np.abs(body[:, :2] - dot).max() <= 1.0
    for key in ("hand_left_keypoints_2d", "hand_right_keypoints_2d", "face_keypoints_2d"):
        points = np.array(person[key]).reshape(-1, 3)
        assert np.abs(points[:, :2] - dot).max() <= 1.0
    assert result.image[dot[1], dot[0]].any()


def test_keypoints_scale_to_the_input_size(known_answer_models):
    """Detected at 128 px, the keypoint is reported in the 512 px input's pixels."""
    image = np.zeros((512, 512, 3), np.uint8)
    image[196:204, 296:304] = 255  # the dot at (300, 200)
    known_answer_models((50, 25, 100, 100), 128)  # the box in the 128 px detection image's pixels
    result = preprocess("dw_openpose_full", image, detect_resolution=128)
    body = np.array(result.data["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    assert np.abs(body[:, :2] - (300, 200)).max() <= 4
    assert result.data["line_scale"] == 4.0


def test_body_hands_face_switches(known_answer_models):
    image = np.zeros((128, 128, 3), np.uint8)
    image[60:63, 60:63] = 255
    known_answer_models((30, 20, 90, 110), 128)
    (person,) = preprocess("dw_openpose_full", image, hands=False, face=False, **SMALL).data["people"]
    assert person["hand_left_keypoints_2d"] is None and person["face_keypoints_2d"] is None
    (person,) = preprocess("dw_openpose_full", image, body=False, **SMALL).data["people"]
    assert not any(person["pose_keypoints_2d"]) and len(person["face_keypoints_2d"]) == 210


def test_decode_and_nms_follow_yolox():
    raw = np.zeros((ANCHORS, 85))
    raw[0, :6] = (0.5, 0.5, 0.0, 0.0, 1.0, 0.8)  # stride 8, cell (0, 0): an 8 px box centred at (4, 4)
    raw[6400, :6] = (0.0, 0.0, np.log(2), 0.0, 0.5, 0.5)  # stride 16, cell (0, 0): 32×16 at (0, 0)
    boxes, scores = _dwpose.decode_yolox(raw[None])
    assert np.allclose(boxes[0], (0, 0, 8, 8)) and np.allclose(boxes[6400], (-16, -8, 16, 8))
    assert np.isclose(scores[0, 0], 0.8) and np.isclose(scores[6400, 0], 0.25)
    keep = _dwpose.nms(np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], float),
                       np.array([0.5, 0.9, 0.7]), 0.45)
    assert keep == [1, 2]


def test_simcc_decode_takes_the_weaker_axis_as_score():
    simcc_x, simcc_y = np.zeros((2, 576)), np.zeros((2, 768))
    simcc_x[0, 100], simcc_y[0, 300] = 0.9, 0.6
    points, scores = _dwpose.simcc_decode(simcc_x, simcc_y)
    assert points[0].tolist() == [50.0, 150.0] and scores[0] == 0.6
    assert points[1].tolist() == [-0.5, -0.5] and scores[1] == 0  # not seen: marked -1 before halving


def test_missing_weights_name_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(tmp_path))
    annotators.unload(dwpose.OWNER)
    annotators.reset_default_store()
    try:
        with pytest.raises(ModelNotFoundError) as info:
            preprocess("dw_openpose_full", np.zeros((64, 64, 3), np.uint8))
    finally:
        annotators.reset_default_store()
    message = str(info.value)
    assert "'dw_openpose_full' needs its weights" in message and "yolox_l.onnx" in message
    assert "yzd-v/DWPose" in message and str(tmp_path) in message


@pytest.mark.weights
def test_real_dwpose_finds_the_astronaut(monkeypatch, astronaut):
    monkeypatch.delenv("CTRLGEN_MODEL_ROOTS", raising=False)
    annotators.unload(dwpose.OWNER)
    annotators.reset_default_store()
    for weight in (dwpose.DETECTOR, dwpose.ESTIMATOR):
        try:
            annotators.default_store().find_weight(weight)
        except ModelNotFoundError:
            pytest.skip(f"the real {weight.filename} is not in the model store (get it from {weight.source})")
    result = preprocess("dw_openpose_full", astronaut)
    annotators.unload(dwpose.OWNER)
    (person,) = result.data["people"]
    body = np.array(person["pose_keypoints_2d"]).reshape(18, 3)
    nose, neck, right_shoulder, left_shoulder = body[0], body[1], body[2], body[5]
    assert nose[2] and neck[2] and right_shoulder[2] and left_shoulder[2]
    assert 150 < nose[0] < 290 and 60 < nose[1] < 200  # the astronaut's face
    assert right_shoulder[0] < neck[0] < left_shoulder[0] and neck[1] > nose[1]
    assert person["face_keypoints_2d"] is not None
