"""The batch runner on Ray (core/engine/ray_runner.py): a local Ray cluster started in this module.

The cluster has 2 CPUs and a small object store; its actors get half a CPU each (two 1-CPU
actors on two cores leave nothing for Ray Data's own tasks). Ray's temp folder, its session
files and its token (``~/.ray``) are kept in a temp dir that is removed afterwards. The probe
detector is a real installed distribution so the actors' processes find it too; it kills its
own actor process (SIGKILL) once, mid-batch, when asked.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctrlgen.core.cli.main import main
from ctrlgen.core.engine import batch, job_batch
from ctrlgen.core.errors import CtrlgenError
from ctrlgen.core.plugins import manager as plugins

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.usefixtures("torch_single_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")]

PROBE = '''
import os
import signal

from ctrlgen import Detection, DetectorSpec, hookimpl


def run(image):
    """A box in the middle of every image; in a Ray actor (not the test's own process), the
    third call overall kills the actor's process, once."""
    marker = os.environ.get("CG_RAY_KILL_MARKER")
    if marker and os.getpid() != int(os.environ["CG_RAY_TEST_PID"]):
        with open(marker + ".calls", "a") as calls:
            calls.write("x")
        if os.path.getsize(marker + ".calls") >= 3:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
    h, w = image.shape[:2]
    return [Detection((w / 4, h / 4, 3 * w / 4, 3 * h / 4), 0.9, "face")]


@hookimpl
def ctrlgen_detectors():
    yield DetectorSpec(name="probe_kill", run=run, finds=("face",))
'''

JOB = {"model": "tiny-sd15", "steps": 2, "width": 64, "height": 64, "prompt": "a cat"}
RAY = ["--ray", "auto", "--ray-workers", "2", "--ray-cpus", "0.5"]
FIX = ["--faces", "probe_kill", "--set", "guide_size=64", "--set", "max_size=64", "--model", "tiny-sd15", "--steps",
       "3", "--seed", "5", "--quiet"]


@pytest.fixture(scope="module")
def cluster():
    """A 2-CPU Ray cluster for the module, with its files (and token) in a temp dir."""
    scratch = Path(tempfile.mkdtemp(prefix="cgray", dir="/tmp"))  # short: Ray's socket paths have a limit
    site = scratch / "site"
    site.mkdir()
    (site / "cg_probe_kill.py").write_text(textwrap.dedent(PROBE))
    info = site / "cg_probe_kill-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cg-probe-kill\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[ctrlgen]\nprobe_kill = cg_probe_kill\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(scratch))  # ~/.ray (the auth token) goes here
        patch.setenv("RAY_TMPDIR", str(scratch))
        patch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
        patch.setenv("CG_RAY_TEST_PID", str(os.getpid()))
        patch.setenv("CG_RAY_KILL_MARKER", str(scratch / "killed"))
        patch.setenv("OMP_NUM_THREADS", "1")
        patch.syspath_prepend(str(site))
        ray.init(num_cpus=2, object_store_memory=96 * 2**20, include_dashboard=False, log_to_driver=False,
                 _temp_dir=str(scratch / "r"))
        try:
            yield scratch
        finally:
            ray.shutdown()
            shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def env(cluster, tiny_model_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(tiny_model_root.root))
    monkeypatch.setenv("CTRLGEN_DEVICE", "cpu")
    monkeypatch.chdir(tmp_path)
    plugins.reset()
    yield tmp_path
    plugins.reset()
    for name in ("killed", "killed.calls"):
        (cluster / name).unlink(missing_ok=True)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def same_images(one: Path, other: Path) -> None:
    names = sorted(p.name for p in one.glob("*.png"))
    assert names and names == sorted(p.name for p in other.glob("*.png"))
    for name in names:
        assert np.array_equal(pixels(one / name), pixels(other / name)), name


def test_a_batch_on_ray_gives_the_local_runners_images(env, cluster):
    jobs = env / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({**JOB, "seed": seed}) + "\n" for seed in range(4)))
    assert main(["batch", str(jobs), "local", "--quiet"]) == 0
    assert main(["batch", str(jobs), "on-ray", *RAY, "--quiet"]) == 0
    same_images(env / "local", env / "on-ray")
    records = lines(env / "on-ray" / job_batch.MANIFEST_NAME)
    assert sorted(r["name"] for r in records) == ["00001", "00002", "00003", "00004"]
    assert all(r["outcome"] == "done" for r in records)
    assert not list((env / "on-ray").glob(".*"))  # no partial file
    assert main(["batch", str(jobs), "on-ray", *RAY, "--quiet"]) == 0  # resumed: nothing to do
    assert len(lines(env / "on-ray" / job_batch.MANIFEST_NAME)) == 4


def test_an_actor_killed_mid_batch_loses_and_duplicates_nothing(env, cluster):
    source = env / "in"
    source.mkdir()
    rng = np.random.default_rng(1)
    for index in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(source / f"img{index}.png")
    assert main(["fix", "in", "--out", "local", *FIX]) == 0
    assert not (cluster / "killed").exists()  # the probe kills only in an actor
    assert main(["fix", "in", "--out", "on-ray", *RAY, *FIX]) == 0
    assert (cluster / "killed").exists()  # an actor was killed with SIGKILL while fixing an image
    records = lines(env / "on-ray" / batch.MANIFEST_NAME)
    assert sorted(Path(r["input"]).name for r in records) == [f"img{i}.png" for i in range(4)]  # each once
    assert all(r["outcome"] == "fixed" and r["seed"] == 5 for r in records)
    same_images(env / "local", env / "on-ray")


def test_files_missing_on_a_node_are_named_before_the_first_job(env, cluster):
    from ctrlgen.core.engine import ray_runner

    present = env / "model.safetensors"
    present.write_bytes(b"x")
    ray_runner.check_nodes([str(present)])  # every node sees it: no error
    with pytest.raises(CtrlgenError, match=r"node \S+ \(.+\) cannot see /no/such/folder/model.safetensors.*same paths"):
        ray_runner.check_nodes([str(present), "/no/such/folder/model.safetensors"])


class FailingWork:
    """Work whose every item fails with an error that is not the item's (a model folder gone)."""

    def record(self, item):
        return {"name": item.name}

    def failed(self, item, error):
        return {"outcome": "error", "error": error}

    def load(self, item):
        return None

    def run(self, engine, item, loaded, cancel):
        raise CtrlgenError("the model folder /models went away")

    def encode(self, item, loaded, result, record):
        return []


def test_an_error_on_an_actor_that_is_not_the_items_stops_the_batch_by_its_message(env, cluster):
    import sys

    import ray.cloudpickle

    from ctrlgen.core.engine import runner
    from ctrlgen.core.engine.engine import Engine

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this file
    items = [job_batch.JobItem("one", 1, {}, (env / "out" / "one.png",), "f")]
    manifest = runner.Manifest(env / "out" / job_batch.MANIFEST_NAME, key="name", kind="batch")
    with pytest.raises(CtrlgenError, match=r"on the Ray cluster: CtrlgenError on \S+: the model folder /models went away"):
        runner.run_items(FailingWork(), items, manifest, engine=Engine(device="cpu"),
                         options=runner.RunnerOptions(ray="auto", ray_workers=1, ray_cpus=0.5))
    manifest.close()
    assert not manifest.path.read_text()  # nothing recorded: the next run tries it again
