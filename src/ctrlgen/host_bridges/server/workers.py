"""The server's workers: where a job runs once :mod:`.jobs` has picked it.

Each worker is one thread of the server (owned by :class:`~.jobs.JobQueue`) and one engine:

- :class:`LocalWorker` (``--workers N``, ``--devices cpu,cpu | cuda:0,cuda:1 | all``): an
  :class:`~ctrlgen.core.engine.engine.Engine` in this process on one device. Several engines in
  one process are fine: model loads are serialised by the engine's ``LOAD_LOCK``, the jobs run
  side by side.
- :class:`RayWorker` (``--ray auto|local|ADDRESS``): the thread drives one Ray actor
  (:class:`ctrlgen.core.engine.ray_runner.JobActor`) that holds the engine. The server resolves
  the job's uploads and sends the arrays; the actor sends back its events (polled) and the
  result, which the server keeps as for a local job. Journal, uploads, results, security and
  the protocol never leave the server. Before a job uses a model file no job used before, every
  node is asked whether it sees it (:func:`~ctrlgen.core.engine.ray_runner.check_nodes`).

Ray is imported only when a server has Ray workers.
"""

from __future__ import annotations

import logging
import pickle
import threading
from dataclasses import dataclass
from typing import Any

from ctrlgen.core.errors import CancelledError, CtrlgenError

log = logging.getLogger("ctrlgen.server")

FIRST_JOBS = threading.Lock()  # local workers not warmed up run their first job one at a time
POLL_S = 0.1  # how often a Ray worker's thread asks its actor for events (and passes a cancel on)


class WorkerLost(CtrlgenError):
    """The worker died under a job (a Ray actor killed, its node lost): the job runs again."""


@dataclass
class RaySettings:
    """``--ray ADDRESS`` with ``--ray-workers`` (default: one per GPU, else per ``--ray-cpus``)
    and ``--ray-cpus`` (CPUs per actor on a cluster without GPUs; default 1)."""

    address: str
    workers: int | None = None
    cpus: float | None = None


class LocalWorker:
    """One engine in this process, on one device."""

    kind = "local"

    def __init__(self, index: int, device: str | None) -> None:
        self.id = index
        self.device = device
        self.engine: Any = None
        self.warmed = False  # its warm-up ran (the first imports are done)
        self._lock = threading.Lock()

    def get_engine(self) -> Any:
        with self._lock:
            if self.engine is None:
                from ctrlgen.core.engine.engine import Engine

                # Clients name models as the store knows them, never by arbitrary paths.
                self.engine = Engine(device=self.device, allow_paths=False)
            return self.engine

    def device_name(self) -> str:
        engine = self.engine
        resolved = getattr(engine, "_device", None) if engine is not None else None
        if resolved is not None:
            return str(getattr(resolved, "device", resolved))
        return self.device or "auto"

    def run(self, record: Any, on_event: Any, resolve: Any) -> Any:
        if not self.warmed:
            # Without a warm-up (--no-warmup), a first job imports diffusers' pipelines, whose lazy
            # attributes two threads must not resolve at once: first jobs go one at a time.
            with FIRST_JOBS:
                result = self._run(record, on_event, resolve)
            self.warmed = True
            return result
        return self._run(record, on_event, resolve)

    def _run(self, record: Any, on_event: Any, resolve: Any) -> Any:
        return self.get_engine().run(record.job, on_event=on_event, cancel=record.cancel, job_id=record.id,
                                     images=resolve, preview=record.preview)

    def close(self) -> None:
        pass


class RayPool:
    """The connection to the cluster and what the Ray workers share (model roots, checked paths)."""

    def __init__(self, settings: RaySettings, check_engine: Any) -> None:
        self.settings = settings
        self.check_engine = check_engine  # the server's engine: its store's roots go to the actors
        self._lock = threading.Lock()
        self._connected = False
        self._started = False
        self._checked: set[str] = set()
        self._actor_class: Any = None
        self._resources: dict[str, float] = {}
        self.gpus = False

    def size(self) -> int:
        """How many actors (connects to the cluster: it is asked for its GPUs and CPUs)."""
        from ctrlgen.core.engine import ray_runner

        self.connect()
        ray = ray_runner.import_ray()

        @dataclass
        class _Options:
            ray_workers: int | None
            ray_cpus: float | None

        size, self._resources = ray_runner.pool_size(ray, _Options(self.settings.workers, self.settings.cpus))
        if "num_gpus" not in self._resources and self.settings.workers is None:
            # no Ray Data tasks here, unlike a batch: every CPU may hold an actor
            cpus = self.settings.cpus or 1.0
            size = max(1, int(ray.cluster_resources().get("CPU", 1) / cpus))
        self.gpus = "num_gpus" in self._resources
        return size

    def connect(self) -> None:
        from ctrlgen.core.engine import ray_runner

        with self._lock:
            if not self._connected:
                self._started = ray_runner.connect(self.settings.address)
                self._connected = True

    def new_actor(self) -> Any:
        from ctrlgen.core.engine import ray_runner

        ray = ray_runner.import_ray()
        with self._lock:
            if self._actor_class is None:
                self._actor_class = ray.remote(ray_runner.JobActor)
        roots = list(self.check_engine.store.roots)
        # max_concurrency: run, events and cancel reach the actor while a job runs;
        # max_restarts: Ray restarts a killed actor (the job it ran runs again, see JobQueue).
        return self._actor_class.options(max_concurrency=4, max_restarts=-1, max_task_retries=0,
                                         **self._resources).remote(roots, None, None)

    def check_paths(self, paths: list[str]) -> None:
        """Every node sees ``paths`` (each checked once per server), or a CtrlgenError naming
        the node and the files."""
        from ctrlgen.core.engine import ray_runner

        with self._lock:
            new = [path for path in paths if path not in self._checked]
        if not new:
            return
        ray_runner.check_nodes(new)
        with self._lock:
            self._checked.update(new)

    def job_paths(self, job: Any, resolve: Any) -> list[str]:
        """The model folders and files ``job`` reads (what every node must see)."""
        paths = [str(root.path) for root in self.check_engine.store.roots]
        checked = self.check_engine.check(job, resolve)
        if getattr(checked, "checkpoint", None) is not None:
            paths.append(str(checked.checkpoint.path))
        for unit in getattr(checked, "units", ()) or ():
            if getattr(unit, "model_entry", None) is not None:
                paths.append(str(unit.model_entry.path))
        return paths

    def close(self) -> None:
        if self._started:
            from ctrlgen.core.engine import ray_runner

            try:
                ray_runner.import_ray().shutdown()
            except Exception:  # shutting down is best effort
                log.debug("ray.shutdown failed", exc_info=True)
            self._started = False


class RayWorker:
    """One Ray actor holding one engine, driven from one server thread."""

    kind = "ray"

    def __init__(self, index: int, pool: RayPool) -> None:
        self.id = index
        self.pool = pool
        self.actor: Any = None
        self.node: str | None = None
        self.device: str | None = None
        self._lock = threading.Lock()

    def device_name(self) -> str:
        if self.device:
            return f"{self.device}@{self.node}" if self.node else self.device
        before_start = "gpu" if self.pool.gpus else "cpu"  # until the actor says which device it has
        return before_start

    def get_actor(self) -> Any:
        with self._lock:
            if self.actor is None:
                from ctrlgen.core.engine import ray_runner

                ray = ray_runner.import_ray()
                self.actor = self.pool.new_actor()
                info = ray.get(self.actor.describe.remote())
                self.node, self.device = info["node"], info["device"]
            return self.actor

    def prepare(self, preload: str | None) -> None:
        """Start the actor, check the model folders (and the preloaded model) on every node,
        and warm the actor up (imports; the preloaded model)."""
        from ctrlgen.core.engine import ray_runner

        ray = ray_runner.import_ray()
        paths = [str(root.path) for root in self.pool.check_engine.store.roots]
        preload_path = None
        if preload:
            try:
                entry = self.pool.check_engine.store.find(preload, category=("checkpoints", "diffusers"))
                preload_path = str(entry.path)
                paths.append(preload_path)
            except CtrlgenError as exc:
                log.warning("--preload %r: %s", preload, exc)
        self.pool.check_paths(paths)
        actor = self.get_actor()
        ray.get(actor.warm.remote(preload_path))

    def run(self, record: Any, on_event: Any, resolve: Any) -> Any:
        from ctrlgen.core.engine import ray_runner
        from ctrlgen.core.plugins.events import JobEvent

        ray = ray_runner.import_ray()
        self.pool.check_paths(self.pool.job_paths(record.job, resolve))  # before the first job using them
        images = {f"sha256:{digest}": resolve(f"sha256:{digest}") for digest in record.refs}
        try:
            actor = self.get_actor()
            pending = actor.run.remote(record.id, record.job.model_dump(mode="json"), images, record.preview)
            seen = 0
            cancel_sent = False
            while True:
                ready, _ = ray.wait([pending], timeout=POLL_S)
                if record.cancel.is_set() and not cancel_sent:
                    actor.cancel.remote(record.id)
                    cancel_sent = True
                events = ray.get(actor.events.remote(record.id, seen, bool(ready)))
                seen += len(events)
                for kind, data in events:
                    on_event(JobEvent(record.id, kind, data))
                if ready:
                    break
            answer = ray.get(pending)
        except ray.exceptions.RayActorError as exc:
            with self._lock:
                self.actor = None  # Ray restarts it; this worker takes a fresh handle
            raise WorkerLost(f"the Ray worker {self.id} on {self.node} died while running the job: {exc}") from None
        if "error" in answer:
            error = answer["error"]
            if error.get("cancelled"):
                raise CancelledError("cancelled")
            if error.get("pickled") is not None:
                try:
                    exc = pickle.loads(error["pickled"])
                except Exception:  # an exception class that does not unpickle: its text
                    exc = None
                if isinstance(exc, BaseException):
                    raise exc
            raise RuntimeError(error.get("message", "the job failed on the Ray worker"))
        return answer["result"]

    def close(self) -> None:
        self.actor = None


def make_workers(device: str | None, devices: list[str] | None, count: int | None,
                 ray: RaySettings | None, check_engine: Any = None) -> tuple[list[Any], RayPool | None]:
    """The server's workers: ``devices`` (one local worker each), else ``count`` local workers
    on ``device`` (default 1; 0 with ``ray`` unless given), then the Ray workers."""
    workers: list[Any] = []
    if devices:
        workers = [LocalWorker(index, name) for index, name in enumerate(devices)]
    else:
        number = count if count is not None else (0 if ray is not None else 1)
        workers = [LocalWorker(index, device) for index in range(number)]
    pool = None
    if ray is not None:
        if check_engine is None:
            from ctrlgen.core.engine.engine import Engine

            check_engine = Engine(device="cpu", allow_paths=False)
        pool = RayPool(ray, check_engine)
        start = len(workers)
        workers += [RayWorker(start + index, pool) for index in range(pool.size())]
    if not workers:
        raise CtrlgenError("no workers: give --workers 1 or more (or --devices, or --ray)")
    return workers, pool


__all__ = ["LocalWorker", "RayPool", "RaySettings", "RayWorker", "WorkerLost", "make_workers"]
