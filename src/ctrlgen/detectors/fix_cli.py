"""``ctrlgen fix INPUT...``: fix passes over files, folders and globs (docs/fixing.md).

What each image goes through is :mod:`ctrlgen.core.engine.batch`; the batch itself (outputs,
the manifest, resume, overlapped decode/encode, ``--devices``, ``--ray``) is the runner
``ctrlgen batch`` shares (:mod:`ctrlgen.core.engine.runner`, options from
:mod:`ctrlgen.core.cli.batch_cli`). This module reads the passes and, for ``--dry-run``, draws
the contact sheet of what would be fixed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.detectors.cli import assignment

DEFAULT_FACE_DETECTOR = "mediapipe_face_full"
DEFAULT_HAND_DETECTOR = "mediapipe_hands"


def _assignment(text: str) -> tuple[str, object]:
    return assignment(text, "denoise=0.5")


def read_passes(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The passes: those of ``--passes FILE.json`` (a list of passes, one pass, or a job with
    ``detail``), then ``--faces`` and ``--hands``; ``--set NAME=VALUE`` applies to each."""
    from ctrlgen.core.errors import JobError

    passes: list[dict[str, Any]] = []
    if args.passes:
        try:
            data = json.loads(Path(args.passes).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise JobError(f"--passes: {args.passes} does not exist; give a JSON file of passes") from None
        except json.JSONDecodeError as exc:
            raise JobError(f"--passes: {args.passes} is not JSON ({exc}); give a list of passes like "
                           '[{"detector": "mediapipe_face_full"}]') from None
        if isinstance(data, dict):
            data = data["detail"] if "detail" in data else [data]
        if not isinstance(data, list):
            raise JobError(f"--passes: {args.passes} holds a {type(data).__name__}; give a list of passes")
        passes += [{"detector": p} if isinstance(p, str) else dict(p) for p in data]
    if args.faces:
        passes.append({"detector": args.faces})
    if args.hands:
        passes.append({"detector": args.hands})
    overrides = dict(args.set or ())
    return [{**p, **overrides} for p in passes]


def job_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = {"model": args.model, "prompt": args.prompt, "negative_prompt": args.negative_prompt,
              "steps": args.steps, "seed": args.seed, "sampler": args.sampler, "cfg_scale": args.cfg_scale}
    return {name: value for name, value in fields.items() if value is not None}


def cmd_fix(args: argparse.Namespace) -> int:
    from ctrlgen.core.cli.batch_cli import Progress, make_runner
    from ctrlgen.core.engine import batch
    from ctrlgen.core.errors import JobError

    if args.out is None and args.suffix == "" and not args.overwrite:
        raise JobError("--suffix '' would write over the originals; give a suffix, --out DIR, or --overwrite")
    passes = read_passes(args)
    options = batch.BatchOptions(passes=passes, job=job_fields(args), workers=args.workers)
    inputs = batch.collect_inputs(args.inputs, recursive=args.recursive)
    if not inputs:
        raise JobError(f"no images in {' '.join(args.inputs)}; give image files, folders or globs")
    out_dir = Path(args.out) if args.out else None
    if args.dry_run:
        if not passes:
            raise JobError("no fix passes: give --faces, --hands or --passes FILE.json")
        return dry_run(args, inputs, passes)
    if not args.model:
        raise JobError("--model is missing; give a checkpoint from `ctrlgen models` (or --dry-run to only look)")
    items = batch.plan_outputs(inputs, out_dir, args.suffix, args.overwrite)
    engine, runner, make_engine = make_runner(args, args.workers)
    checked = batch.check_batch(engine, options)
    # What every Ray node must see: the model folders, the checkpoint, the inputs.
    node_paths = [str(root.path) for root in engine.store.roots] + [str(checked.checkpoint.path)] + [
        str(item.source) for item in items] if args.ray else []
    manifest = batch.Manifest(Path(args.manifest) if args.manifest
                              else (out_dir or Path.cwd()) / batch.MANIFEST_NAME)
    done_before = sum(manifest.done(item) for item in items)
    progress = Progress(len(items), done_before, "fixing", "image", args.quiet)
    try:
        batch.run_batch(engine, items, options, manifest, on_record=progress, runner=runner,
                        make_engine=make_engine, node_paths=node_paths)
    finally:
        manifest.close()
        progress.close()
    print(f"{len(items)} images: {progress.summary()}, {done_before} done before; manifest {manifest.path}")
    return 0


def dry_run(args: argparse.Namespace, inputs: list[tuple[Path, Path]], passes: list[dict[str, Any]]) -> int:
    """Detect and mask every input as the passes would, draw it, and write one contact sheet."""
    from dataclasses import replace

    from ctrlgen.core.cli.sheet import contact_sheet
    from ctrlgen.core.engine import batch
    from ctrlgen.core.engine.jobs import parse_job
    from ctrlgen.core.errors import CtrlgenError
    from ctrlgen.core.images import to_rgb
    from ctrlgen.detectors.draw import draw_detections

    parse_job({"task": "fix", "model": args.model or "dry-run", "image": "dry-run", "detail": passes})
    cells, total = [], 0
    for source, relative in inputs:
        try:
            pixels = to_rgb(batch.decode(source).pixels, str(source))
        except CtrlgenError as exc:
            print(f"skipped {source}: {exc}")
            continue
        drawn, counts = pixels, []
        for chosen, masks in batch.plan_image(pixels, passes):
            if len(masks) == len(chosen):
                chosen = [replace(d, mask=m) for d, m in zip(chosen, masks, strict=True)]
            elif masks:  # merged: the one mask on the first box
                chosen = [replace(chosen[0], mask=masks[0])] + chosen[1:]
            drawn = draw_detections(drawn, chosen)
            counts.append(len(chosen))
        total += sum(counts)
        cells.append((f"{relative} ({'+'.join(map(str, counts))})", drawn))
        print(f"{source}: {' + '.join(map(str, counts))} to fix")
    sheet_path = Path(args.sheet or (Path(args.out) if args.out else Path.cwd()) / "ctrlgen-fix-dry-run.png")
    if cells:
        sheet_path.parent.mkdir(parents=True, exist_ok=True)
        sheet = contact_sheet(cells, cell=args.cell, columns=min(8, len(cells)),
                              title=f"ctrlgen fix --dry-run: {total} detections in {len(cells)} images")
        sheet.save(sheet_path)
        print(f"wrote {sheet_path}")
    return 0


@hookimpl
def ctrlgen_cli_commands(subparsers) -> None:
    from ctrlgen.core.cli.batch_cli import add_runner_arguments

    parser = subparsers.add_parser(
        "fix", help="fix faces, hands (any fix passes) in image files, folders and globs; resumable",
        description="Run fix passes (docs/fixing.md) on every image given: files, folders (their images) and "
                    "globs. Outputs are written atomically, beside the originals with a suffix or into --out; a "
                    "JSONL manifest records each image, and running the same command again resumes. --devices "
                    "runs one engine per device, --ray runs on a Ray cluster (docs/scaling.md).")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, folder or glob ('photos/**/*.png')")
    parser.add_argument("--model", help="checkpoint from `ctrlgen models` (required unless --dry-run)")
    parser.add_argument("--passes", metavar="FILE.json", help="a JSON list of fix passes (docs/fixing.md's fields)")
    parser.add_argument("--faces", metavar="DETECTOR",
                        help=f"add a face pass with this detector (e.g. {DEFAULT_FACE_DETECTOR})")
    parser.add_argument("--hands", metavar="DETECTOR",
                        help=f"add a hand pass with this detector (e.g. {DEFAULT_HAND_DETECTOR}), after the faces")
    parser.add_argument("--set", action="append", type=_assignment, metavar="NAME=VALUE",
                        help="a pass option for every pass, e.g. denoise=0.5 (VALUE is read as JSON when it parses)")
    parser.add_argument("--prompt", help="the job prompt ([PROMPT] in a pass's prompt)")
    parser.add_argument("--negative-prompt", dest="negative_prompt")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int, help="each image's seed (default: random, recorded in the manifest)")
    parser.add_argument("--sampler")
    parser.add_argument("--cfg-scale", dest="cfg_scale", type=float)
    parser.add_argument("--out", metavar="DIR", help="write the fixed images here (keeping sub-folder names)")
    parser.add_argument("--suffix", help="added to each output's name (default -fixed beside the originals, "
                                         "none with --out)")
    parser.add_argument("--overwrite", action="store_true", help="allow replacing the originals")
    parser.add_argument("--recursive", action="store_true", help="folders: their sub-folders too")
    parser.add_argument("--manifest", metavar="FILE.jsonl",
                        help="the manifest (default ctrlgen-fix.jsonl: in --out, else in the current folder)")
    parser.add_argument("--workers", type=int, default=2, help="decode/encode threads beside each engine (default 2)")
    parser.add_argument("--dry-run", dest="dry_run", action="store_true",
                        help="fix nothing: draw what would be fixed on each image into one contact sheet")
    parser.add_argument("--sheet", metavar="OUT.png", help="the --dry-run sheet (default ctrlgen-fix-dry-run.png in "
                                                          "--out or the current folder)")
    parser.add_argument("--cell", type=int, default=192, help="--dry-run sheet cell size in pixels (default 192)")
    add_runner_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_fix)

