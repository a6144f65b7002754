"""Where the diffusers config folders for single-file loading come from, offline.

``diffusers``' ``from_single_file`` builds a pipeline from an original-format file with a
diffusers *config folder* (``model_index.json``, ``unet/config.json``, ..., tokenizer
files). This module provides such folders without the hub:

* **bundled configs** of the real architectures (``ctrlgen/assets/configs``): ``sd15``,
  ``sd2`` (epsilon, 512 px), ``sd2-v`` (v-prediction, 768 px), ``sdxl`` and the ControlNets
  ``controlnet-sd15``, ``controlnet-sd2``, ``controlnet-sdxl``;
* **sidecar configs**: ``<checkpoint stem>.config.json`` next to a file, a diffusers config
  folder packed into one JSON file::

      {"format": "ctrlgen.diffusers-config", "version": 1,
       "files": {"model_index.json": {...}, "unet/config.json": {...},
                 "tokenizer/tokenizer_config.json": {...}, ...}}

  Only JSON configs are packed; the CLIP vocabulary is added from
  :mod:`ctrlgen.core.models.tokenizer` when the folder is assembled. One file rather than a folder,
  so it travels with the checkpoint like A1111's ``<stem>.yaml`` and is never mistaken for a
  diffusers model folder by a model-store scan. :func:`write_sidecar` packs any diffusers
  folder; that is how a checkpoint of non-standard shape (a tiny test model, a pruned
  ControlNet) is made loadable.

:func:`materialize_config_folder` writes either as a real folder in ctrlgen's cache,
content-addressed, so it is written once and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from ctrlgen.core.errors import ModelFormatError
from ctrlgen.core.models.tokenizer import (
    TOKENIZER_FORMAT_VERSION,
    clip_tokenizer_dir,
    default_cache_dir,
    publish_folder,
    tokenizer_config,
)

SIDECAR_SUFFIX = ".config.json"
SIDECAR_FORMAT = "ctrlgen.diffusers-config"
SIDECAR_VERSION = 1
PIPELINE_CONFIGS = ("sd15", "sd2", "sd2-v", "sdxl")
CONTROLNET_CONFIGS = {"sd15": "controlnet-sd15", "sd2": "controlnet-sd2", "sdxl": "controlnet-sdxl"}
_TOKENIZER_KEYS = (
    "tokenizer_class",
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "model_max_length",
    "do_lower_case",
    "add_prefix_space",
    "errors",
)


def bundled_config_files(name: str) -> dict[str, dict[str, Any]]:
    """The bundled diffusers configs ``name`` (e.g. ``"sd15"``, ``"controlnet-sdxl"``) as {relpath: json}."""
    root = resources.files("ctrlgen") / "assets" / "configs" / name
    if not root.is_dir():
        raise ModelFormatError(f"ctrlgen ships no config named {name!r}; reinstall ctrlgen if it should")
    files: dict[str, dict[str, Any]] = {}
    pending = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                pending.append((entry, f"{prefix}{entry.name}/"))
            elif entry.name.endswith(".json"):
                files[prefix + entry.name] = json.loads(entry.read_text(encoding="utf-8"))
    return files


def sidecar_path(checkpoint: Path) -> Path:
    """``models/x/foo.safetensors`` -> ``models/x/foo.config.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + SIDECAR_SUFFIX)


def read_sidecar(checkpoint: Path) -> dict[str, dict[str, Any]] | None:
    """The packed config files of ``checkpoint``'s sidecar, or None when it has none."""
    path = sidecar_path(checkpoint)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(
            f"sidecar config {path} is not readable JSON ({exc}); fix or delete it"
        ) from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or data.get("format") != SIDECAR_FORMAT:
        raise ModelFormatError(
            f"{path} is not a ctrlgen sidecar config (expected format {SIDECAR_FORMAT!r} with a 'files' "
            "object); rename it if it belongs to something else"
        )
    for rel, content in files.items():
        if not _safe_relpath(rel) or not rel.endswith(".json") or not isinstance(content, dict):
            raise ModelFormatError(
                f"{path}: entry {rel!r} must be a relative '*.json' path mapping to an object"
            )
    return files


def write_sidecar(checkpoint: Path, config_folder: Path) -> Path:
    """Pack the JSON configs of a diffusers folder (pipeline or single model) as ``checkpoint``'s sidecar."""
    config_folder = Path(config_folder)
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(config_folder.rglob("*.json")):
        rel = path.relative_to(config_folder).as_posix()
        name = path.name
        if name not in ("model_index.json", "config.json", "scheduler_config.json", "tokenizer_config.json"):
            continue  # tokenizer.json / vocab.json are rebuilt from open_clip's vocabulary
        content = json.loads(path.read_text(encoding="utf-8"))
        if name == "tokenizer_config.json":
            content = {k: v for k, v in content.items() if k in _TOKENIZER_KEYS}
        files[rel] = content
    if not files:
        raise ModelFormatError(f"{config_folder} has no diffusers config files to pack into a sidecar")
    target = sidecar_path(checkpoint)
    payload = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "files": files}
    target.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return target


def _safe_relpath(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and ".." not in parts and "\\" not in rel


def materialize_config_folder(files: Mapping[str, Mapping[str, Any]], cache_dir: Path | None = None) -> Path:
    """Write ``files`` as a diffusers config folder in the cache (content-addressed) and return it.

    Every ``CLIPTokenizer`` listed in ``model_index.json`` gets ``vocab.json``/``merges.txt``
    from the offline tokenizer, and a ``tokenizer_config.json`` when none was given: OpenCLIP's
    (pad ``!``) for ``tokenizer_2`` and for text encoders with ``gelu`` (SD2), else OpenAI's.
    """
    canonical = json.dumps(files, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(f"{TOKENIZER_FORMAT_VERSION}\n{canonical}".encode()).hexdigest()[:20]
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = base / "configs" / digest
    if (target / ".complete").is_file():
        return target

    def build(tmp: Path) -> None:
        for rel, content in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content, indent=2), encoding="utf-8")
        index = files.get("model_index.json", {})
        for name, spec in index.items():
            if isinstance(spec, list) and len(spec) == 2 and spec[1] == "CLIPTokenizer":
                _complete_tokenizer(tmp, name, files, base)
        (tmp / ".complete").write_text("", encoding="utf-8")

    return publish_folder(target, build)


def _complete_tokenizer(folder: Path, name: str, files: Mapping[str, Mapping[str, Any]], cache: Path) -> None:
    encoder = files.get(f"{name.replace('tokenizer', 'text_encoder')}/config.json", {})
    kind = "openclip" if name == "tokenizer_2" or encoder.get("hidden_act") == "gelu" else "clip"
    target = folder / name
    target.mkdir(parents=True, exist_ok=True)
    source = clip_tokenizer_dir(kind, cache)
    for filename in ("vocab.json", "merges.txt"):
        link_or_copy(source / filename, target / filename)
    config_path = target / "tokenizer_config.json"
    if not config_path.is_file():
        config_path.write_text(json.dumps(tokenizer_config(kind), indent=2), encoding="utf-8")


def link_or_copy(source: Path, target: Path) -> Path:
    """Hard-link ``source`` to ``target`` (no second copy of the bytes), copying across filesystems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target
