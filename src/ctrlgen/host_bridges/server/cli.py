"""`ctrlgen serve`: argument parsing only; the work is imported when the command runs."""

from __future__ import annotations

import argparse
import os

from ctrlgen.core.plugins.manager import hookimpl


def _size(text: str) -> int:
    """A byte count: 1048576, 64M, 2G, 1GiB (binary units)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in "KMG" else text
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 1048576, 64M, 2G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("a size must be positive")
    return value


def cmd_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ctrlgen.core.errors import CtrlgenError

    try:
        from ctrlgen.host_bridges.server.app import ServerConfig
        from ctrlgen.host_bridges.server.serving import serve
    except ImportError as exc:
        raise CtrlgenError(f"`ctrlgen serve` needs the server extra ({exc.name} is missing); install it with: "
                           "pip install 'ctrlgen[server]'") from None

    devices = None
    if args.devices:
        from ctrlgen.core.engine.runner import parse_devices

        if args.device:
            raise CtrlgenError("give either --device (with --workers N) or --devices (one worker per entry), not both")
        if args.workers is not None:
            raise CtrlgenError("--devices makes one worker per listed device; list a device twice for two workers on "
                               "it (--devices cuda:0,cuda:0) instead of adding --workers")
        devices = tuple(parse_devices(args.devices))
    if args.workers is not None and args.workers < (0 if args.ray else 1):
        raise CtrlgenError("--workers must be 1 or more (0 only with --ray: then every job runs on Ray)")
    if (args.ray_workers is not None or args.ray_cpus is not None) and not args.ray:
        raise CtrlgenError("--ray-workers and --ray-cpus only matter with --ray ADDRESS")
    if args.ray:
        from ctrlgen.core.engine.ray_runner import import_ray

        import_ray()  # a clear line when Ray is not installed, before anything starts
    config = ServerConfig(
        host=args.host, port=args.port, unix_socket=args.unix_socket, allow_remote=args.allow_remote,
        allowed_origins=tuple(args.allowed_origin or ()), allowed_hosts=tuple(args.allowed_host or ()),
        device=args.device, workers=args.workers, devices=devices, ray=args.ray, ray_workers=args.ray_workers,
        ray_cpus=args.ray_cpus, result_ttl_s=args.result_ttl, max_queue=args.max_queue,
        max_results=args.max_results, max_upload_bytes=args.max_upload_bytes, max_pixels=args.max_pixels,
        max_side=args.max_side, max_upload_memory=args.max_memory, keepalive_s=args.keepalive,
        preload=args.preload, warmup=not args.no_warmup,
        config_dir=Path(args.config_dir) if args.config_dir else None, log_level=args.log_level,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        outputs_dir=Path(args.outputs) if args.outputs else None, save_outputs=not args.no_outputs,
        outputs_max_bytes=args.outputs_max_bytes, stall_timeout_s=args.stall_timeout)
    return serve(config)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to ``ctrlgen``'s parser."""
    p = sub.add_parser("serve", help="run the local bridge server host apps talk to (docs/protocol.md)",
                       description="Serve protocol v1 over HTTP on loopback (and optionally a Unix socket). "
                                   "The token is created in `ctrlgen config-dir` on first start.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7421, help="TCP port (default 7421; 0 lets the system pick)")
    p.add_argument("--unix-socket", metavar="PATH", help="also listen on this Unix socket (created mode 0600)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host (prints a warning; the token is still required)")
    p.add_argument("--allowed-origin", action="append", metavar="ORIGIN",
                   help="a web origin whose requests are accepted (default: none); repeatable")
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="with --allow-remote: a Host name accepted besides loopback names; repeatable "
                        "(without any, every Host is accepted)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (the device of --workers)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run N jobs at once, each worker an engine on --device (default 1; 0 with --ray)")
    p.add_argument("--devices", metavar="LIST",
                   help="one worker per device: cuda:0,cuda:1, all (every CUDA device) or cpu,cpu (a device may "
                        "repeat); docs/scaling.md")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run jobs on Ray actors: auto (the cluster `ray start` runs here), local (a new one in "
                        "this process) or HOST:PORT; journal, uploads and results stay here (docs/scaling.md)")
    p.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="with --ray: how many actors (default: one per GPU, else one per --ray-cpus CPUs)")
    p.add_argument("--ray-cpus", type=float, default=None, metavar="N",
                   help="with --ray on a cluster without GPUs: CPUs per actor (default 1; fractions are fine)")
    p.add_argument("--result-ttl", type=float, default=3600.0, metavar="SECONDS",
                   help="how long results of ended jobs stay downloadable (default 3600)")
    p.add_argument("--max-queue", type=int, default=100, metavar="N", help="jobs that may wait (default 100)")
    p.add_argument("--max-results", type=int, default=100, metavar="N",
                   help="ended jobs kept with their results; older ones are dropped first (default 100)")
    p.add_argument("--max-upload-bytes", type=_size, default=256 * 2**20, metavar="SIZE",
                   help="largest upload body (default 256M)")
    p.add_argument("--max-pixels", type=int, default=8192 * 8192, metavar="N",
                   help="largest image in pixels (default 8192*8192)")
    p.add_argument("--max-side", type=int, default=8192, metavar="PX", help="longest image side (default 8192)")
    p.add_argument("--max-memory", "--max-upload-memory", dest="max_memory", type=_size, default=2 * 2**30,
                   metavar="SIZE",
                   help="memory for uploaded images and results (e.g. 1GiB); beyond it the least recently used "
                        "ones no queued or running job needs leave memory and stay on disk in the state folder "
                        "(default 2GiB)")
    p.add_argument("--preload", metavar="MODEL", default=os.environ.get("CTRLGEN_PRELOAD") or None,
                   help="load this model (a name `ctrlgen models` lists) right after start, before the first job "
                        "(default: $CTRLGEN_PRELOAD)")
    p.add_argument("--no-warmup", action="store_true",
                   help="do not import torch and diffusers at start (they are then imported by the first job)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="the job journal, uploads and results, kept across restarts (default: CONFIG/server)")
    p.add_argument("--outputs", metavar="DIR",
                   help="every result is also saved here as a PNG with its parameters (default: CONFIG/outputs)")
    p.add_argument("--no-outputs", action="store_true", help="do not save results in the outputs folder")
    p.add_argument("--outputs-max-bytes", type=_size, default=20 * 2**30, metavar="SIZE",
                   help="the outputs folder's size limit; the oldest PNGs are deleted beyond it (default 20G)")
    p.add_argument("--stall-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="close a connection whose headers take longer, or whose body pauses longer (default 30)")
    p.add_argument("--keepalive", type=float, default=15.0, metavar="SECONDS",
                   help="send a keep-alive comment on quiet event streams this often (default 15)")
    p.add_argument("--config-dir", help="where token and server.json live (default: `ctrlgen config-dir`)")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=cmd_serve)


@hookimpl
def ctrlgen_cli_commands(subparsers: argparse._SubParsersAction) -> None:
    add_commands(subparsers)
