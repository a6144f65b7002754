"""Through a real server: a cancel that arrives after the last denoising step (while the VAE
decodes the picture) still ends the job as cancelled, promptly, and frees the worker."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.timeout(300)


def test_cancel_after_the_last_step_stops_the_decode(live_server):
    job = {"model": live_server.model, "prompt": "a big picture", "seed": 2, "steps": 1,
           "width": 512, "height": 512}
    job_id = live_server.submit(job)
    cancelled_at = None
    kinds = []
    for _, kind, data in live_server.events(job_id):
        kinds.append(kind)
        if kind == "progress" and data["step"] == data["total"]:
            # the loop is over: what runs now is the VAE decode (about half a second here)
            status, answer = live_server.json("POST", f"/v1/jobs/{job_id}/cancel")
            assert status == 200, answer
            cancelled_at = time.monotonic()
    ended_at = time.monotonic()
    assert kinds[-1] == "cancelled", kinds
    assert "finished" not in kinds
    assert cancelled_at is not None and ended_at - cancelled_at < 30
    # the worker is free: the next job runs
    follow = live_server.submit({"model": live_server.model, "prompt": "next", "seed": 1, "steps": 1,
                                 "width": 64, "height": 64})
    assert live_server.wait(follow)[-1][1] == "finished"
