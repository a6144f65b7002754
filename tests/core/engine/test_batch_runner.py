"""The shared batch runner (core/engine/runner.py) and ``ctrlgen batch`` (core/cli/batch_cli.py,
core/engine/job_batch.py): jobs files, resume, several engines, a worker that dies."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctrlgen.core.cli.main import main
from ctrlgen.core.engine import job_batch, runner
from ctrlgen.core.engine.engine import Engine
from ctrlgen.core.errors import CtrlgenError, JobError
from ctrlgen.core.plugins import manager as plugins

pytestmark = pytest.mark.usefixtures("torch_single_thread")

JOB = {"model": "tiny-sd15", "steps": 2, "width": 64, "height": 64, "prompt": "a cat"}


@pytest.fixture
def env(tiny_model_root, tmp_path, monkeypatch):
    """The tiny models as the model root, the CPU, a scratch cwd with an input image."""
    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(tiny_model_root.root))
    monkeypatch.setenv("CTRLGEN_DEVICE", "cpu")
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    plugins.reset()
    yield tmp_path
    plugins.reset()


def write_jobs(path: Path, jobs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    return path


def jobs_file(folder: Path, count: int = 4) -> Path:
    """txt2img jobs, an img2img one reading ``in.png`` beside the file, one with a batch of 2."""
    jobs = [{**JOB, "seed": 10 + index, "name": f"cat-{index}"} for index in range(count - 2)]
    jobs.append({**JOB, "seed": 3, "task": "img2img", "image": "in.png", "strength": 0.6})
    jobs.append({**JOB, "seed": 4, "batch_size": 2, "name": "pair"})
    return write_jobs(folder / "jobs.jsonl", jobs)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def outputs(folder: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix(): pixels(p) for p in sorted(folder.rglob("*.png"))}


def test_a_jobs_file_runs_into_a_folder_like_generate_and_resumes(env):
    jobs = jobs_file(env)
    assert main(["batch", str(jobs), "out", "--quiet"]) == 0
    out = env / "out"
    assert sorted(outputs(out)) == ["00003.png", "cat-0.png", "cat-1.png", "pair-00.png", "pair-01.png"]
    records = lines(out / job_batch.MANIFEST_NAME)
    assert [r["name"] for r in records] == ["cat-0", "cat-1", "00003", "pair"]
    assert all(r["outcome"] == "done" for r in records) and records[3]["seeds"] == [4, 5]
    # The same pixels and parameters as `ctrlgen generate` of the same job.
    (env / "one.json").write_text(json.dumps({**JOB, "seed": 11}))
    assert main(["generate", "one.json", "--out", "gen", "--quiet"]) == 0
    (generated,) = (env / "gen").glob("*.png")
    assert np.array_equal(pixels(generated), pixels(out / "cat-1.png"))
    with Image.open(out / "cat-1.png") as image:
        assert "Seed: 11" in image.text["parameters"] and json.loads(image.text["ctrlgen-job"])["seed"] == 11
    # Again: nothing to do. Edit one line: only that job runs again.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert main(["batch", str(jobs), "out", "--quiet"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == stamps
    edited = jobs.read_text().splitlines()
    edited[0] = json.dumps({**JOB, "seed": 99, "name": "cat-0"})
    jobs.write_text("\n".join(edited) + "\n")
    assert main(["batch", str(jobs), "out", "--quiet"]) == 0
    changed = {p.name for p in out.glob("*.png") if p.stat().st_mtime_ns != stamps[p.name]}
    assert changed == {"cat-0.png"}
    assert lines(out / job_batch.MANIFEST_NAME)[-1]["seeds"] == [99]


@pytest.mark.parametrize(("line", "expected"), [
    ("{not json", "line 2 is not JSON"),
    ('{"model": "tiny-sd15", "name": "cat-0"}', "line 2: the name 'cat-0' is taken by line 1"),
    ('{"model": "tiny-sd15", "name": "../escape"}', "must stay inside OUT_DIR"),
    ('{"model": "tiny-sd15", "steps": 0}', "line 2"),
    ('{"model": "no-such-model"}', "line 2 (00002): job.model"),
])
def test_a_bad_line_is_refused_before_any_job_runs(env, capsys, line, expected):
    (env / "jobs.jsonl").write_text(json.dumps({**JOB, "name": "cat-0"}) + "\n" + line + "\n")
    assert main(["batch", "jobs.jsonl", "out", "--quiet"]) == 2
    assert expected in capsys.readouterr().err
    assert not (env / "out").exists() or not list((env / "out").glob("*.png"))


def test_a_job_that_fails_is_recorded_and_skipped(env, capsys):
    write_jobs(env / "jobs.jsonl", [{**JOB, "seed": 1, "name": "good"},
                                    {**JOB, "task": "img2img", "image": "gone.png", "name": "bad"}])
    (env / "gone.png").write_bytes((env / "in.png").read_bytes())
    items = job_batch.read_jobs(env / "jobs.jsonl", env / "out")
    engine = Engine(device="cpu")
    job_batch.check_jobs(engine, items)  # the image is there when checked ...
    (env / "gone.png").unlink()  # ... and gone when the job runs
    manifest = runner.Manifest(env / "out" / job_batch.MANIFEST_NAME, key="name", kind="batch")
    records = runner.run_items(job_batch.JobWork(), items, manifest, engine=engine)
    manifest.close()
    assert [(r["name"], r["outcome"]) for r in records] == [("good", "done"), ("bad", "error")]
    assert "gone.png" in records[1]["error"] and sorted(outputs(env / "out")) == ["good.png"]


def test_two_cpu_engines_share_the_batch_and_give_the_same_images(env, monkeypatch):
    jobs = jobs_file(env, count=6)
    assert main(["batch", str(jobs), "one", "--quiet"]) == 0
    made: list[str] = []
    ran_on: dict[str, str] = {}
    real_init, real_run = Engine.__init__, job_batch.JobWork.run

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(kwargs.get("device") or (args[1] if len(args) > 1 else None))

    def run(self, engine, item, loaded, cancel):
        ran_on[item.name] = threading.current_thread().name
        return real_run(self, engine, item, loaded, cancel)

    monkeypatch.setattr(Engine, "__init__", init)
    monkeypatch.setattr(job_batch.JobWork, "run", run)
    assert main(["batch", str(jobs), "two", "--devices", "cpu,cpu", "--quiet"]) == 0
    assert made.count("cpu") == 2  # one engine per device (besides the one that checks the jobs)
    assert set(ran_on.values()) == {"ctrlgen-engine-0", "ctrlgen-engine-1"}
    assert outputs(env / "two").keys() == outputs(env / "one").keys()
    for name, image in outputs(env / "one").items():
        assert np.array_equal(image, outputs(env / "two")[name]), name
    assert sorted(r["name"] for r in lines(env / "two" / job_batch.MANIFEST_NAME)) == sorted(
        r["name"] for r in lines(env / "one" / job_batch.MANIFEST_NAME))
    # Two engines loading at once leave torch as they found it: new modules are not on "meta"
    # (accelerate's init_empty_weights patches torch globally; loads are serialised).
    import torch

    assert torch.nn.Linear(2, 2).weight.device.type == "cpu" and torch.empty(1).device.type == "cpu"


class DyingEngine(Engine):
    """A device that fails for good on its second job (what a lost GPU looks like)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.jobs = 0

    def run(self, job, **kwargs):
        self.jobs += 1
        if self.jobs >= 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().run(job, **kwargs)


def test_an_item_whose_engine_dies_runs_on_another_and_is_recorded_once(env, engine):
    jobs = write_jobs(env / "jobs.jsonl", [{**JOB, "seed": seed} for seed in range(5)])
    items = job_batch.read_jobs(jobs, env / "out")
    dying = DyingEngine(store=engine.store, device="cpu")
    dying.jobs = 1  # its first job fails: it dies with an item in hand whichever engine is faster
    engines = iter([dying, engine])
    manifest = runner.Manifest(env / "out" / job_batch.MANIFEST_NAME, key="name", kind="batch")
    records = runner.run_items(job_batch.JobWork(), items, manifest, engine=engine,
                               make_engine=lambda device: next(engines),
                               options=runner.RunnerOptions(devices=["cpu", "cpu"]))
    manifest.close()
    assert dying.jobs >= 2  # it died with an item in hand
    names = [r["name"] for r in lines(manifest.path)]
    assert sorted(names) == [item.name for item in items] and len(records) == 5
    assert sorted(outputs(env / "out")) == [f"{item.name}.png" for item in items]
    # When every engine dies the batch stops, saying so; what was done stays done.
    (env / "out" / "00001.png").unlink()
    manifest = runner.Manifest(manifest.path, key="name", kind="batch")
    broken = [DyingEngine(store=engine.store, device="cpu") for _ in range(2)]
    for each in broken:
        each.jobs = 1
    with pytest.raises(CtrlgenError, match="every engine failed.*illegal memory access"):
        runner.run_items(job_batch.JobWork(), items, manifest, engine=engine, make_engine=lambda d: broken.pop(),
                         options=runner.RunnerOptions(devices=["cpu", "cpu"]))
    manifest.close()


def test_device_lists_and_option_clashes(env, capsys):
    assert runner.parse_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"]
    assert runner.parse_devices("cpu,cpu") == ["cpu", "cpu"]
    with pytest.raises(JobError, match="'gpu0' is not a device"):
        runner.parse_devices("gpu0")
    with pytest.raises(JobError, match="no CUDA device is visible"):
        runner.parse_devices("all")  # no GPU here
    write_jobs(env / "jobs.jsonl", [JOB])
    for extra, message in [(["--devices", "cpu", "--ray", "auto"], "exclude each other"),
                           (["--device", "cpu", "--devices", "cpu,cpu"], "leave it out"),
                           (["--ray-workers", "2"], "need --ray"),
                           (["--ray", "auto", "--ray-cpus", "0"], "above 0")]:
        assert main(["batch", "jobs.jsonl", "out", "--quiet", *extra]) == 2
        assert message in capsys.readouterr().err


def test_without_ray_installed_ray_is_asked_for_by_name(monkeypatch):
    from ctrlgen.core.engine import ray_runner

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(CtrlgenError, match=r"pip install 'ctrlgen\[ray\]'"):
        ray_runner.import_ray()


@pytest.mark.parametrize("argv", [["--help"], ["batch", "--help"], ["fix", "--help"]])
def test_help_imports_neither_ray_nor_torch(argv):
    code = ("import sys\nfrom ctrlgen.core.cli.main import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "assert 'ray' not in sys.modules and 'torch' not in sys.modules, 'heavy import'\nprint('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
