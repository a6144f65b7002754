"""The bridge client and the hosts' shared logic: the copies ``ctrlgen install gimp`` put beside
this package's modules, or, when the package runs from ctrlgen's source tree (tests), ctrlgen's
own modules (the same files)."""

from __future__ import annotations

try:
    from .client import AuthError, Client, ClientError, Event, JobFailed, RawImage, ServerNotRunning
    from .hostlogic import MIN_SIDE, NATIVE_SIDE, Rect, fit_region, generation_size, model_architecture
except ImportError:  # running from the source tree: no copies beside the package
    from ctrlgen.host_bridges.client import (  # type: ignore[no-redef]
        AuthError,
        Client,
        ClientError,
        Event,
        JobFailed,
        RawImage,
        ServerNotRunning,
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
           "Rect", "ServerNotRunning", "fit_region", "generation_size", "model_architecture"]
