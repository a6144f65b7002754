"""benchmarks/bench_bridge.py keeps working (tiny sizes, one repetition; timings not asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_bridge_benchmark_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_bridge", BENCHMARKS / "bench_bridge.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--sizes", "64,128", "--repeat", "1", "--png-repeat", "1",
                        "--json", str(tmp_path / "bridge.json"), "--txt", str(tmp_path / "bridge.txt")])
    assert [row["size"] for row in rows] == ["64x64", "128x128"]
    assert all(row["raw_tcp_s"] > 0 and row["ctrlgen_s"] > 0 and row["png_s"] > 0 for row in rows)
    saved = json.loads((tmp_path / "bridge.json").read_text())
    assert [row["size"] for row in saved["breakdown"]] == ["64x64", "128x128"]
    assert "ctrlgen/raw" in (tmp_path / "bridge.txt").read_text()
