"""``ctrlgen fix`` over a folder against a plain loop of one job per image, and detection against the fix.

Both sides run the same face pass (mediapipe's short-range face detector, the real weights
mediapipe ships) on the same engine with the tiny SD1.5 model already loaded, on the same
folder of astronaut photos (each a little different). The batch is
:func:`ctrlgen.core.engine.batch.run_batch` as ``ctrlgen fix`` runs it: the manifest, atomic
writes and PNG metadata kept, with the next image decoded and the previous one encoded on
other threads while the engine works. The loop reads each image, runs ``ctrlgen.fix`` and
saves the PNG, one after the other. A second row splits the fix's time: the detector alone
(plus selection and masks, as ``--dry-run`` runs it) against the whole fix.

    python benchmarks/bench_fix.py [--images N] [--size PX] [--steps N] [--repeat N] [--json out.json]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_seconds, paired_medians, report  # noqa: E402


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=384, help="the photos' size (the repaint is at --guide)")
    parser.add_argument("--guide", type=int, default=128, help="guide_size of the pass (repaint resolution)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    import numpy as np
    from PIL import Image
    from skimage import data

    import ctrlgen
    from ctrlgen.core.engine import batch
    from ctrlgen.core.engine.engine import Engine
    from ctrlgen.core.models.store import ModelStore
    from ctrlgen.core.plugins.specs import ModelRoot
    from ctrlgen.testing.tiny import write_model_root

    scratch = tempfile.TemporaryDirectory(prefix="ctrlgen-bench-fix-")  # removed when main() returns
    work = Path(scratch.name)
    placed = write_model_root(work / "root", "a1111", architectures=("sd15",))
    folder = work / "photos"
    folder.mkdir()
    photo = np.asarray(Image.fromarray(data.astronaut()).resize((args.size, args.size)))
    rng = np.random.default_rng(0)
    for index in range(args.images):
        noisy = np.clip(photo.astype(int) + rng.integers(-6, 7, photo.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"photo{index:03d}.png")
    detail = [{"detector": "mediapipe_face_short", "guide_size": args.guide, "max_size": args.guide}]
    job = {"model": "tiny-sd15", "steps": args.steps, "seed": 1}
    engine = Engine(store=ModelStore([ModelRoot(placed.root)]), device="cpu")
    ctrlgen.fix(folder / "photo000.png", detail, engine=engine, **job)  # load and cache the model

    runs = [0]

    def fresh(name: str) -> Path:
        runs[0] += 1
        out = work / f"{name}-{runs[0]}"
        return out

    def batch_run():
        out = fresh("batch")
        items = batch.plan_outputs(batch.collect_inputs([str(folder)]), out)
        manifest = batch.Manifest(out / batch.MANIFEST_NAME)
        batch.run_batch(engine, items, batch.BatchOptions(detail, job), manifest)
        manifest.close()
        shutil.rmtree(out)

    def loop_run():
        out = fresh("loop")
        out.mkdir()
        for path in sorted(folder.glob("*.png")):
            result = ctrlgen.fix(path, detail, engine=engine, **job)
            result.images[0].save(out / path.name)
        shutil.rmtree(out)

    rows = []
    label = f"{args.images} images {args.size}px, repaint {args.guide}px x{args.steps} steps"
    batch_s, loop_s = paired_medians(batch_run, loop_run, repeat=args.repeat, warmup=0)
    rows.append({"measure": f"ctrlgen fix over a folder vs a loop of jobs, {label}", "ctrlgen_s": batch_s,
                 "baseline_s": loop_s, "ratio": batch_s / loop_s, "target": "< 1 (I/O overlapped)"})

    pixels = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]
    detect_s = median_seconds(lambda: [batch.plan_image(p, detail) for p in pixels], repeat=args.repeat)
    fix_s = median_seconds(lambda: [ctrlgen.fix(p, detail, engine=engine, **job) for p in pixels],
                           repeat=args.repeat, warmup=0)
    rows.append({"measure": f"detection (+ selection, masks) vs the whole fix, {label}", "ctrlgen_s": detect_s,
                 "baseline_s": fix_s, "ratio": detect_s / fix_s, "target": "(share of the fix)"})
    report("ctrlgen fix (median seconds; ratio = ctrlgen / baseline)", rows, args.json)
    return rows


if __name__ == "__main__":
    main()
