"""ctrlgen's pytest plugin (entry point ``pytest11: ctrlgen``): tiny offline models as fixtures.

Installed with ctrlgen, so plugin authors' test suites get the same fixtures. Every pytest
run of anyone who installs ctrlgen imports this module, so it imports nothing heavy: torch
and diffusers load inside the fixtures, on first use.

Session fixtures (built once per session, in ``tmp_path_factory``; set
``CTRLGEN_TEST_CACHE_DIR`` to a folder to keep them between sessions, keyed by version):

* ``tiny_model_cache`` — the folder the tiny models are built in; pass it as ``cache_dir=``
  to the loaders in :mod:`ctrlgen.core.models.loading` to keep their config folders there too;
* ``tiny_sd15`` / ``tiny_sdxl`` — :class:`~ctrlgen.testing.tiny.TinyModel` paths (diffusers
  folders, original-format single files with sidecar configs, ControlNets);
* ``tiny_model_root`` — an A1111 install root (``models/Stable-diffusion``,
  ``models/ControlNet``) with both tiny families, as a
  :class:`~ctrlgen.testing.tiny.TinyModelRoot`;
* ``tiny_comfyui_root`` — the same in ComfyUI's layout (``checkpoints``, ``controlnet``,
  ``diffusers``).

Function fixture ``torch_single_thread``: torch on one CPU thread for the test. Tiny models
gain nothing from more threads, and on a loaded machine OpenMP's waiting threads can make
every small op cost a scheduler time slice (a 2-step 64×64 SDXL run: 0.1 s vs 8 s measured).
Use it with ``pytestmark = pytest.mark.usefixtures("torch_single_thread")``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiny_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's tiny models and derived config folders are written."""
    persistent = os.environ.get("CTRLGEN_TEST_CACHE_DIR")
    if persistent:
        path = Path(persistent).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("ctrlgen-tiny-models")


@pytest.fixture(scope="session")
def tiny_sd15(tiny_model_cache: Path) -> Any:
    """The tiny SD1.5 family (:class:`~ctrlgen.testing.tiny.TinyModel`)."""
    from ctrlgen.testing.tiny import write_tiny_sd15

    return write_tiny_sd15(tiny_model_cache)


@pytest.fixture(scope="session")
def tiny_sdxl(tiny_model_cache: Path) -> Any:
    """The tiny SDXL family (:class:`~ctrlgen.testing.tiny.TinyModel`)."""
    from ctrlgen.testing.tiny import write_tiny_sdxl

    return write_tiny_sdxl(tiny_model_cache)


@pytest.fixture(scope="session")
def tiny_model_root(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_cache: Path, tiny_sd15: Any, tiny_sdxl: Any
) -> Any:
    """An A1111-layout root holding the tiny SD1.5 and SDXL checkpoints and ControlNets."""
    from ctrlgen.testing.tiny import write_model_root

    root = tmp_path_factory.mktemp("a1111-root")
    return write_model_root(root, "a1111", architectures=("sd15", "sdxl"), cache_dir=tiny_model_cache)


@pytest.fixture(scope="session")
def tiny_comfyui_root(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_cache: Path, tiny_sd15: Any, tiny_sdxl: Any
) -> Any:
    """A ComfyUI-layout root holding the tiny models (single files and diffusers folders)."""
    from ctrlgen.testing.tiny import write_model_root

    root = tmp_path_factory.mktemp("comfyui-root")
    return write_model_root(root, "comfyui", architectures=("sd15", "sdxl"), cache_dir=tiny_model_cache)


@pytest.fixture
def torch_single_thread() -> Iterator[None]:
    """Run torch on one intra-op CPU thread during the test; the previous count is restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
