"""What preprocessors with weights share: finding their files and keeping them loaded.

A preprocessor declares its files as :class:`~ctrlgen.core.plugins.specs.WeightFile` s; at run
time it calls :func:`weight_path` (model store lookup, clear error when missing, never a
download) and :func:`loaded` (load once, keep, free on :func:`unload`)::

    HED = WeightFile("ControlNetHED.pth", source="lllyasviel/Annotators")

    def run(image, mask=None, *, detect_resolution):
        detector = loaded("softedge_hed", lambda: HEDdetector(load_hed(weight_path("softedge_hed", HED))))
        ...
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ctrlgen.core.errors import ModelNotFoundError
from ctrlgen.core.models.locks import LOAD_LOCK
from ctrlgen.core.plugins.specs import WeightFile

T = TypeVar("T")

_store_lock = threading.Lock()
_store: tuple[Any, Any] | None = None  # (settings, ModelStore)


def default_store():
    """The model store for the current settings (rebuilt when the settings change)."""
    global _store
    from ctrlgen.core.config import load_settings
    from ctrlgen.core.models.store import ModelStore

    settings = load_settings()
    with _store_lock:
        if _store is None or _store[0] != settings:
            _store = (settings, ModelStore.from_settings(settings))
        return _store[1]


def reset_default_store() -> None:
    """Forget the cached store (rescan on next use), e.g. after new files were added."""
    global _store
    with _store_lock:
        _store = None


def weight_path(owner: str, weight: WeightFile, store: Any = None) -> Path:
    """Local path of ``weight`` for the preprocessor/adapter ``owner``, or a clear error."""
    store = store if store is not None else default_store()
    try:
        return store.find_weight(weight)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{owner!r} needs its weights. {exc}") from None


def load_weights(owner: str, weight: WeightFile, store: Any = None) -> dict[str, Any]:
    """The state dict of ``weight`` (a flat ``{name: tensor}`` dict on the CPU).

    Annotator weights are published as ``.pth`` pickles (lllyasviel/Annotators and
    friends). They are read with ``torch.load(weights_only=True)``, torch's restricted
    unpickler that cannot run code; a file that needs more than tensors and plain
    containers is refused with :class:`~ctrlgen.core.errors.UnsafeModelError`. A
    ``.safetensors`` copy found under the same name is preferred.
    """
    from ctrlgen.core.models.identify import load_state_dict

    path = weight_path(owner, weight, store)
    twin = path.with_suffix(".safetensors")
    if path.suffix != ".safetensors" and twin.is_file():
        path = twin
    return load_state_dict(path, allow_pickle=True)


class LoadedModels:
    """Models loaded by preprocessors, by (owner, key); loaded once, freed on request."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, Any], Any] = {}
        self._lock = threading.RLock()

    def get(self, owner: str, loader: Callable[[], T], key: Any = None) -> T:
        slot = (owner, key)
        with self._lock:
            if slot in self._models:
                return self._models[slot]
        # A load takes the process-wide LOAD_LOCK first (the lock order of locks.py), so it never
        # interleaves with an engine loading a checkpoint on another thread.
        with LOAD_LOCK, self._lock:
            if slot not in self._models:
                self._models[slot] = loader()
            return self._models[slot]

    def unload(self, owner: str | None = None) -> int:
        """Forget the models of ``owner`` (all when None); returns how many were dropped."""
        with self._lock:
            slots = [s for s in self._models if owner is None or s[0] == owner]
            for slot in slots:
                del self._models[slot]
        if slots:
            _free_accelerator_memory()
        return len(slots)

    def owners(self) -> set[str]:
        with self._lock:
            return {owner for owner, _ in self._models}


LOADED = LoadedModels()


def loaded(owner: str, loader: Callable[[], T], key: Any = None) -> T:
    """``loader()``'s result, cached under ``(owner, key)`` until :func:`unload`."""
    return LOADED.get(owner, loader, key)


def unload(owner: str | None = None) -> int:
    return LOADED.unload(owner)


def unloader(owner: str) -> Callable[[], None]:
    """A ``PreprocessorSpec.unload`` callable for ``owner``."""
    return lambda: LOADED.unload(owner) and None


def torch_device() -> str:
    """Where preprocessor networks run: the configured device (``auto`` picks CUDA/MPS/CPU)."""
    from ctrlgen.core.config import load_settings
    from ctrlgen.core.models.device import choose_device

    return choose_device(load_settings().device).device


def _free_accelerator_memory() -> None:
    """Give freed GPU memory back. On the CPU, reference counting already freed the models;
    a full ``gc.collect`` there would cost most of a second for nothing."""
    import gc
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
