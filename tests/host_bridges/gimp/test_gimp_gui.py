"""The plug-in's dialogs in real GIMP 3 (gimp-3.0 under Xvfb): an interactive Inpaint accepted
with Return, one Edit › Undo removing its result, remembered values, a cancelled dialog; the
screenshots are docs/images/gimp-*.png (copied there with CTRLGEN_GIMP_SCREENSHOTS=1)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gimp_support import ROOT, install_profile, make_scratch, run_gimp  # noqa: E402


@pytest.fixture(scope="module")
def gui_report(gimp_chroot, live_server):
    from PIL import Image
    from skimage import data

    scratch = make_scratch("gui")
    install_profile(scratch)
    scratch.path("photo.rgba").write_bytes(Image.fromarray(data.astronaut()).convert("RGBA").tobytes())
    config = {"scenarios": ["gui"], "url": live_server.url, "token": live_server.token, "model": live_server.model,
              "photo_rgba": scratch.inner("photo.rgba")}
    report, output = run_gimp(scratch, config, gui=True)
    if report is None:
        pytest.fail(f"GIMP wrote no report. Its output:\n{output[-6000:]}")
    report["out"] = scratch.path("out")
    report["output"] = output
    if os.environ.get("CTRLGEN_GIMP_SCREENSHOTS"):
        from PIL import Image

        for name in ("gimp-inpaint-dialog.png", "gimp-inpaint-result.png", "gimp-control-dialog.png"):
            shot = Image.open(report["out"] / name).convert("RGB")
            shot.crop(shot.getbbox()).save(ROOT / "docs" / "images" / name, optimize=True)  # the X root: to GIMP's window
    yield report
    shutil.rmtree(scratch.host, ignore_errors=True)


def test_the_dialog_runs_the_job_and_one_undo_removes_the_result(gui_report):
    entry = gui_report["gui"]
    assert "exception" not in entry, entry["exception"]
    assert entry["interactive"] == ["success", ""]
    assert entry["after_run"] == ["[ctrlgen] inpaint: a golden helmet (seed 4)", "photo"]
    assert entry["after_undo"] == ["photo"], "one Edit › Undo should remove the whole result"
    assert entry["after_redo"] == entry["after_run"]


def test_the_dialog_remembers_the_last_values(gui_report):
    entry = gui_report["gui"]
    assert entry["remembered"] == ["success", ""]
    # Called with prompt "ignored" and seed 9, the dialog showed (and ran) the last run's values.
    assert entry["after_second"][0] == "[ctrlgen] inpaint: a golden helmet (seed 4)"
    assert entry["after_second"][1].startswith("[ctrlgen] inpaint: a golden helmet (seed 4)")


def test_a_cancelled_dialog_changes_nothing(gui_report):
    entry = gui_report["gui"]
    assert entry["control_cancel"] == ["cancel", ""]
    assert entry["after_cancel"] == entry["after_second"]
    for name in ("gimp-inpaint-dialog.png", "gimp-inpaint-result.png", "gimp-control-dialog.png"):
        assert (gui_report["out"] / name).stat().st_size > 1000, name
