"""Helpers for the Krita tests: the bridge tests' server starter, tool checks, kritarunner."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def bridge_helpers():
    """tests/host_bridges/conftest.py's server starter (conftests are not importable by name)."""
    spec = importlib.util.spec_from_file_location("_bridge_conftest", HERE.parent / "host_bridges" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def krita_missing() -> str | None:
    for tool in ("kritarunner", "xvfb-run"):
        if shutil.which(tool) is None:
            return (f"`{tool}` is not installed: apt-get install krita python3-pyqt5 xvfb xauth "
                    "(.ci/run installs them)")
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_kritarunner(home: Path, config: dict, timeout: float = 420.0) -> tuple[dict | None, str]:
    """Run krita_scenarios.main inside Krita; returns (report or None, Krita's output)."""
    config_path = home / "scenario-config.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    pykrita = home / "data" / "krita" / "pykrita"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_CONFIG_HOME=str(home / "config"),
               XDG_CACHE_HOME=str(home / "cache"), XDG_RUNTIME_DIR=str(home / "runtime"),
               PYTHONPATH=os.pathsep.join([str(pykrita), str(HERE)]), CTRLGEN_KRITA_TEST_CONFIG=str(config_path),
               CTRLGEN_CONFIG_DIR=config["config_dir"], QT_QPA_PLATFORM="xcb", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    # Krita puts its swap and frame-cache files in the temp folder: keep them in the test's home.
    env["TMPDIR"] = str(home / "tmp")
    (home / "tmp").mkdir(exist_ok=True)
    (home / "runtime").mkdir(mode=0o700, exist_ok=True)
    Path(config["out"]).unlink(missing_ok=True)
    # Its own process group, so that on a timeout Xvfb goes too, not only xvfb-run.
    process = subprocess.Popen(["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", "kritarunner",
                                "-s", "krita_scenarios", "-f", "main"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        output += f"\n[killed after {timeout:.0f} s]"
    out = Path(config["out"])
    return (json.loads(out.read_text(encoding="utf-8")) if out.exists() else None), output
