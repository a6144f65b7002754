"""Cancels the server's job when GIMP ends the plug-in before the job does.

The Cancel button of a plug-in's progress bar makes GIMP kill the plug-in process, which then
cannot tell the server anything; the job would run on. So while a job runs the plug-in keeps
this small helper process (its own session, so it outlives the kill) connected through a
pipe: the plug-in writes the connection, then ``job <id>`` after submitting and ``done`` when
it has the results. When the pipe ends without ``done`` (the plug-in is gone), the helper
cancels the job on the server. Standard library and the bridge client only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Watchdog:
    """The plug-in's side: ``arm(job_id)`` after submitting, ``disarm()`` once finished."""

    def __init__(self, client: Any):
        self._client = client
        self._process: subprocess.Popen | None = None

    def arm(self, job_id: str) -> None:
        if self._process is None:
            code = (f"import sys; sys.path.insert(0, {PACKAGE_PARENT!r}); "
                    "from ctrlgen_gimp.watchdog import main; main()")
            self._process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                             start_new_session=os.name == "posix")
            self._send(json.dumps({"url": self._client.url, "token": self._client.token,
                                   "unix_socket": self._client.unix_socket}))
        self._send(f"job {job_id}")

    def disarm(self) -> None:
        if self._process is not None:
            self._send("done")
            try:
                self._process.stdin.close()
                self._process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
            self._process = None

    def _send(self, line: str) -> None:
        try:
            self._process.stdin.write(line.encode("utf-8") + b"\n")
            self._process.stdin.flush()
        except OSError:
            pass  # the helper is gone: nothing to cancel with, the job simply runs to its end


def main() -> None:
    """The helper's side: follow the pipe; on its end without ``done``, cancel the last job."""
    from ctrlgen_gimp.client_import import Client, ClientError

    connection = json.loads(sys.stdin.readline() or "{}")
    job_id = ""
    for line in sys.stdin:
        word, _, rest = line.strip().partition(" ")
        if word == "job":
            job_id = rest
        elif word == "done":
            job_id = ""
    if job_id and (connection.get("url") or connection.get("unix_socket")):
        if connection.get("unix_socket"):
            client = Client(token=connection.get("token"), unix_socket=connection["unix_socket"], timeout=10)
        else:
            client = Client(connection["url"], token=connection.get("token"), timeout=10)
        try:
            client.cancel(job_id)
        except (ClientError, OSError):
            pass  # the job had ended, or the server is gone: nothing left to stop
        finally:
            client.close()
