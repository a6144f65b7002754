"""The bridge client and the hosts' shared logic: the copies ``ctrlgen install krita`` put next to
this plugin, or, when the plugin runs from ctrlgen's source tree, ctrlgen's own modules (the same
files)."""

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
    from .hostlogic import MIN_SIDE, NATIVE_SIDE, Rect, fit_region, generation_size, model_architecture
except ImportError:  # running from the source tree (tests): no copies next to the plugin
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
    from ctrlgen.host_bridges.hostlogic import (  # type: ignore[no-redef]
        MIN_SIDE,
        NATIVE_SIDE,
        Rect,
        fit_region,
        generation_size,
        model_architecture,
    )

__all__ = ["MIN_SIDE", "NATIVE_SIDE", "AuthError", "Client", "ClientError", "Event", "JobFailed", "RawImage",
           "Rect", "ServerNotRunning", "config_dir", "fit_region", "generation_size", "model_architecture"]
