"""The bridge client: the copy ``ctrlgen install krita`` put next to this plugin, or, when the
plugin runs from ctrlgen's source tree, ctrlgen's own module (the same file)."""

from __future__ import annotations

try:
    from .client import (
        AuthError,
        Client,
        ClientError,
        Event,
        JobFailed,
        RawImage,
        ServerNotRunning,
        config_dir,
    )
except ImportError:  # running from the source tree (tests): no copy next to the plugin
    from ctrlgen.host_bridges.client import (  # type: ignore[no-redef]
        AuthError,
        Client,
        ClientError,
        Event,
        JobFailed,
        RawImage,
        ServerNotRunning,
        config_dir,
    )

__all__ = ["AuthError", "Client", "ClientError", "Event", "JobFailed", "RawImage", "ServerNotRunning", "config_dir"]
