"""Nothing acknowledged is lost: the job journal across kill -9 and restarts, the outputs folder,
private files, stale server.json, one server per state folder.

Every test runs real `ctrlgen serve` subprocesses on loopback with the tiny models, kills them
with SIGKILL (or stops them with SIGTERM) and starts new ones on the same config folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from ctrlgen.host_bridges.client import Client, ServerNotRunning

pytestmark = pytest.mark.timeout(600)


def job(server, **overrides) -> dict:
    body = {"model": server.model, "prompt": "a lighthouse", "seed": 3, "steps": 1, "width": 64, "height": 64}
    body.update(overrides)
    return body


def status_of(server, job_id: str) -> dict:
    status, item = server.json("GET", f"/v1/jobs/{job_id}")
    assert status == 200, item
    return item


def wait_status(server, job_id: str, wanted: tuple[str, ...], timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        item = status_of(server, job_id)
        if item["status"] in wanted:
            return item
        assert time.monotonic() < deadline, item
        time.sleep(0.05)


def wait_progress(server, job_id: str, steps: int = 2) -> int:
    """Follow the events until ``steps`` progress events came; returns the last event id."""
    for event_id, kind, data in server.events(job_id):
        if kind == "progress" and data["step"] >= steps:
            return event_id
        assert kind in ("queued", "started", "progress"), (kind, data)
    raise AssertionError("the job ended before it made progress")


def result_bytes(server, job_id: str, index: int = 0) -> bytes:
    status, headers, body = server.request("GET", f"/v1/jobs/{job_id}/results/{index}")
    assert status == 200, body
    return body


def kill9(server) -> None:
    server.process.kill()
    server.process.wait(30)


def test_kill_9_loses_no_queued_running_or_finished_job(server_factory, tmp_path):
    config = tmp_path / "config"
    first = server_factory(config_dir=config)
    canvas = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    canvas_ref = first.upload(canvas)
    finished = first.submit(job(first))
    assert first.wait(finished)[-1][1] == "finished"
    before = result_bytes(first, finished)
    running = first.submit(job(first, steps=150, seed=4))  # long enough to be mid-run at the kill
    queued = [first.submit(job(first, seed=10 + i, image=canvas_ref, task="img2img", strength=0.5, steps=2)) for i in range(2)]
    last_seen = wait_progress(first, running)
    assert status_of(first, queued[0])["status"] == "queued"
    kill9(first)
    # The canvas the queued jobs need is out of every memory now; only the disk has it.

    second = server_factory(config_dir=config)
    # the finished job: still finished, the same bytes
    item = status_of(second, finished)
    assert item["status"] == "finished" and item["results"][0]["width"] == 64
    assert result_bytes(second, finished) == before
    assert second.request("HEAD", f"/v1/images/{canvas_ref[7:]}")[0] == 200
    # the running job runs again from the start, before the queued ones; a client resuming with
    # an event id from before the crash gets the job's whole history
    events = list(second.events(running, last_event_id=last_seen))
    kinds = [kind for _, kind, _ in events]
    assert kinds[0] == "queued" and kinds[-1] == "finished", kinds
    assert events[0][2].get("restored") is True
    for job_id in queued:
        assert second.wait(job_id)[-1][1] == "finished"
    starts = {job_id: status_of(second, job_id)["started"] for job_id in (running, *queued)}
    assert starts[running] < starts[queued[0]] < starts[queued[1]]
    # every job is listed exactly once
    listed = [entry["id"] for entry in second.json("GET", "/v1/jobs")[1]["jobs"]]
    assert sorted(listed) == sorted({finished, running, *queued})


def test_a_job_running_at_two_crashes_ends_interrupted(server_factory, tmp_path):
    config = tmp_path / "config"
    server = server_factory(config_dir=config)
    doomed = server.submit(job(server, steps=150))
    after = server.submit(job(server, seed=9))
    for _ in range(2):
        wait_progress(server, doomed)
        kill9(server)
        server = server_factory(config_dir=config)
    item = wait_status(server, doomed, ("interrupted",))
    assert item["error"]["code"] == "interrupted" and "2 times" in item["error"]["message"]
    kinds = [kind for _, kind, _ in server.wait(doomed)]
    assert kinds[-1] == "interrupted"
    assert server.wait(after)[-1][1] == "finished"  # the queue went on
    assert server.request("GET", f"/v1/jobs/{doomed}/results/0")[0] == 409


def test_a_normal_stop_puts_the_running_job_back(server_factory, tmp_path):
    config = tmp_path / "config"
    server = server_factory(config_dir=config)
    running = server.submit(job(server, steps=150))
    wait_progress(server, running)
    assert server.stop() == 0
    again = server_factory(config_dir=config)
    kinds = [kind for _, kind, _ in again.wait(running)]
    assert "cancelled" not in kinds and kinds[-1] == "finished"


def test_a_cancelled_job_stays_cancelled_after_a_crash(server_factory, tmp_path):
    config = tmp_path / "config"
    server = server_factory(config_dir=config)
    blocker = server.submit(job(server, steps=150))
    waiting = server.submit(job(server))
    server.json("POST", f"/v1/jobs/{waiting}/cancel")
    wait_progress(server, blocker)
    server.json("POST", f"/v1/jobs/{blocker}/cancel")
    assert server.wait(blocker)[-1][1] == "cancelled"
    kill9(server)
    again = server_factory(config_dir=config)
    assert status_of(again, waiting)["status"] == "cancelled"
    assert status_of(again, blocker)["status"] == "cancelled"


def test_results_go_to_the_outputs_folder_with_their_parameters(server_factory, tmp_path):
    outputs = tmp_path / "outputs"
    server = server_factory("--outputs", str(outputs), "--outputs-max-bytes", "1G")
    job_id = server.submit(job(server, prompt="a red boat", seed=77))
    assert server.wait(job_id)[-1][1] == "finished"
    deadline = time.monotonic() + 30
    while not list(outputs.rglob("*.png")):
        assert time.monotonic() < deadline, "no PNG in the outputs folder"
        time.sleep(0.05)
    (png,) = outputs.rglob("*.png")
    assert png.parent.name == time.strftime("%Y-%m-%d") and png.name == f"ctrlgen-{job_id[:8]}-00.png"
    with Image.open(png) as image:
        assert "a red boat" in image.text["parameters"] and "Seed: 77" in image.text["parameters"]
        assert json.loads(image.text["ctrlgen-job"])["seed"] == 77
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.tobytes() == result_bytes(server, job_id)


def test_outputs_can_be_turned_off_and_are_bounded(server_factory, tmp_path):
    off = server_factory("--no-outputs", config_dir=tmp_path / "off")
    assert off.wait(off.submit(job(off)))[-1][1] == "finished"
    assert not (tmp_path / "off" / "outputs").exists()
    bounded = server_factory("--outputs-max-bytes", "1", config_dir=tmp_path / "bounded")
    for seed in range(3):
        assert bounded.wait(bounded.submit(job(bounded, seed=seed)))[-1][1] == "finished"
    time.sleep(1.0)  # the outputs thread trims after each save
    assert len(list((tmp_path / "bounded" / "outputs").rglob("*.png"))) == 0


def test_config_folder_and_server_json_are_private_whatever_the_umask(server_factory, tmp_path):
    config = tmp_path / "config"
    config.mkdir(mode=0o755)
    config.chmod(0o755)
    previous = os.umask(0)
    try:
        server = server_factory(config_dir=config)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(config.stat().st_mode) == 0o700
    assert stat.S_IMODE((config / "server.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((config / "token").stat().st_mode) == 0o600
    for folder in ("server", "server/uploads", "server/results", "outputs"):
        assert stat.S_IMODE((config / folder).stat().st_mode) == 0o700, folder
    assert server.alive()


def test_a_stale_server_json_is_detected(server_factory, tmp_path):
    config = tmp_path / "config"
    config.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    (config / "server.json").write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": pid}))
    with pytest.raises(ServerNotRunning, match=rf"stale: the server that wrote it \(pid {pid}\)"):
        Client.discover(config)
    server = server_factory(config_dir=config)  # a new server takes its place
    assert f"stale {config / 'server.json'}" in server.log()
    with Client.discover(config) as client:
        assert client.health()["status"] == "ok"


def test_one_server_per_state_folder(server_factory, launch_server, bridge_model_root, tmp_path):
    config = tmp_path / "config"
    server = server_factory(config_dir=config)
    other = launch_server(tmp_path / "other-config", bridge_model_root, "--port", "0", "--state-dir",
                          str(config / "server"))
    assert other.wait(60) == 2
    log = (tmp_path / "other-config" / "serve.log").read_text()
    assert f"another ctrlgen serve is using {config / 'server'}" in log
    assert server.alive()


def test_an_upload_is_on_disk_before_a_job_naming_it_is_accepted(server_factory, tmp_path):
    config = tmp_path / "config"
    server = server_factory(config_dir=config)
    pixels = np.random.default_rng(7).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    ref = server.upload(pixels)
    server.submit(job(server, image=ref, task="img2img", strength=0.5, steps=2))
    stored = config / "server" / "uploads" / ref[7:]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == ref[7:]
