"""The benchmark scripts keep working (one quick repetition; timings are not asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_engine_benchmark_runs(tmp_path, torch_single_thread):
    rows = load("bench_engine").main(["--repeat", "1", "--steps", "1", "--size", "64",
                                      "--json", str(tmp_path / "r.json")])
    assert [r["measure"].split()[0] for r in rows] == ["ControlNet", "ControlNet", "previews", "txt2img", "img2img",
                                                       "inpaint", "first", "ctrlgen"]
    assert all(r["ratio"] > 0 for r in rows)
    assert (tmp_path / "r.json").is_file()


def test_fix_benchmark_runs(tmp_path, torch_single_thread):
    rows = load("bench_fix").main(["--images", "3", "--repeat", "1", "--steps", "3", "--size", "96", "--guide", "64",
                                   "--json", str(tmp_path / "r.json")])
    assert [r["measure"].split()[0] for r in rows] == ["ctrlgen", "detection"]
    assert all(r["ratio"] > 0 for r in rows)
    assert (tmp_path / "r.json").is_file()
