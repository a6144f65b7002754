"""Who may talk to the server: the token file, and an ASGI layer that checks Host, Origin
and the bearer token on every request before any route (the OpenAPI document included)."""

from __future__ import annotations

import hmac
import json
import os
import secrets
import sys
from pathlib import Path

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def load_or_create_token(folder: Path) -> str:
    """The token in ``folder/token``: created (mode 0600) on first start, reused after."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.name == "posix" and folder.stat().st_mode & 0o077:
        folder.chmod(0o700)  # private whatever the umask, and if it existed
    path = folder / "token"
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    if token:
        if os.name == "posix" and path.stat().st_mode & 0o077:
            print(f"warning: {path} was readable by other users; made it private (0600)", file=sys.stderr)
            path.chmod(0o600)
        return token
    token = secrets.token_urlsafe(32)
    temporary = path.with_name(f".token.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    os.replace(temporary, path)
    return token


def host_name(header: str) -> str:
    """The name part of a Host header (``[::1]:7421`` -> ``::1``, ``Localhost:80`` -> ``localhost``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _error(status: int, code: str, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": {"code": code, "message": message}}).encode()


class Guard:
    """ASGI middleware: refuse foreign Host names, foreign Origins and missing/wrong tokens."""

    def __init__(self, app, *, token: str, allowed_origins: tuple[str, ...] = (),
                 allowed_hosts: tuple[str, ...] | None = ()) -> None:
        self.app = app
        self._token = token.encode()
        self._origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        # None: any Host (only with --allow-remote and no host list); else loopback plus these.
        self._hosts = None if allowed_hosts is None else LOOPBACK_NAMES | {h.lower() for h in allowed_hosts}

    def check(self, headers: dict[bytes, bytes]) -> tuple[int, bytes] | None:
        host = headers.get(b"host", b"").decode("latin-1")
        if self._hosts is not None and host_name(host) not in self._hosts:
            return _error(403, "forbidden_host",
                          f"Host {host!r} is not a loopback name; connect to 127.0.0.1 or localhost "
                          "(remote names need `ctrlgen serve --allow-remote --allowed-host NAME`)")
        origin = headers.get(b"origin")
        if origin is not None and origin.decode("latin-1").rstrip("/").lower() not in self._origins:
            return _error(403, "forbidden_origin",
                          f"requests from the web origin {origin.decode('latin-1')!r} are refused; "
                          "allow it with `ctrlgen serve --allowed-origin ORIGIN` if you trust it")
        auth = headers.get(b"authorization", b"")
        scheme, _, given = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
            return _error(401, "unauthorized",
                          "missing or wrong token; send `Authorization: Bearer <token>` with the token from "
                          "the `token` file in `ctrlgen config-dir`")
        return None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self.check(dict(scope["headers"]))
        if refused is None:
            await self.app(scope, receive, send)
            return
        status, body = refused
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="ctrlgen"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})
