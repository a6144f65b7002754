"""The Fix workspace's job building and the history's storage, without Krita."""

from __future__ import annotations

import json

import pytest

from ctrlgen.host_bridges.krita.ctrlgen_krita.fixing import (
    FixSettings,
    build_fix_job,
    choose_detector,
    detected_boxes,
    detectors_for,
    found_message,
)
from ctrlgen.host_bridges.krita.ctrlgen_krita.history import (
    HistoryItem,
    history_folder,
    load_history,
    save_history,
)
from ctrlgen.host_bridges.krita.ctrlgen_krita.logic import DocumentError, Rect, Settings

CAPS = {"detectors": [{"name": "scrfd", "finds": ["face"]}, {"name": "mediapipe_face_full", "finds": ["face"]},
                      {"name": "mediapipe_hands", "finds": ["hand"]}, {"name": "mediapipe_person", "finds": ["person"]}]}


def test_detectors_are_chosen_by_what_they_find_the_preferred_first():
    assert detectors_for(CAPS, "faces") == ["mediapipe_face_full", "scrfd"]
    assert detectors_for(CAPS, "hands") == ["mediapipe_hands"]
    assert choose_detector(CAPS, "faces", "") == "mediapipe_face_full"
    assert choose_detector(CAPS, "faces", "scrfd") == "scrfd"
    with pytest.raises(DocumentError, match="no detector 'mediapipe_hands' for faces"):
        choose_detector(CAPS, "faces", "mediapipe_hands")
    with pytest.raises(DocumentError, match="no detector for hands.*mediapipe"):
        choose_detector({"detectors": []}, "hands", "")


def test_the_detect_step_repaints_nothing_and_the_run_uses_the_fix_prompt():
    s = Settings(model="tiny-sd15", prompt="two friends", seed=4, steps=5)
    fix = FixSettings(prompt="[PROMPT], smiling", strength=0.5, confidence=0.6, options={"guide_size": 64})
    detect = build_fix_job(s, fix, "mediapipe_face_full", detect_only=True)
    assert detect["task"] == "fix" and detect["prompt"] == "two friends" and detect["seed"] == 4
    (p,) = detect["detail"]
    assert p == {"guide_size": 64, "detector": "mediapipe_face_full", "confidence": 0.6, "denoise": 0.5,
                 "prompt": "[SKIP]"}
    run = build_fix_job(s, fix, "mediapipe_face_full", detect_only=False)
    assert run["detail"][0]["prompt"] == "[PROMPT], smiling"
    with pytest.raises(DocumentError, match="Fix strength"):
        build_fix_job(s, FixSettings(strength=0.0), "x", detect_only=False)
    with pytest.raises(DocumentError, match="Choose a model"):
        build_fix_job(Settings(), fix, "x", detect_only=True)


def test_boxes_come_from_the_detected_event_only():
    assert detected_boxes("detail", {"phase": "detected", "boxes": [[1.4, 2, 30.6, 40]]}) == [(1, 2, 31, 40)]
    assert detected_boxes("detail", {"phase": "done"}) is None
    assert detected_boxes("progress", {"boxes": []}) is None
    assert found_message("faces", [(0, 0, 1, 1)], "document").startswith("Found 1 face in the document")
    assert found_message("hands", [], "selection").startswith("No hands found in the selection")


def test_history_is_saved_beside_the_document_and_read_back(tmp_path):
    folder = history_folder(str(tmp_path / "painting.kra"))
    assert folder == tmp_path / "painting.kra.ctrlgen" and history_folder("") is None
    items = [HistoryItem(3, i, Rect(5, 6, 2, 2), {"seed": 10 + i, "prompt": "a cat", "task": "txt2img"},
                         bytes([i]) * 16, applied=i == 1, created=100.0 + i) for i in range(2)]
    save_history(folder, items)
    loaded = load_history(folder)
    assert [(i.key, i.index, i.seed, i.applied, i.bgra, i.region) for i in loaded] == \
        [(3, i, 10 + i, i == 1, bytes([i]) * 16, Rect(5, 6, 2, 2)) for i in range(2)]
    assert "seed 11" in loaded[1].describe() and loaded[1].label() == "#3.2 · seed 11"
    save_history(folder, loaded[1:])  # one discarded: its pixels go too
    assert len(list(folder.glob("*.bgra.z"))) == 1 and len(load_history(folder)) == 1
    (folder / "history.json").write_text(json.dumps({"items": [{"key": 1}]}))
    with pytest.raises(ValueError, match="history.json is damaged"):
        load_history(folder)
    assert load_history(tmp_path / "nothing") == []


def test_styles_are_json_presets_that_shape_the_jobs_settings(tmp_path):
    from ctrlgen.host_bridges.krita.ctrlgen_krita.logic import Capture, build_job
    from ctrlgen.host_bridges.krita.ctrlgen_krita.styles import (
        Style,
        apply_style,
        load_styles,
        save_style,
        styles_folder,
    )

    folder = styles_folder(tmp_path)
    ink = Style("Ink sketch", model="tiny-sd15", loras=[("ink_style", 0.8)], sampler="DDIM", steps=12,
                cfg_scale=5.5, prompt="{prompt}, ink drawing", negative_prompt="colour")
    assert save_style(folder, ink).name == "Ink_sketch.json"
    (folder / "broken.json").write_text('{"name": "x", "colour": 1}')
    (folder / "plain.json").write_text('{"name": "Plain"}')
    styles, problems = load_styles(folder)
    assert [s.name for s in styles] == ["Ink sketch", "Plain"] and styles[0] == ink
    assert len(problems) == 1 and "broken.json: unknown field(s) colour" in problems[0]
    caps = {"models": [{"name": "tiny-sd15"}]}
    s = apply_style(ink, Settings(model="other", prompt="a cat", negative_prompt="blurry", steps=30), caps)
    assert (s.model, s.sampler, s.steps, s.cfg_scale) == ("tiny-sd15", "DDIM", 12, 5.5)
    assert s.prompt == "a cat, ink drawing <lora:ink_style:0.8>" and s.negative_prompt == "blurry, colour"
    job, _ = build_job(s, Capture("txt2img", Rect(0, 0, 64, 64)))
    assert job["prompt"] == "a cat, ink drawing <lora:ink_style:0.8>" and job["sampler"] == "DDIM"
    # A style leaves what it does not set as it was.
    plain = apply_style(styles[1], Settings(model="m", prompt="p", steps=30), caps)
    assert (plain.model, plain.prompt, plain.steps) == ("m", "p", 30)
    with pytest.raises(DocumentError, match="'missing' , which|uses the model 'missing'"):
        apply_style(Style("X", model="missing"), Settings(), caps)
    from ctrlgen.host_bridges.krita.ctrlgen_krita.controller import Controller

    controller = Controller(lambda: None)
    controller.settings.prompt, controller.style, controller.capabilities = "a dog", ink, caps
    assert controller._job_settings().prompt == "a dog, ink drawing <lora:ink_style:0.8>"
    assert controller.settings.prompt == "a dog"  # the docker's own prompt stays as typed
