"""The server's job queue and its workers (one thread each, :mod:`.workers`).

Records (status, events, results) are changed only on the event loop's thread; the workers
hand everything they learn to the loop with ``loop.call_soon_threadsafe``. The queue itself is
shared by both sides under one condition variable:

- **jobs** wait in one FIFO per client (the ``X-Ctrlgen-Client`` header; without it, the one
  anonymous client), and a free worker takes the next job **round robin** between the clients
  with jobs waiting: a client's jobs start in the order it submitted them, and one client's
  long queue never holds another's job for more than one job per client in front of it;
- **calls** (preprocess-only requests, live painting, the warm-up) wait in their own FIFO and
  run on any free worker before the jobs submitted after them (so, with one client, exactly in
  submission order); a call may also be addressed to one worker (the warm-up of each).

What the server acknowledged is in the :class:`~.journal.Journal` before it is acknowledged:
a job (with its client) before ``POST /v1/jobs`` answers, its start when a worker takes it, its
end (with its results' files written first) before the ``finished`` event. :meth:`JobQueue.restore`
rebuilds the per-client queues from it after a restart (the jobs that were running first). A
server stopped normally (SIGTERM, Ctrl+C) puts every running job back in the queue; a job whose
worker died (a Ray actor killed) runs again once on another worker.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
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
from ctrlgen.host_bridges.server.workers import RaySettings, WorkerLost, make_workers

log = logging.getLogger("ctrlgen.server")

TERMINAL = ("finished", "error", "cancelled", "interrupted")
PREVIEW_SIDE = 256
RESULT_KEYS = ("index", "width", "height", "channels", "seed", "label", "changed_box", "offset", "canvas_size")
ANONYMOUS = ""  # the client of requests without X-Ctrlgen-Client
WORKER_LOSSES = 2  # a job whose worker died this often under it ends with an error


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


def client_id(header: str | None) -> str:
    """The client a request comes from: its ``X-Ctrlgen-Client`` header (trimmed, at most 200
    characters), or the anonymous client."""
    return (header or "").strip()[:200]


@dataclass
class JobRecord:
    id: str
    job: Any  # ctrlgen.core.engine.jobs.Job
    preview: bool
    refs: list[str]  # upload digests the job uses (pinned while it waits or runs)
    idempotency_key: str | None = None
    client: str = ANONYMOUS
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
    seq: int = 0  # submission order (the queue's)
    worker: int | None = None  # the worker running it
    losses: int = 0  # how often its worker died under it

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
    """A function to run on a worker (preprocess-only requests), answered through ``future``."""

    function: Any
    future: Future
    counted: bool = True  # in the positions of the jobs behind it (the warm-up is not)
    seq: int = 0


class _Slot:
    """What the queue knows of one worker: its thread, what it runs, calls addressed to it."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.thread: threading.Thread | None = None
        self.item: JobRecord | _Call | None = None
        self.calls: deque[tuple[_Call, Any]] = deque()  # (call, function taking the worker)

    @property
    def busy(self) -> bool:
        return self.item is not None


class JobQueue:
    """Per-client FIFOs of jobs served round robin, a FIFO of calls, one thread per worker."""

    def __init__(self, uploads: UploadStore, *, device: str | None, max_queue: int, max_kept: int,
                 result_ttl_s: float, journal: Journal, results: FileStore,
                 outputs: OutputWriter | None = None, workers: int | None = None,
                 devices: list[str] | None = None, ray: RaySettings | None = None) -> None:
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
        self._clients: OrderedDict[str, deque[JobRecord]] = OrderedDict()  # round-robin order
        self._calls: deque[_Call] = deque()
        self._warming = 0  # local warm-up calls not yet ended (nothing else starts meanwhile)
        self._seq = itertools.count(1)
        self._cond = threading.Condition()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._local = threading.local()  # .slot: the worker this thread is
        self._check_engine: Any = None
        self._engine_lock = threading.Lock()
        worker_list, self._ray_pool = make_workers(device, devices, workers, ray)
        self._slots = [_Slot(worker) for worker in worker_list]
        if self._ray_pool is not None:
            self._check_engine = self._ray_pool.check_engine

    # -- lifecycle -------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for slot in self._slots:
            slot.thread = threading.Thread(target=self._work, args=(slot,), daemon=True,
                                           name=f"ctrlgen-worker-{slot.worker.id}")
            slot.thread.start()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def workers(self) -> list[Any]:
        return [slot.worker for slot in self._slots]

    def stop(self) -> None:
        """Stop taking jobs; the running ones are cancelled and go back to the queue (journal).
        Calls still waiting (preprocess requests) fail with :class:`ServerStopping`, so their
        requests answer at once instead of holding the shutdown up."""
        with self._cond:
            self._stopping = True
            for slot in self._slots:
                if isinstance(slot.item, JobRecord):
                    slot.item.cancel.set()
            calls = list(self._calls) + [call for slot in self._slots for call, _ in slot.calls]
            self._calls.clear()
            for slot in self._slots:
                slot.calls.clear()
            self._cond.notify_all()
        for call in calls:
            if call.future.set_running_or_notify_cancel():
                call.future.set_exception(ServerStopping("the server is shutting down; send the request again "
                                                         "once it runs"))

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the workers to end (after :meth:`stop`); whether they all have."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for slot in self._slots:
            if slot.thread is not None:
                slot.thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self.worker_alive()

    def worker_alive(self) -> bool:
        return any(slot.thread is not None and slot.thread.is_alive() for slot in self._slots)

    def close_workers(self) -> None:
        """After :meth:`join`: let the workers go (a Ray cluster this server started stops)."""
        for slot in self._slots:
            slot.worker.close()
        if self._ray_pool is not None:
            self._ray_pool.close()

    # -- queue state (loop thread) -----------------------------------------------------
    @property
    def running_id(self) -> str | None:
        """The id of a running job (the first worker's that runs one); None when none runs."""
        ids = self.running_ids()
        return ids[0] if ids else None

    def running_ids(self) -> list[str]:
        return [slot.item.id for slot in self._slots if isinstance(slot.item, JobRecord)]

    def describe_workers(self) -> dict[str, Any]:
        """The workers for capabilities and health: count, and each one's id, device, kind,
        state (idle, running) and running job."""
        items = []
        for slot in self._slots:
            item = slot.item
            items.append({"id": slot.worker.id, "device": slot.worker.device_name(), "kind": slot.worker.kind,
                          "state": "running" if item is not None else "idle",
                          "job": item.id if isinstance(item, JobRecord) else None})
        return {"count": len(items), "items": items}

    def queued_count(self) -> int:
        with self._cond:
            return sum(len(jobs) for jobs in self._clients.values())

    def _order(self) -> list[JobRecord | _Call]:
        """What waits, in the order the workers will take it (under the lock)."""
        rotation = [(client, list(jobs)) for client, jobs in self._clients.items() if jobs]
        calls = list(self._calls)
        order: list[JobRecord | _Call] = []
        while rotation or calls:
            job = rotation[0][1][0] if rotation else None
            if calls and (job is None or calls[0].seq < job.seq):
                order.append(calls.pop(0))
                continue
            client, jobs = rotation.pop(0)
            order.append(jobs.pop(0))
            if jobs:
                rotation.append((client, jobs))
        return order

    def position(self, record: JobRecord) -> int:
        """How many jobs (and counted calls) start before ``record`` does, beyond the workers
        that are free (0: it is next, or running)."""
        with self._cond:
            if record.status != "queued":
                return 0
            busy = sum(1 for slot in self._slots if slot.busy and getattr(slot.item, "counted", True))
            ahead = 0
            for item in self._order():
                if item is record:
                    break
                ahead += 1 if getattr(item, "counted", True) else 0
            else:
                return 0
            return max(0, ahead + busy - (len(self._slots) - 1))

    def _enqueue(self, record: JobRecord, front: bool = False) -> None:
        """Into its client's FIFO (under the lock); ``front``: ahead of the client's others and
        of the other clients (a job that was running)."""
        jobs = self._clients.get(record.client)
        if jobs is None:
            jobs = self._clients[record.client] = deque()
        if front:
            jobs.appendleft(record)
            self._clients.move_to_end(record.client, last=False)
        else:
            jobs.append(record)

    def submit(self, record: JobRecord) -> int:
        """Queue ``record``; returns its position. Raises OverflowError when the queue is full."""
        with self._cond:
            if self._stopping:
                raise ServerStopping("the server is shutting down; submit the job again once it runs")
            if sum(len(jobs) for jobs in self._clients.values()) >= self.max_queue:
                raise OverflowError(self.max_queue)
            self.journal.add_job(record.id, record.job.model_dump(mode="json"), record.preview, record.refs,
                                 record.created, record.idempotency_key, client=record.client or None)
            self.uploads.pin(record.refs)
            self.jobs[record.id] = record
            record.seq = next(self._seq)
            self._enqueue(record)
            self._cond.notify()
        position = self.position(record)
        record.add_event("queued", {"position": position})
        return position

    def call(self, function, first: bool = False, counted: bool = True) -> Future:
        """Run ``function()`` on a worker after what is queued (``first``: before it); a Future
        of its result. ``counted=False``: jobs behind it do not count it in their positions."""
        future: Future = Future()
        with self._cond:
            if self._stopping:
                future.set_exception(ServerStopping("the server is shutting down; send the request again once "
                                                    "it runs"))
                return future
            if first:
                self._calls.appendleft(_Call(function, future, counted, seq=0))
            else:
                self._calls.append(_Call(function, future, counted, seq=next(self._seq)))
            self._cond.notify()
        return future

    def call_each(self, local, remote=None) -> list[Future]:
        """Before anything queued, on every worker: ``local()`` on a local worker (in its thread:
        :meth:`get_engine` is that worker's engine), ``remote(worker)`` on a Ray worker (default:
        nothing). Futures of each, in the workers' order.

        The local calls (the warm-up: first imports) run one at a time, and no worker takes a job
        or a queued call before they have all ended: diffusers' lazy module attributes are not
        safe to resolve from two threads at once."""
        futures = []
        lock = threading.Lock()

        def one_at_a_time():
            try:
                with lock:
                    answer = local()
                    self._local.slot.worker.warmed = True
                    return answer
            finally:
                with self._cond:
                    self._warming -= 1
                    self._cond.notify_all()

        with self._cond:
            for slot in self._slots:
                future: Future = Future()
                if self._stopping:
                    future.set_exception(ServerStopping("the server is shutting down"))
                elif slot.worker.kind == "local":
                    self._warming += 1
                    slot.calls.append((_Call(one_at_a_time, future, False), None))
                elif remote is not None:
                    slot.calls.append((_Call(remote, future, False), slot.worker))
                else:
                    future.set_result(None)
                futures.append(future)
            self._cond.notify_all()
        return futures

    def cancel(self, record: JobRecord) -> str:
        """Cancel ``record`` (loop thread); returns the status to answer (docs/protocol.md):

        - a queued job is dropped now: ``cancelled``, and its ``cancelled`` event is recorded;
        - a running job (on any worker) is asked to stop at its next check: ``running``; its
          ``cancelled`` event follows (or ``finished``, when it had already done its last step);
        - an ended job is left as it is: its status.
        """
        if record.status in TERMINAL:
            return record.status
        record.cancelled_by_client = True
        record.cancel.set()
        with self._cond:
            jobs = self._clients.get(record.client)
            if jobs is not None and record in jobs:
                jobs.remove(record)
                if not jobs:
                    del self._clients[record.client]
                self.journal.job_ended(record.id, "cancelled", time.time())
                self.uploads.unpin(record.refs)
                record.add_event("cancelled", {})
                return "cancelled"
        # A worker has it. Its status may still read 'queued' until the started event reaches
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
        """Rebuild jobs and the per-client queues from the journal (before :meth:`start`): the
        jobs that were running first, then the queued ones in their order; returns counts by fate."""
        from ctrlgen.core.engine.jobs import parse_job

        counts = {"queued": 0, "rerun": 0, "interrupted": 0, "ended": 0}
        now = time.time()
        rerun: list[JobRecord] = []
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
            record = JobRecord(row.id, job, row.preview, row.refs, created=row.created,
                               client=getattr(row, "client", None) or ANONYMOUS)
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
                    rerun.append(record)
                self.uploads.pin(record.refs)
                self.jobs[record.id] = record
                record.seq = next(self._seq)
                if row.status == "queued":
                    self._enqueue(record)
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
        for record in reversed(rerun):  # the jobs that were running go first, in their order
            self._enqueue(record, front=True)
        return counts

    # -- worker threads ------------------------------------------------------------------
    def _post(self, function, *args) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the loop closed while shutting down
            pass

    def _take(self, slot: _Slot) -> tuple[JobRecord | _Call, Any] | None:
        """The next thing for ``slot`` to run (under the lock): a call addressed to it, else the
        next call or job in the queue's order."""
        if slot.calls:
            return slot.calls.popleft()
        if self._warming:
            return None
        job_client = next((client for client, jobs in self._clients.items() if jobs), None)
        job = self._clients[job_client][0] if job_client is not None else None
        if self._calls and (job is None or self._calls[0].seq < job.seq):
            return self._calls.popleft(), None
        if job is None:
            return None
        jobs = self._clients[job_client]
        jobs.popleft()
        if jobs:
            self._clients.move_to_end(job_client)  # the next client's turn
        else:
            del self._clients[job_client]
        return job, None

    def _work(self, slot: _Slot) -> None:
        self._local.slot = slot
        while True:
            with self._cond:
                while not self._stopping and (taken := self._take(slot)) is None:
                    self._cond.wait()
                if self._stopping:
                    return
                item, argument = taken
                slot.item = item
                if isinstance(item, JobRecord):
                    item.worker = slot.worker.id
                    if not item.cancel.is_set():
                        self.journal.job_started(item.id, time.time())
            try:
                if isinstance(item, _Call):
                    self._run_call(item, argument)
                else:
                    self._run_job(item, slot.worker)
            finally:
                with self._cond:
                    slot.item = None
                    self._cond.notify_all()

    @property
    def engine(self) -> Any:
        """The first local worker's engine, once made (None before)."""
        for slot in self._slots:
            if slot.worker.kind == "local":
                return slot.worker.engine
        return self._check_engine

    def get_engine(self):
        """On a local worker's thread, that worker's engine (made on first use); elsewhere the
        engine the HTTP side checks jobs with before they are queued (:meth:`Engine.check` takes
        no lock): the first local worker's, or with only Ray workers one that runs nothing."""
        slot = getattr(self._local, "slot", None)
        if slot is not None and slot.worker.kind == "local":
            return slot.worker.get_engine()
        for candidate in self._slots:
            if candidate.worker.kind == "local":
                return candidate.worker.get_engine()
        with self._engine_lock:
            if self._check_engine is None:
                from ctrlgen.core.engine.engine import Engine

                self._check_engine = Engine(device="cpu", allow_paths=False)
            return self._check_engine

    def _run_call(self, call: _Call, argument: Any = None) -> None:
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            call.future.set_result(call.function() if argument is None else call.function(argument))
        except BaseException as exc:  # the HTTP side turns it into an answer
            call.future.set_exception(exc)

    def _run_job(self, record: JobRecord, worker: Any = None) -> None:
        requeued = False
        try:
            if record.cancel.is_set():
                self._end(record, "cancelled", {})
                return
            try:
                result = self._execute(record, worker)
                results = self._keep_results(result)
            except CancelledError:
                if self._stopping and not record.cancelled_by_client:
                    # the server is stopping, not the client cancelling: run it after the restart
                    self.journal.job_requeued(record.id)
                    return
                self._end(record, "cancelled", {})
            except WorkerLost as exc:
                record.losses += 1
                if record.losses < WORKER_LOSSES and not self._stopping:
                    log.warning("%s; job %s runs again", exc, record.id)
                    self.journal.job_requeued(record.id)
                    with self._cond:
                        self._enqueue(record, front=True)
                        self._cond.notify_all()
                    requeued = True
                    return
                self._end(record, "error", {"code": "internal_error",
                                            "message": f"{exc} (for the {record.losses}. time; not run again)"})
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
            if not requeued:
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
        labels = list(getattr(result, "labels", None) or [])  # LayerDiffuse's layers: which image is which
        for index, (image, seed) in enumerate(zip(result.images, result.seeds, strict=False)):
            pixels = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
            digest = hashlib.sha256(memoryview(pixels).cast("B")).hexdigest()
            self.results.write(digest, memoryview(pixels).cast("B"))
            height, width = pixels.shape[:2]
            channels = 1 if pixels.ndim == 2 else pixels.shape[2]
            kept.append({"index": index, "width": width, "height": height, "channels": channels, "seed": int(seed),
                         "digest": digest, **region})
            if index < len(labels):
                kept[-1]["label"] = labels[index]
        return kept

    def result_pixels(self, item: dict) -> np.ndarray:
        """A kept result's pixels, read from its file (memory-mapped)."""
        shape = (item["height"], item["width"]) + (() if item["channels"] == 1 else (item["channels"],))
        return np.memmap(self.results.path(item["digest"]), dtype=np.uint8, mode="r", shape=shape)

    def _finish(self, record: JobRecord, results: list[dict]) -> None:
        record.results = results
        record.add_event("finished", {"results": record.result_info()})
        self.purge()

    def _execute(self, record: JobRecord, worker: Any = None):
        if worker is None:
            worker = self._slots[0].worker

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

        return worker.run(record, on_event, self.uploads.resolve)

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
