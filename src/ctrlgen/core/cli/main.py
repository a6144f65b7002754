"""The ``ctrlgen`` command line.

Sub-commands import what they need when they run, so ``ctrlgen --help`` and
``ctrlgen plugins`` start fast and never import torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ctrlgen.core.errors import CtrlgenError


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


# -- plugins -------------------------------------------------------------------------
def cmd_plugins(args: argparse.Namespace) -> int:
    from ctrlgen.core.plugins.manager import get_host

    host = get_host()
    conflicts = host.conflicts()  # builds every registry, so hooks that raise are recorded first
    infos = [info for info in host.infos.values() if args.all or not info.builtin or info.errors]
    if args.json:
        _print_json({"plugins": [i.to_json() for i in infos], "conflicts": [c.to_json() for c in conflicts]})
        return 1 if conflicts else 0
    if not infos:
        print("No third-party plugins installed (use --all to list the built-in ones).")
    withheld = {(c.kind, c.name) for c in conflicts}
    for info in infos:
        origin = "built-in" if info.builtin else info.module
        print(f"{info.name}  [{info.distribution} {info.version}, {origin}, {info.status}]")
        if info.hooks:
            print(f"    hooks: {', '.join(info.hooks)}")
        for kind, names in sorted(info.provides.items()):
            shown = [f"{n} (CONFLICT: unavailable)" if (kind, n) in withheld else n for n in sorted(names)]
            print(f"    {kind}: {', '.join(shown)}")
        for error in info.errors:
            print(f"    error: {error}")
    for conflict in conflicts:
        print(f"\nconflict in {conflict.kind}: {conflict.message}")
    return 1 if conflicts else 0


# -- models ----------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from ctrlgen.core.models.store import ModelStore

    store = ModelStore.from_settings()
    entries = store.scan(refresh=True)
    if args.category:
        entries = [e for e in entries if e.category == args.category]
    if args.json:
        _print_json({"roots": [str(r.path) for r in store.roots], "models": [e.to_json() for e in entries]})
        return 0
    if not store.roots:
        print(
            "No model folders configured. Point ctrlgen at your A1111 / ComfyUI install with\n"
            "  CTRLGEN_MODEL_ROOTS=/path/to/stable-diffusion-webui:/path/to/ComfyUI\n"
            "or `model_roots = [...]` in the config.toml of `ctrlgen config-dir`."
        )
        return 0
    print("Model folders: " + ", ".join(str(r.path) for r in store.roots))
    if not entries:
        print("No models found.")
    for entry in entries:
        ident = entry.identity
        variant = f"/{ident.variant}" if ident.variant else ""
        size = entry.size_bytes / 2**20
        print(f"{entry.category:12} {entry.name:40} {ident.kind:12} {ident.architecture}{variant:10} {size:9.1f} MiB")
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    from ctrlgen.core.config import load_settings
    from ctrlgen.core.models.pull import pull

    paths = pull(args.repo, args.files or (), revision=args.revision)
    for path in paths:
        print(f"downloaded {path}")
    if not load_settings().hf_cache:
        print("note: scanning the Hugging Face cache is switched off (hf_cache = false); "
              "switch it on so ctrlgen finds these files")
    return 0


# -- preprocess -----------------------------------------------------------------------
def _parse_params(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise CtrlgenError(f"--param {pair!r} must look like name=value")
        key, value = pair.split("=", 1)
        params[key.strip()] = value.strip()
    return params


def cmd_preprocess(args: argparse.Namespace) -> int:
    from PIL import Image

    from ctrlgen.core.engine.engine import read_image

    if args.sheet:
        if len(args.paths) != 2:
            raise CtrlgenError("usage: ctrlgen preprocess --sheet IN OUT.png")
        from ctrlgen.core.cli.sheet import preprocessor_sheet

        image = read_image(args.paths[0], "input image")
        sheet, ran, skipped = preprocessor_sheet(image, cell=args.cell)
        sheet.save(args.paths[1])
        if args.json:
            _print_json({"output": args.paths[1], "ran": ran, "skipped": skipped})
        else:
            print(f"wrote {args.paths[1]}: {len(ran)} preprocessors ({', '.join(ran)})")
            for name, reason in skipped.items():
                print(f"  skipped {name}: {reason}")
        return 0
    if len(args.paths) != 3:
        raise CtrlgenError("usage: ctrlgen preprocess NAME IN OUT [--param NAME=VALUE ...]")
    from ctrlgen.core.engine.preprocess import preprocess

    name, source, output = args.paths
    image = read_image(source, "input image")
    mask = read_mask(args.mask, image) if args.mask else None
    result = preprocess(name, image, mask=mask, **_parse_params(args.param or []))
    Image.fromarray(result.image).save(output)
    if args.json:
        _print_json({"output": output, "width": image.shape[1], "height": image.shape[0], "data": result.data})
    else:
        print(f"wrote {output}")
    return 0


def read_mask(path: str, image) -> Any:
    from PIL import Image, UnidentifiedImageError

    from ctrlgen.core.images import to_mask

    try:
        with Image.open(path) as mask:
            mask.load()
            return to_mask(mask, (image.shape[1], image.shape[0]))
    except FileNotFoundError:
        raise CtrlgenError(f"mask file {path} does not exist") from None
    except UnidentifiedImageError:
        raise CtrlgenError(f"mask {path} is not an image PIL can read") from None


# -- generate -----------------------------------------------------------------------------
def cmd_generate(args: argparse.Namespace) -> int:
    from ctrlgen.core.cli.progress import progress_printer
    from ctrlgen.core.engine.engine import Engine
    from ctrlgen.core.engine.jobs import load_job

    job = load_job(args.job)
    engine = Engine(device=args.device, precision=args.precision, memory=args.memory, vae_tiling=args.vae_tiling)
    result = engine.run(job, on_event=progress_printer(args.quiet))
    paths = result.save(Path(args.out), stem=Path(args.job).stem)
    if args.json:
        _print_json({"outputs": [str(p) for p in paths], "seeds": result.seeds})
    else:
        for path, seed in zip(paths, result.seeds, strict=False):
            print(f"wrote {path} (seed {seed})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ctrlgen.core.cli.demo import run_demo

    run_demo(Path(args.out), steps=args.steps, size=args.size, device=args.device,
             model=args.model, controlnet=args.controlnet, seed=args.seed)
    return 0


def cmd_config_dir(args: argparse.Namespace) -> int:
    from ctrlgen.core.config import config_dir

    print(config_dir())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ctrlgen._version import __version__

    parser = argparse.ArgumentParser(
        prog="ctrlgen",
        description="Controllable generation (ControlNet, preprocessors, adapters) for image editors.",
    )
    parser.add_argument("--version", action="version", version=f"ctrlgen {__version__}")
    parser.add_argument("--threads", type=_thread_count, default=None, metavar="N",
                        help="CPU threads for torch and OpenCV in every subcommand, serve included "
                             "(default: CTRLGEN_THREADS, `threads` in config.toml, else the libraries' own)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="list plugins, their hooks and what they provide")
    p.add_argument("--all", action="store_true", help="include the built-in plugins")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("models", help="list the models found in the model folders (or: models pull)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--category", help="only this category (checkpoints, controlnet, loras, ...)")
    p.set_defaults(func=cmd_models)
    models_sub = p.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    pull_parser = models_sub.add_parser(
        "pull", help="download a Hugging Face repo (or some of its files) into the HF cache")
    pull_parser.add_argument("repo", help="ORG/NAME, e.g. lllyasviel/Annotators")
    pull_parser.add_argument("files", nargs="*", help="files to fetch (default: safetensors and configs)")
    pull_parser.add_argument("--revision", help="branch, tag or commit")
    pull_parser.set_defaults(func=cmd_models_pull)

    p = sub.add_parser(
        "preprocess", help="run one preprocessor on an image (or --sheet: all of them)",
        usage="ctrlgen preprocess NAME IN OUT [--param NAME=VALUE ...] [--mask MASK] [--json]\n"
              "       ctrlgen preprocess --sheet IN OUT.png [--cell PX] [--json]")
    p.add_argument("paths", nargs="+", metavar="NAME IN OUT", help="preprocessor name, input image, output PNG")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="preprocessor parameter")
    p.add_argument("--mask", help="mask image (white = masked), for preprocessors that use one")
    p.add_argument("--sheet", action="store_true", help="a labelled contact sheet of every preprocessor")
    p.add_argument("--cell", type=int, default=256, help="sheet cell size in pixels (default 256)")
    p.add_argument("--json", action="store_true", help="print the result's data as JSON")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("generate", help="run a job file (JOB.json) and write PNGs")
    p.add_argument("job", help="job file (see docs/jobs.md)")
    p.add_argument("--out", default="outputs", help="output folder (default: ./outputs)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", default=None, help="auto (fp16 on GPUs, fp32 on CPU), float16, bfloat16, float32")
    p.add_argument("--memory", default=None,
                   help="auto (from free memory), none, model_offload or sequential_offload (low-VRAM cards)")
    p.add_argument("--vae-tiling", default=None, help="auto, on or off: decode big images in tiles")
    p.add_argument("--json", action="store_true", help="print outputs as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="run the built-in demo (no GPU or downloads needed)")
    p.add_argument("--out", default="ctrlgen-demo", help="output folder (default: ./ctrlgen-demo)")
    p.add_argument("--steps", type=int, default=12, help="denoising steps (default 12)")
    p.add_argument("--size", type=int, default=256, help="output size in pixels (default 256)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=1234, help="seed (default 1234)")
    p.add_argument("--model", help="a real checkpoint from `ctrlgen models` instead of the tiny one")
    p.add_argument("--controlnet", help="a canny ControlNet from `ctrlgen models` (with --model)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("config-dir", help="print ctrlgen's configuration folder")
    p.set_defaults(func=cmd_config_dir)

    from ctrlgen.core.cli.batch_cli import add_batch_command

    add_batch_command(sub)

    # Plugins add their commands (serve, client, install and render-pose are built-in
    # plugins); each imports nothing heavy until its command runs. They are asked in load
    # order, built-ins first, so a third-party plugin cannot take a built-in command's name:
    # its hook fails on the conflict and is recorded against it (`ctrlgen plugins`).
    from ctrlgen.core.plugins.manager import get_plugin_manager

    for impl in get_plugin_manager().hook.ctrlgen_cli_commands.get_hookimpls():
        impl.function(**{name: sub for name in impl.argnames})
    return parser


def _thread_count(value: str) -> int:
    from ctrlgen.core.threads import parse_threads

    try:
        count = parse_threads(value, "--threads")
    except CtrlgenError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return count or 0


def _apply_threads(args: argparse.Namespace) -> None:
    """``--threads``, else the setting (env, config.toml), for this process and what it starts."""
    import os

    from ctrlgen.core.threads import apply_threads

    count = getattr(args, "threads", None)
    if count:
        os.environ["CTRLGEN_THREADS"] = str(count)  # Engines made later (serve's) read the setting
    else:
        from ctrlgen.core.config import load_settings

        try:
            count = load_settings().threads
        except CtrlgenError:  # a broken config.toml: the commands that read it say so themselves
            return
    apply_threads(count)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        from ctrlgen.core.plugins.manager import startup

        _apply_threads(args)

        if args.command != "plugins":
            startup()
        return args.func(args)
    except CtrlgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
