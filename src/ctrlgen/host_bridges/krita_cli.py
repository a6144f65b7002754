"""`ctrlgen install krita` / `ctrlgen uninstall krita`: argument parsing only; the work is imported when the command runs."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to ``ctrlgen``'s parser."""
