"""The batch runner on a Ray cluster: Ray Data with an actor pool, one engine per actor.

``ctrlgen batch ... --ray ADDRESS`` and ``ctrlgen fix ... --ray ADDRESS`` come here from
:func:`ctrlgen.core.engine.runner.run_items`. The items still to do become a Ray Dataset (one
block per item, so any idle actor takes the next one); ``map_batches`` runs them on a pool of
actors, each holding one :class:`~ctrlgen.core.engine.engine.Engine` made once per actor (its
models load on the actor's first job and stay): ``num_gpus=1`` per actor on a cluster with GPUs,
a fraction of a CPU otherwise. An actor loads, runs and encodes its item and returns the bytes;
this process writes them atomically and appends the manifest line, exactly as the local runner
does, so progress, resume and the manifest are the same.

An actor that dies (``kill -9``, a lost node) is restarted by Ray Data and its item run again
(``max_restarts=-1``, ``max_task_retries=-1``, Ray Data's defaults for actor pools); this
process keeps the first result of each item and drops any repeat, so every item is written and
recorded once.

``ctrlgen serve --ray ADDRESS`` uses :class:`JobActor` instead: one long-lived actor per server
worker, sent one job at a time with its images as arrays, polled for the job's events and
answering its result (``ctrlgen.host_bridges.server.workers``).

Ray is an optional extra (``pip install ctrlgen[ray]``) and is imported only here, only when a
batch asks for it. The actors read model files and inputs by the same paths as this process:
:func:`check_nodes` looks for them on every node before the first job.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
from collections.abc import Callable, Sequence
from typing import Any

from ctrlgen.core.errors import CtrlgenError

MISSING_SHOWN = 5  # missing files named per node in the error


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise CtrlgenError("--ray needs Ray: pip install 'ctrlgen[ray]' (on this machine and every node of the "
                           "cluster)") from None
    return ray


def connect(address: str) -> bool:
    """Join the cluster at ``address`` (``auto``: the one ``ray start`` runs here; ``local``: a
    new one in this process) unless this process already has one; True when we started it."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    try:
        extra = {"include_dashboard": False} if address == "local" else {}  # a throw-away cluster needs none
        ray.init(address=address, log_to_driver=False, configure_logging=False, **extra)
    except ConnectionError as exc:
        raise CtrlgenError(f"--ray {address}: no Ray cluster there ({exc}); start one with `ray start --head` "
                           "(docs/scaling.md) or give its address") from None
    return True


def _missing_here(paths: Sequence[str]) -> tuple[str, list[str]]:
    return socket.gethostname(), [path for path in paths if not os.path.exists(path)]


def check_nodes(paths: Sequence[str]) -> None:
    """Every alive node sees every file of ``paths`` (model files, model folders, inputs), or a
    :class:`CtrlgenError` naming the node and the missing files."""
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(_missing_here)
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    answers = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
                       .remote(list(paths)) for node in nodes])
    problems = []
    for node, (host, missing) in zip(nodes, answers, strict=True):
        if missing:
            shown = ", ".join(missing[:MISSING_SHOWN]) + (f" and {len(missing) - MISSING_SHOWN} more"
                                                          if len(missing) > MISSING_SHOWN else "")
            problems.append(f"node {host} ({node.get('NodeManagerAddress')}) cannot see {shown}")
    if problems:
        raise CtrlgenError("; ".join(problems) + ". Every node must see the model files and the inputs at the same "
                                                 "paths: mount a shared folder at the same place on each, or copy "
                                                 "them there (docs/scaling.md)")


class EngineActor:
    """One engine per actor; ``__call__`` runs a batch of pickled items (Ray Data's rows)."""

    def __init__(self, work: Any, roots: Sequence[Any], device: str | None, precision: str | None) -> None:
        import ray

        from ctrlgen.core.engine.engine import Engine
        from ctrlgen.core.models.store import ModelStore

        if device is None:  # the GPU Ray gave this actor (CUDA_VISIBLE_DEVICES), else the CPU
            device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.work = work
        self.engine = Engine(store=ModelStore(list(roots)), device=device, precision=precision)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from ctrlgen.core.engine.work import execute

        results = []
        for blob in batch["item"]:
            item = pickle.loads(blob)
            try:
                record, loaded, result = execute(self.work, self.engine, item, lambda i=item: self.work.load(i))
                blobs = self.work.encode(item, loaded, result, record) if result is not None else []
                answer = {"record": record, "blobs": blobs}
            except Exception as exc:  # not the item's fault (a model gone, a CUDA error): the batch stops
                answer = {"error": f"{type(exc).__name__} on {socket.gethostname()}: {exc}"}
            results.append(pickle.dumps(answer))
        return {"index": np.asarray(batch["index"]), "result": np.array(results, dtype=object)}


class JobActor:
    """One engine per actor for ``ctrlgen serve --ray`` (a threaded actor: ``run`` holds one
    thread while ``events`` and ``cancel`` answer on others). The server sends a job with its
    images as arrays; the actor keeps the job's events for the server to poll and answers the
    :class:`~ctrlgen.core.engine.engine.JobResult` (or the error), never touching the server's
    journal, uploads or files."""

    KEPT_EVENTS = ("started", "progress", "preview", "detail")

    def __init__(self, roots: Sequence[Any], device: str | None, precision: str | None) -> None:
        import threading

        import ray

        from ctrlgen.core.engine.engine import Engine
        from ctrlgen.core.models.store import ModelStore

        if device is None:  # the GPU Ray gave this actor (CUDA_VISIBLE_DEVICES), else the CPU
            device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.device = device
        self.engine = Engine(store=ModelStore(list(roots)), device=device, precision=precision, allow_paths=False)
        self._lock = threading.Lock()
        self._events: dict[str, list[tuple[str, dict]]] = {}
        self._cancels: dict[str, Any] = {}

    def describe(self) -> dict[str, Any]:
        return {"node": socket.gethostname(), "device": self.device, "pid": os.getpid()}

    def warm(self, preload_path: str | None) -> None:
        """The heavy imports, and the preloaded model (kept in the engine's cache)."""
        import torch  # noqa: F401

        self.engine.device  # noqa: B018 - chooses the device
        if preload_path:
            entry = self.engine.store.find(preload_path, category=("checkpoints", "diffusers"))
            self.engine.load_pipeline(entry)

    def run(self, job_id: str, job: dict[str, Any], images: dict[str, Any], preview: bool) -> dict[str, Any]:
        import threading

        from ctrlgen.core.engine.jobs import parse_job
        from ctrlgen.core.errors import CancelledError

        cancel = self._cancels.setdefault(job_id, threading.Event())
        with self._lock:
            self._events.setdefault(job_id, [])

        def on_event(event: Any) -> None:
            if event.kind in self.KEPT_EVENTS:
                with self._lock:
                    self._events.setdefault(job_id, []).append((event.kind, dict(event.data)))

        def resolve(ref: str) -> Any:
            try:
                return images[ref]
            except KeyError:
                raise CtrlgenError(f"image {ref} was not sent with the job") from None

        try:
            result = self.engine.run(parse_job(job), on_event=on_event, cancel=cancel, job_id=job_id,
                                     images=resolve, preview=preview)
            return {"result": result}
        except CancelledError:
            return {"error": {"cancelled": True}}
        except BaseException as exc:  # sent back whole when it pickles, else as text
            try:
                pickled = pickle.dumps(exc.with_traceback(None))
                pickle.loads(pickled)
            except Exception:
                pickled = None
            return {"error": {"pickled": pickled, "message": f"{type(exc).__name__} on {socket.gethostname()}: "
                                                             f"{exc}"}}
        finally:
            self._cancels.pop(job_id, None)

    def events(self, job_id: str, since: int, done: bool = False) -> list[tuple[str, dict]]:
        """The job's events after the first ``since``; ``done``: the last call, forget them."""
        with self._lock:
            events = self._events.get(job_id, [])[since:]
            if done:
                self._events.pop(job_id, None)
        return events

    def cancel(self, job_id: str) -> None:
        import threading

        self._cancels.setdefault(job_id, threading.Event()).set()


def pool_size(ray: Any, options: Any) -> tuple[int, dict[str, float]]:
    """How many actors, and each actor's resources: one GPU each on a cluster with GPUs (one
    actor per GPU), else ``ray_cpus`` CPUs (default 1) each, leaving a CPU for Ray Data's own
    tasks."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return options.ray_workers or gpus, {"num_gpus": 1}
    cpus = options.ray_cpus or 1.0
    default = max(1, int((resources.get("CPU", 1) - 1) / cpus))
    return options.ray_workers or default, {"num_cpus": cpus}


def run(work: Any, pending: list[Any], manifest: Any, *, engine: Any, options: Any,
        on_record: Callable[[dict[str, Any]], None] | None, cancel: Any, node_paths: Sequence[str]) -> list[dict]:
    """Run ``pending`` on the cluster at ``options.ray``; returns the new records."""
    from ctrlgen.core.engine.work import write_record

    ray = import_ray()
    from ray import data as ray_data  # (it configures its loggers when first imported)

    data_logger = logging.getLogger("ray.data")
    level = data_logger.level
    data_logger.setLevel(logging.ERROR)  # Ray Data's plan and progress lines would cover our bar
    started = connect(options.ray)
    try:
        # 1. Before the first job: every node sees what the actors will read.
        if node_paths:
            check_nodes(node_paths)
        # 2. The pool: one engine per actor, the same model folders and precision as here.
        size, resources = pool_size(ray, options)
        context = ray_data.DataContext.get_current()
        context.enable_progress_bars = False  # ours is the one bar
        rows = [{"index": index, "item": pickle.dumps(item)} for index, item in enumerate(pending)]
        dataset = ray_data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            EngineActor, batch_size=1, compute=ray_data.ActorPoolStrategy(size=size), zero_copy_batch=True,
            fn_constructor_kwargs={"work": work, "roots": list(engine.store.roots), "device": None,
                                   "precision": getattr(engine, "_precision", None)},
            **resources)
        # 3. Results as they come: outputs into place, then the line; each item once.
        records: list[dict[str, Any]] = []
        seen: set[int] = set()
        for row in dataset.iter_rows():
            index = int(row["index"])
            if index in seen:
                continue
            seen.add(index)
            answer = pickle.loads(row["result"])
            if "error" in answer:
                raise CtrlgenError(f"on the Ray cluster: {answer['error']}; the finished items are in the manifest, "
                                   "running the command again resumes")
            write_record(work, pending[index], manifest, answer["record"], answer["blobs"])
            records.append(answer["record"])
            if on_record is not None:
                on_record(answer["record"])
            if cancel is not None and cancel.is_set():
                break
        return records
    finally:
        data_logger.setLevel(level)
        if started:
            ray.shutdown()


__all__ = ["EngineActor", "JobActor", "check_nodes", "connect", "import_ray", "pool_size", "run"]
