"""`ctrlgen serve --devices/--workers/--ray`: several workers, fair share between clients.

Real servers on loopback with the tiny model (CPU, OMP_NUM_THREADS=1): two local workers run two
jobs at once with the pixels one worker gives; one client's long queue does not hold another's
job; a job is cancelled on the second worker; kill -9 with two jobs running loses and repeats
nothing; a Ray-backed server (a local 2-CPU cluster, actors of half a CPU, Ray's files in the
test's temp dir) gives the local worker's pixels. Jobs are 64² to 128² with few steps.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

HERE = Path(__file__).resolve().parent


def bridge_helpers():
    """tests/host_bridges/conftest.py's server starter (conftests are not importable by name)."""
    spec = importlib.util.spec_from_file_location("_bridge_conftest", HERE.parent / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def job(seed: int, size: int = 64, steps: int = 2, prompt: str = "a cat") -> dict:
    return {"model": "tiny-sd15", "prompt": prompt, "seed": seed, "steps": steps, "width": size, "height": size}


def submit(server, body: dict, client: str | None = None) -> str:
    headers = {"X-Ctrlgen-Client": client} if client else {}
    status, _, answer = server.request("POST", "/v1/jobs", {"job": body}, headers=headers)
    assert status == 202, answer
    return json.loads(answer)["id"]


def result_bytes(server, job_id: str) -> bytes:
    kinds = [kind for _, kind, _ in server.wait(job_id)]
    assert kinds[-1] == "finished", kinds
    status, _, body = server.request("GET", f"/v1/jobs/{job_id}/results/0")
    assert status == 200
    return body


def jobs_by_id(server) -> dict[str, dict]:
    return {item["id"]: item for item in server.json("GET", "/v1/jobs")[1]["jobs"]}


def workers(server, route: str = "/v1/capabilities") -> dict:
    status, answer = server.json("GET", route)
    assert status == 200, answer
    return answer["workers"]


def wait_for(predicate, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, bridge_model_root):
    server = bridge_helpers().start_server(tmp_path_factory.mktemp("two-workers"), bridge_model_root,
                                           "--devices", "cpu,cpu")
    yield server
    server.stop()


def test_two_local_workers_run_two_jobs_at_once_with_one_workers_pixels(two_workers, live_server):
    caps = workers(two_workers)
    assert caps["count"] == 2
    assert [(w["id"], w["kind"], w["device"]) for w in caps["items"]] == [(0, "local", "cpu"), (1, "local", "cpu")]
    ids = [submit(two_workers, job(seed)) for seed in (11, 12)]
    two = [result_bytes(two_workers, job_id) for job_id in ids]
    items = jobs_by_id(two_workers)
    first, second = items[ids[0]], items[ids[1]]
    assert first["started"] < second["ended"] and second["started"] < first["ended"], (first, second)
    one = [result_bytes(live_server, live_server.submit(job(seed))) for seed in (11, 12)]
    assert two == one
    health = workers(two_workers, "/v1/health")
    assert health["count"] == 2 and all(w["state"] == "idle" and w["job"] is None for w in health["items"])


def test_cancel_a_job_on_the_second_worker(two_workers):
    long = job(3, size=128, steps=150)
    ids = [submit(two_workers, long), submit(two_workers, {**long, "seed": 4})]

    def both_running():
        items = workers(two_workers)["items"]
        return items if all(w["state"] == "running" and w["job"] in ids for w in items) else None

    items = wait_for(both_running, what="both workers running")
    on_second = items[1]["job"]
    other = items[0]["job"]
    status, answer = two_workers.json("POST", f"/v1/jobs/{on_second}/cancel")
    assert status == 200 and answer["status"] == "running", answer
    assert [kind for _, kind, _ in two_workers.wait(on_second)][-1] == "cancelled"
    assert jobs_by_id(two_workers)[other]["status"] == "running"  # the first worker's job goes on
    two_workers.json("POST", f"/v1/jobs/{other}/cancel")
    assert [kind for _, kind, _ in two_workers.wait(other)][-1] == "cancelled"
    wait_for(lambda: all(w["state"] == "idle" for w in workers(two_workers)["items"]), what="idle workers")


def test_clients_take_turns_and_each_clients_jobs_start_in_order(live_server):
    a_ids = [submit(live_server, job(20 + n, size=64, steps=4), client="client-a") for n in range(6)]
    b_id = submit(live_server, job(30), client="client-b")
    for job_id in [*a_ids, b_id]:
        live_server.wait(job_id)
    items = jobs_by_id(live_server)
    b = items[b_id]
    a_started = [items[job_id]["started"] for job_id in a_ids]
    assert a_started == sorted(a_started), "client A's jobs did not start in submission order"
    # Once B has submitted, at most one more of A's jobs starts before B's (A's queue does not drain first).
    a_between = [t for t in a_started if b["created"] < t < b["started"]]
    assert len(a_between) <= 1, (a_between, b)
    assert any(t > b["started"] for t in a_started), "A's queue had drained before B's job: no test of fairness"


def test_kill_9_with_two_jobs_running_loses_and_repeats_nothing(server_factory, tmp_path):
    config = tmp_path / "config"
    server = server_factory("--devices", "cpu,cpu", config_dir=config)
    ids = [submit(server, job(40 + n, size=128, steps=30), client=f"c{n % 2}") for n in range(4)]

    def two_running():
        return sum(1 for w in workers(server)["items"] if w["state"] == "running" and w["job"]) == 2

    wait_for(two_running, what="two running jobs")
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(30)
    again = server_factory("--devices", "cpu,cpu", config_dir=config)
    outcomes = {job_id: [kind for _, kind, _ in again.wait(job_id, timeout=240)] for job_id in ids}
    assert all(kinds[-1] == "finished" and kinds.count("finished") == 1 for kinds in outcomes.values()), \
        [([k for k in kinds if k != "progress"], again.json("GET", f"/v1/jobs/{key}")[1].get("error"), again.log()[-3000:]) for key, kinds in outcomes.items()
         if kinds[-1] != "finished" or kinds.count("finished") != 1]
    db = sqlite3.connect(config / "server" / "journal.sqlite3")
    try:
        rows = db.execute("SELECT id, status, client FROM jobs ORDER BY seq").fetchall()
    finally:
        db.close()
    assert [row[0] for row in rows] == ids  # each job once
    assert {row[1] for row in rows} == {"finished"}
    assert [row[2] for row in rows] == ["c0", "c1", "c0", "c1"]


def test_server_on_ray_gives_the_local_workers_pixels(server_factory, live_server, monkeypatch):
    pytest.importorskip("ray")
    scratch = Path(tempfile.mkdtemp(prefix="cgsray", dir="/tmp"))  # short: Ray's socket paths have a limit
    try:
        monkeypatch.setenv("HOME", str(scratch))  # ~/.ray (the auth token) goes here
        monkeypatch.setenv("RAY_TMPDIR", str(scratch))
        monkeypatch.setenv("RAY_OVERRIDE_RESOURCES", json.dumps({"CPU": 2}))
        monkeypatch.setenv("RAY_object_store_memory", str(96 * 2**20))
        server = server_factory("--ray", "local", "--ray-workers", "2", "--ray-cpus", "0.5")
        caps = workers(server)
        assert caps["count"] == 2 and {w["kind"] for w in caps["items"]} == {"ray"}, caps
        ids = [submit(server, job(seed)) for seed in (11, 12)]
        on_ray = [result_bytes(server, job_id) for job_id in ids]
        local = [result_bytes(live_server, live_server.submit(job(seed))) for seed in (11, 12)]
        assert on_ray == local
        kinds = [kind for _, kind, _ in server.wait(ids[0])]
        assert kinds[:2] == ["queued", "started"] and "progress" in kinds, kinds
        assert server.stop() == 0
        assert "Traceback" not in server.log(), server.log()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        os.environ.pop("RAY_ADDRESS", None)


def test_a_journal_from_before_clients_is_migrated_and_its_jobs_are_anonymous(tmp_path):
    from ctrlgen.host_bridges.server.journal import Journal

    db = sqlite3.connect(tmp_path / "journal.sqlite3")
    db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, created REAL NOT NULL, started REAL, "
               "ended REAL, status TEXT NOT NULL, job TEXT NOT NULL, preview INTEGER NOT NULL DEFAULT 0, "
               "refs TEXT NOT NULL DEFAULT '[]', runs INTEGER NOT NULL DEFAULT 0, error TEXT, results TEXT, "
               "purged INTEGER NOT NULL DEFAULT 0, idempotency_key TEXT)")
    db.execute("INSERT INTO jobs (id, seq, created, status, job) VALUES ('old', 1, 0, 'queued', '{}')")
    db.commit()
    db.close()
    journal = Journal(tmp_path)
    try:
        journal.add_job("new", {}, False, [], 1.0, client="artist-1")
        assert [(row.id, row.client) for row in journal.jobs()] == [("old", None), ("new", "artist-1")]
    finally:
        journal.close()
