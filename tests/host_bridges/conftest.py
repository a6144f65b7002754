"""A real `ctrlgen serve` on loopback with the tiny models, for the bridge tests.

Fixtures:

* ``live_server`` (session): one `ctrlgen serve --port 0` subprocess shared by the bridge tests
  (server, client, Krita, tests/docs), CPU, its own config folder, the model root below;
* ``server_factory(*args, config_dir=None, model_root=None)``: another server with extra options (small queue,
  Unix socket, ...) for one test, stopped after it;
* ``launch_server(config_dir, model_root, *args)``: start `ctrlgen serve` without waiting;
* ``bridge_model_root``: an A1111 root with ``tiny-sd15`` and ``tiny-controlnet-sd15``.

Servers are :class:`LiveServer`: ``.url``, ``.token``, ``.config_dir``, ``.model``,
``.controlnet``, ``.process``, ``.unix_socket`` and small helpers (``request``, ``json``,
``upload``, ``submit``, ``events``, ``wait``, ``stop``).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

TINY_MODEL = "tiny-sd15"
TINY_CONTROLNET = "tiny-controlnet-sd15"


@dataclass
class LiveServer:
    url: str
    token: str
    config_dir: Path
    model: str
    process: subprocess.Popen
    unix_socket: str | None = None
    controlnet: str = TINY_CONTROLNET
    log_path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    model_root: Path | None = None  # the model folder it serves

    @property
    def host(self) -> str:
        return self.url.split("//", 1)[1].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def connection(self, timeout: float = 60.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | str | dict | None = None,
                headers: dict[str, str] | None = None, token: str | None = ...,
                timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection: (status, lower-cased headers, body). ``body`` as a
        dict is sent as JSON; ``token=None`` sends no Authorization header."""
        sent = dict(headers or {})
        if token is ...:
            token = self.token
        if token is not None:
            sent.setdefault("Authorization", f"Bearer {token}")
        if isinstance(body, dict):
            body = json.dumps(body)
            sent.setdefault("Content-Type", "application/json")
        connection = self.connection(timeout)
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def json(self, method: str, path: str, body: dict | None = None, **kwargs: Any) -> tuple[int, Any]:
        status, _, data = self.request(method, path, body, **kwargs)
        return status, json.loads(data) if data else None

    def upload(self, pixels: Any) -> str:
        """PUT a uint8 numpy array (H×W, H×W×3 or H×W×4) as raw pixels; returns its reference."""
        body = pixels.tobytes()
        digest = hashlib.sha256(body).hexdigest()
        channels = 1 if pixels.ndim == 2 else pixels.shape[2]
        status, _, answer = self.request("PUT", f"/v1/images/{digest}", body, {
            "Content-Type": "application/vnd.ctrlgen.raw", "X-Ctrlgen-Width": str(pixels.shape[1]),
            "X-Ctrlgen-Height": str(pixels.shape[0]), "X-Ctrlgen-Channels": str(channels)})
        assert status in (200, 201), answer
        return f"sha256:{digest}"

    def submit(self, job: dict, preview: bool = False) -> str:
        status, answer = self.json("POST", "/v1/jobs", {"job": job, "preview": preview})
        assert status == 202, answer
        return answer["id"]

    def events(self, job_id: str, after: int | None = None, last_event_id: int | None = None,
               timeout: float = 120.0) -> Iterator[tuple[int, str, dict]]:
        """Follow ``/v1/jobs/{id}/events``: yields (id, kind, data) until the stream ends."""
        path = f"/v1/jobs/{job_id}/events" + (f"?after={after}" if after is not None else "")
        headers = {"Authorization": f"Bearer {self.token}"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        connection = self.connection(timeout)
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            if response.status != 200:
                raise AssertionError(f"events of {job_id}: {response.status} {response.read()!r}")
            fields: dict[str, str] = {}
            while True:
                line = response.readline()
                if not line:
                    return
                text = line.decode("utf-8").rstrip("\r\n")
                if not text:
                    if fields:
                        yield int(fields["id"]), fields["event"], json.loads(fields["data"])
                    fields = {}
                elif not text.startswith(":"):
                    name, _, value = text.partition(":")
                    fields[name] = value.removeprefix(" ")
        finally:
            connection.close()

    def wait(self, job_id: str, timeout: float = 120.0) -> list[tuple[int, str, dict]]:
        """All events of a job, once it has ended."""
        return list(self.events(job_id, timeout=timeout))

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode


def server_env(config_dir: Path, model_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CTRLGEN_CONFIG_DIR=str(config_dir), CTRLGEN_MODEL_ROOTS=str(model_root), CTRLGEN_DEVICE="cpu",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def launch(config_dir: Path, model_root: Path, *args: str) -> subprocess.Popen:
    """Start `ctrlgen serve ARGS` (no waiting), output in ``config_dir/serve.log``."""
    config_dir.mkdir(parents=True, exist_ok=True)
    log = open(config_dir / "serve.log", "ab")  # noqa: SIM115 - the process owns it
    try:
        return subprocess.Popen([sys.executable, "-m", "ctrlgen.core.cli.main", "serve", *args],
                                env=server_env(config_dir, model_root), stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def start_server(config_dir: Path, model_root: Path, *args: str, timeout: float = 90.0) -> LiveServer:
    """Start `ctrlgen serve --port 0 ARGS` and wait until it has written server.json."""
    process = launch(config_dir, model_root, "--port", "0", *args)
    info_path = config_dir / "server.json"
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            log = (config_dir / "serve.log").read_text(errors="replace")
            raise RuntimeError(f"ctrlgen serve exited with {process.returncode}:\n{log}")
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            info = {}
        if info.get("pid") == process.pid:
            break
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"ctrlgen serve did not start within {timeout} s:\n"
                               + (config_dir / "serve.log").read_text(errors="replace"))
        time.sleep(0.05)
    token = (config_dir / "token").read_text().strip()
    return LiveServer(url=info["url"], token=token, config_dir=config_dir, model=TINY_MODEL, process=process,
                      unix_socket=info.get("unix_socket"), log_path=config_dir / "serve.log", info=info,
                      model_root=model_root)


@pytest.fixture(scope="session")
def bridge_model_root(tmp_path_factory, tiny_model_cache, tiny_sd15) -> Path:
    """The model root the test servers read: an A1111 layout with tiny-sd15 and tiny-controlnet-sd15."""
    from ctrlgen.testing.tiny import write_model_root

    root = tmp_path_factory.mktemp("bridge-models")
    return write_model_root(root, "a1111", architectures=("sd15",), cache_dir=tiny_model_cache).root


@pytest.fixture(scope="session")
def live_server(request, tmp_path_factory, bridge_model_root) -> LiveServer:
    """One real `ctrlgen serve` for the session (tiny models, CPU, its own config folder).

    Kept on the pytest config, so test folders that load these fixtures from this file too
    (tests/docs) share the one server and its loaded model; stopped when the session ends."""
    server = getattr(request.config, "_ctrlgen_live_server", None)
    if server is None or not server.alive():
        # Room for the load test's 200 jobs in the job list (the default keeps 100).
        server = start_server(tmp_path_factory.mktemp("live-server-config"), bridge_model_root,
                              "--max-results", "1000")
        request.config._ctrlgen_live_server = server
        request.config.add_cleanup(server.stop)
    return server


@pytest.fixture
def launch_server():
    """``launch_server(config_dir, model_root, *args)``: start `ctrlgen serve ARGS` without waiting."""
    return launch


@pytest.fixture
def server_factory(tmp_path, bridge_model_root) -> Iterator[Any]:
    """``server_factory(*args, config_dir=None, model_root=None)`` starts a server with extra options
    (and its own model root, if given) for one test; all are stopped after."""
    started: list[LiveServer] = []

    def make(*args: str, config_dir: Path | None = None, model_root: Path | None = None) -> LiveServer:
        folder = config_dir or tmp_path / f"server-{len(started)}"
        server = start_server(folder, model_root or bridge_model_root, *args)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
