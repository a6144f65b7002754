"""A fresh server's first job against its second: does warming up pay the first job's imports?

Each round starts real ``ctrlgen serve`` processes (fresh config and state folders, the tiny
SD1.5 model on CPU) in three modes, and runs the same txt2img job twice (different seeds),
timing each from submit to the downloaded result:

- ``preload``: ``--preload tiny-sd15`` (imports and the model load right after start);
- ``warmup``: the default (imports only);
- ``cold``: ``--no-warmup`` (what the server did before: everything on the first job).

Two ways of sending the first job: once ``/v1/health`` says ``ready`` (``first/second``, the
goal is <= 1.5), and as soon as the server listens (``first_at_listen/second``; from process
start, ``start_to_first_result_s``). Medians over ``--rounds``.

    python benchmarks/bench_server.py [--size 128] [--steps 8] [--rounds 3] [--save | --json F]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import report  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODES = {"preload": ["--preload", "tiny-sd15"], "warmup": [], "cold": ["--no-warmup"]}


@contextlib.contextmanager
def server(work: Path, model_root: Path, extra: list[str]):
    """A fresh ``ctrlgen serve``; yields (process, spawn time, config folder)."""
    config = Path(tempfile.mkdtemp(prefix="config-", dir=work))
    env = dict(os.environ, CTRLGEN_CONFIG_DIR=str(config), CTRLGEN_MODEL_ROOTS=str(model_root),
               CTRLGEN_DEVICE="cpu", OMP_NUM_THREADS="1")
    spawned = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "ctrlgen.core.cli.main", "serve", "--port", "0",
                                "--no-outputs", *extra], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        yield process, spawned, config
    finally:
        process.terminate()
        process.wait(60)


def wait_listening(process, config: Path, timeout: float = 120.0):
    from ctrlgen.host_bridges.client import Client

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            if json.loads((config / "server.json").read_text()).get("pid") == process.pid:
                return Client.discover(config)
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("ctrlgen serve did not start")
        time.sleep(0.01)


def wait_ready(client, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while client.health().get("state", "ready") != "ready":
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not become ready")
        time.sleep(0.01)


def timed_job(client, job: dict, seed: int) -> float:
    started = time.perf_counter()
    results = client.run({**job, "seed": seed})
    assert results and len(results[0].data) == job["width"] * job["height"] * 3
    return time.perf_counter() - started


def one_round(work: Path, model_root: Path, mode: str, job: dict) -> dict:
    row: dict = {"mode": mode}
    # 1. The first job sent once the server says it is ready.
    with server(work, model_root, MODES[mode]) as (process, spawned, config):
        client = wait_listening(process, config)
        row["listening_s"] = time.perf_counter() - spawned
        wait_ready(client)
        row["ready_s"] = time.perf_counter() - spawned
        first = timed_job(client, job, 1)
        second = timed_job(client, job, 2)
        client.close()
        row.update(first_s=first, second_s=second, ratio=first / second)
    # 2. The first job sent as soon as the server listens (a host app started with the server).
    with server(work, model_root, MODES[mode]) as (process, spawned, config):
        client = wait_listening(process, config)
        first = timed_job(client, job, 1)
        row["start_to_first_result_s"] = time.perf_counter() - spawned
        second = timed_job(client, job, 2)
        client.close()
        row.update(first_at_listen_s=first, second_at_listen_s=second, ratio_at_listen=first / second)
    return row


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES), help="comma separated: " + ", ".join(MODES))
    parser.add_argument("--json", help="write the rows as JSON here")
    parser.add_argument("--save", action="store_true", help="write results/server-<date>.json and .txt")
    args = parser.parse_args(argv)
    stamp = datetime.date.today().isoformat()
    if args.save:
        args.json = args.json or str(RESULTS / f"server-{stamp}.json")
    job = {"model": "tiny-sd15", "prompt": "an astronaut", "steps": args.steps, "width": args.size,
           "height": args.size}
    from ctrlgen.testing.tiny import write_model_root

    samples: dict[str, list[dict]] = {mode: [] for mode in args.modes.split(",")}
    with tempfile.TemporaryDirectory(prefix="ctrlgen-bench-server-") as scratch:
        work = Path(scratch)
        model_root = write_model_root(work / "root", "a1111", architectures=("sd15",)).root
        for _ in range(args.rounds):  # modes interleaved, so each sees the same machine load
            for mode in samples:
                samples[mode].append(one_round(work, model_root, mode, job))
    rows = []
    for mode, found in samples.items():
        rows.append({key: (statistics.median(r[key] for r in found) if key != "mode" else mode)
                     for key in found[0]})
    command = "python benchmarks/bench_server.py " + " ".join(argv if argv is not None else sys.argv[1:])
    title = (f"First vs second job on a fresh server ({args.size}px, {args.steps} steps, tiny SD1.5, CPU; "
             f"medians of {args.rounds} rounds; goal: ratio <= 1.5)")
    report(title, rows)
    if args.json:
        payload = {"title": title, "date": stamp, "command": command.strip(), "python": sys.version.split()[0],
                   "cpus": os.cpu_count(), "rows": rows,
                   "rounds": {mode: found for mode, found in samples.items()}}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        if args.save:
            buffer = [title] + [json.dumps(row) for row in rows]
            Path(args.json).with_suffix(".txt").write_text("\n".join(buffer) + "\n")
    return rows


if __name__ == "__main__":
    main()
