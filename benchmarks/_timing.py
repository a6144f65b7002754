"""Timing helpers shared by the benchmarks: medians of repeated runs, ratio tables."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def median_seconds(function: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def paired_medians(first: Callable[[], Any], second: Callable[[], Any], repeat: int = 5,
                   warmup: int = 1) -> tuple[float, float]:
    """Median seconds of two functions timed alternately, so both see the same machine load."""
    for _ in range(warmup):
        first()
        second()
    a, b = [], []
    for index in range(repeat):
        order = ((first, a), (second, b)) if index % 2 == 0 else ((second, b), (first, a))
        for function, samples in order:
            start = time.perf_counter()
            function()
            samples.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


def report(title: str, rows: list[dict[str, Any]], json_path: str | None = None) -> None:
    """Print rows as a table (and write them as JSON when ``json_path`` is given)."""
    print(f"\n{title}")
    if rows:
        keys = list(rows[0])
        widths = [max(len(k), *(len(_fmt(r[k])) for r in rows)) for k in keys]
        print("  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)))
        for row in rows:
            print("  ".join(_fmt(row[k]).ljust(w) for k, w in zip(keys, widths, strict=True)))
    if json_path:
        with open(json_path, "w") as handle:
            json.dump({"title": title, "rows": rows, "python": sys.version.split()[0], "command": command_line()},
                      handle, indent=2)


def command_line() -> str:
    """The command that ran this benchmark (with the thread variables it ran under)."""
    import os
    import shlex

    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ]
    return " ".join([*env, shlex.join([".venv/bin/python", *sys.argv])])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:.1f}"
    return str(value)
