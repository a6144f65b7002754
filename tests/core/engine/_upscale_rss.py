"""Run one upscale job in a fresh process and print its peak RSS growth (test_upscale_memory.py).

Usage: python _upscale_rss.py MODEL_ROOT SIDE TILE — the tiny SD1.5 model upscales a SIDE/4 picture
4× to SIDE² in TILE-pixel tiles, after a small warm-up job that loads everything."""

from __future__ import annotations

import gc
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ctrlgen.core.engine.engine import Engine
from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.models.store import ModelStore
from ctrlgen.core.plugins.specs import ModelRoot


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> float:
    """Reset the peak RSS (VmHWM) to the current RSS and return it: the peak of loading the model
    in the warm-up job must not hide the job's own (ru_maxrss cannot be reset)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


def peak_mib() -> float:
    return _status_mib("VmHWM")


def main() -> None:
    root, side, tile = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    engine = Engine(store=ModelStore([ModelRoot(root)]), device="cpu")
    scratch = tempfile.TemporaryDirectory(prefix="ctrlgen-rss-")
    folder = Path(scratch.name)
    rng = np.random.default_rng(0)
    for size in (32, side // 4):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(folder / f"{size}.png")

    def job(size: int, tile_size: int) -> dict:
        return {"task": "upscale", "model": "tiny-sd15", "image": str(folder / f"{size}.png"), "steps": 2, "seed": 1,
                "cfg_scale": 1, "sampler": "Euler",
                "upscale": {"scale": 4, "tile_size": tile_size, "overlap": 32, "denoise": 0.5}}

    engine.run(parse_job(job(32, 128)))  # loads the model and warms every code path
    gc.collect()
    base = reset_peak()
    image = engine.run(parse_job(job(side // 4, tile))).images[0]
    assert image.size == (side, side)
    scratch.cleanup()
    print(json.dumps({"side": side, "tile": tile, "base_mib": base, "growth_mib": peak_mib() - base}))


if __name__ == "__main__":
    main()
