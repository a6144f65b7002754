"""Fix passes (job.detail, task 'fix', ctrlgen.fix) on the tiny models, with a test detector
that returns the boxes it is given (docs/fixing.md)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import ctrlgen
from ctrlgen import Detection, DetectorSpec, Param
from ctrlgen.core.engine import detail
from ctrlgen.core.engine.jobs import DetailPass, parse_job
from ctrlgen.core.engine.masks import feather
from ctrlgen.core.errors import CtrlgenError, JobError
from ctrlgen.core.plugins import manager
from ctrlgen.testing.contracts import pipeline_fingerprint

pytestmark = pytest.mark.usefixtures("torch_single_thread", "test_detector")

SIZE = 128
LEFT, RIGHT = [12, 20, 44, 52, 0.9], [76, 64, 112, 104, 0.6]  # x0, y0, x1, y1, confidence


def run_boxes(image, boxes=None, ellipse=False, limit=5):
    found = []
    for box in boxes or []:
        mask = None
        if ellipse:
            import cv2

            mask = np.zeros(image.shape[:2], np.uint8)
            x0, y0, x1, y1 = box[:4]
            cv2.ellipse(mask, ((x0 + x1) // 2, (y0 + y1) // 2), ((x1 - x0) // 2, (y1 - y0) // 2), 0, 0, 360, 255, -1)
        found.append(Detection(tuple(float(v) for v in box[:4]), box[4] if len(box) > 4 else 0.9, "face", mask=mask))
    return found[:limit]


@pytest.fixture(scope="module")
def test_detector():
    class Plugin:
        @manager.hookimpl
        def ctrlgen_detectors(self):
            yield DetectorSpec(name="test_boxes", run=run_boxes, finds=("face",), params=(
                Param("boxes", "json", default=[]), Param("ellipse", "bool", default=False),
                Param("limit", "int", default=5, min=0, max=5)))

    manager.reset()
    host = manager.get_host()
    host.pm.register(Plugin(), name="detail-test-detector")
    host._registries.clear()
    yield
    manager.reset()


@pytest.fixture(scope="module")
def photo():
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((SIZE, SIZE)))


def a_pass(**fields):
    return {"detector": "test_boxes", "detector_params": {"boxes": [LEFT, RIGHT]}, "guide_size": 64,
            "max_size": 128, **fields}


def fix(engine, photo, passes, **options):
    options = {"steps": 4, "seed": 3, **options}
    return ctrlgen.fix(photo, passes, model="tiny-sd15", engine=engine, **options)


def changed(result, photo):
    return (np.asarray(result.images[0])[..., :3] != photo).any(axis=2)


def pass_masks(photo, **fields):
    detail_pass = DetailPass(**a_pass(**fields))
    found = detail.detect(detail_pass, photo)
    chosen = detail.select(found, detail_pass, (SIZE, SIZE))
    return detail.build_masks(chosen, detail_pass, (SIZE, SIZE))


@pytest.fixture
def sub_jobs(monkeypatch):
    """Every repaint job the passes run (the engine's steps 2-8), in order."""
    from ctrlgen.core.engine.engine import Engine

    seen = []
    original = Engine._generate

    def spy(self, job, *args, **kwargs):
        seen.append(job)
        return original(self, job, *args, **kwargs)

    monkeypatch.setattr(Engine, "_generate", spy)
    return seen


@pytest.fixture
def encoded_prompts(monkeypatch):
    """The prompt each repaint encodes, in order."""
    from ctrlgen.core.engine import conditioning

    seen = []
    original = conditioning.plan_prompts

    def spy(pipeline, prompt, negative_prompt, *args, **kwargs):
        seen.append((prompt, negative_prompt))
        return original(pipeline, prompt, negative_prompt, *args, **kwargs)

    monkeypatch.setattr(conditioning, "plan_prompts", spy)
    import importlib.util

    if importlib.util.find_spec("ctrlgen.core.engine.composition") is not None:  # it binds plan_prompts on import
        from ctrlgen.core.engine import composition

        monkeypatch.setattr(composition, "plan_prompts", spy)
    return seen


# -- pixels outside the masks ---------------------------------------------------------------


@pytest.mark.parametrize("seams", [{}, {"soft_inpainting": False, "colour_match": False}])
def test_pixels_outside_the_feathered_masks_are_bit_identical(engine, photo, seams):
    result = fix(engine, photo, a_pass(**seams))
    alpha = sum(feather(mask, 4.0) for mask in pass_masks(photo))
    assert changed(result, photo)[alpha > 0].any()
    assert not changed(result, photo)[alpha == 0].any()
    assert result.images[0].size == (SIZE, SIZE)


def test_the_changed_box_bounds_every_repaint(engine, photo):
    """A fix job's ``changed_box`` is the union of its repaints' (each pasted back as a region):
    every changed pixel is inside, and it reaches no further than the feathered masks."""
    result = fix(engine, photo, a_pass())
    x0, y0, x1, y1 = result.changed_box
    ys, xs = np.nonzero(changed(result, photo))
    assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
    ys, xs = np.nonzero(sum(feather(mask, 4.0) for mask in pass_masks(photo)) > 0)
    assert xs.min() <= x0 and ys.min() <= y0 and x1 <= xs.max() + 1 and y1 <= ys.max() + 1
    assert result.offset == (0, 0)


def test_a_generation_job_with_a_post_pass_changes_only_the_masks(engine, photo):
    job = {"model": "tiny-sd15", "prompt": "a cat", "seed": 5, "steps": 4, "width": SIZE, "height": SIZE}
    plain = np.asarray(engine.run(parse_job(job)).images[0])
    fixed = engine.run(parse_job({**job, "detail": [a_pass()]}))
    alpha = sum(feather(mask, 4.0) for mask in pass_masks(plain))
    out = np.asarray(fixed.images[0])
    assert (out != plain).any(axis=2)[alpha > 0].any()
    assert np.array_equal(out[alpha == 0], plain[alpha == 0])
    assert fixed.data[0]["detail"][0]["repainted"][0]["seed"] == 5
    assert fixed.changed_box is None  # a new image: all of it is new


def test_fix_accepts_a_path_a_pil_image_and_an_array(engine, photo, tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(photo).save(path)
    results = [np.asarray(fix(engine, photo, a_pass(), ).images[0]) for photo in
               (photo, Image.fromarray(photo), str(path))]
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[0], results[2])


# -- each option changes what it should -------------------------------------------------------


def test_confidence_drops_weak_detections(photo):
    assert len(pass_masks(photo)) == 2
    assert len(pass_masks(photo, confidence=0.7)) == 1


def test_area_ratio_bounds(photo):
    left_ratio = 32 * 32 / SIZE**2  # the smaller box
    assert len(pass_masks(photo, min_area_ratio=left_ratio + 0.01)) == 1
    assert len(pass_masks(photo, max_area_ratio=left_ratio + 0.01)) == 1
    assert pass_masks(photo, max_area_ratio=left_ratio + 0.01)[0][30, 30] == 255


@pytest.mark.parametrize(("by", "kept_pixel"), [("area", (80, 90)), ("confidence", (30, 30))])
def test_top_k_by_area_or_confidence(photo, by, kept_pixel):
    masks = pass_masks(photo, top_k=1, top_k_by=by)
    assert len(masks) == 1 and masks[0][kept_pixel] == 255


@pytest.mark.parametrize(("order", "first"), [
    ("none", LEFT), ("left_to_right", LEFT), ("area", RIGHT), ("confidence", LEFT), ("center_to_edge", RIGHT)])
def test_sort_orders(order, first):
    detections = run_boxes(None, [RIGHT, LEFT]) if order == "left_to_right" else run_boxes(None, [LEFT, RIGHT])
    ordered = detail.sort_detections(detections, order, (SIZE, SIZE))
    assert list(ordered[0].box) == [float(v) for v in first[:4]]


@pytest.mark.parametrize(("by", "index", "box"), [("order", 1, RIGHT), ("size", 0, RIGHT), ("confidence", 0, LEFT)])
def test_select_by_order_size_and_confidence(by, index, box):
    detail_pass = DetailPass(**a_pass(select=[index], select_by=by))
    chosen = detail.select(run_boxes(None, [LEFT, RIGHT]), detail_pass, (SIZE, SIZE))
    assert [list(d.box) for d in chosen] == [[float(v) for v in box[:4]]]


def test_offsets_move_the_mask_right_and_up(photo):
    base = pass_masks(photo, dilate_erode=0)[0]
    moved = pass_masks(photo, dilate_erode=0, x_offset=5, y_offset=3)[0]
    assert np.array_equal(np.argwhere(moved).min(axis=0), np.argwhere(base).min(axis=0) + [-3, 5])


def test_dilate_erode(photo):
    areas = [int((pass_masks(photo, dilate_erode=value)[0] > 0).sum()) for value in (-4, 0, 4)]
    assert areas[0] < areas[1] == 32 * 32 < areas[2]


def test_merge_and_merge_invert(photo):
    separate = pass_masks(photo)
    merged = pass_masks(photo, merge="merge")
    inverted = pass_masks(photo, merge="merge_invert")
    assert len(merged) == len(inverted) == 1
    assert np.array_equal(merged[0], np.maximum(*separate))
    assert np.array_equal(inverted[0], 255 - merged[0])


def test_detector_masks_are_used_where_given(photo):
    box = pass_masks(photo, dilate_erode=0)[0]
    ellipse = pass_masks(photo, dilate_erode=0, detector_params={"boxes": [LEFT], "ellipse": True})[0]
    assert 0 < (ellipse > 0).sum() < (box > 0).sum()


def test_mask_blur_widens_the_changed_area(engine, photo):
    narrow = changed(fix(engine, photo, a_pass(mask_blur=0)), photo).sum()
    wide = changed(fix(engine, photo, a_pass(mask_blur=12)), photo).sum()
    assert wide > narrow


def test_denoise_and_dynamic_denoise(engine, photo, sub_jobs):
    fix(engine, photo, a_pass(denoise=0.5, dynamic_denoise_power=2), steps=8)
    area = 32 * 32 / SIZE**2
    assert sub_jobs[0].strength == pytest.approx(0.5 * (1 - area) ** 2)
    sub_jobs.clear()
    fix(engine, photo, a_pass(denoise=0.5), steps=8)
    assert [job.strength for job in sub_jobs] == [0.5, 0.5]


def test_only_masked_padding_crop_factor_and_sizes(engine, photo, sub_jobs):
    fix(engine, photo, a_pass(padding_px=8, detector_params={"boxes": [LEFT]}))
    fix(engine, photo, a_pass(crop_factor=3.0, detector_params={"boxes": [LEFT]}))
    fix(engine, photo, a_pass(only_masked=False, detector_params={"boxes": [LEFT]}))
    fix(engine, photo, a_pass(width=96, height=64, detector_params={"boxes": [LEFT]}))
    padded, cropped, whole, sized = sub_jobs
    assert padded.inpaint.only_masked and padded.inpaint.padding_px == 8
    assert (padded.width, padded.height) == (64, 64)  # 40×40 crop, shorter side at guide_size 64
    assert cropped.inpaint.padding_px == 40  # (3 - 1) / 2 × 40 px (the 32 px box dilated by 4 each side)
    assert not whole.inpaint.only_masked
    assert (sized.width, sized.height) == (96, 64)


def test_guide_size_and_max_size():
    from ctrlgen.core.engine.masks import Region

    wide = Region(0, 0, 200, 50)
    assert detail.repaint_size(wide, DetailPass(detector="x")) == (1024, 256)  # longer side capped at max_size
    assert detail.repaint_size(wide, DetailPass(detector="x", guide_size=64, max_size=4096)) == (256, 64)


def test_cycles_repaint_each_detection_again_with_new_seeds(engine, photo, sub_jobs):
    events = []
    fix(engine, photo, a_pass(cycles=2), on_event=events.append)
    assert [job.seed for job in sub_jobs] == [3, 4, 5, 6]  # base + d + c × n
    done = [(e.data["cycle"], e.data["detection"]) for e in events if e.data.get("phase") == "done"]
    assert done == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_seeds_follow_the_rule_across_passes(engine, photo, sub_jobs):
    fix(engine, photo, [a_pass(), a_pass(seed=100)], seed=7)
    assert [job.seed for job in sub_jobs] == [7, 8, 100, 101]


def test_soft_inpainting_and_colour_match_can_be_switched(engine, photo):
    outputs = [np.asarray(fix(engine, photo, a_pass(soft_inpainting=soft, colour_match=colour)).images[0])
               for soft, colour in ((True, True), (False, True), (True, False))]
    assert not np.array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2])


def test_seams_are_smaller_than_plain_paste_back(engine):
    """The colour difference across the mask border: the mean colour of a ring just inside the
    box against a ring just outside it, on a smooth picture; ours against plain paste-back."""
    from ctrlgen.core.engine.masks import grow

    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    smooth = np.dstack([80 + xs // 2, 120 + ys // 3, np.full_like(xs, 160)]).astype(np.uint8)
    box = np.zeros((SIZE, SIZE), np.uint8)
    box[32:96, 32:96] = 255
    inside = (grow(box, -8) > 0) & ~(grow(box, -14) > 0)
    outside = (grow(box, 14) > 0) & ~(grow(box, 8) > 0)

    def seam(**switches):
        passes = a_pass(detector_params={"boxes": [[32, 32, 96, 96, 0.9]]}, dilate_erode=0, denoise=0.9, **switches)
        out = np.asarray(fix(engine, smooth, passes, steps=6).images[0]).astype(np.float32)
        return float(np.abs(out[inside].mean(axis=0) - out[outside].mean(axis=0)).mean())

    plain = seam(soft_inpainting=False, colour_match=False)
    ours = seam()
    assert ours < plain


# -- per-detection prompts ----------------------------------------------------------------------


def test_detection_prompts_sep_prompt_and_skip():
    assert detail.detection_prompts("", "job", 2) == ["job", "job"]
    assert detail.detection_prompts("a [SEP] [PROMPT], b", "job", 3) == ["a", "job, b", "job, b"]
    assert detail.detection_prompts("[SKIP] [SEP] c", "job", 2) == [None, "c"]


def test_each_detection_encodes_its_own_prompt(engine, photo, encoded_prompts):
    result = fix(engine, photo, a_pass(sort_by="area", prompt="big face [SEP] small face",
                                       negative_prompt="blurry"), prompt="portrait")
    assert encoded_prompts == [("big face", "blurry"), ("small face", "blurry")]
    repainted = result.data[0]["detail"][0]["repainted"]
    assert [r["prompt"] for r in repainted] == ["big face", "small face"]
    assert result.data[0]["detail"][0]["detections"][0]["box"] == [float(v) for v in LEFT[:4]]


def test_skip_leaves_that_detection_alone(engine, photo, encoded_prompts):
    result = fix(engine, photo, a_pass(prompt="[SKIP] [SEP] right", mask_blur=0, soft_inpainting=False))
    assert encoded_prompts == [("right", "")]
    left = np.zeros((SIZE, SIZE), bool)
    left[20:52, 12:44] = True
    assert not changed(result, photo)[left].any()


# -- overrides and ControlNet apply to the pass only ---------------------------------------------


def test_overrides_and_controlnet_apply_to_the_pass_only(engine, photo, sub_jobs):
    job = {"model": "tiny-sd15", "prompt": "a cat", "seed": 5, "steps": 4, "width": SIZE, "height": SIZE,
           "sampler": "Euler a", "cfg_scale": 7}
    base = engine.load_pipeline(engine.store.find("tiny-sd15"))
    # transformers adds its hidden-state recorder hooks to the text encoder on the first
    # clip_skip > 1 encode and keeps them (a plain job does the same): warm that up first.
    engine.run(parse_job({**job, "clip_skip": 2, "steps": 1}))
    before = pipeline_fingerprint(base)
    plain = np.asarray(engine.run(parse_job(job)).images[0])
    overrides = a_pass(steps=6, cfg_scale=3.0, sampler="DPM++ 2M Karras", clip_skip=2,
                       control=[{"model": "tiny-controlnet-sd15", "preprocessor": "canny"}])
    sub_jobs.clear()
    engine.run(parse_job({**job, "detail": [overrides, a_pass(model="tiny-sdxl")]}))
    main, *repaints = sub_jobs
    assert (main.steps, main.cfg_scale, main.sampler, main.control) == (4, 7, "Euler a", [])
    assert [(r.steps, r.cfg_scale, r.sampler, r.clip_skip, len(r.control)) for r in repaints[:2]] == \
        [(6, 3.0, "DPM++ 2M Karras", 2, 1)] * 2
    assert [r.model for r in repaints[2:]] == ["tiny-sdxl"] * 2
    assert pipeline_fingerprint(base) == before
    assert np.array_equal(np.asarray(engine.run(parse_job(job)).images[0]), plain)


# -- validation and events -------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "message"), [
    ({"detector": "no_such_detector"}, "detail[0].detector"),
    ({"detector_params": {"limit": 9}}, "detail[0].detector_params.limit"),
    ({"model": "no-such-model"}, "detail[0].model"),
    ({"control": [{"model": "tiny-controlnet-sd15", "preprocessor": "cany"}]}, "detail[0].control[0].preprocessor"),
])
def test_engine_check_names_the_pass_field(engine, photo, tmp_path, fields, message):
    path = tmp_path / "photo.png"
    Image.fromarray(photo).save(path)
    job = parse_job({"task": "fix", "model": "tiny-sd15", "image": str(path), "detail": [a_pass(**fields)]})
    with pytest.raises(CtrlgenError) as caught:
        engine.check(job)
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize(("job", "message"), [
    ({"task": "fix", "model": "m", "image": "x.png"}, "task 'fix' runs fix passes"),
    ({"task": "fix", "model": "m", "detail": [{"detector": "d"}]}, "task 'fix' needs job.image"),
    ({"model": "m", "detail": [{"detector": "d", "denoise": 0.1}], "steps": 5}, "detail[0]: steps=5 × denoise=0.1"),
    ({"model": "m", "detail": [{"detector": "d", "width": 64}]}, "give both width and height"),
    ({"model": "m", "detail": [{"detector": "d", "confidence": 2}]}, "job.detail[0].confidence"),
])
def test_job_validation(job, message):
    with pytest.raises(JobError, match=message.replace("[", r"\[").replace("]", r"\]").replace("×", ".")):
        parse_job(job)


def test_events_per_pass_and_detection(engine, photo):
    events = []
    fix(engine, photo, [a_pass(), a_pass(detector_params={"boxes": [RIGHT]})], on_event=events.append)
    details = [e.data for e in events if e.kind == "detail"]
    detected = [(d["pass_index"], d["detections"]) for d in details if d["phase"] == "detected"]
    assert detected == [(0, 2), (1, 1)]
    steps = {(d["pass_index"], d["detection"]) for d in details if d["phase"] == "step"}
    assert steps == {(0, 0), (0, 1), (1, 0)}
    assert [e.kind for e in events][0] == "started" and events[-1].kind == "finished"


# -- the real mediapipe face detector ---------------------------------------------------------------


def test_real_face_detector_fixes_only_the_face(engine):
    pytest.importorskip("mediapipe")
    from skimage import data

    from ctrlgen.core.plugins.manager import get_registry

    if "mediapipe_face_short" not in get_registry("detectors"):
        pytest.skip("the mediapipe face detector is not registered")
    astronaut = np.asarray(Image.fromarray(data.astronaut()).resize((SIZE, SIZE)))
    result = ctrlgen.fix(astronaut, [{"detector": "mediapipe_face_short", "guide_size": 64, "max_size": 128}],
                         model="tiny-sd15", engine=engine, steps=4, seed=1)
    found = result.data[0]["detail"][0]["detections"]
    assert len(found) == 1
    x0, y0, x1, y1 = found[0]["box"]
    assert 40 < (x0 + x1) / 2 < 75 and 10 < (y0 + y1) / 2 < 40  # the astronaut's face, upper middle
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = 255
    from ctrlgen.core.engine.masks import grow

    alpha = feather(grow(mask, 4), 4.0)
    assert changed(result, astronaut)[alpha > 0].any()
    assert not changed(result, astronaut)[alpha == 0].any()


def test_an_rgba_picture_keeps_its_alpha_outside_the_masks(engine, photo):
    alpha = np.full((SIZE, SIZE), 255, np.uint8)
    alpha[:, :8] = 0
    rgba = np.dstack([photo, alpha])
    out = np.asarray(fix(engine, rgba, a_pass()).images[0])
    inside = sum(feather(mask, 4.0) for mask in pass_masks(photo)) > 0
    assert out.shape == (SIZE, SIZE, 4)
    assert np.array_equal(out[~inside], rgba[~inside])


def test_cancel_during_a_pass_leaves_the_cached_pipeline_clean(engine, photo):
    import threading

    from ctrlgen.core.errors import CancelledError

    base = engine.load_pipeline(engine.store.find("tiny-sd15"))
    fix(engine, photo, a_pass())  # warm
    before = pipeline_fingerprint(base)
    cancel = threading.Event()

    def on_event(event):
        if event.kind == "detail" and event.data.get("phase") == "step":
            cancel.set()

    with pytest.raises(CancelledError):
        fix(engine, photo, a_pass(control=[{"model": "tiny-controlnet-sd15", "preprocessor": "canny"}]),
            on_event=on_event, cancel=cancel)
    assert pipeline_fingerprint(base) == before


def test_a_pass_vae_applies_to_the_pass_only(engine, photo, tmp_path):
    import torch
    from safetensors.torch import save_file

    base = engine.load_pipeline(engine.store.find("tiny-sd15"))
    state = {key: value.clone() for key, value in base.vae.state_dict().items()}
    state["decoder.conv_out.bias"] += 0.5  # a brighter decoder
    save_file(state, str(tmp_path / "bright-vae.safetensors"))
    fix(engine, photo, a_pass())  # warm
    before = pipeline_fingerprint(base)
    plain = np.asarray(fix(engine, photo, a_pass(colour_match=False)).images[0]).astype(int)
    bright = np.asarray(fix(engine, photo, a_pass(colour_match=False, vae=str(tmp_path / "bright-vae.safetensors")))
                        .images[0]).astype(int)
    inside = np.zeros((SIZE, SIZE), bool)
    inside[24:48, 16:40] = True
    assert bright[inside].mean() > plain[inside].mean() + 10
    assert np.array_equal(bright[~(sum(feather(m, 4.0) for m in pass_masks(photo)) > 0)],
                          plain[~(sum(feather(m, 4.0) for m in pass_masks(photo)) > 0)])
    assert pipeline_fingerprint(base) == before
    assert torch.equal(base.vae.decoder.conv_out.bias, engine.load_pipeline(engine.store.find("tiny-sd15"))
                       .vae.decoder.conv_out.bias)
    with pytest.raises(CtrlgenError, match=r"^detail\[0\]\.vae"):
        engine.check(parse_job({"task": "fix", "model": "tiny-sd15", "image": str(tmp_path / "x.png"),
                                "detail": [a_pass(vae="no-such-vae")]}), lambda ref, what: photo)
