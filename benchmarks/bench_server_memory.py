"""Server memory over a long run of big canvases: is it bounded by ``--max-memory``?

A real ``ctrlgen serve`` (tiny SD1.5, CPU, outputs folder on as by default) runs ``--jobs``
only-masked inpaint jobs, each on a NEW ``--size``² RGBA canvas with a new mask (so nothing is
deduplicated: every job brings 5 bytes a pixel of uploads), downloading each full-size result.
After each job the server's resident memory (``VmRSS`` from ``/proc``) is recorded.

The budget covers the images the server holds (uploads in memory; results are files by hash,
served memory-mapped): RSS should climb while the budget fills, then stay flat. Reported: RSS
after the first job, the highest, the last, the growth over the last ``--tail`` jobs, and
``over_budget_MiB`` = highest − first − budget (<= 0 when the budget holds).

    python benchmarks/bench_server_memory.py [--jobs 50] [--size 2048] [--budget 1GiB ...] [--save]

Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _timing import report  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MIB = 2**20


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def parse_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(text)


@contextlib.contextmanager
def server(work: Path, model_root: Path, budget: str):
    from ctrlgen.host_bridges.client import Client

    config = Path(tempfile.mkdtemp(prefix="config-", dir=work))
    env = dict(os.environ, CTRLGEN_CONFIG_DIR=str(config), CTRLGEN_MODEL_ROOTS=str(model_root),
               CTRLGEN_DEVICE="cpu", OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "ctrlgen.core.cli.main", "serve", "--port", "0",
                                "--max-memory", budget, "--preload", "tiny-sd15"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (config / "server.json").is_file():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ctrlgen serve did not start")
            time.sleep(0.05)
        client = Client.discover(config)
        while client.health()["state"] != "ready":
            time.sleep(0.1)
        yield process, client
        client.close()
    finally:
        process.terminate()
        process.wait(60)


def canvas_and_mask(size: int, index: int) -> tuple[bytes, bytes]:
    """A new canvas (a gradient shifted by ``index``) and a 96² mask at a new place."""
    rng = np.random.default_rng(index)
    ramp = (np.arange(size, dtype=np.uint16)[None, :] + np.arange(size, dtype=np.uint16)[:, None] + index) % 256
    canvas = np.empty((size, size, 4), np.uint8)
    canvas[..., 0] = ramp
    canvas[..., 1] = ramp[::-1]
    canvas[..., 2] = index % 256
    canvas[..., 3] = 255
    mask = np.zeros((size, size), np.uint8)
    x, y = (int(v) for v in rng.integers(0, size - 96, 2))
    mask[y:y + 96, x:x + 96] = 255
    return canvas.tobytes(), mask.tobytes()


def run(work: Path, model_root: Path, budget: str, jobs: int, size: int, tail: int) -> tuple[dict, list[int]]:
    from ctrlgen.host_bridges.client import RawImage

    samples = []
    seconds = []
    with server(work, model_root, budget) as (process, client):
        job = {"model": "tiny-sd15", "prompt": "a red helmet", "seed": 1, "steps": 2, "strength": 0.75,
               "width": 128, "height": 128, "inpaint": {"only_masked": True, "padding_px": 16}}
        for index in range(jobs):
            canvas, mask = canvas_and_mask(size, index)
            started = time.perf_counter()
            results = client.run(job, images={"image": RawImage(canvas, size, size, 4),
                                              "mask": RawImage(mask, size, size, 1)})
            seconds.append(time.perf_counter() - started)
            assert results[0].width == size and results[0].height == size
            samples.append(rss_bytes(process.pid))
    limit = parse_size(budget)
    highest = max(samples)
    row = {"budget": budget, "jobs": jobs, "size": f"{size}x{size}",
           "uploads_per_job_MiB": round(size * size * 5 / MIB, 1),
           "rss_first_MiB": round(samples[0] / MIB), "rss_max_MiB": round(highest / MIB),
           "rss_last_MiB": round(samples[-1] / MIB),
           f"growth_last_{tail}_MiB": round((samples[-1] - samples[-tail]) / MIB),
           "over_budget_MiB": round((highest - samples[0] - limit) / MIB),
           "job_s_median": sorted(seconds)[len(seconds) // 2]}
    return row, samples


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--budget", action="append", help="--max-memory values (repeatable; default 1GiB, 256MiB)")
    parser.add_argument("--tail", type=int, default=10, help="jobs over which the final growth is measured")
    parser.add_argument("--json", help="write rows and per-job RSS here")
    parser.add_argument("--save", action="store_true", help="write results/server-memory-<date>.json")
    args = parser.parse_args(argv)
    budgets = args.budget or ["1GiB", "256MiB"]
    stamp = datetime.date.today().isoformat()
    if args.save:
        args.json = args.json or str(RESULTS / f"server-memory-{stamp}.json")
    from ctrlgen.testing.tiny import write_model_root

    rows, per_job = [], {}
    with tempfile.TemporaryDirectory(prefix="ctrlgen-bench-memory-") as scratch:
        work = Path(scratch)
        model_root = write_model_root(work / "root", "a1111", architectures=("sd15",)).root
        for budget in budgets:
            row, samples = run(work, model_root, budget, args.jobs, args.size, args.tail)
            rows.append(row)
            per_job[budget] = [round(value / MIB, 1) for value in samples]
    title = (f"Server RSS over {args.jobs} jobs, each with a new {args.size}² canvas and mask (MiB; goal: "
             "over_budget_MiB <= 0 and no growth once the budget is full)")
    report(title, rows)
    if args.json:
        command = "python benchmarks/bench_server_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(args.json).write_text(json.dumps({"title": title, "date": stamp, "command": command.strip(),
                                               "python": sys.version.split()[0], "rows": rows,
                                               "rss_MiB_after_each_job": per_job}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
