"""``ctrlgen batch JOBS.jsonl OUT_DIR`` and the options every batch command shares.

``ctrlgen batch`` and ``ctrlgen fix`` (a built-in plugin's command) run on the same batch runner
(:mod:`ctrlgen.core.engine.runner`): :func:`add_runner_arguments` gives both the same
``--devices`` / ``--ray`` options, :func:`make_runner` turns them into the runner's options and
engine factory, and :class:`Progress` draws the one progress bar and counts the outcomes.
Nothing heavy (torch, Ray) is imported until a command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--precision``, ``--devices``, ``--ray``, ``--ray-workers``, ``--ray-cpus``."""
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (one engine)")
    parser.add_argument("--precision", default=None, help="auto, float16, bfloat16, float32")
    parser.add_argument("--devices", metavar="LIST",
                        help="one engine per device on this machine: cuda:0,cuda:1 | all (every CUDA device) | cpu,cpu")
    parser.add_argument("--ray", metavar="ADDRESS",
                        help="run on a Ray cluster (pip install 'ctrlgen[ray]'): auto (the cluster `ray start` runs "
                             "here), local (a new one in this process) or the head's address; docs/scaling.md")
    parser.add_argument("--ray-workers", dest="ray_workers", type=int, metavar="N",
                        help="--ray: how many engines (actors); default one per GPU, else the CPUs less one")
    parser.add_argument("--ray-cpus", dest="ray_cpus", type=float, metavar="X",
                        help="--ray on a cluster without GPUs: CPUs per engine (default 1; fractions allowed)")


def make_runner(args: argparse.Namespace, io_threads: int) -> tuple[Any, Any, Callable[[str], Any]]:
    """``(engine, RunnerOptions, make_engine)`` from the options: the engine checks the jobs
    (and runs them when neither ``--devices`` nor ``--ray`` is given)."""
    from ctrlgen.core.engine.engine import Engine
    from ctrlgen.core.engine.runner import RunnerOptions, parse_devices
    from ctrlgen.core.errors import JobError

    if args.devices and args.ray:
        raise JobError("--devices and --ray exclude each other: --devices runs engines on this machine, --ray on "
                       "the cluster's nodes")
    if args.device and (args.devices or args.ray):
        raise JobError("--device names one engine's device; with --devices or --ray leave it out")
    if (args.ray_workers is not None or args.ray_cpus is not None) and not args.ray:
        raise JobError("--ray-workers and --ray-cpus need --ray ADDRESS")
    if args.ray_workers is not None and args.ray_workers < 1:
        raise JobError(f"--ray-workers {args.ray_workers}: give 1 or more")
    if args.ray_cpus is not None and not 0 < args.ray_cpus:
        raise JobError(f"--ray-cpus {args.ray_cpus}: give a number of CPUs above 0 (0.5 shares a core by two)")
    devices = parse_devices(args.devices) if args.devices else None
    engine = Engine(device=args.device, precision=args.precision)
    options = RunnerOptions(devices=devices, ray=args.ray, ray_workers=args.ray_workers, ray_cpus=args.ray_cpus,
                            io_threads=io_threads)

    def make_engine(device: str) -> Any:
        return Engine(store=engine.store, device=device, precision=args.precision)

    return engine, options, make_engine


class Progress:
    """A tqdm bar over the items (on stderr), errors written under it, outcomes counted."""

    def __init__(self, total: int, done_before: int, desc: str, unit: str, quiet: bool) -> None:
        self.counts: dict[str, int] = {}
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done_before, unit=unit, desc=desc)

    def __call__(self, record: dict[str, Any]) -> None:
        self.counts[record["outcome"]] = self.counts.get(record["outcome"], 0) + 1
        if self.bar is not None:
            self.bar.update(1)
        if record["outcome"] == "error":
            message = f"skipped {record.get('input') or record.get('name')}: {record['error']}"
            if self.bar is not None:
                self.bar.write(message, file=sys.stderr)
            else:
                print(message, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def summary(self) -> str:
        return ", ".join(f"{n} {outcome}" for outcome, n in sorted(self.counts.items())) or "nothing to do"


def cmd_batch(args: argparse.Namespace) -> int:
    from ctrlgen.core.engine import job_batch
    from ctrlgen.core.engine.runner import Manifest, run_items

    out_dir = Path(args.out_dir).resolve()
    items = job_batch.read_jobs(Path(args.jobs), out_dir)
    engine, options, make_engine = make_runner(args, args.io_threads)
    node_paths = job_batch.check_jobs(engine, items)  # every job, before the first one runs
    manifest = Manifest(Path(args.manifest) if args.manifest else out_dir / job_batch.MANIFEST_NAME,
                        key="name", kind="batch")
    done_before = sum(manifest.done(item) for item in items)
    progress = Progress(len(items), done_before, "jobs", "job", args.quiet)
    try:
        run_items(job_batch.JobWork(), items, manifest, engine=engine, make_engine=make_engine, options=options,
                  on_record=progress, node_paths=node_paths)
    finally:
        manifest.close()
        progress.close()
    print(f"{len(items)} jobs: {progress.summary()}, {done_before} done before; manifest {manifest.path}")
    return 0


def add_batch_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "batch", help="run a JSONL file of jobs (one per line) into a folder; resumable, on several devices or Ray",
        description="Run every job of JOBS.jsonl (one job object per line, docs/jobs.md; images by path, relative "
                    "to the file; an optional \"name\" per line names its outputs) and write the images into "
                    "OUT_DIR atomically, with a JSONL manifest; running the same command again resumes. "
                    "--devices runs one engine per device, --ray runs on a Ray cluster (docs/scaling.md).")
    parser.add_argument("jobs", metavar="JOBS.jsonl", help="one job per line")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="where the images (NAME.png) and the manifest go")
    parser.add_argument("--manifest", metavar="FILE.jsonl", help="the manifest (default OUT_DIR/ctrlgen-batch.jsonl)")
    parser.add_argument("--io-threads", dest="io_threads", type=int, default=2,
                        help="threads reading the jobs' images ahead of the engines (default 2)")
    add_runner_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_batch)


__all__ = ["Progress", "add_batch_command", "add_runner_arguments", "cmd_batch", "make_runner"]
