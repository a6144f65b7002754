"""The docker's logic without Krita: pixel formats, regions, jobs, queue, messages, capture."""

from __future__ import annotations

import numpy as np
import pytest
from fake_krita import FakeDocument

from ctrlgen.host_bridges.client import AuthError, ClientError, JobFailed, ServerNotRunning
from ctrlgen.host_bridges.krita.ctrlgen_krita import kritadoc
from ctrlgen.host_bridges.krita.ctrlgen_krita.logic import (
    Capture,
    ControlLayer,
    DocumentError,
    JobQueue,
    Rect,
    ReferenceLayer,
    Settings,
    bgra_alpha,
    bgra_to_rgb,
    bgra_to_rgba,
    build_job,
    check_color_space,
    choose_task,
    error_message,
    inpaint_region,
    layer_pixels_for_server,
    matching_models,
    models_of,
    preprocessor_names,
    result_layer_name,
    rgb_to_bgra,
    set_path,
    to_bgra,
)


def random_bgra(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)


# -- pixels --------------------------------------------------------------------------------------
def test_bgra_conversions_match_numpy_channel_swaps():
    bgra = random_bgra(7, 5)
    assert bgra_to_rgb(bgra.tobytes()) == bgra[..., 2::-1].tobytes()
    assert bgra_to_rgba(bgra.tobytes()) == bgra[..., [2, 1, 0, 3]].tobytes()
    assert bgra_alpha(bgra.tobytes()) == bgra[..., 3].tobytes()


def test_rgb_results_become_bgra_with_the_given_alpha():
    rgb = random_bgra(4, 6, 1)[..., :3].copy()
    opaque = np.frombuffer(rgb_to_bgra(rgb.tobytes()), np.uint8).reshape(4, 6, 4)
    np.testing.assert_array_equal(opaque[..., :3], rgb[..., ::-1])
    assert (opaque[..., 3] == 255).all()
    alpha = np.arange(24, dtype=np.uint8).reshape(4, 6)
    soft = np.frombuffer(rgb_to_bgra(rgb.tobytes(), alpha.tobytes()), np.uint8).reshape(4, 6, 4)
    np.testing.assert_array_equal(soft[..., 3], alpha)
    with pytest.raises(ValueError, match="alpha has 3 values for 24 pixels"):
        rgb_to_bgra(rgb.tobytes(), b"abc")


def test_to_bgra_takes_grey_rgb_and_rgba_server_images():
    grey = np.array([[0, 128], [200, 255]], np.uint8)
    out = np.frombuffer(to_bgra(grey.tobytes(), 1), np.uint8).reshape(2, 2, 4)
    np.testing.assert_array_equal(out[..., 0], grey)
    np.testing.assert_array_equal(out[..., 2], grey)
    rgba = random_bgra(2, 3, 2)
    back = np.frombuffer(to_bgra(rgba.tobytes(), 4), np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(back, rgba[..., [2, 1, 0, 3]])
    with pytest.raises(ValueError, match="1, 3 or 4 channels"):
        to_bgra(b"ab", 2)


def test_only_rgba_8bit_documents_are_accepted():
    check_color_space("RGBA", "U8")
    # Named as Krita's menus name them (Image > Convert Image Color Space), not RGBA/U16.
    with pytest.raises(DocumentError, match=r"^This document is RGB/Alpha \(16-bit integer/channel\);.*"
                                            r"RGB/Alpha \(8-bit integer/channel\).*Convert Image Color Space"):
        check_color_space("RGBA", "U16")
    with pytest.raises(DocumentError, match=r"is CMYK/Alpha \(8-bit integer/channel\)") as caught:
        check_color_space("CMYKA", "U8")
    assert "CMYKA" not in str(caught.value) and "U8" not in str(caught.value)
    with pytest.raises(DocumentError, match=r"is Grayscale/Alpha \(32-bit float/channel\)"):
        check_color_space("GRAYA", "F32")


# -- regions -------------------------------------------------------------------------------------
def test_inpaint_region_adds_context_and_stays_inside_the_canvas():
    canvas = Rect(0, 0, 500, 400)
    assert inpaint_region(Rect(100, 100, 80, 90), canvas, 32) == Rect(68, 68, 144, 154)
    # Near the corner the crop slides back inside the canvas and keeps its size.
    assert inpaint_region(Rect(0, 0, 70, 70), canvas, 16) == Rect(0, 0, 102, 102)
    # A tiny selection still gets a 64×64 area, centred on it where possible.
    small = inpaint_region(Rect(200, 200, 10, 10), canvas, 0)
    assert (small.width, small.height) == (64, 64) and small.x <= 200 and small.right >= 210
    # A canvas smaller than the context keeps the canvas.
    assert inpaint_region(Rect(10, 10, 20, 20), Rect(0, 0, 64, 64), 100) == Rect(0, 0, 64, 64)
    with pytest.raises(DocumentError, match="selection is empty"):
        inpaint_region(Rect(5, 5, 0, 0), canvas, 8)


def test_task_follows_selection_and_strength():
    assert choose_task(True, 1.0) == "inpaint"
    assert choose_task(True, 0.4) == "inpaint"
    assert choose_task(False, 1.0) == "txt2img"
    assert choose_task(False, 0.5) == "img2img"


# -- jobs ----------------------------------------------------------------------------------------
def settings(**changes) -> Settings:
    base = Settings(model="tiny-sd15", prompt="a cat", negative_prompt="blur", strength=0.6, seed=42, steps=9,
                    cfg_scale=5.5, sampler="DPM++ 2M")
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def test_inpaint_job_sends_the_region_and_mask_the_plugin_feathered():
    region = Rect(10, 20, 64, 80)
    bgra = random_bgra(80, 64, 9)
    bgra[..., 3] = 255  # an opaque canvas goes as RGB (transparent ones as RGBA: see below)
    mask = bytes([255]) * (64 * 80)
    job, images = build_job(settings(), Capture("inpaint", region, bgra.tobytes(), mask))
    assert job == {"model": "tiny-sd15", "task": "inpaint", "prompt": "a cat", "negative_prompt": "blur",
                   "seed": 42, "steps": 9, "cfg_scale": 5.5, "sampler": "DPM++ 2M", "width": 64, "height": 80,
                   "strength": 0.6, "inpaint": {"grow_px": 0, "feather_px": 0, "fill": "original"}}
    assert images == {"image": (bgra[..., 2::-1].tobytes(), 64, 80, 3), "mask": (mask, 64, 80, 1)}
    full, _ = build_job(settings(strength=1.0), Capture("inpaint", region, bgra.tobytes(), mask))
    assert full["inpaint"]["fill"] == "fill" and full["strength"] == 1.0


def test_txt2img_sends_no_image_and_img2img_sends_the_canvas():
    region = Rect(0, 0, 96, 64)
    job, images = build_job(settings(strength=1.0), Capture("txt2img", region))
    assert job["task"] == "txt2img" and "strength" not in job and images == {}
    bgra = random_bgra(64, 96, 10)
    bgra[..., 3] = 255
    job, images = build_job(settings(), Capture("img2img", region, bgra.tobytes()))
    assert job["strength"] == 0.6 and images == {"image": (bgra[..., 2::-1].tobytes(), 96, 64, 3)}


def test_control_and_reference_layers_become_units_and_adapters():
    region = Rect(0, 0, 64, 64)
    on = ControlLayer("id1", "Pose", "openpose", "cn-pose", strength=0.7, start=0.1, end=0.8)
    off = ControlLayer("id2", "Lines", "none", "cn-lines", enabled=False)
    lines = ControlLayer("id3", "Lineart", "none", "cn-lines")
    ref = ReferenceLayer("id4", "Style", "ip-adapter_sd15", scale=0.5)
    a, b, c, d = (bytes([i, 0, 0, 255]) * 64 * 64 for i in range(4))  # BGRA: blue = i
    capture = Capture("txt2img", region, controls=[(on, a), (off, b), (lines, c)], references=[(ref, d, region)])
    job, images = build_job(settings(controls=[on, off, lines], references=[ref]), capture)
    assert job["control"] == [
        {"model": "cn-pose", "preprocessor": "openpose", "weight": 0.7, "guidance_start": 0.1, "guidance_end": 0.8},
        {"model": "cn-lines", "preprocessor": "none", "weight": 1.0, "guidance_start": 0.0, "guidance_end": 1.0},
    ]
    assert job["adapters"] == [{"type": "ip_adapter", "model": "ip-adapter_sd15", "scale": 0.5}]
    rgb = [bytes([0, 0, i]) * 64 * 64 for i in range(4)]
    assert images == {"control.0.image": (rgb[0], 64, 64, 3), "control.1.image": (rgb[2], 64, 64, 3),
                      "adapters.0.image": (rgb[3], 64, 64, 3)}
    set_path(job, "control.1.image", "sha256:" + "0" * 64)
    assert job["control"][1]["image"] == "sha256:" + "0" * 64


def test_jobs_without_a_model_or_with_bad_controls_are_refused_with_the_fix():
    region = Rect(0, 0, 64, 64)
    with pytest.raises(DocumentError, match="Choose a model"):
        build_job(settings(model=""), Capture("txt2img", region))
    bad = ControlLayer("id", "Depth", "depth", model="")
    with pytest.raises(DocumentError, match="'Depth' has no ControlNet model"):
        build_job(settings(controls=[bad]), Capture("txt2img", region))
    late = ControlLayer("id", "Depth", "depth", model="cn", start=0.9, end=0.2)
    with pytest.raises(DocumentError, match="start must be below end"):
        build_job(settings(controls=[late]), Capture("txt2img", region))
    with pytest.raises(DocumentError, match="has no IP-Adapter model"):
        build_job(settings(references=[ReferenceLayer("id", "Face", "")]), Capture("txt2img", region))


def test_result_layers_are_named_after_the_job():
    assert result_layer_name(3, "inpaint", "a  red\nhelmet", 77) == "[ctrlgen] #3 inpaint: a red helmet (seed 77)"
    assert result_layer_name(1, "txt2img", "") == "[ctrlgen] #1 txt2img"
    assert len(result_layer_name(1, "txt2img", "word " * 40)) < 70


def test_capabilities_fill_the_choices():
    caps = {"models": [{"name": "sd", "category": "checkpoints", "kind": "checkpoint", "architecture": "sd15"},
                       {"name": "xl", "category": "diffusers", "kind": "checkpoint", "architecture": "sdxl"},
                       {"name": "odd", "category": "checkpoints", "kind": None, "architecture": "unknown"},
                       {"name": "cn-xl", "category": "diffusers", "kind": "controlnet", "architecture": "sdxl"},
                       {"name": "cn-15", "category": "controlnet", "kind": "controlnet", "architecture": "sd15"},
                       {"name": "vae", "category": "checkpoints", "kind": "vae", "architecture": "sd15"}],
            "preprocessors": [{"name": "depth"}, {"name": "canny"}]}
    # By identified kind first (a ControlNet in ComfyUI's diffusers folder is no checkpoint),
    # by folder when the kind is unknown.
    assert models_of(caps, "checkpoint") == ["sd", "xl", "odd"]
    assert models_of(caps, "controlnet") == ["cn-xl", "cn-15"]
    assert matching_models(caps, "controlnet", "sd") == ["cn-15", "cn-xl"]
    assert matching_models(caps, "controlnet", "xl") == ["cn-xl", "cn-15"]
    assert preprocessor_names(caps) == ["none", "canny", "depth"]
    caps["models"] += [{"name": "ip-adapter_sdxl", "category": "ipadapter", "kind": "ip_adapter"},
                       {"name": "ip-adapter-plus_sd15", "category": "ipadapter", "kind": "ip_adapter"},
                       {"name": "instantid", "category": "ipadapter", "kind": "ip_adapter", "variant": "instantid"}]
    # Without an identified architecture the name tells; InstantID is not a plain reference adapter.
    assert matching_models(caps, "ipadapter", "xl") == ["ip-adapter_sdxl", "ip-adapter-plus_sd15"]
    assert matching_models(caps, "ipadapter", "sd") == ["ip-adapter-plus_sd15", "ip-adapter_sdxl"]


# -- messages ------------------------------------------------------------------------------------
def test_errors_become_messages_that_say_what_to_do():
    down = error_message(ServerNotRunning("connection refused"), "http://127.0.0.1:7421")
    assert "not running at http://127.0.0.1:7421" in down and "`ctrlgen serve`" in down
    assert "refused the token" in error_message(AuthError(401, "unauthorized", "bad token"))
    missing = error_message(JobFailed("model_not_found", "no checkpoint 'sd-x' in /models."))
    assert "model is missing: no checkpoint 'sd-x'" in missing and "`ctrlgen models`" in missing
    assert error_message(ClientError(422, "model_not_found", "no checkpoint 'sd-x' in /models.")) == missing
    assert "queue is full" in error_message(ClientError(429, "queue_full", "full"))
    assert error_message(ClientError(422, "invalid_request", "steps: too many")) == \
        "The server answered invalid_request: steps: too many"
    assert error_message(DocumentError("Select something")) == "Select something"
    assert error_message(KeyError("x")).startswith("Unexpected error: KeyError")


# -- queue ---------------------------------------------------------------------------------------
def test_queue_follows_server_events():
    q = JobQueue(keep_done=2)
    a, b = q.add("A", "inpaint"), q.add("B", "txt2img")
    assert (a.key, b.key) == (1, 2) and a.label() == "#1 inpaint — sending…"
    q.submitted(1, "job-a")
    q.apply_event(1, "queued", {"position": 0})
    q.submitted(2, "job-b")
    q.apply_event(2, "queued", {"position": 1})
    assert b.label() == "#2 txt2img — queued (1 ahead)"
    q.apply_event(1, "started", {})
    q.apply_event(1, "progress", {"step": 3, "total": 4})
    assert a.label() == "#1 inpaint — 3/4" and q.progress() == 0.75
    q.apply_event(1, "finished", {"results": []})
    q.apply_event(2, "error", {"code": "model_not_found", "message": "no 'x'."})
    assert [e.key for e in q.active()] == [] and b.status == "error" and "model is missing" in b.message
    q.add("C", "img2img")
    q.add("D", "img2img")
    q.apply_event(3, "cancelled", {})
    assert [e.key for e in q.entries] == [2, 3, 4]  # the oldest ended job was dropped (keep_done=2)
    assert q.apply_event(99, "started", {}) is None


# -- reading the document ------------------------------------------------------------------------
def test_capture_with_a_selection_reads_region_mask_and_control_layers():
    doc = FakeDocument(200, 150)
    bottom = doc.add_layer("Painted", random_bgra(150, 200, 3) | np.array([0, 0, 0, 255], np.uint8))
    pose = doc.add_layer("Pose", random_bgra(150, 200, 4))
    doc.active = bottom
    doc.select(80, 60, 30, 20)
    s = settings(grow_px=3, feather_px=2, context_px=10,
                 controls=[ControlLayer(kritadoc.node_id(pose), "Pose", "openpose", "cn")])
    capture = kritadoc.capture(doc, s)
    assert capture.task == "inpaint"
    # Bounds of the grown (3) and feathered (2) selection, plus 10 px of context, at least 64×64.
    # Selection 80,60 30×20; grown by 3 and feathered by 2: 75,55 40×30; 10 px of context: 65,45
    # 60×50; widened to the 64×64 minimum around its centre.
    assert capture.region == Rect(63, 38, 64, 64)
    r = capture.region
    projection = doc.projection()[r.y:r.bottom, r.x:r.right]
    assert capture.image == projection.tobytes()
    mask = np.frombuffer(capture.mask, np.uint8).reshape(r.height, r.width)
    assert mask[60 - r.y + 10, 80 - r.x + 15] == 255 and mask[0, 0] == 0
    (unit, pixels), = capture.controls
    assert pixels == pose.pixels[r.y:r.bottom, r.x:r.right].tobytes()
    # The user's own selection was not grown or feathered: a copy was.
    assert doc.selection().calls == [] and (doc.selection().x(), doc.selection().width()) == (80, 30)


def test_capture_reads_the_active_layer_when_asked_and_whole_canvas_without_selection():
    doc = FakeDocument(64, 80)
    under = doc.add_layer("Under", random_bgra(80, 64, 5))
    doc.add_layer("Over", random_bgra(80, 64, 6))
    doc.active = under
    capture = kritadoc.capture(doc, settings(source="active_layer", strength=0.5))
    assert capture.task == "img2img" and capture.region == Rect(0, 0, 64, 80)
    assert capture.image == under.pixels.tobytes()
    assert capture.mask is None
    assert kritadoc.capture(doc, settings(strength=1.0)).image is None  # txt2img reads no pixels


def test_capture_refuses_what_it_cannot_use():
    with pytest.raises(DocumentError, match="Open or create a document"):
        kritadoc.capture(None, settings())
    with pytest.raises(DocumentError, match="Grayscale/Alpha"):
        kritadoc.capture(FakeDocument(64, 64, "GRAYA"), settings())
    with pytest.raises(DocumentError, match="at least 64×64"):
        kritadoc.capture(FakeDocument(48, 300), settings())
    doc = FakeDocument(64, 64)
    doc.add_layer("A", random_bgra(64, 64))
    with pytest.raises(DocumentError, match="'Gone' no longer exists"):
        kritadoc.capture(doc, settings(controls=[ControlLayer("nope", "Gone", "canny", "cn")]))


def test_results_go_on_top_at_their_offset_and_discarding_removes_them():
    doc = FakeDocument(100, 100)
    painted = doc.add_layer("Painted", random_bgra(100, 100, 7))
    before = painted.pixels.copy()
    bgra = random_bgra(30, 40, 8)
    layer = kritadoc.insert_layer(doc, "[ctrlgen] #1", bgra.tobytes(), Rect(50, 60, 40, 30))
    assert [n.name() for n in kritadoc.iter_layers(doc)] == ["[ctrlgen] #1", "Painted"]
    np.testing.assert_array_equal(layer.pixels[60:90, 50:90], bgra)
    assert not layer.pixels[:60].any() and not layer.pixels[:, :50].any()
    np.testing.assert_array_equal(painted.pixels, before)
    kritadoc.remove_layer(doc, layer)
    assert [n.name() for n in kritadoc.iter_layers(doc)] == ["Painted"]


def test_transparent_layers_go_as_rgba_so_the_server_composites_them_on_white():
    from ctrlgen.core.images import to_rgb

    region = Rect(0, 0, 8, 4)
    sketch = np.zeros((4, 8, 4), np.uint8)  # a transparent layer (Krita stores BGRA 0,0,0,0) ...
    sketch[1, :] = (0, 0, 0, 255)  # ... with one opaque black line
    lines = ControlLayer("id", "Sketch", "lineart_standard", "cn-lines")
    _, images = build_job(settings(controls=[lines]), Capture("txt2img", region, controls=[(lines, sketch.tobytes())]))
    data, width, height, channels = images["control.0.image"]
    assert channels == 4
    seen = to_rgb(np.frombuffer(data, np.uint8).reshape(height, width, channels))  # what the server reads
    assert (seen[1] == 0).all() and (seen[[0, 2, 3]] == 255).all()  # black line on white, not on black
    opaque = sketch.copy()
    opaque[..., 3] = 255
    assert layer_pixels_for_server(opaque.tobytes()) == (opaque[..., 2::-1].tobytes(), 3)


def test_generation_size_keeps_the_shape_within_the_models_resolution():
    from ctrlgen.host_bridges.krita.ctrlgen_krita.logic import generation_size

    assert generation_size(4096, 4096, "sd15") == (768, 768)  # at most 1.5² × 512²
    assert generation_size(4096, 2048, "sdxl") == (2168, 1080)
    assert generation_size(600, 640, "sd15") == (600, 640)  # already in range: untouched
    assert generation_size(100, 60, "sd15") == (664, 400)  # a small selection is repainted at >= 512²
    assert generation_size(100, 60, "flux") == (100, 60)  # unknown family: the area's own size
    for width, height in ((4096, 4096), (100, 60), (1920, 1080)):
        w, h = generation_size(width, height, "sdxl")
        assert w % 8 == 0 and h % 8 == 0 and abs(w / h - width / height) < 0.03


def test_jobs_ask_for_the_generation_size_and_send_images_at_the_areas_size():
    region = Rect(0, 0, 200, 100)
    bgra = random_bgra(100, 200, 3)
    bgra[..., 3] = 255
    job, images = build_job(settings(), Capture("img2img", region, bgra.tobytes()), "sd15")
    assert (job["width"], job["height"]) == (728, 368) and images["image"][1:] == (200, 100, 3)
    job, _ = build_job(settings(scale_to_model=False), Capture("img2img", region, bgra.tobytes()), "sd15")
    assert (job["width"], job["height"]) == (200, 100)


def test_reference_layers_use_an_ip_adapter_or_reference_only():
    from ctrlgen.host_bridges.krita.ctrlgen_krita.logic import REFERENCE_ONLY

    region = Rect(0, 0, 64, 64)
    style = ReferenceLayer("id1", "Style", REFERENCE_ONLY, scale=0.7)
    face = ReferenceLayer("id2", "Face", "ip-adapter_sd15", scale=0.5)
    pixels = bytes([9, 9, 9, 255]) * 64 * 64
    job, images = build_job(settings(references=[style, face]),
                            Capture("txt2img", region, references=[(style, pixels, region), (face, pixels, region)]))
    assert job["adapters"] == [{"type": "reference", "mode": "reference_adain+attn", "weight": 0.7},
                               {"type": "ip_adapter", "model": "ip-adapter_sd15", "scale": 0.5}]
    assert set(images) == {"adapters.0.image", "adapters.1.image"}
    with pytest.raises(DocumentError, match="needs none"):
        build_job(settings(references=[ReferenceLayer("id3", "X", "")]), Capture("txt2img", region))


def test_a_reference_is_the_whole_layer_whatever_the_selection():
    doc = FakeDocument(200, 160)
    doc.add_layer("Painted", random_bgra(160, 200, 9) | np.array([0, 0, 0, 255], np.uint8))
    style = np.zeros((160, 200, 4), np.uint8)
    style[100:150, 120:190] = random_bgra(50, 70, 10) | np.array([0, 0, 0, 255], np.uint8)
    ref_layer = doc.add_layer("Style", style)
    doc.active = doc.root.children[0]
    doc.select(10, 10, 40, 30)  # far from the reference's pixels
    ref = ReferenceLayer(kritadoc.node_id(ref_layer), "Style", "ip-adapter_sd15")
    capture = kritadoc.capture(doc, settings(references=[ref], context_px=0))
    (item, pixels, rect), = capture.references
    assert rect == Rect(120, 100, 70, 50) and capture.region != rect
    assert pixels == style[100:150, 120:190].tobytes()  # its pixels, not a transparent patch
    job, images = build_job(settings(references=[ref]), capture)
    assert images["adapters.0.image"][1:] == (70, 50, 3)
    ref_layer.pixels[:] = 0
    with pytest.raises(DocumentError, match="'Style' is empty"):
        kritadoc.capture(doc, settings(references=[ref]))


def test_hidden_control_and_reference_layers_are_left_out_and_named():
    doc = FakeDocument(64, 64)
    doc.add_layer("Painted", random_bgra(64, 64, 1))
    group = doc.add_group("Guides")
    pose = doc.createNode("Pose", "paintlayer")
    pose.pixels[:] = random_bgra(64, 64, 2)
    group.addChildNode(pose, None)
    lines = doc.add_layer("Lines", random_bgra(64, 64, 3))
    style = doc.add_layer("Style", random_bgra(64, 64, 4))
    marked = dict(controls=[ControlLayer(kritadoc.node_id(pose), "Pose", "openpose", "cn"),
                            ControlLayer(kritadoc.node_id(lines), "Lines", "none", "cn")],
                  references=[ReferenceLayer(kritadoc.node_id(style), "Style", "ip")])
    assert len(kritadoc.capture(doc, settings(**marked)).controls) == 2
    group.setVisible(False)  # hiding the group hides the pose layer in it
    style.setVisible(False)
    capture = kritadoc.capture(doc, settings(**marked))
    assert [c.layer_name for c, _ in capture.controls] == ["Lines"] and capture.references == []
    assert capture.skipped == ["Pose", "Style"]


def test_results_go_above_the_active_layer_in_its_group_and_it_stays_active():
    doc = FakeDocument(64, 64)
    doc.add_layer("Background", random_bgra(64, 64, 1))
    group = doc.add_group("Figure")
    inner = doc.createNode("Inked", "paintlayer")
    group.addChildNode(inner, None)
    top = doc.createNode("Shading", "paintlayer")
    group.addChildNode(top, None)
    doc.add_layer("Notes", random_bgra(64, 64, 2))
    doc.active = inner
    capture = kritadoc.capture(doc, settings(strength=0.5))
    assert capture.above is inner
    kritadoc.insert_layer(doc, "result", random_bgra(64, 64, 3).tobytes(), capture.region, above=capture.above)
    assert [n.name() for n in group.children] == ["Inked", "result", "Shading"]
    assert doc.activeNode() is inner  # the next "Active layer" job reads the same layer
    assert kritadoc.capture(doc, settings(strength=0.5, place_on_top=True)).above is None
    kritadoc.insert_layer(doc, "on top", random_bgra(64, 64, 4).tobytes(), capture.region)
    assert doc.root.children[-1].name() == "on top" and doc.activeNode() is inner


def test_a_result_for_a_closed_document_is_dropped_with_a_message():
    from ctrlgen.host_bridges.krita.ctrlgen_krita.controller import Controller, _Job

    doc = FakeDocument(64, 64)
    doc.add_layer("Painted", random_bgra(64, 64, 1))
    controller = Controller(lambda: doc)
    entry = controller.queue.add("", "txt2img")
    controller._jobs[entry.key] = _Job(entry.key, doc, Capture("txt2img", Rect(0, 0, 64, 64)))
    entry.status = "running"
    doc.close()
    controller._outbox.put(("result", entry.key, [(bytes(64 * 64 * 4), 1)]))
    assert controller.poll()
    assert entry.status == "cancelled" and not controller._jobs and controller.results == []
    assert controller.message.startswith(f"The document of job #{entry.key} was closed")
    assert kritadoc.is_open(doc) is False and kritadoc.is_open(None) is False


def test_replace_background_repaints_everything_but_the_selection():
    doc = FakeDocument(96, 80)
    doc.add_layer("Painted", random_bgra(80, 96, 11) | np.array([0, 0, 0, 255], np.uint8))
    doc.select(30, 20, 24, 20)
    fill = kritadoc.capture(doc, settings(feather_px=0, context_px=4))
    assert fill.region != Rect(0, 0, 96, 80)  # fill: the selection and its context only
    capture = kritadoc.capture(doc, settings(feather_px=0, selection_mode="replace_background"))
    assert capture.task == "inpaint" and capture.region == Rect(0, 0, 96, 80)  # the whole canvas
    mask = np.frombuffer(capture.mask, np.uint8).reshape(80, 96)
    assert (mask[20:40, 30:54] == 0).all() and mask[0, 0] == 255 and (mask == 255).sum() == 96 * 80 - 24 * 20
    job, images = build_job(settings(selection_mode="replace_background"), capture)
    assert job["task"] == "inpaint" and images["mask"][1:] == (96, 80, 1) and "batch_size" not in job
    assert build_job(settings(batch_size=3), capture)[0]["batch_size"] == 3  # a batch: one job, three results


def test_the_users_active_layer_is_given_back_when_the_view_activates_a_result_later():
    from ctrlgen.host_bridges.krita.ctrlgen_krita.controller import Controller, _Job

    doc = FakeDocument(64, 64)
    painted = doc.add_layer("Painted", random_bgra(64, 64, 1))
    controller = Controller(lambda: doc)
    entry = controller.queue.add("", "txt2img")
    controller._jobs[entry.key] = _Job(entry.key, doc, Capture("txt2img", Rect(0, 0, 64, 64), above=painted),
                                       settings=Settings())
    controller._outbox.put(("result", entry.key, [(bytes(64 * 64 * 4), 1)]))
    controller.poll()
    (_, result), = controller.results
    assert doc.activeNode() is painted
    doc.active = result  # what Krita's view does on a later event
    controller.poll()
    assert doc.activeNode() is painted
    controller._keep_active = [(d, i, a, 0.0) for d, i, a, _ in controller._keep_active]  # the moment is over
    doc.active = result  # the user picks the result on purpose: left alone
    controller.poll()
    assert doc.activeNode() is result and controller._keep_active == []
