"""Throughput of `ctrlgen serve` with 1 and 2 workers (and 2 Ray workers) on the same batch of jobs.

Real servers (subprocesses, loopback, the tiny SD1.5 model, CPU, ``OMP_NUM_THREADS=1``: each
engine uses one core) are started once and warmed (the model loaded in every worker); then, in
each round, the same batch of txt2img jobs is submitted at once to each server in turn (the
order rotating, so all see the same machine load) and timed from the first submission to the
last job's end, as a host app sees it:

- ``--workers 1`` (the baseline) vs ``--devices cpu,cpu``: ratio = 2-worker time / 1-worker time
  (ideal on 2 free cores: 0.5);
- with ``--ray``: ``--ray local --ray-workers 2 --ray-cpus 0.5`` (a 2-CPU local cluster) vs the
  1-worker server too.

    OMP_NUM_THREADS=1 python benchmarks/bench_server_workers.py [--jobs N] [--size PX] [--steps N] [--repeat N] [--ray] [--json out.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import report  # noqa: E402


class Server:
    def __init__(self, folder: Path, root: Path, *args: str, env: dict[str, str] | None = None) -> None:
        folder.mkdir(parents=True)
        self.folder = folder
        environment = dict(os.environ, CTRLGEN_CONFIG_DIR=str(folder), CTRLGEN_MODEL_ROOTS=str(root),
                           CTRLGEN_DEVICE="cpu", OMP_NUM_THREADS="1", **(env or {}))
        with open(folder / "serve.log", "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "ctrlgen.core.cli.main", "serve", "--port", "0",
                                             "--max-results", "1000", *args], env=environment, stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            try:
                info = json.loads((folder / "server.json").read_text())
                if info.get("pid") == self.process.pid:
                    break
            except (OSError, ValueError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((folder / "serve.log").read_text(errors="replace"))
            time.sleep(0.1)
        self.host, port = info["url"].split("//", 1)[1].rsplit(":", 1)
        self.port = int(port)
        self.token = (folder / "token").read_text().strip()

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=300)
        try:
            connection.request(method, path, body=json.dumps(body) if body is not None else None,
                               headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
            response = connection.getresponse()
            answer = json.loads(response.read())
            if response.status >= 400:
                raise RuntimeError(answer)
            return answer
        finally:
            connection.close()

    def run_batch(self, jobs: list[dict]) -> float:
        """Submit every job at once, wait for all to end; seconds from the first submission."""
        started = time.perf_counter()
        ids = {self.request("POST", "/v1/jobs", {"job": job})["id"] for job in jobs}
        while True:
            states = {item["id"]: item["status"] for item in self.request("GET", "/v1/jobs")["jobs"]
                      if item["id"] in ids}
            if all(status in ("finished", "error", "cancelled") for status in states.values()):
                break
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        failed = [status for status in states.values() if status != "finished"]
        if failed:
            raise RuntimeError(f"jobs ended {failed}; see {self.folder / 'serve.log'}")
        return elapsed

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ray", action="store_true", help="also a server on a local 2-CPU Ray cluster")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from ctrlgen.testing.tiny import write_model_root

    scratch = Path(tempfile.mkdtemp(prefix="cgsw", dir="/tmp"))  # short: Ray's socket paths have a limit
    servers: dict[str, Server] = {}
    try:
        root = write_model_root(scratch / "root", "a1111", architectures=("sd15",)).root
        servers["one"] = Server(scratch / "one", root, "--workers", "1")
        servers["two"] = Server(scratch / "two", root, "--devices", "cpu,cpu")
        if args.ray:
            servers["ray"] = Server(scratch / "ray", root, "--ray", "local", "--ray-workers", "2", "--ray-cpus", "0.5",
                                    env={"HOME": str(scratch), "RAY_TMPDIR": str(scratch),
                                         "RAY_OVERRIDE_RESOURCES": json.dumps({"CPU": 2}),
                                         "RAY_object_store_memory": str(96 * 2**20)})

        def batch(seed: int) -> list[dict]:
            return [{"model": "tiny-sd15", "prompt": "a cat", "seed": seed + n, "steps": args.steps,
                     "width": args.size, "height": args.size} for n in range(args.jobs)]

        for server in servers.values():  # the model loaded in every worker: not counted
            server.run_batch(batch(1000)[:2])
        times: dict[str, list[float]] = {name: [] for name in servers}
        names = list(servers)
        for round_index in range(args.repeat):
            order = names[round_index % len(names):] + names[:round_index % len(names)]
            for name in order:
                times[name].append(servers[name].run_batch(batch(round_index * 100)))
        t = {name: statistics.median(samples) for name, samples in times.items()}
        load = os.getloadavg()
        label = f"{args.jobs} txt2img jobs {args.size}px x{args.steps} steps, median of {args.repeat}"
        rows = [{"measure": f"server, 2 local workers (--devices cpu,cpu) vs 1, whole batch, {label}",
                 "ctrlgen_s": t["two"], "baseline_s": t["one"], "ratio": t["two"] / t["one"],
                 "target": "-> 0.5 on 2 free cores"}]
        if "ray" in t:
            rows.append({"measure": f"server, 2 Ray workers (--ray local, 0.5 CPU each) vs 1 local worker, whole "
                                    f"batch (actors warm), {label}",
                         "ctrlgen_s": t["ray"], "baseline_s": t["one"], "ratio": t["ray"] / t["one"],
                         "target": "-> 0.5 on 2 free cores"})
        report("ctrlgen serve with several workers on 2 CPU cores (median seconds; ratio = ctrlgen / baseline)",
               rows, args.json)
        note = (f"load average (1, 5, 15 min) at the end: {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} on "
                f"{os.cpu_count()} cores, which other engineers' tests and builds share: the ratios are what a loaded "
                "machine gives, not the ideal")
        print(note)
        if args.json:
            document = json.loads(Path(args.json).read_text())
            document.update(note=note, samples_s=times)
            Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        return rows
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
