"""Validation before queueing: every bad job a client can send is answered `422` at submission,
naming the field, before anything is queued; `internal_error` is left for real bugs.

Against a real `ctrlgen serve` on loopback with the tiny models (and, for the corpus, a model
root of its own holding broken files)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

RAW = "application/vnd.ctrlgen.raw"
NAN, INF = float("nan"), float("inf")


def upload(server, pixels: np.ndarray) -> str:
    return server.upload(np.ascontiguousarray(pixels))


def error_of(body: bytes) -> dict:
    answer = json.loads(body)
    assert set(answer) == {"error"} and answer["error"]["code"] and answer["error"]["message"], answer
    return answer["error"]


def post_job(server, job, **extra) -> tuple[int, bytes]:
    """POST /v1/jobs with ``job`` written as JSON by Python (NaN/Infinity literals and \\ud800-style
    escapes included, as a careless or hostile client would send them)."""
    body = json.dumps({"job": job, **extra})
    status, _, answer = server.request("POST", "/v1/jobs", body, {"Content-Type": "application/json"})
    return status, answer


def ended_jobs_have_no_internal_error(server) -> None:
    status, listing = server.json("GET", "/v1/jobs")
    assert status == 200
    for item in listing["jobs"]:
        if item["status"] == "error":
            status, detail = server.json("GET", f"/v1/jobs/{item['id']}")
            assert detail["error"]["code"] != "internal_error", detail


@pytest.fixture
def corpus_root(tmp_path, tiny_model_cache, tiny_sd15, tiny_sdxl):
    """An A1111 root with the tiny SD1.5 and SDXL models, plus files that are not what they claim:
    a "checkpoint" and an "IP-Adapter" that are not model files."""
    from ctrlgen.testing.tiny import write_model_root

    placed = write_model_root(tmp_path / "models-root", "a1111", architectures=("sd15", "sdxl"),
                              cache_dir=tiny_model_cache)
    (placed.models_dir / "Stable-diffusion" / "broken.safetensors").write_bytes(b"not a model at all")
    (placed.models_dir / "ipadapter").mkdir()
    (placed.models_dir / "ipadapter" / "junk.safetensors").write_bytes(b"not an IP-Adapter")
    return placed


def test_bad_jobs_are_refused_at_submission_naming_the_field(server_factory, corpus_root, tmp_path):
    server = server_factory(model_root=corpus_root.root)
    image = upload(server, np.full((64, 64, 3), 120, np.uint8))
    mask_pixels = np.zeros((64, 64), np.uint8)
    mask_pixels[16:48, 16:48] = 255
    mask = upload(server, mask_pixels)
    small_mask = upload(server, np.full((32, 32), 255, np.uint8))
    black_mask = upload(server, np.zeros((64, 64), np.uint8))
    checkpoint = str(corpus_root.checkpoints["sd15"])
    outside = tmp_path / "elsewhere" / "tiny.safetensors"  # a real model file, outside every root
    outside.parent.mkdir()
    shutil.copy(checkpoint, outside)
    unknown_ref = "sha256:" + "e" * 64

    base = {"model": "tiny-sd15", "prompt": "a cat", "steps": 2, "width": 64, "height": 64}

    def job(**fields):
        return {**base, **fields}

    def unit(**fields):
        return {"model": "tiny-controlnet-sd15", "preprocessor": "canny", **fields}

    corpus = [
        # names of plugins
        (job(image=image, control=[unit(preprocessor="nope")]), "control[0].preprocessor"),
        (job(adapters=[{"type": "nope"}]), "adapters[0].type"),
        (job(adapters=[{"type": "controlnet"}]), "adapters[0]: ControlNet units go in"),
        (job(task="preprocess", model=None, image=image, control=[{"preprocessor": "nope"}]),
         "control[0].preprocessor"),
        # preprocessor params: range, type, unknown, NaN/Infinity
        (job(image=image, control=[unit(preprocessor_params={"low_threshold": 300})]),
         "control[0].preprocessor_params.low_threshold=300"),
        (job(image=image, control=[unit(preprocessor_params={"low_threshold": "many"})]),
         "control[0].preprocessor_params.low_threshold"),
        (job(image=image, control=[unit(preprocessor_params={"low_threshold": NAN})]),
         "control[0].preprocessor_params.low_threshold"),
        (job(image=image, control=[unit(preprocessor_params={"levels": 4})]), "control[0].preprocessor_params"),
        (job(image=image, control=[unit(preprocessor="none", preprocessor_params={"x": 1})]),
         "control[0].preprocessor_params"),
        # the ControlNet adapter's params
        (job(image=image, control=[unit(weight=INF)]), "control[0].weight"),
        (job(image=image, control=[unit(weight=10**30)]), "control[0].weight"),
        (job(image=image, control=[unit(guidance_start=0.9, guidance_end=0.1)]), "control[0].guidance_start"),
        (job(image=image, control=[unit(strength=1)]), "control[0] has no parameter 'strength'"),
        (job(image=image, control=[unit(control_type="canny")]), "control[0].control_type"),
        (job(image=image, control=[unit(preprocessor="inpaint")]), "control[0]: preprocessor 'inpaint'"),
        # models: found? the right kind? the right architecture? readable?
        (job(model="no-such-model"), "job.model"),
        (job(model="broken"), "job.model: 'broken' cannot be used"),
        (job(model=str(corpus_root.controlnets["sd15"])), "not a full checkpoint"),
        (job(image=image, control=[unit(model="no-such-controlnet")]), "control[0].model"),
        (job(image=image, control=[unit(model="tiny-controlnet-sdxl")]), "control[0].model"),
        (job(image=image, control=[unit(model=checkpoint)]), "control[0].model"),
        (job(adapters=[{"type": "ip_adapter", "model": "junk", "image": image}]),
         "adapters[0] (ip_adapter).model 'junk' cannot be used"),
        (job(adapters=[{"type": "ip_adapter", "model": "no-such-adapter", "image": image}]),
         "adapters[0] (ip_adapter).model"),
        (job(adapters=[{"type": "ip_adapter", "model": checkpoint, "image": image}]),
         "adapters[0] (ip_adapter).model"),
        (job(adapters=[{"type": "instantid", "face_image": image}]), "adapters[0]: adapter 'instantid' supports"),
        (job(adapters=[{"type": "lora", "model": "no-such-lora"}]), "adapters[0] (lora).model"),
        (job(prompt="a cat <lora:no-such-lora:0.8>"), "<lora:no-such-lora:0.8>"),
        (job(prompt="a cat <lora:x:nan>"), "<lora:x:nan>"),
        # paths from a client: outside the roots is refused, existing or not (same words)
        (job(model=str(outside)), "job.model: '" + str(outside)),
        (job(model=str(outside) + ".missing"), "is a file path outside the model folders"),
        (job(model=os.path.relpath(checkpoint)), "job.model"),  # relative: a name, never a path
        # adapter params and images
        (job(adapters=[{"type": "reference"}]), "adapters[0] (reference).image is missing"),
        (job(adapters=[{"type": "reference", "image": image, "weight": 5}]), "adapters[0] (reference).weight=5"),
        (job(adapters=[{"type": "reference", "image": image, "mode": "copy"}]), "adapters[0] (reference).mode"),
        (job(adapters=[{"type": "reference", "image": image, "guidance_start": 1.0}]),
         "adapters[0] (reference).guidance_start"),
        (job(adapters=[{"type": "ip_adapter", "model": "junk"}]), "adapters[0] (ip_adapter)"),
        (job(adapters=[{"type": "reference", "image": unknown_ref}]), "job.adapters[0].image"),
        (job(adapters=[{"type": "reference", "image": 5}]), "adapters[0] (reference).image=5"),
        # lone surrogates in every kind of string field
        (job(prompt="a \ud800 cat"), "job.prompt"),
        (job(negative_prompt="\udfff"), "job.negative_prompt"),
        (job(model="tiny\ud800"), "job.model"),
        (job(sampler="Euler\ud800"), "job.sampler"),
        (job(image=image, control=[unit(preprocessor="can\ud800ny")]), "job.control[0].preprocessor"),
        (job(adapters=[{"type": "reference", "image": image, "mode": "\ud800"}]), "job.adapters[0].mode"),
        ({**base, "\ud800": 1}, "job"),
        # numbers: NaN, Infinity, huge, negative, wrong types
        (job(cfg_scale=NAN), "job.cfg_scale"),
        (job(task="img2img", image=image, strength=INF), "job.strength"),
        (job(steps=10**30), "job.steps"),
        (job(width=-64), "job.width"),
        (job(height=10**9), "job.height"),
        (job(seed=2**64), "job.seed"),
        (job(batch_size=0), "job.batch_size"),
        (job(steps="many"), "job.steps"),
        (job(prompt=5), "job.prompt"),
        (job(control={"model": "x"}), "job.control"),
        (job(adapters=[5]), "job.adapters[0]"),
        (job(inpaint={"feather_px": NAN}), "job.inpaint.feather_px"),
        (job(task="img2img", image=image, steps=1, strength=0.5), "leaves no denoising step"),
        (job(colour="red"), "job.colour"),
        (job(sampler="Nope"), "unknown sampler"),
        # sizes and canvas limits
        (job(image=image, outpaint={"right": 20000}), "job.outpaint.right"),
        (job(image=image, outpaint={"right": 16384}), "job.outpaint"),
        (job(image=image, outpaint={"right": 0}), "outpaint adds no pixels"),
        (job(image=image, mask=small_mask), "job.mask"),
        (job(image=image, mask=black_mask), "job.mask selects nothing"),
        (job(image=image, mask=mask, inpaint={"grow_px": -256}), "job.mask selects nothing"),
        (job(task="preprocess", model=None, image=image, mask=small_mask, control=[{"preprocessor": "canny"}]),
         "job.mask"),
        # image references and the inputs a task needs
        (job(mask=mask), "needs job.image"),
        (job(task="txt2img", image=image), "job.image is given but task 'txt2img' does not use it"),
        (job(image="/etc/passwd"), "job.image"),
        (job(image=unknown_ref), "job.image"),
        (job(image=image, control=[unit(image="sha256:xyz")]), "job.control[0].image"),
    ]
    assert len(corpus) >= 25
    for bad, needle in corpus:
        status, answer = post_job(server, bad)
        assert status == 422, (bad, answer)
        error = error_of(answer)
        assert error["code"] in ("invalid_request", "model_not_found"), error
        assert needle in error["message"], (needle, error["message"])
    # The same words for a path outside the roots, whether the file exists or not.
    answers = [error_of(post_job(server, job(model=path))[1])["message"].replace(path, "PATH")
               for path in (str(outside), str(outside) + ".missing")]
    assert answers[0] == answers[1] and "PATH" in answers[0]
    # Bodies that are not jobs at all.
    for body, needle in ((b'{"job": [1]}', "job: "), (b'{"job": {}, "preview": NaN}', "preview"),
                         (b'{"job": {"model": "tiny-sd15", "steps": Infinity}}', "job.steps")):
        status, _, answer = server.request("POST", "/v1/jobs", body, {"Content-Type": "application/json"})
        assert status == 422 and needle in error_of(answer)["message"], answer
    # Nothing was queued, and the server is fine.
    assert server.json("GET", "/v1/jobs")[1]["jobs"] == []
    assert server.json("GET", "/v1/health")[1]["status"] == "ok"
    assert "Traceback" not in server.log(), server.log()[-3000:]


def test_preprocess_requests_are_checked_before_queueing(live_server):
    image = upload(live_server, np.full((64, 64, 3), 90, np.uint8))
    small_mask = upload(live_server, np.full((32, 32), 255, np.uint8))
    for params, mask, needle in (({"low_threshold": NAN}, None, "params.low_threshold"),
                                 ({"low_threshold": "\ud800"}, None, "params.low_threshold"),
                                 ({}, small_mask, "mask")):
        body = json.dumps({"preprocessor": "canny", "image": image, "mask": mask, "params": params})
        status, _, answer = live_server.request("POST", "/v1/preprocess", body, {"Content-Type": "application/json"})
        assert status == 422 and needle in error_of(answer)["message"], answer


def test_models_by_name_or_inside_a_model_folder_only(live_server, tmp_path):
    # the session's server may have been started by another test folder with its own root
    checkpoint = next(live_server.model_root.rglob("tiny-sd15.safetensors"))
    base = {"prompt": "a cat", "steps": 1, "width": 64, "height": 64, "seed": 1}
    # By name and by a path inside the model root: accepted.
    for model in ("tiny-sd15", str(checkpoint)):
        status, answer = post_job(live_server, {**base, "model": model})
        assert status == 202, answer
        assert live_server.wait(json.loads(answer)["id"])[-1][1] == "finished"
    # Outside the roots: refused alike whether the file exists or not; `..` never climbs out.
    copy = tmp_path / "copy.safetensors"
    shutil.copy(checkpoint, copy)
    messages = []
    for model in (str(copy), str(tmp_path / "missing.safetensors"),
                  str(checkpoint.parent / ".." / ".." / ".." / copy.relative_to(copy.anchor))):
        status, answer = post_job(live_server, {**base, "model": model})
        error = error_of(answer)
        assert status == 422 and error["code"] == "invalid_request", error
        messages.append(error["message"].replace(model, "PATH"))
    assert messages[0] == messages[1] == messages[2]
    # Relative references are names: the server's working folder is never looked at.
    relative = os.path.relpath(copy)
    assert os.path.isfile(relative)
    status, answer = post_job(live_server, {**base, "model": relative})
    assert status == 422 and error_of(answer)["code"] == "model_not_found"


def test_accepted_jobs_never_end_as_internal_errors(live_server):
    """Jobs at the edges of what is valid are accepted and run to the end."""
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, 32:, 3] = 255  # left half transparent
    image = upload(live_server, rgba)
    mask_pixels = np.zeros((64, 64), np.uint8)
    mask_pixels[20:40, 4:24] = 255  # in the transparent half
    mask = upload(live_server, mask_pixels)
    base = {"model": live_server.model, "prompt": "a \U0001f431 cat, (red:1.3) [a:b:0.5]", "steps": 2,
            "width": 64, "height": 64, "seed": 3}
    jobs = [
        {**base, "image": image, "strength": 1.0},  # an image without a mask: img2img
        {**base, "image": image, "mask": mask, "inpaint": {"feather_px": 0}},
        {**base, "image": image, "outpaint": {"left": 8, "overlap_px": 256}},
        {**base, "image": image, "control": [{"model": live_server.controlnet, "preprocessor": "none",
                                              "weight": 0, "guidance_end": 1e-9}]},
        {**base, "adapters": [{"type": "reference", "image": image, "weight": 0}], "cfg_scale": 0},
        {**base, "prompt": "(a:.)", "negative_prompt": "x " * 500},
        # Known only once the checkpoint has loaded (the tiny text encoder has 2 layers): the job
        # fails as invalid_job, not as a crash.
        {**base, "clip_skip": 12},
    ]
    ids = []
    for job in jobs:
        status, answer = post_job(live_server, job)
        assert status == 202, (job, answer)
        ids.append(json.loads(answer)["id"])
    for job_id, job in zip(ids, jobs, strict=True):
        events = live_server.wait(job_id)
        if "clip_skip" in job:
            assert events[-1][1:] == ("error", {"code": "invalid_job", "message": events[-1][2]["message"]})
            assert "job.clip_skip=12" in events[-1][2]["message"]
        else:
            assert events[-1][1] == "finished", (job, events[-1])
    ended_jobs_have_no_internal_error(live_server)
    # RGBA in, RGBA out: img2img keeps the input's alpha, inpaint keeps every pixel outside the mask.
    for job_id, check in ((ids[0], "img2img"), (ids[1], "inpaint")):
        status, headers, body = live_server.request("GET", f"/v1/jobs/{job_id}/results/0")
        assert status == 200 and headers["x-ctrlgen-channels"] == "4"
        result = np.frombuffer(body, np.uint8).reshape(64, 64, 4)
        if check == "img2img":
            assert np.array_equal(result[..., 3], rgba[..., 3])
        else:
            outside = mask_pixels == 0
            assert np.array_equal(result[outside], rgba[outside])
            assert (result[mask_pixels > 0][:, 3] == 255).all()
