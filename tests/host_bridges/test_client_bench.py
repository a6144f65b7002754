"""The bridge and server benchmarks keep working (tiny sizes, one repetition; timings not asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bridge_benchmark_runs(tmp_path):
    rows = load("bench_bridge").main(["--sizes", "64,128", "--repeat", "1", "--png-repeat", "1",
                        "--json", str(tmp_path / "bridge.json"), "--txt", str(tmp_path / "bridge.txt")])
    assert [row["size"] for row in rows] == ["64x64", "128x128"]
    assert all(row["raw_tcp_s"] > 0 and row["raw_compute_s"] > 0 and row["ctrlgen_s"] > 0 and row["png_s"] > 0
               and row["ctrlgen_v1_s"] > 0 for row in rows)
    saved = json.loads((tmp_path / "bridge.json").read_text())
    assert [row["size"] for row in saved["breakdown"]] == ["64x64", "128x128"]
    assert "ctrlgen/raw" in (tmp_path / "bridge.txt").read_text()


def test_server_benchmark_runs(tmp_path):
    rows = load("bench_server").main(["--size", "64", "--steps", "1", "--rounds", "1", "--modes", "preload,cold",
                                      "--json", str(tmp_path / "server.json")])
    assert [row["mode"] for row in rows] == ["preload", "cold"]
    assert all(row["first_s"] > 0 and row["second_s"] > 0 and row["ready_s"] >= row["listening_s"] for row in rows)
    assert json.loads((tmp_path / "server.json").read_text())["command"].startswith("python benchmarks/")


def test_server_memory_benchmark_runs(tmp_path):
    rows = load("bench_server_memory").main(["--jobs", "3", "--size", "128", "--budget", "200KiB", "--tail", "2",
                                             "--json", str(tmp_path / "memory.json")])
    assert rows[0]["jobs"] == 3 and rows[0]["rss_max_MiB"] >= rows[0]["rss_first_MiB"] > 0
    saved = json.loads((tmp_path / "memory.json").read_text())
    assert len(saved["rss_MiB_after_each_job"]["200KiB"]) == 3
