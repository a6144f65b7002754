"""The server's job queue and its one worker thread.

Records (status, events, results) are changed only on the event loop's thread; the worker
hands everything it learns to the loop with ``loop.call_soon_threadsafe``. The queue itself
is a deque under a condition variable, shared by both sides. Jobs and preprocess calls run
on the worker in the order they were submitted.

What the server acknowledged is in the :class:`~.journal.Journal` before it is acknowledged:
a job before ``POST /v1/jobs`` answers, its start when the worker takes it, its end (with its
results' files written first) before the ``finished`` event. :meth:`JobQueue.restore` rebuilds
the queue from it after a restart (see the journal's docstring for the running job's fate).
A server stopped normally (SIGTERM, Ctrl+C) puts the running job back in the queue.
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

import numpy as np

from ctrlgen.core.errors import (
    CancelledError,
    CtrlgenError,
    ImageError,
    JobError,
    ModelNotFoundError,
    ParamError,
)
from ctrlgen.host_bridges.server.files import FileStore, OutputWriter
from ctrlgen.host_bridges.server.journal import RUNS_BEFORE_INTERRUPTED, Journal
from ctrlgen.host_bridges.server.uploads import UploadStore

log = logging.getLogger("ctrlgen.server")

TERMINAL = ("finished", "error", "cancelled", "interrupted")
PREVIEW_SIDE = 256
RESULT_KEYS = ("index", "width", "height", "channels", "seed", "changed_box", "offset", "canvas_size")


class ServerStopping(CtrlgenError):
    """The server is shutting down: no new work is taken (HTTP 503 ``server_stopping``)."""


def error_code(exc: BaseException) -> str:
    """The job-level error code of an exception raised while a job ran."""
    if isinstance(exc, ModelNotFoundError):
        return "model_not_found"
    if isinstance(exc, (JobError, ParamError, ImageError)):
        return "invalid_job"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "out_of_memory"
    if isinstance(exc, CtrlgenError):  # an unusable model file, a refused pickle, ...: not a bug
        return "invalid_job"
    return "internal_error"


@dataclass
class JobRecord:
    id: str
    job: Any  # ctrlgen.core.engine.jobs.Job
    preview: bool
    refs: list[str]  # upload digests the job uses (pinned while it waits or runs)
    idempotency_key: str | None = None
    status: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    events: list[tuple[int, str, dict]] = field(default_factory=list)
    results: list[dict] | None = None  # index, width, height, channels, seed, digest (the file)
    error: dict | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    cancelled_by_client: bool = False
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
            if kind in ("error", "interrupted"):
                self.error = data
        self.changed.set()
        self.changed = asyncio.Event()

    def result_info(self) -> list[dict]:
        return [{key: item[key] for key in RESULT_KEYS if item.get(key) is not None} for item in self.results or []]


@dataclass
class _Call:
    """A function to run on the worker (preprocess-only requests), answered through ``future``."""

    function: Any
    future: Future
    counted: bool = True  # in the positions of the jobs behind it (the warm-up is not)


class JobQueue:
    """FIFO of jobs and calls, one worker thread owning one Engine."""

    def __init__(self, uploads: UploadStore, *, device: str | None, max_queue: int, max_kept: int,
                 result_ttl_s: float, journal: Journal, results: FileStore,
                 outputs: OutputWriter | None = None) -> None:
        self.uploads = uploads
        self.journal = journal
        self.results = results
        self.outputs = outputs
        self.device = device
        self.max_queue = max_queue
        self.max_kept = max_kept
        self.result_ttl_s = result_ttl_s
        self.jobs: OrderedDict[str, JobRecord] = OrderedDict()
        self.expired: OrderedDict[str, None] = OrderedDict()  # ids whose results were dropped
        self._pending: deque[JobRecord | _Call] = deque()
        self._running: JobRecord | None = None
        self._busy = False
        self._busy_counted = True
        self._cond = threading.Condition()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.engine: Any = None
        self._engine_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._work, name="ctrlgen-worker", daemon=True)
        self._thread.start()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Stop taking jobs; the running one is cancelled and goes back to the queue (journal).
        Calls still waiting (preprocess requests) fail with :class:`ServerStopping`, so their
        requests answer at once instead of holding the shutdown up."""
        with self._cond:
            self._stopping = True
            if self._running is not None:
                self._running.cancel.set()
            calls = [item for item in self._pending if isinstance(item, _Call)]
            for call in calls:
                self._pending.remove(call)
            self._cond.notify_all()
        for call in calls:
            if call.future.set_running_or_notify_cancel():
                call.future.set_exception(ServerStopping("the server is shutting down; send the request again "
                                                         "once it runs"))

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker to end (after :meth:`stop`); whether it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

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
            ahead = 1 if self._busy and self._busy_counted else 0
            for item in self._pending:
                if item is record:
                    return ahead
                ahead += 1 if getattr(item, "counted", True) else 0
            return ahead

    def submit(self, record: JobRecord) -> int:
        """Queue ``record``; returns its position. Raises OverflowError when the queue is full."""
        with self._cond:
            if self._stopping:
                raise ServerStopping("the server is shutting down; submit the job again once it runs")
            if sum(1 for item in self._pending if isinstance(item, JobRecord)) >= self.max_queue:
                raise OverflowError(self.max_queue)
            self.journal.add_job(record.id, record.job.model_dump(mode="json"), record.preview, record.refs,
                                 record.created, record.idempotency_key)
            self.uploads.pin(record.refs)
            self.jobs[record.id] = record
            self._pending.append(record)
            self._cond.notify()
        position = self.position(record)
        record.add_event("queued", {"position": position})
        return position

    def call(self, function, first: bool = False, counted: bool = True) -> Future:
        """Run ``function()`` on the worker after what is queued (``first``: before it); a Future
        of its result. ``counted=False``: jobs behind it do not count it in their positions."""
        future: Future = Future()
        with self._cond:
            if self._stopping:
                future.set_exception(ServerStopping("the server is shutting down; send the request again once "
                                                    "it runs"))
                return future
            if first:
                self._pending.appendleft(_Call(function, future, counted))
            else:
                self._pending.append(_Call(function, future, counted))
            self._cond.notify()
        return future

    def cancel(self, record: JobRecord) -> str:
        """Cancel ``record`` (loop thread); returns the status to answer (docs/protocol.md):

        - a queued job is dropped now: ``cancelled``, and its ``cancelled`` event is recorded;
        - the running job is asked to stop at its next check: ``running``; its ``cancelled``
          event follows (or ``finished``, when it had already done its last step);
        - an ended job is left as it is: its status.
        """
        if record.status in TERMINAL:
            return record.status
        record.cancelled_by_client = True
        record.cancel.set()
        with self._cond:
            if record in self._pending:
                self._pending.remove(record)
                self.journal.job_ended(record.id, "cancelled", time.time())
                self.uploads.unpin(record.refs)
                record.add_event("cancelled", {})
                return "cancelled"
        # The worker has it. Its status may still read 'queued' until the started event reaches
        # this thread, but it is past waiting: it runs, and stops at its next check.
        return "running"

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
                self.journal.job_purged(record.id)
                self._remove_result_files(record.results or [])
        while len(self.expired) > 10_000:
            self.expired.popitem(last=False)
        self.journal.forget_purged(10_000)

    def _remove_result_files(self, results: list[dict]) -> None:
        still_used = self.journal.referenced_results()  # the same image from another job
        for item in results:
            if item["digest"] not in still_used:
                self.results.remove(item["digest"])

    # -- restart -------------------------------------------------------------------------
    def restore(self) -> dict[str, int]:
        """Rebuild jobs and queue from the journal (before :meth:`start`); returns counts by fate."""
        from ctrlgen.core.engine.jobs import parse_job

        counts = {"queued": 0, "rerun": 0, "interrupted": 0, "ended": 0}
        now = time.time()
        for row in self.journal.jobs():
            if row.purged:
                self.expired[row.id] = None
                continue
            try:
                job = parse_job(row.job)
            except CtrlgenError as exc:  # a job this version of ctrlgen no longer reads
                if row.status in ("queued", "running"):
                    self.journal.job_ended(row.id, "error", now, error={
                        "code": "invalid_job", "message": f"after a restart the job is no longer valid: {exc}"})
                self.journal.job_purged(row.id)
                self.expired[row.id] = None
                continue
            record = JobRecord(row.id, job, row.preview, row.refs, created=row.created)
            record.events.append((1, "queued", {"position": 0, "restored": True}))
            if row.status == "running" and row.runs >= RUNS_BEFORE_INTERRUPTED:
                row.error = {"code": "interrupted",
                             "message": f"the server stopped while this job ran, {row.runs} times; it is not run "
                                        "again automatically. Submit it again if you want it (check its size "
                                        "and the server's memory first)"}
                row.status = "interrupted"
                self.journal.job_ended(row.id, "interrupted", now, error=row.error)
                row.ended = now
                counts["interrupted"] += 1
            if row.status in ("queued", "running"):
                counts["rerun" if row.status == "running" else "queued"] += 1
                if row.status == "running":
                    self.journal.job_requeued(row.id)
                self.uploads.pin(record.refs)
                self.jobs[record.id] = record
                self._pending.append(record)
                continue
            counts["ended"] += 1
            record.started, record.ended = row.started, row.ended or now
            if row.started is not None:
                record.events.append((len(record.events) + 1, "started", {}))
            record.results = row.results
            data = {"results": record.result_info()} if row.status == "finished" else (row.error or {})
            record.events.append((len(record.events) + 1, row.status, data))
            record.status = row.status
            record.error = row.error if row.status in ("error", "interrupted") else None
            self.jobs[record.id] = record
        return counts

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
                self._busy_counted = getattr(item, "counted", True)
                if isinstance(item, JobRecord):
                    self._running = item
                    if not item.cancel.is_set():
                        self.journal.job_started(item.id, time.time())
            try:
                if isinstance(item, _Call):
                    self._run_call(item)
                else:
                    self._run_job(item)
            finally:
                with self._cond:
                    self._running = None
                    self._busy = False

    def get_engine(self):
        """The worker's engine (made on first use, from any thread): it runs the jobs, and the
        HTTP side uses it to check jobs before they are queued (:meth:`Engine.check` takes no lock)."""
        with self._engine_lock:
            if self.engine is None:
                from ctrlgen.core.engine.engine import Engine

                # Clients name models as the store knows them, never by arbitrary paths.
                self.engine = Engine(device=self.device, allow_paths=False)
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
                self._end(record, "cancelled", {})
                return
            try:
                result = self._execute(record)
                results = self._keep_results(result)
            except CancelledError:
                if self._stopping and not record.cancelled_by_client:
                    # the server is stopping, not the client cancelling: run it after the restart
                    self.journal.job_requeued(record.id)
                    return
                self._end(record, "cancelled", {})
            except BaseException as exc:  # every failure ends the job, never the worker
                code = error_code(exc)
                message = str(exc) if code != "internal_error" else f"{type(exc).__name__}: {exc}"
                if code == "out_of_memory":
                    message = (f"out of memory: {exc}; try a smaller size or batch, or close other GPU programs")
                    self._free_memory()
                if code == "internal_error":
                    log.exception("job %s failed", record.id)
                self._end(record, "error", {"code": code, "message": message})
            else:
                self.journal.job_ended(record.id, "finished", time.time(), results=results)
                self._post(self._finish, record, results)
                if self.outputs is not None:
                    self.outputs.save(result, record.id)
        finally:
            self.uploads.unpin(record.refs)

    def _end(self, record: JobRecord, status: str, data: dict) -> None:
        """A job ended without results (worker thread): journal first, then tell the clients."""
        self.journal.job_ended(record.id, status, time.time(), error=data if status == "error" else None)
        self._post(record.add_event, status, data)

    def _keep_results(self, result) -> list[dict]:
        """Write the result images as files by hash (worker thread); their descriptions."""
        import hashlib

        kept = []
        region = region_info(result)
        for index, (image, seed) in enumerate(zip(result.images, result.seeds, strict=False)):
            pixels = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
            digest = hashlib.sha256(memoryview(pixels).cast("B")).hexdigest()
            self.results.write(digest, memoryview(pixels).cast("B"))
            height, width = pixels.shape[:2]
            channels = 1 if pixels.ndim == 2 else pixels.shape[2]
            kept.append({"index": index, "width": width, "height": height, "channels": channels, "seed": int(seed),
                         "digest": digest, **region})
        return kept

    def result_pixels(self, item: dict) -> np.ndarray:
        """A kept result's pixels, read from its file (memory-mapped)."""
        shape = (item["height"], item["width"]) + (() if item["channels"] == 1 else (item["channels"],))
        return np.memmap(self.results.path(item["digest"]), dtype=np.uint8, mode="r", shape=shape)

    def _finish(self, record: JobRecord, results: list[dict]) -> None:
        record.results = results
        record.add_event("finished", {"results": record.result_info()})
        self.purge()

    def _execute(self, record: JobRecord):
        engine = self.get_engine()

        def on_event(event) -> None:
            if event.kind == "started":
                self._post(record.add_event, "started", {})
            elif event.kind == "progress":
                self._post(record.add_event, "progress",
                           {"step": int(event.data["step"]), "total": int(event.data["total"])})
            elif event.kind == "preview" and record.preview:
                self._post(record.add_event, "preview", encode_preview(event.data))
            elif event.kind == "detail":
                self._post(record.add_event, "detail", detail_event(event.data))
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


def region_info(result: Any) -> dict[str, list[int]]:
    """Where a job's results sit (docs/protocol.md#regions): ``changed_box`` (in the result's own
    frame, the pixels that may differ from the input), ``offset`` and ``canvas_size``; empty for a
    job on a whole canvas that changed everything."""
    box = getattr(result, "changed_box", None)
    canvas = getattr(getattr(result, "job", None), "canvas_size", None)
    info: dict[str, list[int]] = {}
    if box is not None:
        info["changed_box"] = [int(v) for v in box]
    if canvas is not None:
        info["canvas_size"] = [int(v) for v in canvas]
    if info:
        offset = getattr(result, "offset", None) or getattr(result.job, "image_offset", None) or (0, 0)
        info["offset"] = [int(v) for v in offset]
    return info


def new_job_id() -> str:
    return uuid.uuid4().hex


DETAIL_FIELDS = {"phase": str, "image_index": int, "pass_index": int, "found": int, "detections": int,
                 "detection": int, "cycle": int, "step": int, "total": int, "reason": str}


def detail_event(data: dict) -> dict:
    """A fix pass's ``detail`` event as JSON (models.DetailEvent): the known fields as plain ints
    and strings, the boxes as lists of floats (the engine may hand numpy values)."""
    out = {name: kind(data[name]) for name, kind in DETAIL_FIELDS.items() if data.get(name) is not None}
    if data.get("boxes") is not None:
        out["boxes"] = [[round(float(v), 2) for v in box] for box in data["boxes"]]
    return out


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
