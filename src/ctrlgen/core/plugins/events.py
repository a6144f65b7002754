"""Job events: what observers (``ctrlgen_job_event``), the CLI and the server see."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

EventKind = Literal["queued", "started", "progress", "preview", "detail", "finished", "error", "cancelled"]


@dataclass(frozen=True)
class JobEvent:
    """One thing that happened to a job. ``data`` depends on ``kind``:

    - ``progress``: ``step``, ``total``
    - ``preview``: ``step``, ``total``, ``image`` (small ``uint8`` H×W×3 RGB; only when asked for)
    - ``detail``: a fix pass's progress: ``phase`` (``detected``, ``step``, ``skipped``, ``done``),
      ``image``, ``pass_index``, ``detection``, ``detections``, ... (docs/fixing.md)
    - ``finished``: ``outputs`` (list of paths or result ids)
    - ``error``: ``code``, ``message``
    """

    job_id: str
    kind: EventKind
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)
