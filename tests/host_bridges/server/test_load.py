"""Load: 50 concurrent clients submit 200 small jobs to one server; every job runs exactly once,
in submission order, and none is lost."""

from __future__ import annotations

import threading
from collections import Counter

CLIENTS = 50
JOBS = 200


# About 25 s here: the engine's ~0.1 s per 1-step 64×64 job (more on a busy machine) dominates.
def test_fifty_clients_two_hundred_jobs(live_server):
    server = live_server
    next_job = iter(range(JOBS))
    take = threading.Lock()
    outcomes: dict[int, tuple[str, list]] = {}
    failures: list[str] = []

    def client() -> None:
        while True:
            with take:
                index = next(next_job, None)
            if index is None:
                return
            job = {"model": server.model, "prompt": f"job {index}", "seed": index, "steps": 1,
                   "width": 64, "height": 64, "cfg_scale": 1.0}
            try:
                job_id = server.submit(job)
                outcomes[index] = (job_id, server.wait(job_id, timeout=180))
            except BaseException as exc:  # reported by the main thread
                failures.append(f"job {index}: {exc!r}")

    threads = [threading.Thread(target=client, name=f"client-{n}") for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not failures, failures[:5]
    assert sorted(outcomes) == list(range(JOBS))  # none lost
    assert len({job_id for job_id, _ in outcomes.values()}) == JOBS

    for index, (_, events) in outcomes.items():
        kinds = Counter(kind for _, kind, _ in events)
        assert kinds == {"queued": 1, "started": 1, "progress": 1, "finished": 1}, (index, events)
        # Exactly once and the right job: its one result carries the seed it was submitted with.
        assert events[-1][2]["results"] == [{"index": 0, "width": 64, "height": 64, "channels": 3, "seed": index}]

    # FIFO: listed in submission order, the jobs started one after another in that same order.
    status, listing = server.json("GET", "/v1/jobs")
    ours = {job_id for job_id, _ in outcomes.values()}
    jobs = [job for job in listing["jobs"] if job["id"] in ours]  # other tests share the server
    assert status == 200 and len(jobs) == JOBS
    assert all(job["status"] == "finished" for job in jobs)
    starts = [job["started"] for job in jobs]
    assert starts == sorted(starts) and len(set(starts)) == JOBS
    assert all(job["started"] >= job["created"] and job["ended"] >= job["started"] for job in jobs)
    status, health = server.json("GET", "/v1/health")
    assert health["queue"] == {"running": None, "queued": 0}
