"""Krita starts with a clean environment: an activated virtual environment in the shell that runs
the tests (VIRTUAL_ENV, its bin first on PATH, PYTHONPATH) does not reach Krita's own Python."""

from __future__ import annotations

import os
import sys
import venv
from pathlib import Path

import pytest
from krita_support import run_kritarunner, scenario_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def activated_venv_env(tmp_path_factory) -> dict[str, str]:
    """This process's environment as `source VENV/bin/activate` leaves it, for a scratch venv
    (plus a PYTHONPATH, as many shells have one)."""
    folder = tmp_path_factory.mktemp("activated") / "venv"
    venv.create(folder, symlinks=True, with_pip=False)
    site = next((folder / "lib").glob("python3*/site-packages"))
    env = dict(os.environ)
    env.update(VIRTUAL_ENV=str(folder), VIRTUAL_ENV_PROMPT="(venv) ",
               PATH=os.pathsep.join([str(folder / "bin"), str(Path(sys.executable).parent), env.get("PATH", "")]),
               PYTHONPATH=str(site))
    return env


def fresh_home(tmp_path: Path) -> Path:
    from ctrlgen.host_bridges.krita import install

    install(tmp_path / "data" / "krita" / "pykrita", kritarc=tmp_path / "config" / "kritarc")
    return tmp_path


def test_krita_runs_the_plugin_with_a_virtual_environment_activated(krita_server, activated_venv_env, tmp_path):
    # 1. The control: started from that environment as it is, Krita's Python cannot even start
    #    (it takes the venv's Python as its home and finds no PyQt5). Nothing else is needed to
    #    break it, which is what makes step 2 meaningful.
    raw_home = fresh_home(tmp_path / "raw")
    config = scenario_config(krita_server, tmp_path / "raw", ["window"])
    report, output = run_kritarunner(raw_home, config, timeout=180, base_env=activated_venv_env, clean=False)
    assert report is None, "the activated venv did not disturb Krita: this test no longer shows the problem"
    assert "No module named 'PyQt5'" in output or "Fatal Python error" in output, output[-3000:]

    # 2. The harness launches Krita from the same environment, cleaned: PyQt5 imports, the plugin's
    #    docker appears and connects to the server.
    home = fresh_home(tmp_path / "clean")
    config = scenario_config(krita_server, tmp_path / "clean", ["window"])
    report, output = run_kritarunner(home, config, base_env=activated_venv_env)
    assert report is not None, f"Krita wrote no report. Its output:\n{output[-6000:]}"
    assert report["qt_api"] == "PyQt5", report["qt_api"]
    window = report["scenarios"]["window"]
    assert "exception" not in window, window["exception"]
    assert window["dockers"] == 1 and window["connection"] == "connected", window
