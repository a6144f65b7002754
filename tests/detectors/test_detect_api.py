"""``ctrlgen.detect``, ``ctrlgen detect`` and the detector listing: params checked before running,
detectors held to the output contract, a third-party detector plugged in through its hook."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import ctrlgen
from ctrlgen.core.cli.main import main
from ctrlgen.core.errors import ParamError, PluginError
from ctrlgen.core.plugins.registry import UnknownNameError

BUILT_IN = {"mediapipe_face_short", "mediapipe_face_full", "mediapipe_face_mesh", "mediapipe_hands",
            "mediapipe_person", "scrfd", "yolo", "face_yolov8n", "hand_yolov8n", "person_yolov8n_seg",
            "sam_refine"}

SQUARES = """
import numpy as np
from ctrlgen import hookimpl, Detection, DetectorSpec, Param

def run(image, *, level, mode):
    bright = image.max(axis=2) >= level
    ys, xs = np.nonzero(bright)
    if mode == "bad_type":
        return [{"box": (0, 0, 1, 1)}]
    if mode == "bad_mask":
        return [Detection((0, 0, 1, 1), 0.5, "square", mask=np.zeros((3, 3), np.uint8))]
    if not len(xs):
        return []
    box = (xs.min() - 5.0, ys.min(), xs.max() + 1.0, ys.max() + 1e6)  # over the edges: clipped
    return [Detection(box, 0.25, "square", mask=bright), Detection((0, 0, 2, 2), 0.75, "corner")]

@hookimpl
def ctrlgen_detectors():
    yield DetectorSpec(name="Bright Squares", run=run, finds=("square",),
                       params=(Param("level", "int", default=128, min=0, max=255),
                               Param("mode", "choice", default="ok", choices=("ok", "bad_type", "bad_mask"))))
"""


@pytest.fixture
def squares(make_distribution):
    make_distribution("ctrlgen-squares", "0.1", {"squares": "cg_squares"}, {"cg_squares": SQUARES})
    image = np.zeros((40, 60, 3), np.uint8)
    image[10:20, 30:45] = 200
    return image


def test_detect_is_public_and_documented():
    assert "detect" in ctrlgen.__all__
    assert "Detection" in ctrlgen.detect.__doc__ and "docs/detectors.md" in ctrlgen.detect.__doc__


def test_a_plugin_detector_runs_and_is_held_to_the_contract(squares):
    found = ctrlgen.detect("bright_squares", squares)
    assert [d.label for d in found] == ["corner", "square"]  # most confident first
    square = found[1]
    assert square.box == (25.0, 10.0, 45.0, 40.0)  # clipped to the 60×40 image
    assert square.mask.dtype == np.uint8 and square.mask.max() == 255  # a bool mask became 0/255
    assert ctrlgen.detect("bright_squares", squares, level=250) == []


def test_a_detector_breaking_the_contract_is_named(squares):
    with pytest.raises(PluginError, match="bright_squares.*dict"):
        ctrlgen.detect("bright_squares", squares, mode="bad_type")
    with pytest.raises(PluginError, match="bright_squares.*mask"):
        ctrlgen.detect("bright_squares", squares, mode="bad_mask")


def test_params_are_checked_against_the_schema(squares):
    with pytest.raises(ParamError, match="level"):
        ctrlgen.detect("bright_squares", squares, level=300)
    with pytest.raises(ParamError, match="colour"):
        ctrlgen.detect("bright_squares", squares, colour="red")
    with pytest.raises(ParamError, match="mode"):
        ctrlgen.detect("bright_squares", squares, mode="sideways")


def test_an_unknown_detector_lists_the_known_ones(fresh_plugins):
    with pytest.raises(UnknownNameError, match="mediapipe_face_full"):
        ctrlgen.detect("mediapipe_face_ful", np.zeros((8, 8, 3), np.uint8))


def test_plugins_lists_the_detectors_with_their_schemas(fresh_plugins, capsys):
    assert main(["plugins", "--all", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    listed = {spec["name"]: spec for p in data["plugins"] for spec in p.get("detectors", [])}
    assert BUILT_IN <= set(listed)
    hands = listed["mediapipe_hands"]
    assert hands["finds"] == ["hand"] and not hands["needs_weights"]
    confidence = next(p for p in hands["params"] if p["name"] == "confidence")
    assert confidence["default"] == 0.3
    assert listed["face_yolov8n"]["weights"][0]["filename"] == "face_yolov8n.onnx"
    assert listed["scrfd"]["weights"][0]["filename"] == "antelopev2/scrfd_10g_bnkps.onnx"
    assert main(["plugins", "--all"]) == 0
    assert "detectors: mediapipe_hands" in capsys.readouterr().out


@pytest.fixture
def astronaut_png(tmp_path):
    from skimage import data

    path = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def test_cli_detect_json_and_drawing(fresh_plugins, astronaut_png, tmp_path, capsys):
    pytest.importorskip("mediapipe")
    drawn = tmp_path / "drawn.png"
    assert main(["detect", "mediapipe_face_mesh", str(astronaut_png), "--param", "confidence=0.5",
                 "--json", "--draw", str(drawn)]) == 0
    data = json.loads(capsys.readouterr().out)
    (face,) = data["detections"]
    assert data["width"] == 512 and face["label"] == "face" and face["has_mask"]
    assert len(face["keypoints"]) == 478
    picture = np.asarray(Image.open(drawn))
    original = np.asarray(Image.open(astronaut_png))
    x0, y0, x1, y1 = (int(v) for v in face["box"])
    changed = (picture != original).any(axis=2)
    assert changed[y0 + 10:y1 - 10, x0 + 10:x1 - 10].mean() > 0.5  # the mask is tinted
    assert not changed[300:, 400:].any()  # far from the face nothing is drawn
    assert main(["detect", "mediapipe_face_full", str(astronaut_png)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 found by mediapipe_face_full") and "face 0.9" in out and "6 keypoints" in out


def test_cli_detect_refuses_bad_params(fresh_plugins, astronaut_png, capsys):
    assert main(["detect", "mediapipe_hands", str(astronaut_png), "--param", "confidence=2"]) == 2
    assert "confidence" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["detect", "mediapipe_hands", str(astronaut_png), "--param", "confidence"])
    assert "NAME=VALUE" in capsys.readouterr().err


def test_unload_frees_what_detectors_loaded(fresh_plugins, astronaut_png):
    pytest.importorskip("mediapipe")
    from ctrlgen.core.engine.detect import unload
    from ctrlgen.core.models.annotators import LOADED

    ctrlgen.detect("mediapipe_hands", np.asarray(Image.open(astronaut_png)))
    assert "mediapipe_hands" in LOADED.owners()
    unload("mediapipe_hands")
    assert "mediapipe_hands" not in LOADED.owners()
    unload()  # every detector: nothing raises


def test_sam_refine_checks_its_inner_detector(fresh_plugins):
    image = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ParamError, match="itself"):
        ctrlgen.detect("sam_refine", image, detector="sam_refine")
    with pytest.raises(ParamError, match="JSON object"):
        ctrlgen.detect("sam_refine", image, detector_params=[1, 2])
    with pytest.raises(UnknownNameError, match="mediapipe_hands"):
        ctrlgen.detect("sam_refine", image, detector="mediapipe_handz")
