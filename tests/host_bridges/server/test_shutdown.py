"""Ctrl+C (SIGINT) while a job runs and a client follows its events: a real `ctrlgen serve`
ends with status 0 and no traceback, the running job goes back to the journal's queue, and the
next start runs it."""

from __future__ import annotations

import signal
import sqlite3
import threading

import pytest

from ctrlgen.host_bridges.client import Client, ClientError

pytestmark = pytest.mark.timeout(300)

BAD_OUTPUT = ("Traceback", "CancelledError", "terminate called", "Exception in ASGI application")


def long_job(server) -> dict:
    return {"model": server.model, "prompt": "a lighthouse", "seed": 1, "steps": 150, "width": 128, "height": 128}


def journal_statuses(config_dir) -> dict[str, str]:
    db = sqlite3.connect(config_dir / "server" / "journal.sqlite3")
    try:
        return dict(db.execute("SELECT id, status FROM jobs"))
    finally:
        db.close()


def follow_in_background(server, job_id: str) -> tuple[threading.Thread, list]:
    """A client following the job's events (as a host app does), on a thread of its own."""
    seen: list = []
    client = Client(server.url, token=server.token)

    def follow() -> None:
        try:
            for event in client.events(job_id, retries=0):
                seen.append(event.kind)
        except ClientError as exc:
            seen.append(exc.code)
        finally:
            client.close()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    return thread, seen


def wait_running(server, job_id: str) -> None:
    for _, kind, data in server.events(job_id):
        if kind == "progress" and data["step"] >= 2:
            return
    raise AssertionError("the job ended before it made progress")


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_during_a_job_exits_0_cleanly_and_keeps_the_job(server_factory, tmp_path, presses):
    config = tmp_path / "config"
    server = server_factory(config_dir=config)
    running = server.submit(long_job(server))
    waiting = server.submit(long_job(server))
    follower, seen = follow_in_background(server, running)
    wait_running(server, running)

    server.process.send_signal(signal.SIGINT)
    if presses == 2:
        server.process.send_signal(signal.SIGINT)
    assert server.process.wait(60) == 0
    follower.join(30)
    assert not follower.is_alive(), "the event stream was not ended by the shutdown"

    log = server.log()
    for bad in BAD_OUTPUT:
        assert bad not in log, log
    assert not (config / "server.json").exists()
    # Both jobs are in the journal's queue, none cancelled or lost: a restart runs them.
    assert journal_statuses(config) == {running: "queued", waiting: "queued"}
    assert "cancelled" not in seen and "finished" not in seen, seen
    again = server_factory(config_dir=config)
    status, item = again.json("POST", f"/v1/jobs/{waiting}/cancel")
    assert status == 200, item
    assert [kind for _, kind, _ in again.wait(running)][-1] == "finished"


def test_requests_waiting_for_the_worker_answer_503_at_shutdown(server_factory, tmp_path):
    """A preprocess call queued behind a running job is answered, not cut off."""
    import numpy as np

    server = server_factory(config_dir=tmp_path / "config")
    ref = server.upload(np.zeros((64, 64, 3), np.uint8))
    server.submit(long_job(server))
    answers: list = []

    def preprocess() -> None:
        answers.append(server.json("POST", "/v1/preprocess", {"preprocessor": "canny", "image": ref}))

    waiting = threading.Thread(target=preprocess, daemon=True)
    waiting.start()
    jobs = server.json("GET", "/v1/jobs")[1]["jobs"]
    wait_running(server, jobs[0]["id"])
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(60) == 0
    waiting.join(30)
    assert answers and answers[0][0] == 503 and answers[0][1]["error"]["code"] == "server_stopping", answers
    assert "Traceback" not in server.log()
