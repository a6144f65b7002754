"""The server's job queue and its one worker thread.

Records (status, events, results) are changed only on the event loop's thread; the worker
hands everything it learns to the loop with ``loop.call_soon_threadsafe``. The queue itself
is a deque under a condition variable, shared by both sides. Jobs and preprocess calls run
on the worker in the order they were submitted.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ctrlgen.core.errors import CancelledError, ImageError, JobError, ModelNotFoundError, ParamError
from ctrlgen.host_bridges.server.uploads import UploadStore

log = logging.getLogger("ctrlgen.server")

TERMINAL = ("finished", "error", "cancelled")
PREVIEW_SIDE = 256


def error_code(exc: BaseException) -> str:
    """The job-level error code of an exception raised while a job ran."""
    if isinstance(exc, ModelNotFoundError):
        return "model_not_found"
    if isinstance(exc, (JobError, ParamError, ImageError)):
        return "invalid_job"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "out_of_memory"
    return "internal_error"


@dataclass
class JobRecord:
    id: str
    job: Any  # ctrlgen.core.engine.jobs.Job
    preview: bool
    refs: list[str]  # upload digests the job uses (pinned while it waits or runs)
    status: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    events: list[tuple[int, str, dict]] = field(default_factory=list)
    results: list[Any] | None = None  # PIL RGB images
    seeds: list[int] = field(default_factory=list)
    error: dict | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add_event(self, kind: str, data: dict) -> None:
        """Record one event (loop thread only) and wake the event streams."""
        if self.status in TERMINAL:
            return  # nothing follows the end of a job
        self.events.append((len(self.events) + 1, kind, data))
        if kind == "started":
            self.status = "running"
            self.started = time.time()
        elif kind in TERMINAL:
            self.status = kind
            self.ended = time.time()
            if kind == "error":
                self.error = data
        self.changed.set()
        self.changed = asyncio.Event()

    def result_info(self) -> list[dict]:
        return [{"index": i, "width": image.width, "height": image.height, "seed": seed}
                for i, (image, seed) in enumerate(zip(self.results or [], self.seeds, strict=False))]


@dataclass
class _Call:
    """A function to run on the worker (preprocess-only requests), answered through ``future``."""

    function: Any
    future: Future


class JobQueue:
    """FIFO of jobs and calls, one worker thread owning one Engine."""

    def __init__(self, uploads: UploadStore, *, device: str | None, max_queue: int, max_kept: int,
                 result_ttl_s: float) -> None:
        self.uploads = uploads
        self.device = device
        self.max_queue = max_queue
        self.max_kept = max_kept
        self.result_ttl_s = result_ttl_s
        self.jobs: OrderedDict[str, JobRecord] = OrderedDict()
        self.expired: OrderedDict[str, None] = OrderedDict()  # ids whose results were dropped
        self._pending: deque[JobRecord | _Call] = deque()
        self._running: JobRecord | None = None
        self._busy = False
        self._cond = threading.Condition()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.engine: Any = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._work, name="ctrlgen-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            if self._running is not None:
                self._running.cancel.set()
            self._cond.notify_all()

    # -- queue state (loop thread) -----------------------------------------------------
    @property
    def running_id(self) -> str | None:
        running = self._running
        return running.id if running is not None else None

    def queued_count(self) -> int:
        with self._cond:
            return sum(1 for item in self._pending if isinstance(item, JobRecord))

    def position(self, record: JobRecord) -> int:
        """How many jobs run before ``record`` (0: it is next, or running)."""
        with self._cond:
            if record.status != "queued":
                return 0
            ahead = 1 if self._busy else 0
            for item in self._pending:
                if item is record:
                    return ahead
                ahead += 1
            return ahead

    def submit(self, record: JobRecord) -> int:
        """Queue ``record``; returns its position. Raises OverflowError when the queue is full."""
        with self._cond:
            if sum(1 for item in self._pending if isinstance(item, JobRecord)) >= self.max_queue:
                raise OverflowError(self.max_queue)
            self.uploads.pin(record.refs)
            self.jobs[record.id] = record
            self._pending.append(record)
            self._cond.notify()
        position = self.position(record)
        record.add_event("queued", {"position": position})
        return position

    def call(self, function) -> Future:
        """Run ``function()`` on the worker after what is queued; a Future of its result."""
        future: Future = Future()
        with self._cond:
            self._pending.append(_Call(function, future))
            self._cond.notify()
        return future

    def cancel(self, record: JobRecord) -> None:
        """Drop a queued job, or ask the running one to stop at its next step."""
        record.cancel.set()
        with self._cond:
            if record in self._pending:
                self._pending.remove(record)
                self.uploads.unpin(record.refs)
                record.add_event("cancelled", {})

    def purge(self, now: float | None = None) -> None:
        """Forget ended jobs past the result TTL, and the oldest beyond ``max_kept`` (loop thread)."""
        now = time.time() if now is None else now
        ended = [r for r in self.jobs.values() if r.ended is not None]
        too_many = len(ended) - self.max_kept
        for record in sorted(ended, key=lambda r: r.ended or 0):
            if too_many > 0 or now - (record.ended or now) > self.result_ttl_s:
                too_many -= 1
                del self.jobs[record.id]
                self.expired[record.id] = None
        while len(self.expired) > 10_000:
            self.expired.popitem(last=False)

    # -- worker thread -------------------------------------------------------------------
    def _post(self, function, *args) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the loop closed while shutting down
            pass

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                item = self._pending.popleft()
                self._busy = True
                if isinstance(item, JobRecord):
                    self._running = item
            try:
                if isinstance(item, _Call):
                    self._run_call(item)
                else:
                    self._run_job(item)
            finally:
                with self._cond:
                    self._running = None
                    self._busy = False

    def _engine(self):
        if self.engine is None:
            from ctrlgen.core.engine.engine import Engine

            self.engine = Engine(device=self.device)
        return self.engine

    def _run_call(self, call: _Call) -> None:
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            call.future.set_result(call.function())
        except BaseException as exc:  # the HTTP side turns it into an answer
            call.future.set_exception(exc)

    def _run_job(self, record: JobRecord) -> None:
        try:
            if record.cancel.is_set():
                self._post(record.add_event, "cancelled", {})
                return
            try:
                result = self._execute(record)
            except CancelledError:
                self._post(record.add_event, "cancelled", {})
            except BaseException as exc:  # every failure ends the job, never the worker
                code = error_code(exc)
                message = str(exc) if code != "internal_error" else f"{type(exc).__name__}: {exc}"
                if code == "out_of_memory":
                    message = (f"out of memory: {exc}; try a smaller size or batch, or close other GPU programs")
                    self._free_memory()
                if code == "internal_error":
                    log.exception("job %s failed", record.id)
                self._post(record.add_event, "error", {"code": code, "message": message})
            else:
                self._post(self._finish, record, result.images, list(result.seeds))
        finally:
            self.uploads.unpin(record.refs)

    def _finish(self, record: JobRecord, images: list, seeds: list[int]) -> None:
        record.results = images
        record.seeds = seeds
        record.add_event("finished", {"results": record.result_info()})
        self.purge()

    def _execute(self, record: JobRecord):
        engine = self._engine()

        def on_event(event) -> None:
            if event.kind == "started":
                self._post(record.add_event, "started", {})
            elif event.kind == "progress":
                self._post(record.add_event, "progress",
                           {"step": int(event.data["step"]), "total": int(event.data["total"])})
            elif event.kind == "preview" and record.preview:
                self._post(record.add_event, "preview", encode_preview(event.data))
            # finished / error / cancelled are reported from the outcome, with the server's codes

        return engine.run(record.job, on_event=on_event, cancel=record.cancel, job_id=record.id,
                          images=self.uploads.resolve, preview=record.preview)

    @staticmethod
    def _free_memory() -> None:
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # freeing is best effort
            pass


def new_job_id() -> str:
    return uuid.uuid4().hex


def encode_preview(data: dict) -> dict:
    """A preview event's data: the step and a small PNG (longest side <= 256) in base64."""
    from PIL import Image

    image = Image.fromarray(data["image"])
    if max(image.size) > PREVIEW_SIDE:
        image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return {"step": int(data.get("step", 0)), "total": int(data.get("total", 0)), "width": image.width,
            "height": image.height, "format": "png", "data": base64.b64encode(buffer.getvalue()).decode("ascii")}
