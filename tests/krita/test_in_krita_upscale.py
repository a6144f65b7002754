"""The Upscale workspace, regions from a layer group and the selection modes inside real Krita
against a real server (same Krita run as test_in_krita.py: see conftest.krita_report; the
scenarios are in krita_scenarios_upscale.py)."""

from __future__ import annotations

import numpy as np
import pytest
from test_in_krita import pixels, scenario

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_upscale_doubles_the_document_and_adds_the_result_as_a_layer_of_that_size(krita_report):
    r = scenario(krita_report, "upscale")
    assert r["finished"] and r["status"] == "finished", r["message"]
    (job,) = r["jobs"]
    assert job["task"] == "upscale" and job["prompt"] == "a sharp photo"
    assert job["upscale"] == {"upscaler": "2x-compact", "width": 128, "height": 96, "denoise": 0.3,
                              "tile_size": 128, "overlap": 32}
    assert r["size"] == [128, 96]
    assert r["layers"] == [r["result_name"], "Dot", "Painted", "Background"]
    assert r["result_name"].startswith("[ctrlgen] #1 upscale: a sharp photo")
    assert r["result_bounds"] == [0, 0, 128, 96]
    result = pixels(r["result"], 128, 96)
    assert (result[..., 3] == 255).all() and result[..., :3].std() > 0
    # The other layers were scaled with the document: the 8×8 dot at (8, 8) is now 16×16 at (16, 16)
    # (give or take the resampling's soft edge).
    x, y, w, h = r["dot_bounds"]
    assert abs(x - 16) <= 1 and abs(y - 16) <= 1 and abs(w - 16) <= 2 and abs(h - 16) <= 2


def test_a_regions_group_sends_one_region_per_shown_child_with_its_pixels_as_mask(krita_report):
    r = scenario(krita_report, "regions")
    assert r["finished"] and r["status"] == "finished", r["message"]
    assert r["group_found"] and r["combo"] == "Regions: Regions"
    assert r["rows"] == ["hidden idea", "a green tree", "a red house"]  # top first
    assert r["message_at_start"] == "Hidden layers left out: hidden idea (show them to use them)."
    (job,) = r["jobs"]
    assert job["prompt"] == "a village"  # the docker's prompt is the root prompt
    assert [(a["type"], a["prompt"]) for a in job["adapters"]] == [("region", "a green tree"),
                                                                   ("region", "a red house")]
    tree, house = (r["masks"][name] for name in ("a green tree", "a red house"))
    assert tree[:3] == [64, 64, 1] and house[:3] == [64, 64, 1]
    house_mask = pixels(house[3], 64, 64, 1)
    tree_mask = pixels(tree[3], 64, 64, 1)
    assert (house_mask[:, :24] == 255).all() and (house_mask[:, 24:] == 0).all()
    assert (np.abs(tree_mask[:, 40:].astype(int) - 128) <= 1).all() and (tree_mask[:, :40] == 0).all()  # 50 %
    assert r["result_name"].startswith("[ctrlgen] #1 txt2img: a village")


MODE_FIELDS = {  # mode: (inpaint.fill, strength, prompt, inverted)
    "fill": ("fill", 1.0, "a red ball", False),
    "expand": ("fill", 1.0, "a red ball", False),
    "add": ("latent_noise", 1.0, "a red ball", False),
    "remove": ("fill", 0.85, "", False),
    "replace_background": ("latent_noise", 1.0, "a red ball", True),
}


@pytest.mark.parametrize("mode", list(MODE_FIELDS))
def test_each_selection_mode_submits_its_job_and_its_result_lands_where_expected(krita_report, mode):
    r = scenario(krita_report, "selection_modes")
    out = r["modes"][mode]
    assert out["finished"] and out["status"] == "finished", out["message"]
    job = out["job"]
    fill, strength, prompt, inverted = MODE_FIELDS[mode]
    assert job["task"] == "inpaint" and job["inpaint"]["fill"] == fill and job["strength"] == strength
    assert job["prompt"] == prompt and job["negative_prompt"] == "blur"
    assert job["inpaint"].get("invert", False) is inverted
    selection = pixels(r["mask"], 64, 64, 1)  # the feathered selection
    alpha = pixels(out["result"], 64, 64)[..., 3]
    before = pixels(r["projection_before"], 64, 64)
    after = pixels(out["projection"], 64, 64)
    if inverted:
        # The subject (inside the selection) is kept: the layer is transparent there and the
        # picture unchanged; everything well outside is new.
        assert (alpha[selection == 255] == 0).all()
        np.testing.assert_array_equal(after[selection == 255], before[selection == 255])
        assert (alpha[selection == 0] == 255).all()
    else:
        # The result is the selection: opaque inside, transparent outside, soft across the feather.
        np.testing.assert_array_equal(alpha, selection)
        np.testing.assert_array_equal(after[selection == 0], before[selection == 0])
        assert (after[selection == 255] != before[selection == 255]).any()
    if mode == "expand":  # the model saw more of the surroundings: the whole 64×64 canvas here
        assert (job["width"], job["height"]) == (64, 64)
