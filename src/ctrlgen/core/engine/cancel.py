"""Cancelling a job in every phase, not only between denoising steps.

The denoising loop stops through the pipeline's interrupt flag, set by the step callback. The
rest of a job also runs torch modules — preprocessor networks, image encoders, and the VAE
decode after the loop (tiled or whole), which on a CPU can take minutes at 2048² — and a flag
is never looked at there. :class:`Cancellation` *arms* a forward pre-hook on every torch module
(``torch.nn.modules.module.register_module_forward_pre_hook``) that raises
:class:`~ctrlgen.core.errors.CancelledError` at the next module call once the job's cancel
event is set, so a decode stops within one layer (and between tiles).

A global hook takes every module call off torch's fast path, so it is armed only around the
phases that need it — preprocessing and adapter preparation, and from the last denoising step
(or the moment of cancelling) to the end of the pipeline call — never during the loop itself.
It only answers calls on the job's own thread: jobs on other workers are not affected.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from ctrlgen.core.errors import CancelledError


class Cancellation:
    """One job's cancel event, and the hook that enforces it between module calls when armed."""

    def __init__(self, cancel: threading.Event | None, job_id: str = "") -> None:
        self.cancel = cancel
        self.job_id = job_id
        self._handle: Any = None
        self._thread = threading.get_ident()

    @property
    def requested(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def check(self, where: str = "") -> None:
        """Raise :class:`CancelledError` if the job was cancelled."""
        if self.requested:
            raise CancelledError(f"job {self.job_id} was cancelled" + (f" {where}" if where else ""))

    def arm(self) -> None:
        """Stop at the next torch module call after a cancel (until :meth:`disarm`)."""
        if self.cancel is None or self._handle is not None:
            return
        from torch.nn.modules.module import register_module_forward_pre_hook

        self._thread = threading.get_ident()
        self._handle = register_module_forward_pre_hook(self._before_module)

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        self.arm()
        try:
            yield
        finally:
            self.disarm()

    def _before_module(self, module, args) -> None:
        if threading.get_ident() == self._thread and self.cancel is not None and self.cancel.is_set():
            raise CancelledError(f"job {self.job_id} was cancelled (in {type(module).__name__})")
