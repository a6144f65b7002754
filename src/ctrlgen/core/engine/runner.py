"""The batch runner ``ctrlgen batch`` and ``ctrlgen fix`` share: many items, one manifest.

A batch is a list of items (an input file to fix, a job line to run), each with a manifest key
and the output files it makes, and a :class:`Work` that says what to do with one item: load
its inputs (decode; on reader threads), run it on an engine, encode its outputs to bytes. The
runner owns everything else, the same way wherever the engines are:

- **local** (default): one engine on this thread, inputs decoded ahead on a small thread pool
  and outputs written behind on another thread, so the device never waits for the disk;
- **devices** (``--devices cuda:0,cuda:1``, ``all``, ``cpu,cpu``): one engine per device, each
  on its own thread, fed from the same decoded queue;
- **Ray** (``--ray auto|ADDRESS``): one engine per Ray actor through Ray Data
  (:mod:`ctrlgen.core.engine.ray_runner`); the outputs come back as bytes and are written here.

Whatever runs the items, outputs and the manifest are written in this process only, in this
order, which makes any interruption (``kill -9`` included) safe:

1. each output is written under a hidden partial name (``.NAME.ctrlgen-partial``) beside its
   final path, then renamed into place (``os.replace``: atomic);
2. only then is the item's line appended to the manifest (JSONL, one complete line per item);
3. on start, a trailing incomplete manifest line is cut off, leftover partial files are
   removed, and items whose line is complete and whose outputs exist are skipped.

An item whose worker dies (a device error, a killed Ray actor) is run again by another worker;
its line is written once, when its outputs are in place.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ctrlgen.core.engine.work import (
    PARTIAL_SUFFIX,
    Manifest,
    Work,
    execute,
    is_partial,
    partial_path,
    write_atomic,
    write_record,
)
from ctrlgen.core.errors import CtrlgenError, JobError


@dataclass
class RunnerOptions:
    """Where a batch runs: ``devices`` (one engine per entry; None: the one engine given),
    ``ray`` (a Ray address: ``auto``, ``local``, ``ray://HOST:10001``, ...; then the Ray
    options apply), and ``io_threads`` (decode threads beside each engine)."""

    devices: list[str] | None = None
    ray: str | None = None
    ray_workers: int | None = None
    ray_cpus: float | None = None  # CPUs per actor on a cluster without GPUs
    io_threads: int = 2


def parse_devices(text: str) -> list[str]:
    """``--devices``: ``all`` (every CUDA device), or a comma-separated list of cpu, cuda,
    cuda:N, mps (a device may repeat: two engines on it)."""
    text = text.strip().lower()
    if text == "all":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise JobError("--devices all: no CUDA device is visible here; give --devices cpu,cpu (one engine per "
                           "entry) or check CUDA_VISIBLE_DEVICES")
        return [f"cuda:{index}" for index in range(count)]
    devices = [part.strip() for part in text.split(",") if part.strip()]
    for device in devices:
        if not (device in ("cpu", "mps", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
            raise JobError(f"--devices: {device!r} is not a device; give a comma-separated list of cpu, cuda:N, mps "
                           "(e.g. cuda:0,cuda:1), or all")
    if not devices:
        raise JobError("--devices is empty; give e.g. cuda:0,cuda:1, all, or cpu,cpu")
    return devices


def run_items(work: Work, items: Sequence[Any], manifest: Manifest, *, engine: Any = None,
              make_engine: Callable[[str], Any] | None = None, options: RunnerOptions | None = None,
              on_record: Callable[[dict[str, Any]], None] | None = None, cancel: Any = None,
              node_paths: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run every item of ``items`` not yet done; returns the new manifest records. ``engine``
    runs them locally; with ``options.devices`` ``make_engine(device)`` makes one engine per
    device; with ``options.ray`` they run on Ray actors (``engine`` is then only the model
    store's source, and ``node_paths`` are checked on every node first)."""
    options = options or RunnerOptions()
    # 1. Clean up what a killed run left: partial files beside the outputs.
    for item in items:
        for output in item.outputs:
            partial_path(output).unlink(missing_ok=True)
    pending = [item for item in items if not manifest.done(item)]
    if not pending:
        return []
    if options.ray is not None:
        from ctrlgen.core.engine import ray_runner

        return ray_runner.run(work, pending, manifest, engine=engine, options=options, on_record=on_record,
                              cancel=cancel, node_paths=node_paths)
    if options.devices:
        if make_engine is None:
            raise JobError("devices were given but no way to make an engine for each")
        engines = [make_engine(device) for device in options.devices]
    else:
        engines = [engine]
    return _run_local(work, pending, engines, manifest, on_record, cancel, options.io_threads)


class _Stop(Exception):
    """A write failed: the whole batch stops (the disk is full, a folder is not writable)."""


def _run_local(work: Work, pending: list[Any], engines: list[Any], manifest: Manifest,
               on_record: Callable[[dict[str, Any]], None] | None, cancel: Any, io_threads: int) -> list[dict]:
    readers = concurrent.futures.ThreadPoolExecutor(max(1, io_threads), thread_name_prefix="ctrlgen-decode")
    writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ctrlgen-encode")
    ahead = max(2, io_threads + len(engines))
    records: list[dict[str, Any]] = []
    source = _prefetch(readers, work, pending, ahead)
    condition = threading.Condition()
    state = {"in_flight": 0, "exhausted": False, "stop": False}
    retry: deque[tuple[Any, concurrent.futures.Future]] = deque()
    failures: list[BaseException] = []

    def write(item: Any, loaded: Any, result: Any, record: dict[str, Any]) -> None:
        blobs = work.encode(item, loaded, result, record) if result is not None else []
        write_record(work, item, manifest, record, blobs)
        records.append(record)
        if on_record is not None:
            on_record(record)

    def take() -> tuple[Any, concurrent.futures.Future] | None:
        with condition:
            while True:
                if state["stop"] or (cancel is not None and cancel.is_set()):
                    return None
                if retry:
                    state["in_flight"] += 1
                    return retry.popleft()
                if not state["exhausted"]:
                    try:
                        job = next(source)
                        state["in_flight"] += 1
                        return job
                    except StopIteration:
                        state["exhausted"] = True
                if state["in_flight"] == 0:
                    return None
                condition.wait(0.2)  # another worker may die and hand its item back

    def release(job: Any, died: bool) -> None:
        with condition:
            state["in_flight"] -= 1
            if died:
                retry.append(job)
            condition.notify_all()

    def serve(engine: Any) -> None:
        writes: list[concurrent.futures.Future] = []
        try:
            while (job := take()) is not None:
                item, future = job
                try:
                    record, loaded, result = execute(work, engine, item, future.result, cancel)
                except CtrlgenError:
                    release(job, died=False)
                    raise
                except Exception:
                    release(job, died=len(engines) > 1)  # its item goes to another worker
                    raise
                writes.append(writer.submit(write, item, loaded, result, record))
                release(job, died=False)
                try:
                    writes = _settle(writes, limit=ahead)
                except CtrlgenError as exc:
                    raise _Stop(exc) from exc
            for pending_write in writes:
                try:
                    pending_write.result()
                except CtrlgenError as exc:
                    raise _Stop(exc) from exc
        except BaseException:
            for pending_write in writes:  # what this worker finished is still written
                if not pending_write.cancelled():
                    concurrent.futures.wait([pending_write])
            raise

    try:
        if len(engines) == 1:
            try:
                serve(engines[0])
            except _Stop as stop:
                raise stop.args[0] from None
        else:
            def guarded(engine: Any) -> None:
                try:
                    serve(engine)
                except BaseException as exc:  # recorded; a CtrlgenError or a failed write stops every worker
                    failures.append(exc)
                    if isinstance(exc, (CtrlgenError, _Stop)) or len(failures) == len(engines):
                        with condition:
                            state["stop"] = True
                            condition.notify_all()

            threads = [threading.Thread(target=guarded, args=(e,), name=f"ctrlgen-engine-{i}", daemon=True)
                       for i, e in enumerate(engines)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            fatal = [f for f in failures if isinstance(f, (CtrlgenError, _Stop))]
            if fatal:
                error = fatal[0]
                raise (error.args[0] if isinstance(error, _Stop) else error) from None
            if len(failures) == len(engines) and failures:
                raise CtrlgenError(f"every engine failed; the last error: {type(failures[-1]).__name__}: "
                                   f"{failures[-1]}; the finished items are in the manifest, running the "
                                   "command again resumes") from failures[-1]
    finally:
        with condition:  # interrupted (Ctrl-C): no engine takes another item
            state["stop"] = True
            condition.notify_all()
        readers.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)
    return records


def _settle(writes: list[concurrent.futures.Future], limit: int) -> list[concurrent.futures.Future]:
    """The writes still running; a finished one's error is raised here, and past ``limit``
    queued writes the oldest is waited for (memory stays bounded when the disk is slow)."""
    while len(writes) > limit:
        writes.pop(0).result()
    running = []
    for future in writes:
        if future.done():
            future.result()
        else:
            running.append(future)
    return running


def _prefetch(pool: concurrent.futures.Executor, work: Work, items: list[Any],
              ahead: int) -> Iterator[tuple[Any, concurrent.futures.Future]]:
    """``(item, future of its loaded inputs)`` in order, keeping ``ahead`` loads in flight."""
    futures: list[concurrent.futures.Future] = []
    for index, item in enumerate(items):
        while len(futures) < min(ahead, len(items) - index):
            futures.append(pool.submit(work.load, items[index + len(futures)]))
        yield item, futures.pop(0)


__all__ = ["Manifest", "PARTIAL_SUFFIX", "RunnerOptions", "Work", "execute", "is_partial", "parse_devices",
           "partial_path", "run_items", "write_atomic", "write_record"]
