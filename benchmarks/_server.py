"""A ``ctrlgen serve`` subprocess for the benchmarks that go through the server.

:func:`served` starts it on a free port with its own config folder, waits for ``server.json``
(and, unless told not to, for the warm-up: imports are not part of a round trip), yields a
discovered :class:`~ctrlgen.host_bridges.client.Client`, and stops the server after.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

SERVE = ("-m", "ctrlgen.core.cli.main")


@contextlib.contextmanager
def served(config: Path, arguments: Sequence[str], env: Mapping[str, str] | None = None, *,
           wait_ready: bool = True, start_timeout: float = 180, stop_timeout: float = 10) -> Iterator[Any]:
    """``python -m ctrlgen.core.cli.main *arguments`` (which include ``serve``) with
    ``CTRLGEN_CONFIG_DIR=config`` and ``env`` over this process's environment."""
    from ctrlgen.host_bridges.client import Client

    environment = dict(os.environ, **(env or {}), CTRLGEN_CONFIG_DIR=str(config))
    process = subprocess.Popen([sys.executable, *SERVE, *arguments], env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + start_timeout
        while not (config / "server.json").is_file():
            if process.poll() is not None:
                raise RuntimeError(f"ctrlgen serve exited: {process.stderr.read()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ctrlgen serve did not write server.json within {start_timeout:.0f} s")
            time.sleep(0.1)
        client = Client.discover(config)
        while wait_ready and client.health().get("state", "ready") != "ready":
            time.sleep(0.1)
        try:
            yield client
        finally:
            client.close()
    finally:
        process.terminate()
        try:
            process.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
