"""Selection modes, regions from a layer group and the Upscale workspace: the docker's logic
without Krita (real Krita: test_in_krita_upscale.py)."""

from __future__ import annotations

import numpy as np
import pytest
from fake_krita import FakeDocument

from ctrlgen.host_bridges.krita.ctrlgen_krita import kritadoc
from ctrlgen.host_bridges.krita.ctrlgen_krita.logic import (
    REMOVE_STRENGTH,
    SELECTION_MODE_TIPS,
    SELECTION_MODES,
    Capture,
    DocumentError,
    Rect,
    Settings,
    UpscaleSettings,
    action_label,
    build_job,
    build_upscale_job,
    region_mask,
    resize_grey,
    selection_plan,
    upscale_target,
    upscalers_of,
)


def settings(**changes) -> Settings:
    base = Settings(model="tiny-sd15", prompt="a cat", negative_prompt="blur", strength=1.0, seed=4, steps=4)
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def opaque(h: int, w: int, seed: int = 0) -> np.ndarray:
    bgra = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    bgra[..., 3] = 255
    return bgra


# -- selection modes ---------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "strength", "fill", "sent_strength", "keeps_prompt", "inverted"), [
    ("fill", 1.0, "fill", 1.0, True, False),
    ("fill", 0.5, "original", 0.5, True, False),
    ("expand", 0.5, "fill", 1.0, True, False),
    ("add", 0.7, "latent_noise", 0.7, True, False),
    ("remove", 1.0, "fill", REMOVE_STRENGTH, False, False),
    ("remove", 0.6, "fill", 0.6, False, False),
    ("replace_background", 1.0, "latent_noise", 1.0, True, True),
])
def test_each_selection_mode_maps_onto_the_inpaint_fields(mode, strength, fill, sent_strength, keeps_prompt,
                                                          inverted):
    region = Rect(0, 0, 64, 64)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    sent_mask = 255 - mask if inverted else mask  # capture.mask is the layer's alpha: inverted for background
    job, images = build_job(settings(selection_mode=mode, strength=strength),
                            Capture("inpaint", region, opaque(64, 64).tobytes(), sent_mask.tobytes()))
    assert job["inpaint"]["fill"] == fill and job["strength"] == sent_strength
    assert job["prompt"] == ("a cat" if keeps_prompt else "") and job["negative_prompt"] == "blur"
    assert job["inpaint"].get("invert", False) is inverted
    # The server always gets the selection itself; it inverts it for replace background.
    assert images["mask"] == (mask.tobytes(), 64, 64, 1)


def test_every_mode_has_a_label_a_tooltip_and_an_action_text():
    assert list(SELECTION_MODES) == ["fill", "expand", "add", "remove", "replace_background"]
    assert set(SELECTION_MODE_TIPS) == set(SELECTION_MODES)
    assert action_label(False, 100, "remove") == "Generate" and action_label(False, 60, "add") == "Refine"
    assert action_label(True, 100, "fill") == "Inpaint selection"
    assert action_label(True, 50, "fill") == "Refine selection"
    assert [action_label(True, 100, m) for m in ("expand", "add", "remove", "replace_background")] == [
        "Expand", "Add to selection", "Remove selection", "Replace background"]


def test_expand_sees_more_surroundings_and_replace_background_the_whole_canvas():
    selection = Rect(100, 100, 40, 30)
    assert selection_plan("fill", 1.0, 16, selection).context_px == 16
    assert selection_plan("expand", 1.0, 16, selection).context_px == 40
    doc = FakeDocument(200, 160)
    doc.add_layer("Painted", opaque(160, 200, 2))
    doc.select(100, 100, 40, 30)
    fill = kritadoc.capture(doc, settings(feather_px=0, context_px=8))
    expand = kritadoc.capture(doc, settings(feather_px=0, context_px=8, selection_mode="expand"))
    assert fill.region == Rect(88, 83, 64, 64)  # 8 px of context, grown to 64×64
    assert expand.region == Rect(60, 50, 120, 110)  # 40 px each side, shifted inside the canvas
    background = kritadoc.capture(doc, settings(feather_px=0, selection_mode="replace_background"))
    assert background.region == Rect(0, 0, 200, 160)


# -- regions -----------------------------------------------------------------------------------
def test_each_shown_child_of_the_regions_group_is_a_region_with_its_alpha_times_opacity():
    doc = FakeDocument(64, 64)
    doc.add_layer("Background", opaque(64, 64, 3))
    group = doc.add_group("Regions")
    children = {}
    for name, box in (("a red house", (0, 32)), ("a tree", (32, 64)), ("hidden", (0, 64)), ("empty", None)):
        node = doc.createNode(name, "paintlayer")
        if box:
            node.pixels[:, box[0]:box[1]] = (10, 20, 30, 200)
        group.addChildNode(node, None)
        children[name] = node
    children["hidden"].setVisible(False)
    children["a tree"].opacity = lambda: 128
    s = settings(regions_group=kritadoc.node_id(group),
                 region_prompts={kritadoc.node_id(children["a red house"]): "  a red brick house "})
    capture = kritadoc.capture(doc, s)
    assert capture.skipped == ["hidden"]
    assert [(name, prompt) for name, prompt, _ in capture.regions] == [("a tree", "a tree"),
                                                                       ("a red house", "a red brick house")]
    tree = np.frombuffer(capture.regions[0][2], np.uint8).reshape(64, 64)
    house = np.frombuffer(capture.regions[1][2], np.uint8).reshape(64, 64)
    assert (house[:, :32] == 200).all() and (house[:, 32:] == 0).all()
    assert (tree[:, 32:] == 100).all() and (tree[:, :32] == 0).all()  # 200 × 128/255
    job, images = build_job(s, capture)
    assert job["adapters"] == [{"type": "region", "prompt": "a tree", "negative_prompt": ""},
                               {"type": "region", "prompt": "a red brick house", "negative_prompt": ""}]
    assert images["adapters.1.mask"] == (house.tobytes(), 64, 64, 1)
    # txt2img at the model's resolution: the masks have the generation's size.
    job, images = build_job(settings(regions_group="x", scale_to_model=True), capture, "sd15")
    assert (job["width"], job["height"]) == (512, 512) and images["adapters.0.mask"][1:] == (512, 512, 1)
    # Gone: a message, not a traceback.
    with pytest.raises(DocumentError, match="regions group no longer exists"):
        kritadoc.capture(doc, settings(regions_group="gone"))
    assert kritadoc.group_layers(doc) == [group]


def test_region_masks_and_nearest_resizing():
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 3] = [[255, 0], [100, 255]]
    assert region_mask(bgra.tobytes(), 255) == bytes([255, 0, 100, 255])
    assert region_mask(bgra.tobytes(), 51) == bytes([51, 0, 20, 51])
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    resized = np.frombuffer(resize_grey(grey.tobytes(), 4, 3, 8, 6), np.uint8).reshape(6, 8)
    np.testing.assert_array_equal(resized, grey.repeat(2, 0).repeat(2, 1))


# -- upscale -----------------------------------------------------------------------------------
def test_upscale_target_sizes_and_refusals():
    assert upscale_target(64, 48, UpscaleSettings(factor=2.0)) == (128, 96)
    assert upscale_target(64, 48, UpscaleSettings(factor=1.5)) == (96, 72)
    assert upscale_target(64, 48, UpscaleSettings(factor=0, width=100, height=80)) == (100, 80)
    with pytest.raises(DocumentError, match="smaller than"):
        upscale_target(64, 48, UpscaleSettings(factor=0, width=64, height=40))
    with pytest.raises(DocumentError, match="4096"):
        upscale_target(2048, 2048, UpscaleSettings(factor=4.0))


def test_upscale_job_fields_and_upscaler_list():
    bgra = opaque(48, 64, 5)
    up = UpscaleSettings(factor=2.0, upscaler="2x-compact", tile_size=128, overlap=32, denoise=0.3, prompt="")
    job, images = build_upscale_job(settings(), up, bgra.tobytes(), 64, 48)
    assert job == {"task": "upscale", "model": "tiny-sd15", "prompt": "a cat", "negative_prompt": "blur", "seed": 4,
                   "steps": 4, "cfg_scale": 7.0, "sampler": "Euler a",
                   "upscale": {"upscaler": "2x-compact", "width": 128, "height": 96, "denoise": 0.3,
                               "tile_size": 128, "overlap": 32}}
    assert images == {"image": (bgra[..., 2::-1].tobytes(), 64, 48, 3)}
    plain, _ = build_upscale_job(settings(model=""), UpscaleSettings(denoise=0.0, prompt="sharp"), bgra.tobytes(),
                                 64, 48)
    assert "model" not in plain and plain["prompt"] == "sharp" and "tile_size" not in plain["upscale"]
    with pytest.raises(DocumentError, match="leaves no step"):
        build_upscale_job(settings(steps=2), up, bgra.tobytes(), 64, 48)
    with pytest.raises(DocumentError, match="under half"):
        build_upscale_job(settings(), UpscaleSettings(tile_size=128, overlap=64), bgra.tobytes(), 64, 48)
    caps = {"models": [{"name": "tiny-sd15", "category": "checkpoints"},
                       {"name": "2x-compact", "category": "upscale_models"}],
            "features": [{"name": "upscale", "resamplers": ["lanczos", "nearest"]}]}
    assert upscalers_of(caps) == ["2x-compact", "lanczos", "nearest"]


# -- the widgets (PyQt6, as Krita 6; PyQt5 in real Krita) ---------------------------------------
def test_the_upscale_workspace_and_the_regions_choice_in_the_panel():
    import os

    pytest.importorskip("PyQt6.QtWidgets")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from ctrlgen.host_bridges.krita.ctrlgen_krita.docker import CtrlgenPanel
    from ctrlgen.host_bridges.krita.ctrlgen_krita.qt import QApplication

    app = QApplication.instance() or QApplication([])
    doc = FakeDocument(64, 64)
    doc.add_layer("Background", opaque(64, 64, 6))
    group = doc.add_group("Regions")
    sky = doc.createNode("blue sky", "paintlayer")
    group.addChildNode(sky, None)
    panel = CtrlgenPanel()
    panel.controller.document = lambda: doc
    panel.controller.capabilities = {"models": [{"name": "2x-compact", "category": "upscale_models"}],
                                     "features": [{"name": "upscale", "resamplers": ["lanczos"]}]}
    panel.refresh()
    page = panel.generate_page
    # A group named "Regions" is the regions group by itself; each child gets a prompt row.
    assert page.regions_combo.currentText() == "Regions: Regions"
    assert [row.layer_name for row in page.region_rows] == ["blue sky"]
    page.region_rows[0].prompt_edit.setText("a stormy sky")
    panel.read_settings()
    s = panel.controller.settings
    assert s.regions_group == kritadoc.node_id(group)
    assert s.region_prompts == {kritadoc.node_id(sky): "a stormy sky"}
    page.regions_combo.setCurrentIndex(0)
    page._group_chosen(0)  # the user picks "No regions": kept, even with a "Regions" group
    panel.read_settings()
    assert s.regions_group == "" and page.region_rows == []
    # The selection modes name the button.
    doc.select(8, 8, 20, 20)
    page.mode_combo.setCurrentIndex(page.mode_combo.findData("remove"))
    panel.refresh()
    assert panel.generate_button.text() == "Remove selection"
    # Upscale: its page and its button; the upscalers come from the capabilities.
    panel.show_workspace("upscale")
    app.processEvents()
    assert panel.pages.currentWidget() is panel.upscale_page
    assert panel.action_stack.currentWidget() is panel.upscale_row and panel.upscale_button.toolTip()
    up = panel.upscale_page
    assert [up.upscaler_combo.itemText(i) for i in range(up.upscaler_combo.count())] == ["2x-compact", "lanczos"]
    read = up.read()
    assert (read.factor, read.upscaler, read.denoise, read.overlap) == (2.0, "2x-compact", 0.3, 64)
    up.size_combo.setCurrentIndex(up.size_combo.findData(0.0))
    assert up.width_spin.isEnabled() and up.read().factor == 0.0
    panel.on_upscale()  # not connected: a message, nothing queued
    assert panel.controller.message.startswith("Not connected") and not panel.controller.queue.entries
    panel.close()


def test_the_regions_choice_survives_a_closed_document():
    pytest.importorskip("PyQt6.QtWidgets")
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from ctrlgen.host_bridges.krita.ctrlgen_krita.pages import GeneratePage
    from ctrlgen.host_bridges.krita.ctrlgen_krita.qt import QApplication

    _app = QApplication.instance() or QApplication([])
    doc = FakeDocument(64, 64)
    doc.add_group("Regions").addChildNode(doc.createNode("sky", "paintlayer"), None)
    page = GeneratePage(lambda: None, lambda: None)
    page.document = lambda: doc
    s = Settings()
    page.read_into(s)
    assert s.regions_group and len(page.region_rows) == 1
    doc.close()
    page.read_into(s)
    assert s.regions_group == "" and page.region_rows == [] and page.regions_combo.currentText() == "No regions"
