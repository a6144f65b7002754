"""The bridge client: the copy ``ctrlgen install gimp`` put beside this package's modules, or,
when the package runs from ctrlgen's source tree (tests), ctrlgen's own module (the same file)."""

from __future__ import annotations

try:
    from .client import AuthError, Client, ClientError, Event, JobFailed, RawImage, ServerNotRunning
except ImportError:  # running from the source tree: no copy beside the package
    from ctrlgen.host_bridges.client import (  # type: ignore[no-redef]
        AuthError,
        Client,
        ClientError,
        Event,
        JobFailed,
        RawImage,
        ServerNotRunning,
    )

__all__ = ["AuthError", "Client", "ClientError", "Event", "JobFailed", "RawImage", "ServerNotRunning"]
