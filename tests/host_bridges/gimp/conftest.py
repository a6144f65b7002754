"""One real GIMP 3 run (gimp-console, headless) for all the scenarios, against one real
`ctrlgen serve` with the tiny models (tests/host_bridges/conftest.py's ``live_server``)."""

from __future__ import annotations

import shutil
import socket
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gimp_support import kill_plug_in_when_running, make_scratch, require_gimp, run_gimp  # noqa: E402

# "cancel" last: the job it leaves being cancelled on the server would delay the next ones.
SCENARIOS = ("procedures", "discover", "inpaint", "generate", "control", "errors", "modes", "fix", "big", "cancel")
PHOTOS = Path(__file__).resolve().parents[2] / "detectors" / "photos"


def write_photos(scratch) -> dict[str, str]:
    """A face (skimage's astronaut) and a hand (fingerpose's nocurl.jpg), 128² RGBA, for the fix
    scenario; the astronaut at 256² for the pose map."""
    from PIL import Image
    from skimage import data

    face = Image.fromarray(data.astronaut()).resize((128, 128)).convert("RGBA")
    hand = Image.open(PHOTOS / "nocurl.jpg").convert("RGBA").resize((128, 128))
    scratch.path("face.rgba").write_bytes(face.tobytes())
    person = Image.fromarray(data.astronaut()).resize((256, 256)).convert("RGBA")
    scratch.path("hand.rgba").write_bytes(hand.tobytes())
    scratch.path("person.rgba").write_bytes(person.tobytes())
    return {"face_rgba": scratch.inner("face.rgba"), "hand_rgba": scratch.inner("hand.rgba"),
            "person_rgba": scratch.inner("person.rgba")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def gimp_chroot() -> None:
    """GIMP 3 can run here (else skip; with CI=true, fail) — checked before a server starts."""
    require_gimp()


@pytest.fixture(scope="session")
def gimp_report(gimp_chroot, live_server) -> dict:
    from gimp_support import install_profile

    scratch = make_scratch("scenarios")
    install_profile(scratch)
    config_dir = scratch.path("ctrlgen-config")  # what `Client.discover()` reads inside GIMP
    config_dir.mkdir()
    for name in ("server.json", "token"):
        shutil.copy(live_server.config_dir / name, config_dir / name)
    config = {"scenarios": list(SCENARIOS), "url": live_server.url, "token": live_server.token,
              "model": live_server.model, "dead_url": f"http://127.0.0.1:{free_port()}",
              "preprocessor": "canny", "preprocessor_params": {"low_threshold": 40, "high_threshold": 120},
              **write_photos(scratch)}
    cancelled: list[str] = []
    killer = threading.Thread(target=kill_plug_in_when_running,
                              args=(live_server, scratch.path("out") / "cancel-armed", cancelled), daemon=True)
    killer.start()
    report, output = run_gimp(scratch, config, env={"CTRLGEN_CONFIG_DIR": scratch.inner("ctrlgen-config")})
    killer.join(5)
    if report is None:
        pytest.fail(f"GIMP wrote no report. Its output:\n{output[-6000:]}\nServer log:\n{live_server.log()[-3000:]}")
    report.update(output=output, out=scratch.path("out"), cancelled_job=cancelled[0] if cancelled else None)
    yield report
    shutil.rmtree(scratch.host, ignore_errors=True)
