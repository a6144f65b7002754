"""The tiny-model writers' shared file work: safetensors out, built once per cache folder, linked into roots.

Every tiny add-on family (:mod:`.tiny_layerdiffuse`, ...) builds its files once in the test cache
(a folder named by family, version and diffusers version, published atomically with a
``.complete`` marker) and hard-links them into each model root a test makes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ctrlgen.core.models.configs import link_or_copy
from ctrlgen.core.models.tokenizer import publish_folder


def save_tensors(tensors: dict[str, Any], path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` (torch) as a safetensors file (contiguous, detached copies), folders made."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def build_once(cache_dir: Path, name: str, version: str, build: Callable[[Path], None]) -> Path:
    """The folder ``<cache_dir>/<name>-v<version>-diffusers<x>``, filled by ``build(folder)`` the
    first time (atomically: other processes wait or find it complete)."""
    import diffusers

    folder = Path(cache_dir) / f"{name}-v{version}-diffusers{diffusers.__version__}"
    if not (folder / ".complete").is_file():

        def fill(tmp: Path) -> None:
            build(tmp)
            (tmp / ".complete").write_text("", encoding="utf-8")

        publish_folder(folder, fill)
    return folder


def place(sources: Iterable[Path], target_folder: Path, names: Iterable[str] | None = None) -> dict[str, Path]:
    """Link (or copy) each source file into ``target_folder`` (kept if already there); stem -> target.
    ``names``: only these stems."""
    wanted = None if names is None else set(names)
    target_folder = Path(target_folder)
    target_folder.mkdir(parents=True, exist_ok=True)
    placed = {}
    for source in sorted(sources):
        if wanted is not None and source.stem not in wanted:
            continue
        target = target_folder / source.name
        if not target.exists():
            link_or_copy(source, target)
        placed[source.stem] = target
    return placed
