"""Region edits: the cost of an edit should follow the region it touches, not the canvas.

The same 96² mask (an only-masked inpaint, padding 32, grow 2, feather 4, one canny ControlNet
unit reading the job's image) on RGBA canvases of 256², 1024², 4096² and 8192² (a few
transparent pixels far from the mask), each against the same job on a canvas just large
enough for the region (the region cropped out: its only-masked region is then the whole of
it, so both generate the very same pixels). Timed from the call to the finished result:

- in-process: ``Engine.run`` with the canvas and mask in memory, the changed box read with
  ``result.crop()`` (the result image is the whole canvas, made only when read: with
  ``--whole-read`` a row reads it whole too, the cost an eager copy had); and in-process as a host plugin would do it:
  the region (a view of the canvas) with ``image_offset``/``canvas_size``, the changed box
  pasted back into the canvas;
- through a real ``ctrlgen serve`` on loopback with the region protocol, as an editor plugin
  does it: the host crops the region out of its canvas, uploads it with ``image_offset`` and
  ``canvas_size``, follows the job, downloads only the ``changed_box`` and pastes it into its
  canvas. The baseline uploads its small canvas whole and downloads the whole result.

Also: the numpy memory peak (tracemalloc) of one in-process job per size.

    python benchmarks/bench_region.py [--sizes 256,1024,4096,8192] [--repeat N] [--steps N]
                                      [--no-server] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _server import served  # noqa: E402
from _timing import paired_medians, report  # noqa: E402

MASK_SIDE = 96
INPAINT = {"only_masked": True, "padding_px": 32, "grow_px": 2, "feather_px": 4}


def make_canvas(size: int):
    """An RGBA canvas (the astronaut tiled), a few transparent pixels in a corner, and a grey
    mask with a 96² square a little off the centre."""
    import numpy as np
    from skimage import data

    from ctrlgen.core.images import resize

    tile = np.dstack([resize(data.astronaut(), 256, 256), np.full((256, 256), 255, np.uint8)])
    reps = -(-size // 256)
    canvas = np.ascontiguousarray(np.tile(tile, (reps, reps, 1))[:size, :size])
    canvas[:4, :4, 3] = 0
    mask = np.zeros((size, size), np.uint8)
    x0 = y0 = size // 2 - MASK_SIDE // 2 + (size // 8 if size > 256 else 0)
    mask[y0 : y0 + MASK_SIDE, x0 : x0 + MASK_SIDE] = 255
    return canvas, mask


def region_of(mask, width: int, height: int, gen_aspect: float):
    """The only-masked region the engine will generate (the grown mask's bounds + padding)."""
    from ctrlgen.core.engine.masks import mask_bounds, region_around

    bounds = mask_bounds(mask).grown(INPAINT["grow_px"], mask.shape[1], mask.shape[0])
    return region_around(bounds, mask.shape[1], mask.shape[0], INPAINT["padding_px"], gen_aspect)


def job_fields(steps: int, size: int) -> dict:
    return {"model": "tiny-sd15", "prompt": "a red helmet", "seed": 1, "steps": steps, "sampler": "Euler",
            "width": size, "height": size, "strength": 1.0, "inpaint": dict(INPAINT),
            "control": [{"model": "tiny-controlnet-sd15", "preprocessor": "canny"}]}


@contextlib.contextmanager
def ctrlgen_server(config: Path, model_root: Path):
    """``ctrlgen --threads 1 serve`` on a free port over the tiny model root; yields a Client."""
    env = {"CTRLGEN_MODEL_ROOTS": str(model_root), "CTRLGEN_DEVICE": "cpu"}
    with served(config, ["--threads", "1", "serve", "--port", "0"], env, wait_ready=False,
                stop_timeout=15) as client:
        yield client


def through_server(client, canvas, mask, fields: dict, box, whole: bool) -> tuple[int, int, int, int]:
    """One edit through the server; the changed pixels are pasted into ``canvas``. ``box`` is the
    part of the canvas sent (x0, y0, x1, y1); ``whole``: send the canvas as it is (no offset) and
    download the whole result. Returns the box that came back, in canvas coordinates."""
    import numpy as np

    from ctrlgen.host_bridges.client import RawImage

    height, width = mask.shape
    x0, y0, x1, y1 = (0, 0, width, height) if whole else box
    patch = np.ascontiguousarray(canvas[y0:y1, x0:x1])
    patch_mask = np.ascontiguousarray(mask[y0:y1, x0:x1])
    refs = client.upload_many([RawImage(patch, x1 - x0, y1 - y0, 4), RawImage(patch_mask, x1 - x0, y1 - y0, 1)])
    job = dict(fields, image=refs[0], mask=refs[1])
    if not whole:
        job.update(image_offset=[x0, y0], canvas_size=[width, height])
    job_id = client.submit(job)
    client.wait(job_id, raise_on_error=True)
    if whole:
        image, (bx0, by0, bx1, by1) = client.result(job_id), (0, 0, x1 - x0, y1 - y0)
    else:
        image, (bx0, by0, bx1, by1) = client.result(job_id, changed_only=True)
    pixels = np.frombuffer(image.data, np.uint8).reshape(image.height, image.width, image.channels)
    target = canvas[y0 + by0 : y0 + by1, x0 + bx0 : x0 + bx1]
    target[..., : pixels.shape[2]] = pixels
    return (x0 + bx0, y0 + by0, x0 + bx1, y0 + by1)


def numpy_peak_mib(function) -> float:
    import tracemalloc

    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="256,1024,4096,8192")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--gen-size", type=int, default=128, help="generation size of the region (px)")
    parser.add_argument("--no-server", action="store_true", help="in-process only")
    parser.add_argument("--whole-read", action="store_true",
                        help="also time the whole-canvas job with its whole result image read (load())")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    import numpy as np

    from ctrlgen.core.engine.engine import Engine
    from ctrlgen.core.engine.jobs import parse_job
    from ctrlgen.core.models.store import ModelStore
    from ctrlgen.core.plugins.specs import ModelRoot
    from ctrlgen.core.threads import apply_threads
    from ctrlgen.testing.tiny import write_model_root

    apply_threads(1)  # as the server below: one thread each, on a small shared CPU
    scratch = tempfile.TemporaryDirectory(prefix="ctrlgen-bench-region-")
    work = Path(scratch.name)
    placed = write_model_root(work / "root", "a1111")
    engine = Engine(store=ModelStore([ModelRoot(placed.root)]), device="cpu")
    fields = job_fields(args.steps, args.gen_size)
    rows: list[dict] = []
    canvases = {}
    label = f"96² mask, region at {args.gen_size}², {args.steps} steps, canny unit"

    # 1. In-process.
    for size in sizes:
        canvas, mask = make_canvas(size)
        region = region_of(mask, size, size, 1.0)
        small = {"canvas": np.ascontiguousarray(region.crop(canvas)), "mask": np.ascontiguousarray(region.crop(mask))}
        big = {"canvas": canvas, "mask": mask}
        job = parse_job(dict(fields, image="canvas", mask="mask"))

        def run_big(big=big, job=job):
            result = engine.run(job, images=lambda ref, what: big[ref])
            result.crop()  # what a host reads: the changed box
            return result

        def run_big_whole(big=big, job=job):  # the whole result image read too (the eager cost)
            result = engine.run(job, images=lambda ref, what: big[ref])
            result.images[0].load()
            return result

        def run_small(small=small, job=job):
            result = engine.run(job, images=lambda ref, what: small[ref])
            result.crop()
            return result

        result = run_big()
        assert result.changed_box is not None and result.images[0].size == (size, size)
        region_s, small_s = paired_medians(run_big, run_small, repeat=args.repeat)
        del result
        peak_big, peak_small = numpy_peak_mib(run_big), numpy_peak_mib(run_small)
        rows.append({"measure": f"in-process {size}² canvas vs {region.width}² ({label})", "ctrlgen_s": region_s,
                     "baseline_s": small_s, "ratio": region_s / small_s, "target": "<= 1.15",
                     "numpy_peak_mib": round(peak_big, 1), "baseline_numpy_peak_mib": round(peak_small, 1),
                     "note": f"canvas {canvas.nbytes / 2**20:.1f} MiB"})
        print(rows[-1], flush=True)
        if args.whole_read:
            whole_s, small_s = paired_medians(run_big_whole, run_small, repeat=args.repeat)
            rows.append({"measure": f"in-process {size}² canvas, whole result image read (load()) vs "
                                    f"{region.width}² ({label})", "ctrlgen_s": whole_s, "baseline_s": small_s,
                         "ratio": whole_s / small_s, "target": "(the eager paste's cost)",
                         "numpy_peak_mib": round(numpy_peak_mib(run_big_whole), 1),
                         "baseline_numpy_peak_mib": round(peak_small, 1),
                         "note": f"canvas {canvas.nbytes / 2**20:.1f} MiB"})
            print(rows[-1], flush=True)
        # The same edit in-process as a host plugin does it through the server: the region
        # (a view of the canvas) with its place, the changed box pasted back into the canvas.
        patch_job = parse_job(dict(fields, image="canvas", mask="mask", image_offset=[region.x0, region.y0],
                                   canvas_size=[size, size]))

        def run_patch(canvas=canvas, mask=mask, region=region, patch_job=patch_job):
            views = {"canvas": region.crop(canvas), "mask": region.crop(mask)}
            result = engine.run(patch_job, images=lambda ref, what: views[ref])
            x0, y0, x1, y1 = result.changed_box
            ox, oy = result.offset
            canvas[oy + y0 : oy + y1, ox + x0 : ox + x1] = result.crop()

        patch_s, small_s = paired_medians(run_patch, run_small, repeat=args.repeat)
        rows.append({"measure": f"in-process {size}² canvas, region + image_offset vs {region.width}² ({label})",
                     "ctrlgen_s": patch_s, "baseline_s": small_s, "ratio": patch_s / small_s, "target": "<= 1.15",
                     "numpy_peak_mib": round(numpy_peak_mib(run_patch), 1),
                     "baseline_numpy_peak_mib": round(peak_small, 1), "note": f"canvas {canvas.nbytes / 2**20:.1f} MiB"})
        print(rows[-1], flush=True)
        canvases[size] = (canvas, mask, region, small)
        if args.no_server:
            del canvases[size]

    # 2. Through a real `ctrlgen serve` with the region protocol.
    if not args.no_server:
        with ctrlgen_server(work / "config", placed.root) as client:
            for size in sizes:
                canvas, mask, region, small = canvases.pop(size)
                box = region.box
                came_back = through_server(client, canvas, mask, fields, box, whole=False)
                got = came_back[2] - came_back[0], came_back[3] - came_back[1]
                small_canvas, small_mask = small["canvas"], small["mask"]

                def region_edit(canvas=canvas, mask=mask, box=box):
                    through_server(client, canvas, mask, fields, box, whole=False)

                def small_edit(small_canvas=small_canvas, small_mask=small_mask):
                    through_server(client, small_canvas, small_mask, fields, None, whole=True)

                region_s, small_s = paired_medians(region_edit, small_edit, repeat=args.repeat)
                rows.append({"measure": f"server {size}² canvas, region protocol vs {region.width}² canvas "
                                        f"({label})",
                             "ctrlgen_s": region_s, "baseline_s": small_s, "ratio": region_s / small_s,
                             "target": "<= 1.15", "numpy_peak_mib": None, "baseline_numpy_peak_mib": None,
                             "note": f"uploaded {region.width}x{region.height}, downloaded {got[0]}x{got[1]}"})
                print(rows[-1], flush=True)
                del canvas, mask
    report("Region edits (median seconds; ratio = big canvas / canvas just large enough for the region)", rows,
           args.json)
    return rows


if __name__ == "__main__":
    main()
