"""The plug-in inside real GIMP 3 (gimp-console-3.0 in the Debian 13 chroot) against a real
`ctrlgen serve` with the tiny models; one GIMP run for all scenarios (conftest.py)."""

from __future__ import annotations

import time

import numpy as np

from ctrlgen.host_bridges.client import Client, RawImage
from ctrlgen.host_bridges.gimp.ctrlgen_gimp.logic import Rect, inpaint_region

PROCEDURES = ("ctrlgen-generate", "ctrlgen-inpaint", "ctrlgen-control-map", "ctrlgen-fix-faces",
              "ctrlgen-fix-hands", "ctrlgen-settings")


def scenario(report: dict, name: str) -> dict:
    entry = report[name]
    assert "exception" not in entry, f"scenario {name} raised inside GIMP:\n{entry['exception']}"
    return entry


def load(report: dict, entry: dict, key: str, width: int, height: int, channels: int = 4) -> np.ndarray:
    data = (report["out"] / entry["files"][key]).read_bytes()
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.frombuffer(data, np.uint8).reshape(shape)


def ok(call: list) -> None:
    assert call == ["success", ""], call


def test_procedures_are_registered_under_filters_ctrlgen(gimp_report):
    entry = scenario(gimp_report, "procedures")
    assert gimp_report["gimp"].startswith("3.")
    for name in PROCEDURES:
        assert entry["procedures"][name] is not None, f"{name} is not registered"
        assert entry["procedures"][name]["menu"] == ["<Image>/Filters/ctrlgen"], name


def test_generate_with_the_server_that_server_json_names(gimp_report):
    entry = scenario(gimp_report, "discover")
    ok(entry["settings"])
    ok(entry["generate"])
    assert [layer["name"] for layer in entry["layers"]] == ["[ctrlgen] txt2img: a red cube (seed 5)", "base"]


def test_inpaint_of_a_feathered_ellipse_on_an_odd_sized_image(gimp_report):
    entry = scenario(gimp_report, "inpaint")
    ok(entry["call"])
    result_info, base_info = entry["layers"]
    assert result_info["name"].startswith("[ctrlgen] inpaint: a blue ball") and result_info["position"] == 0
    assert (base_info["x"], base_info["y"], base_info["width"], base_info["height"]) == (11, 7, 181, 141)
    # The new layer covers the selection's bounds plus the context, clamped to the layer.
    region = inpaint_region(Rect(*entry["selection_bounds"]), Rect(11, 7, 181, 141), 8)
    assert (result_info["x"], result_info["y"], result_info["width"], result_info["height"]) == (
        region.x, region.y, region.width, region.height)
    before = load(gimp_report, entry, "before", 181, 141)
    after = load(gimp_report, entry, "after", 181, 141)
    assert np.array_equal(before, after), "the original layer changed"
    mask = load(gimp_report, entry, "mask", 203, 157, 1)[region.y:region.bottom, region.x:region.right]
    result = load(gimp_report, entry, "result", region.width, region.height)
    assert ((mask > 0) & (mask < 255)).sum() > 100, "the selection should be feathered"
    # Outside the selection the new layer is transparent: the image shows the original there.
    assert (result[mask == 0, 3] == 0).all()
    assert (result[mask > 0, 3] > 0).all()
    base = before[region.y - 7:region.bottom - 7, region.x - 11:region.right - 11].astype(int)
    change = np.abs(result[..., :3].astype(int) - base[..., :3]).sum(axis=2)
    core, rim = change[mask == 255], change[(mask > 0) & (mask < 64)]
    assert (core > 0).mean() > 0.9, "the selection was not repainted"
    assert rim.mean() < core.mean(), "the feathered rim should blend toward the original"


def test_generate_txt2img_and_img2img_above_the_layer(gimp_report):
    entry = scenario(gimp_report, "generate")
    ok(entry["txt2img"])
    ok(entry["img2img"])
    # Each result goes directly above the layer it was made from.
    names = [layer["name"] for layer in entry["layers"]]
    assert names[0].startswith("[ctrlgen] txt2img") and names[1].startswith("[ctrlgen] img2img") and names[2] == "base"
    for layer in entry["layers"]:
        assert (layer["x"], layer["y"], layer["width"], layer["height"]) == (5, 6, 97, 75)
    assert entry["base_unchanged"]


def test_control_maps_equal_the_servers_own_preprocess(gimp_report, live_server):
    entry = scenario(gimp_report, "control")
    ok(entry["call"])
    ok(entry["pose"])
    client = Client(live_server.url, token=live_server.token)
    try:
        for base_key, map_key, size, name, params in (
                ("base", "map", (101, 77), "canny", {"low_threshold": 40, "high_threshold": 120}),
                ("person", "pose", (256, 256), "mediapipe_openpose", {})):
            base = load(gimp_report, entry, base_key, *size)
            expected, data = client.preprocess(name, RawImage(base[..., :3].tobytes(), *size, 3), params)
            got = load(gimp_report, entry, map_key, *size)
            assert np.array_equal(got[..., :3], np.frombuffer(expected.data, np.uint8).reshape(size[1], size[0], 3))
            assert (got[..., 3] == 255).all()
    finally:
        client.close()
    canny_layer = entry["layers"][0]
    assert canny_layer["name"] == "[ctrlgen] canny map" and (canny_layer["x"], canny_layer["y"]) == (9, 4)
    assert canny_layer["parasites"] == []  # canny gives no data
    # The pose map's keypoints stay on its layer as a parasite (saved in the XCF).
    assert entry["pose_layers"][0]["parasites"] == ["ctrlgen-control-data"]
    assert entry["pose_data"] == data
    assert entry["bad_params"][0] == "execution-error" and "no param 'no_such_param'" in entry["bad_params"][1]


def test_errors_are_messages_that_say_what_to_do(gimp_report):
    entry = scenario(gimp_report, "errors")
    expected = {"server_down": "server is not running", "wrong_token": "refused the token",
                "job_error": "a model is missing", "no_selection": "nothing is selected"}
    for case, words in expected.items():
        status, message = entry[case]
        assert status == "execution-error" and words in message, (case, message)
        # GIMP shows it as its own error message (the console prints what the GUI puts in a dialog).
        assert f"Calling error for procedure 'ctrlgen-{'inpaint' if case == 'no_selection' else 'generate'}':\n" \
            f"{message}" in gimp_report["output"], case
    assert [layer["name"] for layer in entry["layers"]] == ["base"]


def test_16_bit_and_greyscale_work_and_indexed_is_refused(gimp_report):
    entry = scenario(gimp_report, "modes")
    ok(entry["u16"])
    assert entry["u16_precision"] == "u16-non-linear" and len(entry["u16_layers"]) == 2
    ok(entry["grey"])
    assert len(entry["grey_layers"]) == 2
    status, message = entry["indexed"]
    assert status == "execution-error" and "Image › Mode › RGB" in message
    assert len(entry["indexed_layers"]) == 1


def test_fix_faces_repaints_the_face_only(gimp_report):
    entry = scenario(gimp_report, "fix")
    ok(entry["faces"])
    ok(entry["hands"])
    face = load(gimp_report, entry, "face", 128, 128)
    fixed = load(gimp_report, entry, "fixed", 128, 128)
    changed = np.abs(fixed.astype(int) - face.astype(int)).sum(axis=2) > 0
    assert changed.any(), "no face was repainted"
    assert not changed[:, :8].any() and not changed[-8:, :].any(), "pixels far from the face changed"
    assert [layer["name"] for layer in entry["layers"]][:2] == ["[ctrlgen] fix hands", "hand"]


def test_a_4096_square_image(gimp_report):
    entry = scenario(gimp_report, "big")
    ok(entry["inpaint"])
    ok(entry["control"])
    inpaint, control, base = entry["layers"]
    assert (control["width"], control["height"]) == (4096, 4096) and control["name"] == "[ctrlgen] canny map"
    assert inpaint["width"] < 256 and inpaint["height"] < 256  # only the selection's surroundings travel
    corner = load(gimp_report, entry, "corner", 64, 64)
    assert (corner[..., 3] == 255).all()


def test_cancel_mid_job_leaves_the_image_unchanged_and_cancels_the_job(gimp_report, live_server):
    entry = scenario(gimp_report, "cancel")
    job_id = gimp_report["cancelled_job"]
    assert job_id, "the plug-in was never seen running a job"
    assert entry["call"][0] != "success"
    assert [layer["name"] for layer in entry["layers"]] == ["base"] and entry["base_unchanged"]
    deadline = time.monotonic() + 120
    status = None
    while time.monotonic() < deadline:
        _, job = live_server.json("GET", f"/v1/jobs/{job_id}")
        status = job["status"]
        if status not in ("queued", "running"):
            break
        time.sleep(0.2)
    assert status == "cancelled", f"the watchdog did not cancel the job: {status}"


def test_no_plug_in_crashed_but_the_cancelled_one(gimp_report):
    assert gimp_report["output"].count("Plug-in crashed") == 1
