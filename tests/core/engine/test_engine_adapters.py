"""The engine's adapter path: a third-party adapter plugin attached through `job.adapters`."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ctrlgen.core.engine.engine import Engine
from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.errors import CancelledError, CtrlgenError
from ctrlgen.core.models.store import ModelStore
from ctrlgen.core.plugins.specs import ModelRoot

SCALER = """
import contextlib
import weakref
from ctrlgen import hookimpl, AdapterSpec, Param

log = []
held = []  # weak references to what a job holds while it runs

@contextlib.contextmanager
def attach(context, uses):
    log.append(("enter", [u["latent_scale"] for u in uses]))
    factor = 1.0
    for use in uses:
        factor *= use["latent_scale"]

    def scale(pipe, step, timestep, tensors):
        log.append(("step", step))
        held.extend([weakref.ref(pipe), weakref.ref(tensors["latents"])])
        return {"latents": tensors["latents"] * factor}

    context.step_callbacks.append(scale)
    try:
        yield
    finally:
        context.step_callbacks.remove(scale)
        log.append(("exit",))

@hookimpl
def ctrlgen_adapters():
    yield AdapterSpec(name="latent_scaler", attach=attach, description="scales latents each step",
                      params=(Param("latent_scale", "float", default=1.0, min=0.5, max=2.0, description="factor"),
                              Param("reference", "image", description="optional picture")),
                      architectures=("sd15",))
"""


@pytest.fixture
def scaler(make_distribution):
    make_distribution("ctrlgen-scaler", "0.1", {"scaler": "cg_scaler"}, {"cg_scaler": SCALER})
    import cg_scaler

    cg_scaler.log.clear()
    return cg_scaler.log


@pytest.fixture
def engine(tiny_model_root):
    return Engine(store=ModelStore([ModelRoot(tiny_model_root.root)]), device="cpu")


def job(**extra):
    return parse_job({"model": "tiny-sd15", "prompt": "a cat", "seed": 2, "steps": 3, "width": 64, "height": 64}
                     | extra)


def test_adapter_uses_are_grouped_attached_and_detached(scaler, engine, torch_single_thread):
    plain = np.asarray(engine.run(job()).images[0])
    neutral = np.asarray(engine.run(job(adapters=[{"type": "latent_scaler"}])).images[0])
    assert np.array_equal(plain, neutral)
    scaler.clear()
    uses = [{"type": "latent_scaler", "latent_scale": 1.5}, {"type": "Latent Scaler", "latent_scale": "0.9"}]
    scaled = np.asarray(engine.run(job(adapters=uses)).images[0])
    assert scaler == [("enter", [1.5, 0.9]), ("step", 0), ("step", 1), ("step", 2), ("exit",)]
    assert not np.array_equal(scaled, plain)
    assert np.array_equal(np.asarray(engine.run(job()).images[0]), plain)  # nothing left behind


def test_adapter_detaches_on_cancel(scaler, engine, torch_single_thread):
    cancel = threading.Event()

    def stop(event):
        if event.kind == "progress":
            cancel.set()

    with pytest.raises(CancelledError):
        engine.run(job(adapters=[{"type": "latent_scaler", "latent_scale": 1.2}]), on_event=stop, cancel=cancel)
    assert scaler[0][0] == "enter" and scaler[-1] == ("exit",)


def test_cancel_stops_within_a_step_and_frees_what_the_job_held(scaler, engine, torch_single_thread):
    import cg_scaler

    cancel = threading.Event()
    steps = []

    def stop(event):
        if event.kind == "progress":
            steps.append(event.data["step"])
            if event.data["step"] == 2:
                cancel.set()

    cg_scaler.held.clear()
    with pytest.raises(CancelledError) as info:
        engine.run(job(steps=30, adapters=[{"type": "latent_scaler", "latent_scale": 1.0}]), on_event=stop,
                   cancel=cancel)
    assert steps == [1, 2]  # the step after the cancel request never ran
    frames, tb = [], info.value.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert frames[-1] == "run" and "_run" not in frames  # no frame of the job kept alive by the exception
    assert cg_scaler.held and all(ref() is None for ref in cg_scaler.held), "job-local pipeline/latents still alive"
    assert engine._pipelines  # the cached base pipeline stays loaded for the next job


@pytest.mark.parametrize(
    ("adapters", "message"),
    [
        ([{"type": "no_such_adapter"}], "Unknown adapter 'no_such_adapter'"),
        ([{"type": "latent_scaler", "latent_scale": 3}], "adapters[0] (latent_scaler).latent_scale=3.0 is above"),
        ([{"type": "latent_scaler", "strength": 1}], "has no parameter 'strength'"),
        ([{"type": "controlnet"}], "ControlNet units go in the job's `control` list"),
    ],
)
def test_bad_adapter_uses_are_refused_before_loading(scaler, engine, adapters, message):
    with pytest.raises(CtrlgenError) as info:
        engine.run(job(adapters=adapters))
    assert message in str(info.value)
    assert scaler == []


def test_architecture_mismatch_is_refused(scaler, engine):
    with pytest.raises(CtrlgenError, match="supports sd15, not this sdxl checkpoint"):
        engine.run(parse_job({"model": "tiny-sdxl", "prompt": "x", "steps": 1, "width": 64, "height": 64,
                              "adapters": [{"type": "latent_scaler"}]}))


def test_adapter_image_params_resolve_next_to_the_job_file(scaler, tmp_path):
    import json

    from ctrlgen.core.engine.jobs import load_job

    (tmp_path / "jobs").mkdir()
    job_file = tmp_path / "jobs" / "job.json"
    job_file.write_text(json.dumps({"model": "m", "adapters": [
        {"type": "latent_scaler", "reference": "refs/face.png"},
        {"type": "latent_scaler"},
        {"type": "not_installed", "image": "x.png"},
    ]}))
    loaded = load_job(job_file)
    first, second, unknown = (use.params() for use in loaded.adapters)
    assert first["reference"] == str((tmp_path / "jobs" / "refs" / "face.png").resolve())
    assert "reference" not in second  # optional and not given: stays absent, validated to None later
    assert unknown["image"] == "x.png"  # unknown adapters are reported when the job runs


def test_missing_adapter_models_and_images_are_refused_before_the_checkpoint_loads(scaler, tiny_model_root, tmp_path):
    fresh = Engine(store=ModelStore([ModelRoot(tiny_model_root.root)]), device="cpu")
    with pytest.raises(CtrlgenError, match=r"adapters\[0\] \(latent_scaler\)\.reference: file .*missing\.png does not"):
        fresh.run(job(adapters=[{"type": "latent_scaler", "reference": str(tmp_path / "missing.png")}]))
    with pytest.raises(CtrlgenError, match=r"adapters\[1\] \(ip_adapter\)\.model: Model 'no-such-ip-adapter' was not"):
        fresh.run(job(adapters=[{"type": "latent_scaler"},
                                {"type": "ip_adapter", "model": "no-such-ip-adapter", "image": str(tmp_path)}]))
    assert fresh._pipelines == {} and scaler == []  # nothing loaded, nothing attached
