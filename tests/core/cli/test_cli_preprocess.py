"""`ctrlgen preprocess`: one preprocessor, or the contact sheet of all of them."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from ctrlgen.core.cli.main import main


def write_photo(path):
    from skimage import data

    Image.fromarray(data.astronaut()).resize((128, 128)).save(path)
    return str(path)


def test_preprocess_single_with_params(tmp_path, capsys):
    source = write_photo(tmp_path / "in.png")
    assert main(["preprocess", "canny", source, str(tmp_path / "out.png"), "--param", "invert=true"]) == 0
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == (128, 128, 3) and (out == 255).mean() > 0.5  # inverted: mostly white


def test_preprocess_errors_are_one_line(tmp_path, capsys):
    source = write_photo(tmp_path / "in.png")
    assert main(["preprocess", "canny", source, str(tmp_path / "o.png"), "--param", "low_threshold"]) == 2
    assert "must look like name=value" in capsys.readouterr().err
    assert main(["preprocess", "canny", str(tmp_path / "missing.png"), str(tmp_path / "o.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["preprocess", "canny", source]) == 2
    assert "usage: ctrlgen preprocess NAME IN OUT" in capsys.readouterr().err


def test_sheet_lists_what_ran_and_why_others_were_skipped(tmp_path, capsys):
    source = write_photo(tmp_path / "in.png")
    sheet = tmp_path / "sheet.png"
    assert main(["preprocess", "--sheet", source, str(sheet), "--cell", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "canny" in report["ran"]
    for name, reason in report["skipped"].items():
        assert reason, f"{name} skipped without a reason"
    width, height = Image.open(sheet).size
    columns = min(6, len(report["ran"]) + 1)
    assert width >= columns * 64 and height >= 64


def test_render_pose_draws_edited_json(tmp_path, capsys):
    from skimage import data

    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
    assert main(["preprocess", "mediapipe_openpose", str(tmp_path / "astronaut.png"), str(tmp_path / "map.png"),
                 "--json"]) == 0
    pose = json.loads(capsys.readouterr().out)["data"]
    (tmp_path / "pose.json").write_text(json.dumps(pose))
    assert main(["render-pose", str(tmp_path / "pose.json"), str(tmp_path / "again.png")]) == 0
    detected = np.asarray(Image.open(tmp_path / "map.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")), detected)
    # move the nose: the drawing changes
    pose["people"][0]["pose_keypoints_2d"][0] += 40
    (tmp_path / "edited.json").write_text(json.dumps(pose))
    assert main(["render-pose", str(tmp_path / "edited.json"), str(tmp_path / "edited.png"), "--no-face"]) == 0
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "edited.png")), detected)
    (tmp_path / "bad.json").write_text('{"people": [{"pose_keypoints_2d": [1, 2]}]}')
    assert main(["render-pose", str(tmp_path / "bad.json"), str(tmp_path / "x.png")]) == 2
    assert "pose_keypoints_2d" in capsys.readouterr().err
