"""Run scenarios inside a real Krita (Debian's krita + python3-pyqt5, kritarunner under
xvfb-run) against a real `ctrlgen serve` with the tiny models.

``krita_report`` starts Krita once for all scenarios (Krita's start-up costs seconds) with the
plugin installed by ``ctrlgen install krita`` into a scratch HOME, and returns the JSON that
tests/krita/krita_scenarios.py wrote from inside Krita.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from krita_support import bridge_helpers, krita_missing, run_kritarunner, scenario_config

# "undo" first: Krita's undo action follows the first main window opened in the process.
SCENARIOS = ("undo", "window", "inpaint", "control", "cancel", "server_down", "screenshot", "big_canvas",
             "wrong_document", "reference", "model_resolution")


@pytest.fixture(scope="session")
def krita_home(tmp_path_factory) -> Path:
    """A scratch HOME with the plugin installed the way users install it."""
    from ctrlgen.host_bridges.krita import install

    home = tmp_path_factory.mktemp("krita-home")
    install(home / "data" / "krita" / "pykrita", kritarc=home / "config" / "kritarc")
    return home


@pytest.fixture(scope="session")
def krita_server(request, tmp_path_factory, krita_model_root):
    """The real `ctrlgen serve` the Krita scenarios talk to (one per session)."""
    reason = krita_missing()
    if reason:
        pytest.skip(reason)
    server = bridge_helpers().start_server(tmp_path_factory.mktemp("krita-server"), krita_model_root)
    request.addfinalizer(server.stop)
    return server


@pytest.fixture(scope="session")
def krita_report(tmp_path_factory, krita_home, krita_server) -> dict:
    config = scenario_config(krita_server, tmp_path_factory.mktemp("krita-out"), SCENARIOS)
    report, output = run_kritarunner(krita_home, config)
    if report is None:
        pytest.fail(f"Krita wrote no report. Its output:\n{output[-6000:]}\n"
                    f"Server log:\n{krita_server.log()[-3000:]}")
    report["output"] = output
    report["server_log"] = krita_server.log()
    return report


@pytest.fixture(scope="session")
def bridge_model_root(tiny_model_root) -> Path:
    """The tiny A1111 root (tiny-sd15, tiny-controlnet-sd15), as tests/host_bridges uses."""
    return Path(tiny_model_root.root)


@pytest.fixture(scope="session")
def krita_model_root(tmp_path_factory, tiny_model_cache, tiny_sd15, tiny_sdxl) -> Path:
    """The tiny models plus the tiny IP-Adapters and image encoder, in a root of its own (the
    shared one stays as the bridge tests expect it)."""
    from ctrlgen.testing.tiny import write_model_root
    from ctrlgen.testing.tiny_ip_adapter import add_tiny_ip_adapter_models

    root = write_model_root(tmp_path_factory.mktemp("krita-models"), "a1111", architectures=("sd15", "sdxl"),
                            cache_dir=tiny_model_cache)
    add_tiny_ip_adapter_models(root)
    return Path(root.root)
