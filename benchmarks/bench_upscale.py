"""Upscale time against canvas size: the tiled refine should cost the same per tile at every size.

Each row times a 4× upscale (resampler, then the tiny SD1.5 model's tiled refine: one denoising
step, 128-pixel tiles overlapping by 32) to a canvas of the row's size against the same job to
the smallest canvas, alternately (``_timing.paired_medians``), and divides by the number of
tiles (and of pixels). Linear in the number of tiles means ``per_tile`` ≈ 1; the VAE's encode
and decode and the image buffers grow with the pixels, so ``per_pixel`` ≈ 1 too where the
pixels outweigh the tiles' overlap.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_upscale.py --json benchmarks/results/upscale-cpu-2core.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import paired_medians, report  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512,1024,2048", help="canvas sides, the first is the baseline")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from ctrlgen.core.engine.engine import Engine
    from ctrlgen.core.engine.jobs import parse_job
    from ctrlgen.core.engine.tiling import tile_count
    from ctrlgen.core.models.store import ModelStore
    from ctrlgen.core.plugins.specs import ModelRoot
    from ctrlgen.testing.tiny import write_model_root

    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")]
    scratch = tempfile.TemporaryDirectory(prefix="ctrlgen-bench-upscale-")  # removed when main returns
    folder = Path(scratch.name)
    root = write_model_root(folder / "root", "a1111", architectures=("sd15",), cache_dir=folder / "cache")
    engine = Engine(store=ModelStore([ModelRoot(root.root)]), device="cpu")
    rng = np.random.default_rng(0)
    jobs = {}
    for side in sizes:
        path = folder / f"{side}.png"
        Image.fromarray((rng.random((side // 4, side // 4, 3)) * 255).astype(np.uint8)).save(path)
        jobs[side] = parse_job({
            "task": "upscale", "model": "tiny-sd15", "image": str(path), "steps": 2, "seed": 1, "cfg_scale": 1,
            "sampler": "Euler", "upscale": {"scale": 4, "tile_size": args.tile, "overlap": args.overlap,
                                            "denoise": 0.5}})

    def run(side: int):
        return lambda: engine.run(jobs[side])

    base = sizes[0]
    base_tiles = tile_count(base, base, args.tile, args.overlap)
    rows = []
    for side in sizes[1:]:
        base_seconds, seconds = paired_medians(run(base), run(side), repeat=args.repeat)
        tiles = tile_count(side, side, args.tile, args.overlap)
        ratio = seconds / base_seconds
        rows.append({
            "measure": f"upscale to {side}² ({tiles} tiles) vs {base}² ({base_tiles} tiles)",
            "seconds": round(seconds, 3), "baseline_seconds": round(base_seconds, 3), "ratio": round(ratio, 3),
            "tiles_ratio": round(tiles / base_tiles, 3), "per_tile": round(ratio / (tiles / base_tiles), 3),
            "per_pixel": round(ratio / (side * side / (base * base)), 3)})
    scratch.cleanup()
    report(f"4x upscale, tiny SD1.5, {args.tile}-pixel tiles (overlap {args.overlap}), 1 step, "
           f"{args.repeat} paired repetitions", rows, args.json)
    return rows


if __name__ == "__main__":
    main()
