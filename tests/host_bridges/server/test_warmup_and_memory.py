"""A warm server (imports and --preload right after start, health answering meanwhile) and the
byte budget for images in memory (--max-memory: spilled to disk beyond it, oldest first)."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(600)


def wait_ready(server, timeout: float = 300.0) -> list[str]:
    """Poll /v1/health until ready; the states seen, in order, without repeats."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        status, health = server.json("GET", "/v1/health")
        assert status == 200, health
        if not seen or seen[-1] != health["state"]:
            seen.append(health["state"])
        if health["state"] == "ready":
            return seen
        assert time.monotonic() < deadline, health
        time.sleep(0.05)


def test_the_server_answers_while_it_warms_up_and_preloads(server_factory):
    server = server_factory("--preload", "tiny-sd15")
    assert wait_ready(server) == ["warming", "ready"]  # health answered before the imports were done
    health = server.json("GET", "/v1/health")[1]
    assert health["preload"] == "tiny-sd15" and health["warmup_error"] is None and health["warmup_s"] > 0
    capabilities = server.json("GET", "/v1/capabilities")[1]
    assert capabilities["state"] == "ready" and capabilities["preload"] == "tiny-sd15"
    assert "Loading pipeline components" in server.log()  # loaded before any job came
    job_id = server.submit({"model": server.model, "prompt": "x", "seed": 1, "steps": 1, "width": 64,
                            "height": 64})
    assert server.wait(job_id)[-1][1] == "finished"


def test_a_job_sent_while_warming_waits_and_runs(server_factory):
    server = server_factory()
    job_id = server.submit({"model": server.model, "prompt": "x", "seed": 1, "steps": 1, "width": 64,
                            "height": 64})
    assert server.wait(job_id)[-1][1] == "finished"
    assert wait_ready(server) == ["ready"]


def test_an_unknown_preload_is_reported_and_jobs_still_run(server_factory):
    server = server_factory("--preload", "no-such-model")
    wait_ready(server)
    error = server.json("GET", "/v1/health")[1]["warmup_error"]
    assert "--preload 'no-such-model'" in error and "ctrlgen models" in error
    job_id = server.submit({"model": server.model, "prompt": "x", "seed": 1, "steps": 1, "width": 64,
                            "height": 64})
    assert server.wait(job_id)[-1][1] == "finished"


def test_without_warmup_the_server_is_ready_at_once(server_factory):
    server = server_factory("--no-warmup")
    assert server.json("GET", "/v1/health")[1]["state"] == "ready"


def put(server, pixels: np.ndarray) -> str:
    return server.upload(pixels)


def test_images_over_the_budget_are_spilled_to_disk_oldest_first(server_factory, tmp_path):
    config = tmp_path / "config"
    server = server_factory("--max-memory", "40K", "--no-warmup", config_dir=config)
    files = config / "server" / "uploads"
    images = [np.full((64, 64, 3), value, np.uint8) for value in (11, 22, 33, 44, 55)]  # 12 KiB each
    refs = [put(server, image) for image in images[:3]]  # 36 KiB: all in memory, none on disk
    assert [(files / ref[7:]).exists() for ref in refs] == [False, False, False]
    assert server.json("GET", "/v1/health")[1]["uploads"]["in_memory_bytes"] == 3 * 64 * 64 * 3
    assert server.request("HEAD", f"/v1/images/{refs[0][7:]}")[0] == 200  # a use: refs[1] is now the oldest
    refs += [put(server, images[3])]  # no room: the least recently used leaves memory, written first
    deadline = time.monotonic() + 30
    while not (files / refs[1][7:]).exists():
        assert time.monotonic() < deadline, "the evicted image was not spilled to disk"
        time.sleep(0.05)
    assert hashlib.sha256((files / refs[1][7:]).read_bytes()).hexdigest() == refs[1][7:]
    assert [(files / ref[7:]).exists() for ref in (refs[0], refs[2], refs[3])] == [False, False, False]
    memory = server.json("GET", "/v1/health")[1]["uploads"]
    assert memory == {"in_memory_bytes": 3 * 64 * 64 * 3, "memory_limit_bytes": 40 * 1024}
    # The spilled image is still the server's: a job naming it reads it back from its file.
    job_id = server.submit({"model": server.model, "prompt": "x", "seed": 1, "steps": 1, "width": 64,
                            "height": 64, "image": refs[1], "task": "img2img", "strength": 1.0})
    assert server.wait(job_id)[-1][1] == "finished"
    # A job's images are on disk once it is accepted, whether or not they were evicted.
    assert (files / refs[1][7:]).exists()


def test_a_budget_too_small_for_an_image_says_which_option(server_factory):
    server = server_factory("--max-memory", "8K", "--no-warmup")
    pixels = np.zeros((64, 64, 3), np.uint8)
    body = pixels.tobytes()
    status, _, answer = server.request("PUT", f"/v1/images/{hashlib.sha256(body).hexdigest()}", body, {
        "Content-Type": "application/vnd.ctrlgen.raw", "X-Ctrlgen-Width": "64", "X-Ctrlgen-Height": "64",
        "X-Ctrlgen-Channels": "3"})
    assert status == 413 and b"--max-memory" in answer
