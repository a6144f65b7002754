"""`ctrlgen demo`: the main job on the embedded default model."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ctrlgen.core.cli.main import main


def test_demo_writes_contact_sheet(tmp_path, capsys, monkeypatch, torch_single_thread):
    monkeypatch.setenv("CTRLGEN_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "2", "--size", "64", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "contact_sheet.png" in printed
    assert "tiny network with random weights" in printed and "--model" in printed
    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB"))
    assert sheet.shape[1] > 3 * 64  # three panels side by side
    control = np.asarray(Image.open(out / "control_canny.png"))
    photo = np.asarray(Image.open(out / "input.png"))
    assert control.shape == photo.shape and set(np.unique(control)) >= {0, 255}
    (result,) = out.glob("result-*.png")
    with Image.open(result) as image:
        assert image.size == (64, 64) and "Seed: 1234" in image.info["parameters"]


def test_demo_with_model_needs_controlnet(capsys):
    assert main(["demo", "--model", "x"]) == 2
    assert "--model needs --controlnet too" in capsys.readouterr().err
