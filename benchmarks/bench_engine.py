"""Engine overhead: a ctrlgen job against the bare diffusers call it wraps.

Same tiny components, steps, seed and size; ctrlgen's time includes job validation, the
model-store lookup, the canny preprocessor, the job-local pipeline views and events. Also
start-up: ``ctrlgen --help`` against a bare ``python -c pass``.

    python benchmarks/bench_engine.py [--repeat N] [--size PX] [--steps N] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_seconds, paired_medians, report  # noqa: E402


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from ctrlgen.core import single_file
    from ctrlgen.core.engine import Engine
    from ctrlgen.core.jobs import parse_job
    from ctrlgen.core.models import ModelStore
    from ctrlgen.core.preprocess import preprocess
    from ctrlgen.core.specs import ModelRoot
    from ctrlgen.testing.tiny import write_model_root

    work = Path(tempfile.mkdtemp(prefix="ctrlgen-bench-"))
    placed = write_model_root(work / "root", "a1111")
    photo = work / "photo.png"
    from skimage import data

    Image.fromarray(data.astronaut()).resize((args.size, args.size)).save(photo)
    job = parse_job({
        "model": "tiny-sd15", "prompt": "an astronaut", "seed": 1, "steps": args.steps,
        "width": args.size, "height": args.size, "sampler": "Euler", "image": str(photo),
        "control": [{"model": "tiny-controlnet-sd15", "preprocessor": "canny"}],
    })
    engine = Engine(store=ModelStore([ModelRoot(placed.root)]), device="cpu")
    engine.run(job)  # load and cache

    # The bare diffusers equivalent, on the same loaded modules.
    import diffusers

    base = next(iter(engine._pipelines.values()))
    controlnet = single_file.load_controlnet(placed.controlnet, "sd15")
    bare = diffusers.StableDiffusionControlNetPipeline.from_pipe(
        base, controlnet=controlnet,
        scheduler=diffusers.EulerDiscreteScheduler.from_config(base.scheduler.config))
    bare.set_progress_bar_config(disable=True)
    control = Image.fromarray(preprocess("canny", np.asarray(Image.open(photo).convert("RGB"))).image)

    def run_bare():
        bare(prompt="an astronaut", image=control, num_inference_steps=args.steps, width=args.size,
             height=args.size, generator=torch.Generator("cpu").manual_seed(1), output_type="np")

    ctrlgen_s, bare_s = paired_medians(lambda: engine.run(job), run_bare, repeat=args.repeat)
    rows = [{"measure": f"ControlNet job {args.size}px x{args.steps} steps", "ctrlgen_s": ctrlgen_s,
             "baseline_s": bare_s, "ratio": ctrlgen_s / bare_s, "target": "<= 1.05"}]

    env = dict(os.environ)
    help_s = median_seconds(lambda: subprocess.run([sys.executable, "-m", "ctrlgen.core.cli", "--help"],
                                                   capture_output=True, env=env, check=True), repeat=args.repeat)
    python_s = median_seconds(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), repeat=args.repeat)
    rows.append({"measure": "ctrlgen --help start-up", "ctrlgen_s": help_s, "baseline_s": python_s,
                 "ratio": help_s / python_s, "target": "fast (no torch import)"})
    report("Engine and start-up (median seconds; ratio = ctrlgen / baseline)", rows, args.json)
    return rows


if __name__ == "__main__":
    main()
