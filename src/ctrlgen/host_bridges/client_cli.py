"""`ctrlgen client ...`: the standard-library client on the command line.

Parsing costs nothing; PIL and the client load when a command runs (``ctrlgen --help`` stays fast).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ctrlgen.core.plugins.manager import hookimpl

from ..core.errors import CtrlgenError


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to ``ctrlgen``'s parser."""
    parser = sub.add_parser(
        "client", help="talk to a running `ctrlgen serve` (capabilities, run a job, queue)",
        description="Talk to a running `ctrlgen serve`. The server's address and token are read from "
                    "server.json and token in `ctrlgen config-dir` unless --url/--unix-socket/--token are given.")
    parser.add_argument("--url", help="server address, e.g. http://127.0.0.1:7421 (default: from server.json)")
    parser.add_argument("--unix-socket", metavar="PATH", help="connect through this Unix socket instead")
    parser.add_argument("--token", help="access token (default: the token file in the config folder)")
    parser.set_defaults(func=_help(parser))
    commands = parser.add_subparsers(dest="client_command", metavar="SUBCOMMAND")

    p = commands.add_parser("health", help="is the server up; its version and queue")
    p.set_defaults(func=_wrap(cmd_health))

    p = commands.add_parser("capabilities", help="the preprocessors, adapters, models and samplers it offers")
    p.add_argument("--json", action="store_true", help="print the server's full answer as JSON")
    p.set_defaults(func=_wrap(cmd_capabilities))

    p = commands.add_parser(
        "run", help="run a job file on the server and write the results as PNG",
        description="Run JOB.json (see docs/jobs.md) on the server. Image files named in the job, and those "
                    "given with --image/--mask/--control-image, are uploaded (raw pixels, skipped when the "
                    "server already has them).")
    p.add_argument("job", help="job file (JSON)")
    p.add_argument("--image", help="input image (sets job.image)")
    p.add_argument("--mask", help="mask image, white = repaint (sets job.mask)")
    p.add_argument("--control-image", action="append", default=[], metavar="INDEX=PATH",
                   help="image for ControlNet unit INDEX (sets job.control[INDEX].image); repeatable")
    p.add_argument("--out", default="outputs", help="output folder (default: ./outputs)")
    p.add_argument("--format", choices=("raw", "png", "webp"), default="raw",
                   help="how results travel (default raw; files are always written as PNG)")
    p.add_argument("--preview", action="store_true", help="ask for preview events")
    p.add_argument("--json", action="store_true", help="print outputs and seeds as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_wrap(cmd_run))

    p = commands.add_parser("jobs", help="list queued, running and recent jobs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_wrap(cmd_jobs))

    p = commands.add_parser("cancel", help="cancel a queued or running job")
    p.add_argument("job_id", help="the job's id (from `ctrlgen client jobs`)")
    p.set_defaults(func=_wrap(cmd_cancel))


def _help(parser: argparse.ArgumentParser):
    def run(args: argparse.Namespace) -> int:
        parser.print_help()
        return 0

    return run


def _wrap(command):
    """Run ``command(args, client)``; the client's errors become CtrlgenError (``error: ...``, exit 2)."""

    def run(args: argparse.Namespace) -> int:
        from .client import ClientError

        try:
            return command(args, _connect(args))
        except ClientError as exc:
            raise CtrlgenError(str(exc)) from None

    return run


def _connect(args: argparse.Namespace):
    from .client import Client

    if args.url or args.unix_socket:
        return Client(args.url, token=args.token, unix_socket=args.unix_socket)
    return Client.discover(token=args.token)


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def cmd_health(args: argparse.Namespace, client) -> int:
    health = client.health()
    queue = health.get("queue") or {}
    running = queue.get("running")
    print(f"{health.get('status', '?')}: ctrlgen {health.get('version', '?')} at {client.url}; "
          f"running {running or 'nothing'}, {queue.get('queued', 0)} queued")
    return 0


def cmd_capabilities(args: argparse.Namespace, client) -> int:
    caps = client.capabilities()
    if args.json:
        _print_json(caps)
        return 0
    print(f"ctrlgen {caps.get('version', '?')} at {client.url}")
    for title, key in (("Preprocessors", "preprocessors"), ("Adapters", "adapters")):
        items = caps.get(key) or []
        print(f"\n{title} ({len(items)}):")
        for item in items:
            params = ", ".join(p.get("name", "?") for p in item.get("params") or [])
            print(f"  {item.get('name', '?'):24} {item.get('description', '')}")
            if params:
                print(f"  {'':24} params: {params}")
    models = caps.get("models") or []
    print(f"\nModels ({len(models)}):")
    for model in models:
        print(f"  {model.get('category', ''):12} {model.get('name', '?'):40} {model.get('architecture', '')}")
    print(f"\nSamplers: {', '.join(caps.get('samplers') or [])}")
    limits = caps.get("limits") or {}
    if limits:
        print("Limits: " + ", ".join(f"{key}={value}" for key, value in sorted(limits.items())))
    return 0


def cmd_jobs(args: argparse.Namespace, client) -> int:
    jobs = client.jobs()
    if args.json:
        _print_json({"jobs": jobs})
        return 0
    if not jobs:
        print("No jobs.")
    for job in jobs:
        position = job.get("position")
        where = f" #{position}" if job.get("status") == "queued" and position is not None else ""
        print(f"{job.get('id')}  {job.get('status')}{where}  {job.get('task') or ''}  {job.get('model') or ''}")
    return 0


def cmd_cancel(args: argparse.Namespace, client) -> int:
    answer = client.cancel(args.job_id)
    status = answer.get("status")
    if status == "cancelled":
        print(f"{answer.get('id', args.job_id)}: cancelled")
    else:  # a running job stops at its next step
        print(f"{answer.get('id', args.job_id)}: cancel requested (it was {status})")
    return 0


def cmd_run(args: argparse.Namespace, client) -> int:
    job_path = Path(args.job)
    try:
        job = json.loads(job_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CtrlgenError(f"job file {job_path} does not exist") from None
    except ValueError as exc:
        raise CtrlgenError(f"job file {job_path} is not valid JSON: {exc}") from None
    if not isinstance(job, dict):
        raise CtrlgenError(f"job file {job_path} must hold a JSON object, not {type(job).__name__}")

    images: dict[str, Any] = {}
    # Image files the job names itself (relative to the job file), then the command line's.
    for key, value in _job_image_fields(job):
        if isinstance(value, str) and value and not value.startswith("sha256:"):
            path = Path(value).expanduser()
            images[key] = _read_image(path if path.is_absolute() else job_path.parent / path, key)
    if args.image:
        images["image"] = _read_image(Path(args.image), "--image")
    if args.mask:
        images["mask"] = _read_image(Path(args.mask), "--mask")
    for pair in args.control_image:
        index, sep, path = pair.partition("=")
        if not sep or not index.strip().isdigit() or not path:
            raise CtrlgenError(f"--control-image {pair!r} must look like INDEX=PATH, e.g. 0=canny.png")
        if int(index) >= len(job.get("control") or []):
            raise CtrlgenError(f"--control-image {pair!r}: the job has no control[{int(index)}] unit "
                               f"(it has {len(job.get('control') or [])})")
        images[f"control.{int(index)}.image"] = _read_image(Path(path), f"--control-image {index}")

    results = client.run(job, images=images, on_event=_progress(args.quiet or args.json),
                         preview=args.preview, format=args.format)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, result in enumerate(results):
        path = out / f"{job_path.stem}-{index:02d}.png"
        _write_png(result, path)
        paths.append(str(path))
    if args.json:
        _print_json({"outputs": paths})
    else:
        for path in paths:
            print(f"wrote {path}")
    return 0


def _job_image_fields(job: dict[str, Any]):
    for key in ("image", "mask"):
        if key in job:
            yield key, job[key]
    for group in ("control", "adapters"):
        for index, item in enumerate(job.get(group) or []):
            if isinstance(item, dict) and "image" in item:
                yield f"{group}.{index}.image", item["image"]


def _read_image(path: Path, what: str):
    """A file as a RawImage: grey stays grey, alpha stays RGBA, anything else becomes RGB."""
    from PIL import Image, UnidentifiedImageError

    from .client import RawImage

    try:
        with Image.open(path) as opened:
            image = opened.copy()
    except FileNotFoundError:
        raise CtrlgenError(f"{what}: image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise CtrlgenError(f"{what}: {path} is not an image PIL can read ({exc})") from None
    if image.mode in ("L", "1", "I", "I;16", "F"):
        image = image.convert("L")
    elif image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
    else:
        image = image.convert("RGB")
    return RawImage(image.tobytes(), image.width, image.height, len(image.getbands()))


def _write_png(result: Any, path: Path) -> None:
    from PIL import Image

    from .client import RawImage

    if isinstance(result, RawImage):
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[result.channels]
        Image.frombuffer(mode, (result.width, result.height), bytes(result.data), "raw", mode, 0, 1).save(path)
    elif bytes(result[:8]) == b"\x89PNG\r\n\x1a\n":
        path.write_bytes(result)
    else:  # WebP or another encoded format
        from io import BytesIO

        with Image.open(BytesIO(result)) as image:
            image.save(path)


def _progress(quiet: bool):
    def on_event(event) -> None:
        if quiet:
            return
        if event.kind == "queued":
            print(f"queued (position {event.data.get('position')})", file=sys.stderr)
        elif event.kind == "progress":
            print(f"\rstep {event.data.get('step')}/{event.data.get('total')}", end="", file=sys.stderr, flush=True)
        elif event.kind in ("finished", "error", "cancelled"):
            print(f"\n{event.kind}", file=sys.stderr)

    return on_event


@hookimpl
def ctrlgen_cli_commands(subparsers: argparse._SubParsersAction) -> None:
    add_commands(subparsers)
