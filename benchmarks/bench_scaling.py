"""Throughput of the batch runner with 1 and 2 workers, locally and on Ray, and Ray's per-job cost.

The same batch of txt2img jobs on the tiny SD1.5 model (``ctrlgen batch``'s work: decode,
engine, PNG encode, atomic write, manifest line) runs on this machine's CPU cores:

- local, 1 engine vs 2 engines (``--devices cpu,cpu``), each engine on one torch thread, both
  engines made and warmed (model loaded) once: ratio = 2-engine time / 1-engine time (ideal
  on 2 free cores: 0.5);
- Ray (``ray.init(num_cpus=2)``, actors of half a CPU), 1 actor vs 2: each run starts its actors
  and loads the model in each, as every ``ctrlgen batch --ray`` does; compared on the whole
  batch, and on the seconds per job once results flow (from the first manifest line to the
  last, divided by the jobs between), which leaves the start out;
- Ray's cost per job: that steady figure on one actor against the local engine's, and the
  time to the first result (actor start + model load + one job) against the local runner's.

Every variant is timed in each round, the order rotating, so all see the same machine load.

    OMP_NUM_THREADS=1 python benchmarks/bench_scaling.py [--jobs N] [--size PX] [--steps N] [--repeat N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import report  # noqa: E402


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import torch

    from ctrlgen.core.engine import job_batch, runner
    from ctrlgen.core.engine.engine import Engine
    from ctrlgen.core.models.store import ModelStore
    from ctrlgen.core.plugins.specs import ModelRoot
    from ctrlgen.testing.tiny import write_model_root

    torch.set_num_threads(1)  # one core per engine: 1 worker uses one core, 2 workers two
    scratch = Path(tempfile.mkdtemp(prefix="cgscale", dir="/tmp"))
    try:
        placed = write_model_root(scratch / "root", "a1111", architectures=("sd15",))
        store = ModelStore([ModelRoot(placed.root)])
        jobs_path = scratch / "jobs.jsonl"
        jobs_path.write_text("".join(json.dumps({"model": "tiny-sd15", "prompt": "a cat", "seed": seed,
                                                 "steps": args.steps, "width": args.size, "height": args.size})
                                     + "\n" for seed in range(args.jobs)))
        engines = [Engine(store=store, device="cpu") for _ in range(2)]
        for index, engine in enumerate(engines):  # load the model in each engine once
            warm = scratch / f"warm-{index}"
            run(job_batch, runner, job_batch.read_jobs(jobs_path, warm)[:1], warm, engine, runner.RunnerOptions())
        runs = [0]
        steady: dict[str, list[float]] = {}
        first: dict[str, list[float]] = {}
        inside: dict[str, list[float]] = {}  # each job's own seconds, as its worker measured them

        def batch(name: str, options):
            def go():
                runs[0] += 1
                out = scratch / f"out-{runs[0]}"
                items = job_batch.read_jobs(jobs_path, out)
                made = iter(engines)
                started = time.perf_counter()
                stamps, records = run(job_batch, runner, items, out, engines[0], options,
                                      make_engine=lambda d: next(made))
                inside.setdefault(name, []).extend(record["seconds"] for record in records)
                steady.setdefault(name, []).append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
                first.setdefault(name, []).append(stamps[0] - started)
            return go

        import ray

        os.environ["RAY_TMPDIR"] = str(scratch)
        os.environ["HOME"] = str(scratch)  # Ray's token (~/.ray) stays in the scratch folder
        ray.init(num_cpus=2, object_store_memory=96 * 2**20, include_dashboard=False, log_to_driver=False,
                 _temp_dir=str(scratch / "r"))
        try:
            def on_ray(workers: int) -> runner.RunnerOptions:
                return runner.RunnerOptions(ray="auto", ray_workers=workers, ray_cpus=0.5)

            batch("warm-up", on_ray(1))()  # Ray's first actors start its worker pool: not counted
            t = rotated_medians({"local1": batch("local1", runner.RunnerOptions()),
                                 "local2": batch("local2", runner.RunnerOptions(devices=["cpu", "cpu"])),
                                 "ray1": batch("ray1", on_ray(1)), "ray2": batch("ray2", on_ray(2))},
                                repeat=args.repeat)
        finally:
            ray.shutdown()
        per_job = {name: statistics.median(values) for name, values in steady.items()}
        to_first = {name: statistics.median(values) for name, values in first.items()}
        label = f"{args.jobs} txt2img jobs {args.size}px x{args.steps} steps"
        rows = [
            {"measure": f"local: 2 engines vs 1 (warm), whole batch, {label}", "ctrlgen_s": t["local2"],
             "baseline_s": t["local1"], "ratio": t["local2"] / t["local1"], "target": "-> 0.5 on 2 free cores"},
            {"measure": f"Ray: 2 actors vs 1, seconds per job once results flow, {label}",
             "ctrlgen_s": per_job["ray2"], "baseline_s": per_job["ray1"], "ratio": per_job["ray2"] / per_job["ray1"],
             "target": "-> 0.5 on 2 free cores"},
            {"measure": f"Ray: 2 actors vs 1, whole batch (actor start + model load included), {label}",
             "ctrlgen_s": t["ray2"], "baseline_s": t["ray1"], "ratio": t["ray2"] / t["ray1"], "target": "< 1"},
            {"measure": f"Ray (1 actor) vs the local runner (1 engine), seconds per job once results flow, {label}",
             "ctrlgen_s": per_job["ray1"], "baseline_s": per_job["local1"],
             "ratio": per_job["ray1"] / per_job["local1"],
             "target": f"overhead {1000 * (per_job['ray1'] - per_job['local1']):+.0f} ms/job"},
            {"measure": f"one job's own time in its worker (read + engine), Ray actor vs local engine, {label}",
             "ctrlgen_s": statistics.median(inside["ray1"]), "baseline_s": statistics.median(inside["local1"]),
             "ratio": statistics.median(inside["ray1"]) / statistics.median(inside["local1"]),
             "target": "(the same work; the rest is transport)"},
            {"measure": "Ray (1 actor) vs local (warm engine): seconds to the first result (actor start + model load)",
             "ctrlgen_s": to_first["ray1"], "baseline_s": to_first["local1"],
             "ratio": to_first["ray1"] / to_first["local1"], "target": "(a fixed cost per batch)"},
        ]
        report(f"batch runner scaling on {os.cpu_count()} CPU cores (median seconds; ratio = ctrlgen / baseline)",
               rows, args.json)
        return rows
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def rotated_medians(functions: dict, repeat: int) -> dict[str, float]:
    """Median seconds of each function, all timed in turn each round (the order rotating), so
    every one sees the same machine load."""
    names = list(functions)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeat):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            start = time.perf_counter()
            functions[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def run(job_batch, runner, items, out, engine, options, make_engine=None) -> tuple[list[float], list[dict]]:
    """Run the batch; returns when each manifest line was written (perf_counter seconds) and
    the lines."""
    stamps: list[float] = []
    manifest = runner.Manifest(out / job_batch.MANIFEST_NAME, key="name", kind="batch")
    try:
        records = runner.run_items(job_batch.JobWork(), items, manifest, engine=engine, make_engine=make_engine,
                                   options=options, on_record=lambda record: stamps.append(time.perf_counter()))
    finally:
        manifest.close()
    assert len(records) == len(items) and all(r["outcome"] == "done" for r in records), records
    return stamps, records


if __name__ == "__main__":
    main()
