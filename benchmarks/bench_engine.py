"""Engine overhead: a ctrlgen job against the bare diffusers call it wraps.

Same tiny components, steps, seed and size; ctrlgen's time includes job validation, the
model-store lookup, reading the images, the job-local pipeline views, A1111 prompt encoding
and events; the bare side reads the same image (and runs the same canny call in the second
row). Also: previews every step against none; task switching on a cached model (a job after
a job of another task against after one of its own); the first job (model load) against a
cached one; start-up: ``ctrlgen --help`` against a bare ``python -c pass``.

    python benchmarks/bench_engine.py [--repeat N] [--size PX] [--steps N] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_seconds, paired_medians, report  # noqa: E402


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--size", type=int, default=128)  # what results/engine-cpu-2core.json and the README use
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from ctrlgen.core.engine.engine import Engine
    from ctrlgen.core.engine.jobs import parse_job
    from ctrlgen.core.engine.preprocess import preprocess
    from ctrlgen.core.models.store import ModelStore
    from ctrlgen.core.plugins.specs import ModelRoot
    from ctrlgen.testing.tiny import write_model_root

    scratch = tempfile.TemporaryDirectory(prefix="ctrlgen-bench-")  # removed when main() returns
    work = Path(scratch.name)
    placed = write_model_root(work / "root", "a1111")
    photo = work / "photo.png"
    from skimage import data

    Image.fromarray(data.astronaut()).resize((args.size, args.size)).save(photo)
    control_map = work / "canny.png"
    Image.fromarray(preprocess("canny", np.asarray(Image.open(photo).convert("RGB"))).image).save(control_map)
    mask = work / "mask.png"
    mask_pixels = np.zeros((args.size, args.size), np.uint8)
    mask_pixels[args.size // 4: 3 * args.size // 4, args.size // 4: 3 * args.size // 4] = 255
    Image.fromarray(mask_pixels).save(mask)
    common = {"model": "tiny-sd15", "prompt": "an astronaut", "seed": 1, "steps": args.steps,
              "width": args.size, "height": args.size, "sampler": "Euler"}
    given_map = parse_job(common | {"control": [{"model": "tiny-controlnet-sd15", "image": str(control_map)}]})
    with_canny = parse_job(common | {"image": str(photo),
                                     "control": [{"model": "tiny-controlnet-sd15", "preprocessor": "canny"}]})
    engine = Engine(store=ModelStore([ModelRoot(placed.root)]), device="cpu")
    engine.run(given_map)  # load and cache

    # The bare diffusers equivalent, on the same loaded modules.
    import diffusers

    base = next(iter(engine._pipelines.values()))
    controlnet = engine.load_controlnet(engine.store.find("tiny-controlnet-sd15", category=("controlnet",)), "sd15")
    bare = diffusers.StableDiffusionControlNetPipeline.from_pipe(
        base, controlnet=controlnet,
        scheduler=diffusers.EulerDiscreteScheduler.from_config(base.scheduler.config))
    bare.set_progress_bar_config(disable=True)

    def run_bare(canny: bool):
        def call():
            source = np.asarray(Image.open(photo if canny else control_map).convert("RGB"))
            control = Image.fromarray(preprocess("canny", source).image if canny else source)
            bare(prompt="an astronaut", image=control, num_inference_steps=args.steps, width=args.size,
                 height=args.size, generator=torch.Generator("cpu").manual_seed(1), output_type="np")
        return call

    rows = []
    label = f"{args.size}px x{args.steps} steps"
    for name, job, canny in (("ControlNet job, map given", given_map, False),
                             ("ControlNet job + canny", with_canny, True)):
        ctrlgen_s, bare_s = paired_medians(lambda job=job: engine.run(job), run_bare(canny), repeat=args.repeat)
        rows.append({"measure": f"{name} {label} vs bare diffusers", "ctrlgen_s": ctrlgen_s, "baseline_s": bare_s,
                     "ratio": ctrlgen_s / bare_s, "target": "<= 1.05"})
    preview_s, plain_s = paired_medians(lambda: engine.run(given_map, preview=True), lambda: engine.run(given_map),
                                        repeat=args.repeat)
    rows.append({"measure": f"previews every step {label} vs none", "ctrlgen_s": preview_s, "baseline_s": plain_s,
                 "ratio": preview_s / plain_s, "target": "~1 (cheap)"})

    # Task switching on a cached model: a job right after a job of another task (txt2img ->
    # img2img -> inpaint -> txt2img ...) against the same job after one of its own task.
    tasks = {
        "txt2img": parse_job(common),
        "img2img": parse_job(common | {"image": str(photo), "strength": 1.0}),
        "inpaint": parse_job(common | {"image": str(photo), "mask": str(mask), "strength": 1.0}),
    }
    for job in tasks.values():
        engine.run(job)
    order = list(tasks)
    same_medians: dict[str, float] = {}  # each task's cached job, after one of its own
    for index, name in enumerate(order):
        previous = tasks[order[index - 1]]

        def switched(name=name, previous=previous):
            engine.run(previous)
            start = time.perf_counter()
            engine.run(tasks[name])
            return time.perf_counter() - start

        def repeated(name=name):
            engine.run(tasks[name])
            start = time.perf_counter()
            engine.run(tasks[name])
            return time.perf_counter() - start

        switch_samples, same_samples = [], []
        for _ in range(args.repeat):
            switch_samples.append(switched())
            same_samples.append(repeated())
        switch_s, same_s = statistics.median(switch_samples), statistics.median(same_samples)
        same_medians[name] = same_s
        rows.append({"measure": f"{name} after {order[index - 1]} (cached model) vs after {name}",
                     "ctrlgen_s": switch_s, "baseline_s": same_s, "ratio": switch_s / same_s,
                     "target": "~1 (no reload)"})
    cold = Engine(store=engine.store, device="cpu")
    start = time.perf_counter()
    cold.run(tasks["txt2img"])
    cold_s = time.perf_counter() - start
    cached_s = same_medians["txt2img"]  # the same txt2img job on the cached model (not the last task's)
    rows.append({"measure": "first txt2img job (loads the model) vs a cached one", "ctrlgen_s": cold_s,
                 "baseline_s": cached_s, "ratio": cold_s / cached_s, "target": "(reference)"})

    env = dict(os.environ)
    help_s = median_seconds(lambda: subprocess.run([sys.executable, "-m", "ctrlgen.core.cli.main", "--help"],
                                                   capture_output=True, env=env, check=True), repeat=args.repeat)
    python_s = median_seconds(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), repeat=args.repeat)
    rows.append({"measure": "ctrlgen --help start-up", "ctrlgen_s": help_s, "baseline_s": python_s,
                 "ratio": help_s / python_s, "target": "fast (no torch import)"})
    report("Engine and start-up (median seconds; ratio = ctrlgen / baseline)", rows, args.json)
    return rows


if __name__ == "__main__":
    main()
