"""One lock for every model load in a process: a preprocessor's network never loads while an
engine loads a checkpoint on another thread (accelerate's global patches would leak), and a
preprocessor whose network is already loaded never waits for it."""

from __future__ import annotations

import threading

from ctrlgen.core.engine import engine as engine_module
from ctrlgen.core.models.annotators import LoadedModels
from ctrlgen.core.models.locks import LOAD_LOCK


def test_the_engine_and_the_preprocessors_share_the_lock():
    assert engine_module.LOAD_LOCK is LOAD_LOCK


def test_a_preprocessor_load_waits_for_a_load_on_another_thread():
    models = LoadedModels()
    order: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def engine_load() -> None:
        with LOAD_LOCK:
            holding.set()
            release.wait(10)
            order.append("engine done")

    engine_thread = threading.Thread(target=engine_load)
    engine_thread.start()
    assert holding.wait(10)
    loader_thread = threading.Thread(target=lambda: models.get("depth", lambda: order.append("preprocessor load")))
    loader_thread.start()
    loader_thread.join(0.3)
    assert loader_thread.is_alive() and order == []  # waiting for the engine's load
    release.set()
    engine_thread.join(10)
    loader_thread.join(10)
    assert order == ["engine done", "preprocessor load"]


def test_a_loaded_network_is_returned_while_another_thread_loads():
    models = LoadedModels()
    network = object()
    assert models.get("canny-net", lambda: network) is network
    got: list[object] = []
    with LOAD_LOCK:  # held by "another engine"; the cache hit must not need it
        reader = threading.Thread(target=lambda: got.append(models.get("canny-net", lambda: None)))
        # The lock is re-entrant for this thread only: the reader is another thread.
        reader.start()
        reader.join(5)
    assert got == [network]
