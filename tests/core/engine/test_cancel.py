"""Cancel works in every phase of a job: preprocessing, denoising, the VAE decode (whole or
tiled, between tiles), and leaves the engine, the pipeline and torch's hooks as they were."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from ctrlgen.core.engine.cancel import Cancellation
from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.errors import CancelledError
from ctrlgen.core.plugins import manager
from ctrlgen.core.plugins.specs import PreprocessorSpec

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((128, 128)).save(path)
    return path


def job(**overrides):
    body = {"model": "tiny-sd15", "prompt": "an astronaut", "seed": 1, "steps": 3, "width": 64, "height": 64}
    body.update(overrides)
    return parse_job(body)


def global_hooks() -> int:
    from torch.nn.modules import module

    return len(module._global_forward_pre_hooks)


@pytest.fixture
def vae_decoder(engine):
    """The tiny pipeline's VAE decoder (the pipeline is loaded by a first job)."""
    engine.run(job(steps=1))
    (pipeline,) = engine._pipelines.values()
    return pipeline.vae.decoder


def test_cancel_during_the_vae_decode(engine, vae_decoder):
    cancel = threading.Event()
    calls = []

    def cancel_when_decoding(module, args):
        calls.append(1)
        cancel.set()  # the user presses cancel once the loop is over and the decode has begun

    handle = vae_decoder.register_forward_pre_hook(cancel_when_decoding)
    events = []
    try:
        with pytest.raises(CancelledError, match="cancelled"):
            engine.run(job(steps=2), on_event=events.append, cancel=cancel)
    finally:
        handle.remove()
    assert calls == [1]
    assert [e.kind for e in events][-1] == "cancelled"
    assert [e.data["step"] for e in events if e.kind == "progress"] == [1, 2]  # the loop had ended
    assert global_hooks() == 0  # the cancel hook is gone
    again = engine.run(job(steps=1))  # and the engine works as before
    assert np.asarray(again.images[0]).std() > 0


def test_cancel_between_tiles_of_a_tiled_decode(engine, vae_decoder):
    cancel = threading.Event()
    tiles = []

    def count_tiles(module, args):
        tiles.append(1)
        if len(tiles) == 2:
            cancel.set()  # during the second tile

    handle = vae_decoder.register_forward_pre_hook(count_tiles)
    previous = engine.vae_tiling
    try:
        engine.vae_tiling = "on"
        with pytest.raises(CancelledError):
            engine.run(job(steps=1, width=256, height=256), cancel=cancel)
        stopped_at = len(tiles)
        tiles.clear()
        cancel.clear()
        engine.run(job(steps=1, width=256, height=256))
        whole = len(tiles)
    finally:
        handle.remove()
        engine.vae_tiling = previous
    assert whole > 2, f"the decode made {whole} tile(s); the test needs several"
    assert stopped_at == 2  # no tile after the one during which it was cancelled
    assert global_hooks() == 0


class SlowNetwork:
    """A preprocessor that runs a torch network many times (like a big annotator)."""

    def __init__(self, cancel_after: int, cancel: threading.Event) -> None:
        import torch

        self.net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
        self.calls = 0
        self.cancel_after = cancel_after
        self.cancel = cancel

    def run(self, image, mask=None):
        import torch

        with torch.no_grad():
            for _ in range(1000):
                self.calls += 1
                if self.calls == self.cancel_after:
                    self.cancel.set()
                self.net(torch.zeros(1, 8))
        return image


def test_cancel_during_preprocessing(engine, photo):
    cancel = threading.Event()
    slow = SlowNetwork(cancel_after=10, cancel=cancel)

    class Plugin:
        @manager.hookimpl
        def ctrlgen_preprocessors(self):
            yield PreprocessorSpec(name="slow_network", run=slow.run, description="a slow torch network")

    manager.reset()
    host = manager.get_host()
    host.pm.register(Plugin(), name="slow-network-test")
    host._registries.clear()
    try:
        control = [{"model": "tiny-controlnet-sd15", "preprocessor": "slow_network"}]
        with pytest.raises(CancelledError, match="cancelled"):
            engine.run(job(image=str(photo), control=control), cancel=cancel)
    finally:
        manager.reset()
    assert slow.calls == 10  # stopped at the next module call, not after all 1000 runs
    assert global_hooks() == 0


def test_the_hook_is_off_during_the_denoising_loop(engine, vae_decoder):
    during_loop, during_decode = [], []

    def on_event(event):
        if event.kind == "progress":
            during_loop.append(global_hooks())

    handle = vae_decoder.register_forward_pre_hook(lambda module, args: during_decode.append(global_hooks()))
    try:
        engine.run(job(steps=3), on_event=on_event, cancel=threading.Event())
    finally:
        handle.remove()
    # never armed while the loop runs (torch's fast path), armed for the decode after it
    assert during_loop == [0, 0, 0] and during_decode == [1]
    assert global_hooks() == 0


def test_the_hook_answers_only_its_own_thread():
    import torch

    cancel = threading.Event()
    cancel.set()
    cancellation = Cancellation(cancel, "job-a")
    net = torch.nn.Linear(2, 2)
    with cancellation.armed():
        errors = []

        def other_worker():
            try:
                net(torch.zeros(1, 2))  # another job on another worker: not affected
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=other_worker)
        thread.start()
        thread.join()
        assert errors == []
        with pytest.raises(CancelledError, match="job-a"):
            net(torch.zeros(1, 2))
    net(torch.zeros(1, 2))  # disarmed
