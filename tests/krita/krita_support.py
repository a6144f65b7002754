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
from collections.abc import Mapping
from pathlib import Path

from ctrlgen.testing.host_apps import clean_host_environment

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


def scenario_config(server, out_dir: Path, scenarios) -> dict:
    """krita_scenarios.main's configuration: which scenarios, the server, where to write."""
    return {
        "scenarios": list(scenarios), "out": str(out_dir / "report.json"),
        "url": server.url, "config_dir": str(server.config_dir), "token": server.token,
        "model": server.model, "controlnet": server.controlnet, "ip_adapter": "tiny-ip-adapter_sd15",
        "upscaler": "2x-compact",
        "dead_url": f"http://127.0.0.1:{free_port()}", "empty_config_dir": str(out_dir / "no-server"),
        "screenshot": str(out_dir / "krita-docker.png"), "window_screenshot": str(out_dir / "krita-window.png"),
    }


def run_kritarunner(home: Path, config: dict, timeout: float = 420.0, *, base_env: Mapping[str, str] | None = None,
                    clean: bool = True) -> tuple[dict | None, str]:
    """Run krita_scenarios.main inside Krita; returns (report or None, Krita's output).

    Krita starts from :func:`ctrlgen.testing.host_apps.clean_host_environment` of ``base_env``
    (default: this process's environment), so an activated virtual environment does not
    leak into Krita's Python. ``clean=False`` passes ``base_env`` on as it is (to show what
    the cleaning prevents)."""
    config_path = home / "scenario-config.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    pykrita = home / "data" / "krita" / "pykrita"
    overrides = dict(
        HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_CONFIG_HOME=str(home / "config"),
        XDG_CACHE_HOME=str(home / "cache"), XDG_RUNTIME_DIR=str(home / "runtime"),
        PYTHONPATH=os.pathsep.join([str(pykrita), str(HERE)]), CTRLGEN_KRITA_TEST_CONFIG=str(config_path),
        CTRLGEN_CONFIG_DIR=config["config_dir"], QT_QPA_PLATFORM="xcb", OMP_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
        # Krita puts its swap and frame-cache files in the temp folder: keep them in the test's home.
        TMPDIR=str(home / "tmp"))
    if clean:
        env = clean_host_environment(overrides, base=base_env)
    else:
        env = {**(os.environ if base_env is None else base_env), **overrides}
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
