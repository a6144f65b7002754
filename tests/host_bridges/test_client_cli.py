"""`ctrlgen client ...` against a real `ctrlgen serve`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ctrlgen.core.cli.main import main
from ctrlgen.host_bridges.client import Client, RawImage


def connect_args(server) -> list[str]:
    return ["client", "--url", server.url, "--token", server.token]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("client-cli")
    Image.fromarray(data.astronaut()).resize((64, 64)).convert("RGBA").save(folder / "canvas.png")
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 48, 48), fill=255)
    mask.save(folder / "mask.png")
    Image.fromarray(data.astronaut()).resize((64, 64)).save(folder / "control.png")
    return folder


def test_capabilities_json_and_text(live_server, capsys):
    assert main([*connect_args(live_server), "capabilities", "--json"]) == 0
    caps = json.loads(capsys.readouterr().out)
    assert any(p["name"] == "canny" for p in caps["preprocessors"])
    assert live_server.model in {m["name"] for m in caps["models"]}

    assert main([*connect_args(live_server), "capabilities"]) == 0
    text = capsys.readouterr().out
    assert "Preprocessors (" in text and "canny" in text and live_server.model in text
    assert "Euler a" in text


def test_health_discovers_the_server_from_the_config_folder(live_server, capsys, monkeypatch):
    monkeypatch.setenv("CTRLGEN_CONFIG_DIR", str(live_server.config_dir))
    assert main(["client", "health"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ctrlgen ") and live_server.url in out


def test_run_writes_the_same_pngs_as_the_client(live_server, files, tmp_path, capsys):
    job = {"model": live_server.model, "prompt": "a red helmet", "seed": 21, "steps": 2, "width": 64,
           "height": 64, "strength": 1.0}
    (tmp_path / "helmet.json").write_text(json.dumps(job))
    out = tmp_path / "out"
    code = main([*connect_args(live_server), "run", str(tmp_path / "helmet.json"), "--image",
                 str(files / "canvas.png"), "--mask", str(files / "mask.png"), "--out", str(out), "--json"])
    assert code == 0
    outputs = json.loads(capsys.readouterr().out)["outputs"]
    assert outputs == [str(out / "helmet-00.png")]
    written = np.asarray(Image.open(outputs[0]))
    assert written.shape == (64, 64, 4)  # the canvas is RGBA: so is the result

    def raw(path, mode):
        image = Image.open(path).convert(mode)
        return RawImage(image.tobytes(), image.width, image.height, len(image.getbands()))

    with Client(live_server.url, token=live_server.token) as client:
        expected = client.run(job, images={"image": raw(files / "canvas.png", "RGBA"),
                                           "mask": raw(files / "mask.png", "L")})[0]
    assert np.array_equal(written, np.frombuffer(expected.data, np.uint8).reshape(64, 64, 4))


def test_run_with_job_file_images_and_a_control_image(live_server, files, tmp_path, capsys):
    # Images named in the job file (relative to it) are uploaded; --control-image sets a unit's.
    (tmp_path / "canvas.png").write_bytes((files / "canvas.png").read_bytes())
    job = {"model": live_server.model, "prompt": "x", "seed": 3, "steps": 2, "width": 64, "height": 64,
           "image": "canvas.png", "task": "img2img", "strength": 0.5,
           "control": [{"model": live_server.controlnet, "preprocessor": "canny"}]}
    (tmp_path / "job.json").write_text(json.dumps(job))
    code = main([*connect_args(live_server), "run", str(tmp_path / "job.json"), "--control-image",
                 f"0={files / 'control.png'}", "--out", str(tmp_path / "out"), "--format", "png", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip() == f"wrote {tmp_path / 'out' / 'job-00.png'}"
    assert Image.open(tmp_path / "out" / "job-00.png").size == (64, 64)


@pytest.mark.parametrize("argv, message", [
    (["--control-image", "first=x.png"], "must look like INDEX=PATH"),
    (["--control-image", "3=x.png"], "has no control[3]"),
    (["--image", "missing.png"], "does not exist"),
])
def test_run_argument_errors(live_server, tmp_path, capsys, argv, message):
    (tmp_path / "job.json").write_text(json.dumps({"model": live_server.model, "prompt": "x"}))
    code = main([*connect_args(live_server), "run", str(tmp_path / "job.json"), *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_jobs_and_cancel(live_server, capsys):
    with Client(live_server.url, token=live_server.token) as client:
        job_id = client.submit({"model": live_server.model, "prompt": "x", "steps": 150, "width": 128,
                                "height": 128})
        assert main([*connect_args(live_server), "jobs"]) == 0
        assert job_id in capsys.readouterr().out
        assert main([*connect_args(live_server), "cancel", job_id]) == 0
        said = capsys.readouterr().out.strip()
        assert said == f"{job_id}: cancelled" or said.startswith(f"{job_id}: cancel requested (it was ")
        assert client.wait(job_id).kind == "cancelled"
    assert main([*connect_args(live_server), "jobs", "--json"]) == 0
    listed = {item["id"]: item for item in json.loads(capsys.readouterr().out)["jobs"]}
    assert listed[job_id]["status"] == "cancelled"


def test_errors_are_reported_not_raised(live_server, tmp_path, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["client", "--url", f"http://127.0.0.1:{port}", "--token", "x", "health"]) == 2
    assert "start it with `ctrlgen serve`" in capsys.readouterr().err
    assert main(["client", "--url", live_server.url, "--token", "wrong", "health"]) == 2
    assert "refused the token" in capsys.readouterr().err


def test_capabilities_through_the_installed_command(live_server):
    env = dict(os.environ, CTRLGEN_CONFIG_DIR=str(live_server.config_dir))
    done = subprocess.run([sys.executable, "-m", "ctrlgen.core.cli.main", "client", "capabilities", "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert live_server.model in {m["name"] for m in json.loads(done.stdout)["models"]}


def test_client_help_does_not_import_heavy_modules():
    # Building the parser loads the plugins (their ctrlgen_cli_commands hooks add serve, client,
    # install, render-pose), and plugin modules use numpy; nothing that runs models or serves
    # HTTP may load before a command runs.
    heavy = ('torch', 'PIL', 'diffusers', 'transformers', 'cv2', 'fastapi', 'uvicorn', 'controlnet_aux')
    code = ("import sys; from ctrlgen.core.cli.main import build_parser; build_parser(); "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
