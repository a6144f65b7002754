"""The Live workspace inside real Krita against a real server (krita_scenarios_live.py).

Runs Krita once for this file with only the ``live`` scenario (a few seconds of Krita start-up),
so it can run alone: ``pytest tests/krita/test_in_krita_live.py``."""

from __future__ import annotations

import numpy as np
import pytest
from krita_support import run_kritarunner, scenario_config
from test_in_krita import pixels, scenario

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def live_report(tmp_path_factory, krita_home, krita_server) -> dict:
    config = scenario_config(krita_server, tmp_path_factory.mktemp("krita-live-out"), ["live"])
    report, output = run_kritarunner(krita_home, config)
    if report is None:
        pytest.fail(f"Krita wrote no report. Its output:\n{output[-6000:]}\nServer log:\n{krita_server.log()[-3000:]}")
    report["output"] = output
    return report


def test_rapid_canvas_changes_end_in_one_applied_result_from_the_last_change(live_report):
    r = scenario(live_report, "live")
    assert r["opened"], r["message_open"]
    assert r["finished"], r
    first, second, last = r["sent"]
    assert first < second < last
    statuses = {int(key): value for key, value in r["statuses"].items()}
    assert statuses[last] == "done" and r["latest"] == last
    assert all(statuses[frame] == "superseded" for frame in statuses if frame != last), statuses
    assert r["server"]["done"] == 1 and r["server"]["superseded"] >= 1
    # The canvas went whole once; later frames sent only the changed stroke's box.
    assert r["server"]["image_bytes"] < 64 * 64 * 3 * len(statuses)
    assert len(r["live_layers"]) == 1  # Apply made exactly one layer
    applied = pixels(r["applied"], 64, 64)
    expected = pixels(r["expected"], 64, 64)
    np.testing.assert_array_equal(applied, expected)  # the last change's result, bit for bit
