"""Regions and AND: what they cost against the same job with one plain prompt, in the same run.

Each row is a txt2img job on the tiny SD1.5 model, timed against the plain job (ratio =
its median / the plain job's median, timed alternately so both see the same machine load):

- ``AND`` with 2 and 3 sub-prompts: one more UNet pass per extra sub-prompt, batched
  (expected: about (parts + 1) / 2 of the denoising time, plus the text encoding);
- 1 and 4 regions: the cross-attention layers see (1 + regions) × the tokens through a
  dense mask (expected: a little above 1; the convolutions do not change);
- 2 regions, one holding ``AND``: both costs together.

    python benchmarks/bench_regions.py [--size 256] [--steps 4] [--repeat 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import paired_medians, report  # noqa: E402


def _masks(folder: Path, size: int, count: int) -> list[str]:
    """``count`` vertical stripes covering the canvas."""
    import numpy as np
    from PIL import Image

    paths = []
    for index in range(count):
        mask = np.zeros((size, size), np.uint8)
        mask[:, index * size // count : (index + 1) * size // count] = 255
        path = folder / f"stripe-{count}-{index}.png"
        Image.fromarray(mask).save(path)
        paths.append(str(path))
    return paths


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    from ctrlgen.core.engine.engine import Engine
    from ctrlgen.core.engine.jobs import parse_job
    from ctrlgen.core.models.store import ModelStore
    from ctrlgen.core.plugins.specs import ModelRoot
    from ctrlgen.testing.tiny import write_model_root

    with tempfile.TemporaryDirectory(prefix="bench-regions-") as scratch:
        folder = Path(scratch)
        placed = write_model_root(folder / "root", "a1111", architectures=("sd15",), cache_dir=folder / "cache")
        engine = Engine(store=ModelStore([ModelRoot(placed.root)]), device="cpu")
        base = {"model": "tiny-sd15", "prompt": "a harbour at dawn, boats, gulls", "negative_prompt": "blurry",
                "seed": 1, "steps": args.steps, "width": args.size, "height": args.size}

        def regions(prompts):
            return [{"type": "region", "mask": mask, "prompt": prompt}
                    for mask, prompt in zip(_masks(folder, args.size, len(prompts)), prompts, strict=True)]

        variants = {
            "AND, 2 sub-prompts": {"prompt": base["prompt"] + " AND fog :0.5"},
            "AND, 3 sub-prompts": {"prompt": base["prompt"] + " AND fog :0.5 AND rain :0.3"},
            "1 region": {"adapters": regions(["a red lighthouse"])},
            "4 regions": {"adapters": regions(["a lighthouse", "a boat", "a pier", "a cliff"])},
            "2 regions, one with AND": {"adapters": regions(["a lighthouse AND gulls :0.6", "a boat"])},
        }
        plain = parse_job(base)
        rows = []
        for name, change in variants.items():
            variant = parse_job({**base, **change})
            baseline, measured = paired_medians(lambda: engine.run(plain), lambda job=variant: engine.run(job),
                                                repeat=args.repeat)
            rows.append({"measure": f"{name} vs one plain prompt", "size": args.size, "steps": args.steps,
                         "baseline_s": baseline, "seconds": measured, "ratio": measured / baseline})
    report(f"Regions and AND against a plain prompt (tiny SD1.5, CPU, {args.size}², {args.steps} steps)", rows,
           args.json)
    return rows


if __name__ == "__main__":
    main()
