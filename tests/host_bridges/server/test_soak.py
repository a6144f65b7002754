"""Soak: 20 clients × 50 jobs while the server is killed with SIGKILL at random moments and
started again on the same state folder. Every acknowledged job ends finished (or interrupted)
exactly once, and every finished result downloads with the bytes it had.

Bounded: loopback only, four kills, a fixed number of jobs, each client retrying for at most
two minutes. Clients submit with an ``Idempotency-Key``, so a submission whose answer was lost
in a kill is retried without making a second job.
"""

from __future__ import annotations

import hashlib
import http.client
import random
import threading
import time
import uuid

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CLIENTS = 20
JOBS_EACH = 50
KILLS = 4
SEEDS = 5  # jobs with the same seed must give the same bytes, re-run after a kill or not


class Cluster:
    """The one server at a time, restarted on the same config folder after each kill."""

    def __init__(self, server_factory, config_dir) -> None:
        self.factory = server_factory
        self.config_dir = config_dir
        self.lock = threading.Lock()
        self.server = server_factory("--no-outputs", "--max-queue", "2000", "--max-results", "5000",
                                     config_dir=config_dir)

    def current(self):
        with self.lock:
            return self.server

    def kill_and_restart(self) -> None:
        with self.lock:
            self.server.process.kill()
            self.server.process.wait(30)
        time.sleep(random.uniform(0.0, 0.5))  # clients meet a dead port for a moment
        fresh = self.factory("--no-outputs", "--max-queue", "2000", "--max-results", "5000",
                             config_dir=self.config_dir)
        with self.lock:
            self.server = fresh

    def call(self, method: str, path: str, body=None, headers=None, deadline: float = 120.0):
        """One request, retried through kills until it is answered."""
        give_up = time.monotonic() + deadline
        while True:
            server = self.current()
            try:
                return server.request(method, path, body, headers, timeout=30)
            except (OSError, http.client.HTTPException):  # refused, reset, or the answer cut off by a kill
                if time.monotonic() > give_up:
                    raise
                time.sleep(0.1)


def test_soak_with_kills(server_factory, tmp_path):
    import json

    cluster = Cluster(server_factory, tmp_path / "config")
    model = cluster.current().model
    accepted: dict[str, int] = {}  # job id -> seed
    accepted_lock = threading.Lock()
    errors: list[BaseException] = []

    def client(number: int) -> None:
        rng = random.Random(number)
        try:
            for index in range(JOBS_EACH):
                seed = (number * JOBS_EACH + index) % SEEDS
                job = {"model": model, "prompt": "a soak test", "seed": seed, "steps": 1, "width": 64, "height": 64}
                key = uuid.uuid4().hex
                status, _, body = cluster.call("POST", "/v1/jobs", {"job": job},
                                               {"Content-Type": "application/json", "Idempotency-Key": key})
                assert status in (200, 202), body
                with accepted_lock:
                    accepted[json.loads(body)["id"]] = seed
                time.sleep(rng.uniform(0, 0.02))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for _ in range(KILLS):
        time.sleep(random.uniform(1.0, 3.0))
        cluster.kill_and_restart()
    for thread in threads:
        thread.join(300)
    assert not errors, errors[:3]
    assert len(accepted) == CLIENTS * JOBS_EACH  # one job per submission, kills or not

    # every job ends, exactly once, finished (or interrupted: one running at two kills)
    server = cluster.current()
    deadline = time.monotonic() + 600
    ended: dict[str, dict] = {}
    while len(ended) < len(accepted):
        for job_id in accepted:
            if job_id not in ended:
                status, item = server.json("GET", f"/v1/jobs/{job_id}")
                assert status == 200, (job_id, item)
                if item["status"] in ("finished", "error", "cancelled", "interrupted"):
                    ended[job_id] = item
        assert time.monotonic() < deadline, f"{len(accepted) - len(ended)} jobs did not end"
        time.sleep(0.5)
    statuses = {item["status"] for item in ended.values()}
    assert statuses <= {"finished", "interrupted"}, statuses
    listed = [item["id"] for item in server.json("GET", "/v1/jobs")[1]["jobs"]]
    assert sorted(listed) == sorted(accepted)

    by_seed: dict[int, set[str]] = {}
    for job_id, seed in accepted.items():
        events = server.wait(job_id)
        terminal = [kind for _, kind, _ in events if kind in ("finished", "error", "cancelled", "interrupted")]
        assert terminal == [ended[job_id]["status"]] and events[-1][1] == terminal[0], (job_id, events)
        if ended[job_id]["status"] == "finished":
            status, _, body = server.request("GET", f"/v1/jobs/{job_id}/results/0")
            assert status == 200 and len(body) == 64 * 64 * 3
            by_seed.setdefault(seed, set()).add(hashlib.sha256(body).hexdigest())
    assert len(by_seed) == SEEDS
    assert all(len(digests) == 1 for digests in by_seed.values()), by_seed
