"""`ctrlgen install HOST` / `ctrlgen uninstall HOST`: argument parsing only.

Hosts come from the ``host_bridges`` registry (the ``ctrlgen_host_bridges`` hook), so a plugin
that yields a :class:`~ctrlgen.HostBridgeSpec` for "myeditor" gets ``ctrlgen install myeditor``.
Krita is the built-in host; its own options (``--kritarc``, ``--no-enable``) are passed to its
installer only. The work is imported when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ctrlgen.core.plugins.manager import hookimpl

from ..core.errors import CtrlgenError

_KRITA_ONLY = ("kritarc", "no_enable")


def _bridge(args: argparse.Namespace):
    from ctrlgen.core.plugins.manager import get_registry

    spec = get_registry("host_bridges").get(args.host)  # unknown → names the hosts there are
    given = [name for name in _KRITA_ONLY if getattr(args, name, None)]
    if given and spec.name != "krita":
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        raise CtrlgenError(f"{options}: only for `ctrlgen {args.command} krita`; the {spec.name} installer "
                           "takes only --target")
    return spec


def _kritarc(args: argparse.Namespace) -> Path:
    from .krita import kritarc_path

    return Path(args.kritarc).expanduser() if args.kritarc else kritarc_path()


def cmd_install(args: argparse.Namespace) -> int:
    spec = _bridge(args)
    target = Path(args.target).expanduser() if args.target else None
    if spec.name != "krita":
        where = spec.install(target)
        print(f"Installed the ctrlgen {spec.name} plugin in {where}")
        print("Next: start the server with `ctrlgen serve`, then (re)start the application.")
        return 0
    kritarc = _kritarc(args)
    where = spec.install(target, kritarc=kritarc, enable=not args.no_enable)
    print(f"Installed the ctrlgen Krita plugin in {where}")
    if args.no_enable:
        print("Not enabled: turn on 'ctrlgen' in Settings > Configure Krita > Python Plugin Manager.")
    else:
        print(f"Enabled it in {kritarc} ([python] enable_ctrlgen_krita=true).")
    print("Next: start the server with `ctrlgen serve`, (re)start Krita, then open Settings > Dockers > ctrlgen.")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    spec = _bridge(args)
    target = Path(args.target).expanduser() if args.target else None
    removed = spec.uninstall(target, kritarc=_kritarc(args)) if spec.name == "krita" else spec.uninstall(target)
    paths = [removed] if isinstance(removed, (str, Path)) else list(removed or [])
    if paths:
        print("Removed " + ", ".join(str(path) for path in paths))
    else:
        print(f"The ctrlgen {spec.name} plugin was not installed there; nothing removed.")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to ``ctrlgen``'s parser."""
    host_help = ("the application: krita, or a host a plugin adds (`ctrlgen plugins` lists the "
                 "host bridges there are)")
    target_help = ("the folder to install into (default: the application's own; for Krita its pykrita "
                   "folder: ~/.local/share/krita/pykrita on Linux, %%APPDATA%%\\krita\\pykrita on Windows, "
                   "~/Library/Application Support/krita/pykrita on macOS)")
    kritarc_help = "Krita only: its settings file to enable the plugin in (default: Krita's kritarc)"
    for verb, text, func in (("install", "install ctrlgen's plugin into a host application", cmd_install),
                             ("uninstall", "remove ctrlgen's plugin from a host application", cmd_uninstall)):
        p = sub.add_parser(verb, help=f"{text} (krita, …)", description=f"{text}.")
        p.add_argument("host", metavar="HOST", help=host_help)
        p.add_argument("--target", "--pykrita-dir", dest="target", metavar="DIR", help=target_help)
        p.add_argument("--kritarc", metavar="FILE", help=kritarc_help)
        if verb == "install":
            p.add_argument("--no-enable", action="store_true",
                           help="Krita only: copy only; enable it in Krita's plugin manager")
        p.set_defaults(func=func)


@hookimpl
def ctrlgen_cli_commands(subparsers: argparse._SubParsersAction) -> None:
    add_commands(subparsers)
