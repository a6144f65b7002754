"""Running real GIMP 3 for the plug-in's tests: the Debian 13 chroot `scripts/gimp-chroot`
sets up, a fresh GIMP profile with the plug-in installed by ``ctrlgen install gimp``, and
``gimp-console-3.0`` (batch, headless) or ``gimp-3.0`` under ``xvfb-run`` running
``gimp_scenarios.py`` inside GIMP's own Python.

The chroot shares the host's network (the plug-in reaches the test's `ctrlgen serve` on
127.0.0.1) and its process ids (a test can kill the plug-in as GIMP's Cancel does). Files are
exchanged through a scratch folder inside the chroot, ``/tmp/ctrlgen-gimp-tests/<name>``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SETUP = ROOT / "scripts" / "gimp-chroot"


def chroot_dir() -> Path:
    return Path(os.environ.get("CTRLGEN_GIMP_CHROOT") or "/var/lib/ctrlgen-gimp3")


def gimp_missing() -> str | None:
    """Why real GIMP 3 cannot run here (None: it can)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "the GIMP tests run GIMP 3 in a chroot, which needs root (CI runs as root)"
    if not (chroot_dir() / ".ctrlgen-gimp-ready").is_file():
        return f"no GIMP 3 chroot at {chroot_dir()}: run `sudo bash scripts/gimp-chroot setup` (.ci/run does)"
    return None


def require_gimp() -> None:
    """Skip without GIMP, except on CI (``CI=true``), where its absence is a failure."""
    reason = gimp_missing()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true but GIMP 3 cannot run: {reason}")
    pytest.skip(reason)


@dataclass
class Scratch:
    """A folder seen at ``host`` from here and at ``inside`` from within the chroot."""

    host: Path
    inside: str

    def path(self, name: str) -> Path:
        return self.host / name

    def inner(self, name: str) -> str:
        return f"{self.inside}/{name}"


def make_scratch(name: str) -> Scratch:
    inside = f"/tmp/ctrlgen-gimp-tests/{name}-{os.getpid()}"
    host = chroot_dir() / inside.lstrip("/")
    if host.exists():
        shutil.rmtree(host)
    host.mkdir(parents=True)
    return Scratch(host, inside)


def install_profile(scratch: Scratch) -> Path:
    """A fresh GIMP profile (GIMP3_DIRECTORY) with the plug-in installed as users install it:
    ``ctrlgen install gimp --target PROFILE/plug-ins``."""
    profile = scratch.path("profile")
    result = subprocess.run([sys.executable, "-m", "ctrlgen.core.cli.main", "install", "gimp", "--target",
                             str(profile / "plug-ins")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return profile


def run_gimp(scratch: Scratch, config: dict, *, gui: bool = False, timeout: float = 240.0,
             env: dict[str, str] | None = None) -> tuple[dict | None, str]:
    """Run gimp_scenarios.main inside GIMP; returns (its report or None, GIMP's output)."""
    shutil.copy(HERE / "gimp_scenarios.py", scratch.path("gimp_scenarios.py"))
    config = {**config, "out": scratch.inner("out"), "report": scratch.inner("report.json")}
    scratch.path("out").mkdir(exist_ok=True)
    scratch.path("config.json").write_text(json.dumps(config), encoding="utf-8")
    script = scratch.inner("gimp_scenarios.py")
    snippet = (f"import sys; sys.argv = [{script!r}, {scratch.inner('config.json')!r}]; "
               f"exec(compile(open({script!r}).read(), {script!r}, 'exec'))")
    variables = {"GIMP3_DIRECTORY": scratch.inner("profile"), "TMPDIR": scratch.inside, **(env or {})}
    assignments = [f"{key}={value}" for key, value in variables.items()]
    if gui:
        gimp = ["xvfb-run", "-a", "-s", "-screen 0 1280x900x24", "gimp-3.0", "--no-splash", "--no-fonts"]
    else:
        gimp = ["gimp-console-3.0", "-i", "--no-data", "--no-fonts"]  # no brushes, fonts…: a faster start
    command = ["bash", str(SETUP), "run", "env", *assignments, *gimp, "--batch-interpreter=python-fu-eval",
               "-b", snippet, "--quit"]
    # Its own process group, so that on a timeout GIMP and its plug-ins go too.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        output += f"\n[killed after {timeout:.0f} s]"
    report = scratch.path("report.json")
    return (json.loads(report.read_text(encoding="utf-8")) if report.exists() else None), output


def plug_in_pids() -> list[int]:
    """The running ctrlgen plug-in processes (not its watchdog), found by their command line."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(word.endswith(b"ctrlgen-gimp/ctrlgen-gimp.py") for word in words):
            pids.append(int(entry.name))
    return pids


def kill_plug_in_when_running(server, armed: Path, done: list, timeout: float = 200.0) -> None:
    """What GIMP's Cancel does to a plug-in (SIGKILL), once ``armed`` exists and a job runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not armed.exists():
        time.sleep(0.05)
    while time.monotonic() < deadline:
        status, body = server.json("GET", "/v1/jobs")
        running = [job for job in (body or {}).get("jobs", []) if job.get("status") == "running"]
        pids = plug_in_pids()
        if running and pids:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            done.append(running[0]["id"])
            return
        time.sleep(0.05)
