"""The terminal progress bar that ``ctrlgen generate`` and ``ctrlgen demo`` show."""

from __future__ import annotations

from typing import Any


def progress_printer(quiet: bool):
    """A job-event observer that draws a tqdm bar for the steps (nothing when ``quiet``)."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def on_event(event) -> None:
        if quiet:
            return
        if event.kind == "progress":
            bar = bars.get("bar")
            if bar is None:
                bar = bars["bar"] = tqdm(total=event.data["total"], unit="step", desc="generating")
            bar.n = event.data["step"]
            bar.refresh()
        elif event.kind in ("finished", "error", "cancelled") and "bar" in bars:
            bars.pop("bar").close()

    return on_event
