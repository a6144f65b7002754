"""Issue 16's bugs, each checked inside real Krita against a real server (same Krita run as
test_in_krita.py: see conftest.krita_report; the scenarios are in krita_scenarios_bugs.py)."""

from __future__ import annotations

import numpy as np
import pytest
from test_in_krita import pixels, scenario

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_closing_a_document_while_its_job_runs_cancels_the_job_with_a_message(krita_report):
    r = scenario(krita_report, "closed_document")
    assert r["started"] and r["closed"]
    assert r["errors"] == []  # no exception out of the docker's poll (Krita showed a Script error)
    assert r["status"] == "cancelled" and r["jobs_left"] == 0
    assert "was closed" in r["message"] and "cancelled" in r["message"]
    assert r["server_status"] == "cancelled"  # the server stopped working for it


def test_a_reference_layer_is_sent_whole_not_cropped_to_the_selection(krita_report):
    r = scenario(krita_report, "reference_whole")
    assert r["status"] == "finished", r["message"]
    assert r["job"]["task"] == "inpaint" and r["image_size"] != (60, 48)
    ref = r["reference"]
    # The layer's painted part (x >= 100, y >= 80 on a 160x128 canvas), not a transparent crop.
    assert (ref["width"], ref["height"]) == (60, 48)
    sent = pixels(ref["pixels"], 60, 48, ref["channels"])
    style = pixels(r["style"], 60, 48)
    assert ref["channels"] == 3  # every pixel opaque
    np.testing.assert_array_equal(sent, style[..., 2::-1])


def test_the_status_is_not_connected_after_a_failed_job_or_a_dead_server(krita_report):
    r = scenario(krita_report, "server_status")
    assert r["failed_job"]["entry"] == "error"
    assert r["failed_job"]["status"].endswith("the last job failed")
    assert r["next_job"]["entry"] == "finished" and not r["next_job"]["status"].endswith("failed")
    assert r["doomed_before"]["connection"] == "connected"
    # Killed with SIGKILL: the health check notices within seconds, with no job running.
    assert r["after_kill"]["noticed"] and r["after_kill"]["connection"] == "lost"
    assert not r["after_kill"]["status"].startswith("Connected") and "ctrlgen serve" in r["after_kill"]["status"]
    # A job sent to the dead server fails and the status says the server is lost.
    assert r["job_after_kill"]["entry"] == "error" and r["job_after_kill"]["connection"] == "lost"
    assert not r["job_after_kill"]["status"].startswith("Connected")
    assert "not running" in r["job_after_kill"]["message"]


def test_hidden_control_layers_are_skipped_and_named(krita_report):
    r = scenario(krita_report, "hidden_layers")
    assert r["shown"]["status"] == r["hidden"]["status"] == "finished"
    assert r["shown"]["units"] == 2 and r["shown"]["message_at_start"] == ""
    # Edges hidden itself, Pose inside a hidden group: neither is sent.
    assert r["hidden"]["units"] == 0
    assert r["hidden"]["message_at_start"] == "Hidden layers left out: Edges, Pose (show them to use them)."


def test_results_land_above_the_active_layer_in_its_group_and_it_stays_active(krita_report):
    r = scenario(krita_report, "placement")
    assert r["active_before"] == "Inked"
    first = r["in_group"]
    assert first["status"] == "finished", first["message"]
    result = next(name for name in first["group"] if name.startswith("[ctrlgen] #1"))
    assert first["group"] == ["Shading", result, "Inked"]  # top first: right above Inked, in the group
    assert first["active"] == "Inked"
    second = r["on_top"]
    assert second["status"] == "finished"
    assert second["top"][0].startswith("[ctrlgen] #2") and second["group"] == first["group"]
    assert second["active"] == "Inked"


def test_a_none_control_map_preview_is_white_where_the_layer_is_transparent(krita_report):
    r = scenario(krita_report, "map_none")
    assert r["map"] is not None, r["message"]
    sketch = pixels(r["sketch"], 64, 64)
    shown = pixels(r["map"], 64, 64)
    assert (shown[..., 3] == 255).all()  # opaque: the model sees no transparency
    transparent = sketch[..., 3] == 0
    assert transparent.any() and (shown[transparent][:, :3] == 255).all()  # white, as the server composites
    assert (shown[~transparent][:, :3] == 0).all()  # the black lines stay black


# -- the Fix workspace and the history (krita_scenarios_fix.py) ---------------------------------
ASTRONAUT_FACE = (176, 70, 275, 176)  # tests/detectors' hand-checked box (x0, y0, x1, y1)
T1_FACES = {"ross": (450, 285, 580, 415), "chandler": (725, 360, 840, 480), "rachel": (60, 285, 165, 395)}
T1_HANDS = {"rachel_cards": (177, 420, 260, 502), "ross_on_chandler": (612, 397, 690, 500),
            "chandler_fist": (693, 498, 774, 590)}


def _near(box, expected, tolerance=20) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(box, expected, strict=True))


def test_fix_faces_outlines_the_face_first_then_repaints_it_into_a_new_layer(krita_report):
    r = scenario(krita_report, "fix_faces")
    # 1. Detection only: the face found and outlined in the docker, the document untouched.
    (box,) = r["boxes"]
    assert _near(box, ASTRONAUT_FACE), box
    assert r["message_found"].startswith("Found 1 face in the document")
    assert r["layers_after_detect"] == r["layers_before"] and r["entry"].endswith("finished")
    preview = r["preview"]
    assert preview is not None and preview["width"] <= 300
    shown = pixels(preview["pixels"], preview["width"], preview["height"])
    outline = np.all(shown[..., :3] == preview["box_colour"], axis=-1)
    scale = preview["width"] / 512
    ys, xs = np.nonzero(outline)
    assert outline.sum() > 100
    assert abs(xs.min() - box[0] * scale) <= 3 and abs(xs.max() - box[2] * scale) <= 3
    assert abs(ys.min() - box[1] * scale) <= 3 and abs(ys.max() - box[3] * scale) <= 3
    assert r["run_button"]
    # 2. Run fix: a new layer; the face changed, everything well away from it bit-identical.
    assert r["status"] == "finished", r["message"]
    assert len(r["layers_after"]) == len(r["layers_before"]) + 1 and not r["pending_after"]
    assert r["layers_after"][0].startswith("[ctrlgen] #2 fix faces")
    photo = pixels(r["photo"], 512, 512).astype(int)
    fixed = pixels(r["result"], 512, 512).astype(int)
    assert (fixed[..., 3] == 255).all()
    margin = 48  # dilate 4 + blur 4 + padding 32, rounded up
    x0, y0, x1, y1 = box
    far = np.ones((512, 512), bool)
    far[max(0, y0 - margin):y1 + margin, max(0, x0 - margin):x1 + margin] = False
    np.testing.assert_array_equal(fixed[far], photo[far])
    face = (slice(y0 + 10, y1 - 10), slice(x0 + 10, x1 - 10))
    assert np.abs(fixed[face][..., :3] - photo[face][..., :3]).mean() > 2


def test_fix_in_a_selection_finds_only_what_it_covers_and_cancel_changes_nothing(krita_report):
    r = scenario(krita_report, "fix_selection")
    whole = r["faces_document"]["boxes"]
    assert len(whole) >= 3 and all(any(_near(b, f, 25) for b in whole) for f in T1_FACES.values())
    inside = r["faces_selection"]["boxes"]
    assert r["faces_selection"]["message"].startswith("Found") and "in the selection" in r["faces_selection"]["message"]
    rx, ry, rw, rh = r["faces_selection"]["region"]
    assert rx <= 430 and ry <= 270 and rx + rw >= 860 and ry + rh >= 500  # the selection plus its context
    assert inside and all(rx <= b[0] and b[2] <= rx + rw and ry <= b[1] and b[3] <= ry + rh for b in inside)
    assert any(_near(b, T1_FACES["ross"], 25) for b in inside)
    assert not any(_near(b, T1_FACES["rachel"], 25) for b in inside)  # outside the selection
    assert not r["cancelled"]["pending"] and r["cancelled"]["message"] == "Fix cancelled."
    assert r["cancelled"]["layers"] == ["Photo", "Background"] == r["layers"]
    hands = r["hands"]["boxes"]
    assert hands and any(_near(b, h, 25) for b in hands for h in T1_HANDS.values()), hands


def test_history_previews_applies_and_discards_and_is_kept_beside_the_kra(krita_report):
    r = scenario(krita_report, "history")
    assert r["saved"] and r["status"] == "finished", r["message"]
    # A batch of two, both in the history under job #1 with their own seeds; nothing added yet.
    assert [i[:2] for i in r["items"]] == [[1, 0], [1, 1]] and r["items"][0][2] != r["items"][1][2]
    assert not any(i[3] for i in r["items"]) and r["layers_after_job"] == r["layers_before"]
    # Clicking previews on the canvas (one preview layer at a time, the result's pixels).
    assert r["layers_preview0"] == ["[ctrlgen] preview", "Painted", "Background"] == r["layers_preview1"]
    assert r["preview0"] == r["pixels"][0] and r["preview1"] == r["pixels"][1] != r["pixels"][0]
    # Apply keeps it as a named layer; discard drops the other.
    assert r["applied_name"] == f"[ctrlgen] #1 txt2img: a kite (seed {r['items'][1][2]})"
    assert r["layers_applied"] == [r["applied_name"], "Painted", "Background"] == r["layers_final"]
    assert r["applied_pixels"] == r["pixels"][1]
    # Beside history.kra: the index and the one remaining result; read back the same.
    assert "history.json" in r["files"] and sum(f.endswith(".bgra.z") for f in r["files"]) == 1
    assert r["reloaded"] == [[1, 1, r["items"][1][2], True, True]]
