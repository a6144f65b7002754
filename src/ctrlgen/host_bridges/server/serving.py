"""Running ``ctrlgen serve``: sockets, ``server.json``, uvicorn, and a clean stop.

A stop asked for with Ctrl+C (SIGINT) or SIGTERM ends the process with status 0, without
tracebacks: open event streams end at once, waiting preprocess calls answer 503, the running
job is interrupted at its next step and put back in the journal's queue (it runs again at the
next start; nothing acknowledged is lost), then the journal is closed. A second Ctrl+C gives
the running job only a moment more; a job that still does not stop (a model load cannot be
interrupted) is left in the journal as a crash leaves it, and the process ends without waiting
for it (never through a native abort).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
import sys
from pathlib import Path

from ctrlgen._version import __version__
from ctrlgen.core.errors import CtrlgenError
from ctrlgen.host_bridges.server.app import ServerConfig, create_app
from ctrlgen.host_bridges.server.security import load_or_create_token

log = logging.getLogger("ctrlgen.server")


class _QuietWhileStopping(logging.Filter):
    """While the server stops, requests uvicorn cancels after its grace period are expected:
    one line says how many, instead of a CancelledError traceback for each."""

    def __init__(self, runtime) -> None:
        super().__init__()
        self.runtime = runtime

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.runtime.stopping:
            return True
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, asyncio.CancelledError):
            return False
        message = record.getMessage()
        if message.startswith("Cancel ") and "timeout graceful shutdown" in message:
            record.msg, record.args = "closed the request(s) still in progress at shutdown", None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return not message.startswith("ASGI callable returned without")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every answer written in two parts waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise CtrlgenError(f"cannot listen on {host}:{port}: {exc.strerror}; is another server running there? "
                           "Pick another one with --port (0 lets the system choose)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _bind_unix(path: str) -> socket.socket:
    target = Path(path)
    if target.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(target))
        except OSError:
            target.unlink()  # a socket file left by a server that is gone
        else:
            raise CtrlgenError(f"another server is listening on the Unix socket {path}; stop it or pick another path")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)  # the socket file is created private (0600)
    try:
        sock.bind(str(target))
    finally:
        os.umask(previous)
    sock.listen(2048)
    return sock


def _server_json_path(folder: Path) -> Path:
    return folder / "server.json"


def _write_server_json(folder: Path, url: str, unix_socket: str | None) -> Path:
    """``server.json`` (mode 0600, written atomically): where the server listens, for clients."""
    from ctrlgen.host_bridges.client import process_alive

    path = _server_json_path(folder)
    with contextlib.suppress(OSError, ValueError):
        old_pid = json.loads(path.read_text(encoding="utf-8")).get("pid")
        if isinstance(old_pid, int) and old_pid != os.getpid() and not process_alive(old_pid):
            log.warning("replacing a stale %s (its server, pid %d, is gone)", path, old_pid)
    temporary = path.with_name(f".server.json.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"url": url, "unix_socket": unix_socket, "pid": os.getpid(),
                                 "version": __version__}, indent=2) + "\n")
    os.replace(temporary, path)
    return path


def _remove_server_json(folder: Path) -> None:
    path = _server_json_path(folder)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()


def serve(config: ServerConfig) -> int:
    """Run the server until interrupted. Writes server.json once listening; removes it on exit."""
    import uvicorn

    from ctrlgen.core.config import config_dir
    from ctrlgen.host_bridges.server.http import BridgeHttpProtocol

    if not config.allow_remote and not is_loopback(config.host):
        raise CtrlgenError(f"--host {config.host} is not a loopback address; binding there lets other machines "
                           "reach the server. Add --allow-remote if that is what you want")
    if config.allowed_hosts and not config.allow_remote:
        raise CtrlgenError("--allowed-host only matters for a server reachable from elsewhere; add --allow-remote "
                           "(and a non-loopback --host), or leave it out")
    folder = config.config_dir or config_dir()
    token = load_or_create_token(folder)
    if config.allow_remote and not is_loopback(config.host):
        print(f"WARNING: listening on {config.host}, reachable from other machines; anyone with the token can "
              "run jobs. Keep the token secret and prefer a firewall or an SSH tunnel.", file=sys.stderr)
    from ctrlgen.core.plugins.manager import get_host

    for conflict in get_host().conflicts():  # each withholds one name; the server serves the rest
        print(f"WARNING: {conflict.message}", file=sys.stderr)
    tcp = _bind_tcp(config.host, config.port)
    sockets = [tcp]
    if config.unix_socket:
        sockets.append(_bind_unix(config.unix_socket))
    port = tcp.getsockname()[1]
    shown_host = f"[{config.host.strip('[]')}]" if ":" in config.host else config.host
    url = f"http://{shown_host}:{port}"
    app = create_app(config, token)

    runtime = app.app.state.runtime
    quiet = _QuietWhileStopping(runtime)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                _write_server_json(folder, url, config.unix_socket)
                where = url + (f" and {config.unix_socket}" if config.unix_socket else "")
                print(f"ctrlgen {__version__} serving on {where} (token: {folder / 'token'})", flush=True)

        def handle_exit(self, sig, frame) -> None:
            # uvicorn would raise the signal again once it has stopped, ending the process by
            # that signal; a stop asked for with Ctrl+C or SIGTERM is a normal one: the running
            # job went back to the journal's queue, so clean up and exit 0. The work is done on
            # the loop (shutdown below): a signal handler must not take the queue's lock.
            if self.should_exit:
                runtime.hurry = True
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

        async def shutdown(self, sockets=None) -> None:
            _remove_server_json(folder)
            runtime.begin_stop()  # event streams end, waiting calls fail: connections can close
            app.app.state.live.close_all()  # live channels (WebSockets) too
            await super().shutdown(sockets=sockets)
            # The lifespan closed the runtime, unless a second Ctrl+C made uvicorn skip it.
            await asyncio.to_thread(runtime.close)
            cleanup()

    protocol = type("Protocol", (BridgeHttpProtocol,), {"header_timeout_s": config.stall_timeout_s,
                                                         "body_idle_timeout_s": config.stall_timeout_s,
                                                         "live_hub": app.app.state.live})
    uv_config = uvicorn.Config(app, log_level=config.log_level, http=protocol, ws="none", lifespan="on",
                               timeout_graceful_shutdown=3, access_log=False, server_header=False)

    def cleanup() -> None:
        _remove_server_json(folder)
        for sock in sockets:
            sock.close()
        if config.unix_socket:
            with contextlib.suppress(OSError):
                os.unlink(config.unix_socket)

    server = Server(uv_config)
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addFilter(quiet)
    try:
        server.run(sockets=sockets)
    finally:
        uvicorn_log.removeFilter(quiet)
        cleanup()
    if runtime.worker_alive():
        # The running job ignored the stop (a model load): ending the interpreter under a thread
        # inside torch aborts natively ("terminate called without an active exception"). The
        # journal is as a crash leaves it; the job runs again at the next start.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
