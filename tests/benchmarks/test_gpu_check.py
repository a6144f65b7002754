"""benchmarks/gpu_check.sh works before a GPU is at hand: its --cpu-smoke mode fetches the
wheels, installs them offline into a fresh venv that lacks diffusers/pydantic/fastapi/uvicorn,
runs the gpu-marked tests (skipped here) and the GPU benchmark on the tiny models."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_without_wheels_says_how_to_get_them(tmp_path):
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--wheels", str(tmp_path / "none")], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "benchmarks/gpu_wheels.sh" in result.stderr and "carry" in result.stderr


@pytest.mark.timeout(600)
def test_gpu_check_cpu_smoke_installs_offline_and_measures(tmp_path):
    wheels, out, work = tmp_path / "wheels", tmp_path / "out", tmp_path / "work"
    fetched = subprocess.run(["bash", "benchmarks/gpu_wheels.sh", str(wheels)], cwd=ROOT, capture_output=True,
                             text=True)
    assert fetched.returncode == 0, fetched.stderr
    size = sum(f.stat().st_size for f in wheels.iterdir() if "cp312" in f.name or "none-any" in f.name
               or "abi3" in f.name)
    assert size < 60 * 2**20  # what travels to the GPU machine
    env = dict(os.environ, CTRLGEN_GPU_WORK=str(work), OMP_NUM_THREADS="1")
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu-smoke", "--wheels", str(wheels),
                             "--out", str(out)], cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # diffusers came from the wheel folder into the fresh venv, not from the project's venv
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("gpu_check: ctrlgen")]
    assert str(work / "venv") in line.split(" from ")[1]
    assert "skipped" in result.stdout and "deselected" in result.stdout  # the gpu tests ran (and skipped)
    rows = json.loads((out / "gpu-cpu.json").read_text())["rows"]
    measures = [row["measure"] for row in rows]
    for architecture in ("sd15", "sdxl"):
        (row,) = [r for r in rows if r["measure"].startswith(f"{architecture} + ControlNet 64² 2 steps float32: "
                                                            "ctrlgen job vs bare")]
        assert row["ratio"] > 0 and row["value"] > 0
    assert any("classic attention" in m and "skipped" not in m for m in measures)
    assert any("channels_last" in m and "skipped" not in m for m in measures)
    assert any("memory plans — skipped: needs CUDA" in m for m in measures)
    assert any("torch.compile — skipped" in m for m in measures)
    assert (out / "gpu-tests.xml").is_file()
