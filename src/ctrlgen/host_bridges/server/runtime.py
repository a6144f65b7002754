"""The server's life: warming up after start, and stopping cleanly.

- :class:`Warmup` runs first on every job worker, right after the server starts listening: on
  each local worker it imports torch and the diffusers pipeline classes (seconds, paid by the
  first job otherwise) and, with ``--preload MODEL``, loads that model into that worker's
  engine; each Ray worker starts its actor, checks the model folders (and the preloaded model)
  on every node and warms the actor the same way. ``/v1/health`` answers meanwhile (the event
  loop never waits for it); health and capabilities report ``state``: ``warming``, then
  ``ready``. A job submitted while warming waits behind it in the queue, as behind a job.
- :class:`Runtime` owns what lives as long as the server (queue, uploads, outputs, journal,
  the state folder's lock) and stops it once, however the stop was asked for (Ctrl+C, SIGTERM,
  a second Ctrl+C): event streams end, waiting calls fail with 503, the running job is
  interrupted at its next step and goes back to the journal's queue (every running job, on
  every worker), the journal is closed (and a Ray cluster the server started is stopped).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ctrlgen.core.errors import CtrlgenError

log = logging.getLogger("ctrlgen.server")

WARM_ARCHITECTURES = ("sd15", "sdxl")
WARM_TASKS = ("txt2img", "img2img", "inpaint")
HURRIED_WAIT_S = 2.0  # after a second Ctrl+C, how long the running job still gets to stop


class Warmup:
    """Imports (and the preloaded model) on the worker, before the first job."""

    def __init__(self, queue: Any, preload: str | None = None, enabled: bool = True) -> None:
        self.queue = queue
        self.preload = preload
        self.enabled = enabled
        self.state = "warming" if enabled else "ready"
        self.error: str | None = None
        self.seconds: float | None = None
        self.ready = threading.Event()
        if not enabled:
            self.ready.set()

    def start(self) -> None:
        if self.enabled:
            futures = self.queue.call_each(self._warm, remote=self._prepare_remote)
            self._waiting = len(futures)
            self._waiting_lock = threading.Lock()
            if not futures:
                self._done(None)
            for future in futures:
                future.add_done_callback(self._done)

    def _prepare_remote(self, worker: Any) -> None:
        """A Ray worker's warm-up: its actor, the files on every node, the preloaded model."""
        started = time.perf_counter()
        worker.prepare(None if self.queue.stopping else self.preload)
        self.seconds = max(self.seconds or 0.0, time.perf_counter() - started)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"state": self.state}
        if self.preload:
            info["preload"] = self.preload
        if self.error:
            info["warmup_error"] = self.error
        if self.seconds is not None:
            info["warmup_s"] = round(self.seconds, 3)
        return info

    def _done(self, future) -> None:
        """One worker warmed up (``future``); the state is ``ready`` once every worker has."""
        exc = future.exception() if future is not None and not future.cancelled() else None
        if exc is not None and self.error is None:
            self.error = f"{type(exc).__name__}: {exc}"
            if not self.queue.stopping:
                log.warning("warming up failed (jobs still run; they load what they need): %s", self.error)
        if future is not None:
            with self._waiting_lock:
                self._waiting -= 1
                if self._waiting > 0:
                    return
        self.state = "ready"
        self.ready.set()

    def _warm(self) -> None:
        started = time.perf_counter()
        # 1. The heavy imports: torch, the engine, diffusers' pipeline classes (its lazy modules
        #    import transformers and the pipelines on first attribute access).
        import torch  # noqa: F401

        from ctrlgen.core.engine import tasks

        engine = self.queue.get_engine()
        engine.device  # noqa: B018 - chooses the device (and imports what that needs)
        for architecture in WARM_ARCHITECTURES:
            for task in WARM_TASKS:
                for controlnet in (False, True):
                    if self.queue.stopping:
                        return
                    try:
                        tasks.pipeline_class(architecture, task, controlnet)
                    except CtrlgenError:  # a combination the architecture does not have
                        continue
        # 1b. The first calls a first job pays beyond imports (torch's operators, diffusers'
        #     model construction and forward code, the tokenizer's build, the engine's job-time
        #     modules): one throwaway 2-step txt2img on a tiny in-memory pipeline (core/engine/warm.py).
        if not self.queue.stopping:
            from ctrlgen.core.engine.warm import warm_code_paths

            try:
                warm_code_paths(engine.device)
            except Exception as exc:  # noqa: BLE001 - only a warm-up: the first job pays it instead
                log.debug("warming the code paths failed: %s", exc)
        # 2. The preloaded model: the engine's pipeline cache keeps it for the jobs.
        if self.preload and not self.queue.stopping:
            try:
                entry = engine.store.find(self.preload, category=("checkpoints", "diffusers"))
                engine.load_pipeline(entry)
            except CtrlgenError as exc:
                self.error = (f"--preload {self.preload!r}: {exc}; jobs still run, loading their models when they "
                              "come (`ctrlgen models` lists the names the server knows)")
                log.warning("%s", self.error)
        self.seconds = time.perf_counter() - started


class Runtime:
    """What lives as long as the server, started and stopped once."""

    def __init__(self, queue: Any, uploads: Any, outputs: Any, journal: Any, lock: Any, warmup: Warmup) -> None:
        self.queue = queue
        self.uploads = uploads
        self.outputs = outputs
        self.journal = journal
        self.lock = lock
        self.warmup = warmup
        self.hurry = False  # a second Ctrl+C: wait less for the running job
        self._closed = False
        self._close_lock = threading.Lock()
        self._loop = None

    def start(self, loop) -> None:
        self._loop = loop
        self.queue.start(loop)
        self.warmup.start()

    @property
    def stopping(self) -> bool:
        return self.queue.stopping

    def begin_stop(self) -> None:
        """Stop taking work (loop thread): interrupt the running job, fail waiting calls, wake
        every event stream so it ends."""
        if self.queue.stopping:
            return
        self.queue.stop()
        for record in list(self.queue.jobs.values()):
            record.changed.set()

    def close(self, worker_timeout_s: float = 30.0) -> bool:
        """Stop the worker and close the state (blocking; once). Returns False when the running
        job did not stop in time: the journal is then left as a crash leaves it (the job runs
        again at the next start) and the caller should end the process without waiting for it."""
        with self._close_lock:
            if self._closed:
                return not self.worker_alive()
            self._closed = True
            self.queue.stop()
            began = time.monotonic()
            while not self.queue.join(0.1):
                waited = time.monotonic() - began
                if waited > worker_timeout_s or (self.hurry and waited > HURRIED_WAIT_S):
                    log.warning("the running job did not stop within %.0f s; stopping anyway (it runs again at "
                                "the next start)", waited)
                    return False
            self.queue.close_workers()
            self.uploads.close()
            if self.outputs is not None:
                self.outputs.close()
            self.journal.close()
            return True

    def worker_alive(self) -> bool:
        return self.queue.worker_alive()
