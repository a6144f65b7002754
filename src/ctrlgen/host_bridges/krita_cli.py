"""`ctrlgen install krita` / `ctrlgen uninstall krita`: argument parsing only; the work is imported when the command runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_install_krita(args: argparse.Namespace) -> int:
    from .krita import install, kritarc_path

    kritarc = Path(args.kritarc) if args.kritarc else kritarc_path()
    target = install(Path(args.pykrita_dir) if args.pykrita_dir else None, kritarc=kritarc, enable=not args.no_enable)
    print(f"Installed the ctrlgen Krita plugin in {target}")
    if args.no_enable:
        print("Not enabled: turn on 'ctrlgen' in Settings > Configure Krita > Python Plugin Manager.")
    else:
        print(f"Enabled it in {kritarc} ([python] enable_ctrlgen_krita=true).")
    print("Next: start the server with `ctrlgen serve`, (re)start Krita, then open Settings > Dockers > ctrlgen.")
    return 0


def cmd_uninstall_krita(args: argparse.Namespace) -> int:
    from .krita import kritarc_path, uninstall

    kritarc = Path(args.kritarc) if args.kritarc else kritarc_path()
    removed = uninstall(Path(args.pykrita_dir) if args.pykrita_dir else None, kritarc=kritarc)
    if removed:
        print("Removed " + ", ".join(str(path) for path in removed))
    else:
        print("The ctrlgen Krita plugin was not installed there; nothing removed.")
    return 0


def _host_parser(sub: argparse._SubParsersAction, verb: str, help_text: str) -> argparse._SubParsersAction:
    parser = sub.add_parser(verb, help=help_text)
    hosts = parser.add_subparsers(dest="host", metavar="HOST", required=True)
    return hosts


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to ``ctrlgen``'s parser."""
    folder_help = ("Krita's pykrita folder (default: ~/.local/share/krita/pykrita on Linux, "
                   "%%APPDATA%%\\krita\\pykrita on Windows, ~/Library/Application Support/krita/pykrita on macOS)")
    kritarc_help = "Krita's settings file to enable the plugin in (default: Krita's kritarc)"
    hosts = _host_parser(sub, "install", "install ctrlgen's plugin into a host application (krita)")
    p = hosts.add_parser("krita", help="copy the Krita docker plugin and the client into Krita and enable it")
    p.add_argument("--pykrita-dir", metavar="DIR", help=folder_help)
    p.add_argument("--kritarc", metavar="FILE", help=kritarc_help)
    p.add_argument("--no-enable", action="store_true", help="copy only; enable it in Krita's plugin manager")
    p.set_defaults(func=cmd_install_krita)
    hosts = _host_parser(sub, "uninstall", "remove ctrlgen's plugin from a host application (krita)")
    p = hosts.add_parser("krita", help="remove the Krita plugin and its kritarc entry")
    p.add_argument("--pykrita-dir", metavar="DIR", help=folder_help)
    p.add_argument("--kritarc", metavar="FILE", help=kritarc_help)
    p.set_defaults(func=cmd_uninstall_krita)
