"""The ``threads`` setting: ``ctrlgen --threads N``, ``CTRLGEN_THREADS`` and ``threads`` in
config.toml set torch's and OpenCV's CPU threads, whether they load before or after."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ctrlgen.core.config import load_settings
from ctrlgen.core.errors import CtrlgenError
from ctrlgen.core.threads import parse_threads


def _run(code: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                                "OPENCV_FOR_THREADS_NUM", "CTRLGEN_THREADS")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env | env_extra,
                          timeout=300)


COUNTS = "import torch, cv2; print(torch.get_num_threads(), cv2.getNumThreads())"


@pytest.mark.parametrize("torch_first", [False, True])
def test_the_cli_option_sets_torch_and_opencv_threads(torch_first):
    before = "import torch, cv2\n" if torch_first else ""
    done = _run(f"{before}from ctrlgen.core.cli.main import main\nmain(['--threads', '1', 'plugins'])\n{COUNTS}",
                {})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "1 1"  # (torch caps a count at the machine's cores)


def test_the_setting_comes_from_the_environment_and_the_config_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CTRLGEN_CONFIG_DIR", str(tmp_path))
    monkeypatch.delenv("CTRLGEN_THREADS", raising=False)
    assert load_settings().threads is None
    (tmp_path / "config.toml").write_text("threads = 1\n")
    assert load_settings().threads == 1
    monkeypatch.setenv("CTRLGEN_THREADS", "3")  # the environment wins
    assert load_settings().threads == 3
    done = _run(f"from ctrlgen.core.cli.main import main\nmain(['plugins'])\n{COUNTS}",
                {"CTRLGEN_CONFIG_DIR": str(tmp_path)})
    assert done.stdout.strip().splitlines()[-1] == "1 1", done.stderr
    (tmp_path / "config.toml").write_text("threads = 'many'\n")
    monkeypatch.delenv("CTRLGEN_THREADS")
    with pytest.raises(CtrlgenError, match="threads = 'many' is not a thread count"):
        load_settings()


def test_the_engine_applies_the_setting_in_the_thread_that_runs_the_job(tmp_path):
    """A job run in a worker thread (the server's) runs with the setting's count there."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "in.png")
    code = ("import threading, torch\n"
            "from ctrlgen.core.engine.engine import Engine\n"
            "from ctrlgen.core.engine.jobs import parse_job\n"
            "engine = Engine(device='cpu')\n"
            f"job = parse_job({{'task': 'preprocess', 'image': {str(tmp_path / 'in.png')!r}, "
            "'control': [{'preprocessor': 'canny'}]})\n"
            "seen = []\n"
            "def work():\n"
            "    engine.run(job); seen.append(torch.get_num_threads())\n"
            "thread = threading.Thread(target=work); thread.start(); thread.join()\n"
            "print(engine.threads, seen[0])\n")
    done = _run(code, {"CTRLGEN_THREADS": "1", "CTRLGEN_CONFIG_DIR": str(tmp_path)})
    assert done.stdout.strip().splitlines()[-1] == "1 1", done.stderr


@pytest.mark.parametrize(("value", "expected"), [("4", 4), (2, 2), ("0", None), ("", None), (None, None)])
def test_thread_counts_parse(value, expected):
    assert parse_threads(value, "threads") == expected


@pytest.mark.parametrize("value", ["-1", "two", "1.5", True, "5000"])
def test_bad_thread_counts_are_named(value):
    with pytest.raises(CtrlgenError, match="is not a thread count; give a whole number from 1"):
        parse_threads(value, "threads")


def test_a_bad_cli_value_is_refused_with_its_reason(capsys):
    from ctrlgen.core.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["--threads", "-2", "plugins"])
    assert info.value.code == 2
    assert "--threads = '-2' is not a thread count" in capsys.readouterr().err
