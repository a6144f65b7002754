"""User configuration: the config folder, ``config.toml`` and ``CTRLGEN_*`` variables.

Precedence, highest first: environment variables, ``config.toml``, defaults.

``config.toml`` keys::

    model_roots = ["~/stable-diffusion-webui/models", "~/ComfyUI/models"]
    allow_pickle = false          # load .ckpt/.pt/.bin only as weights_only
    device = "auto"               # auto, cuda, cuda:1, mps, cpu
    hf_cache = true               # also scan the Hugging Face cache
    threads = 2                   # CPU threads for torch and OpenCV (0: their default); CTRLGEN_THREADS
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CtrlgenError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib


def config_dir() -> Path:
    """ctrlgen's per-user folder (token, server address, config.toml)."""
    override = os.environ.get("CTRLGEN_CONFIG_DIR")
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "ctrlgen"


def cache_dir() -> Path:
    """ctrlgen's cache folder for derived files (tokenizers, config folders, tiny models).

    ``CTRLGEN_CACHE_DIR`` overrides it; otherwise ``$XDG_CACHE_HOME/ctrlgen`` (``~/.cache``),
    ``~/Library/Caches/ctrlgen`` on macOS, ``%LOCALAPPDATA%\\ctrlgen\\cache`` on Windows.
    """
    override = os.environ.get("CTRLGEN_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "ctrlgen" / "cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "ctrlgen"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ctrlgen"


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    model_roots: tuple[Path, ...] = ()
    allow_pickle: bool = False
    device: str = "auto"
    precision: str = "auto"
    memory: str = "auto"
    vae_tiling: str = "auto"
    hf_cache: bool = True
    threads: int | None = None  # CPU threads for torch and OpenCV (None: their default; ctrlgen.core.threads)
    source: dict[str, str] = field(default_factory=dict, compare=False)


def load_settings() -> Settings:
    """Read ``config.toml`` (if any) and apply ``CTRLGEN_*`` overrides."""
    path = config_dir() / "config.toml"
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise CtrlgenError(f"{path} is not valid TOML ({exc}); fix or delete it") from None
    known = ("model_roots", "allow_pickle", "device", "precision", "memory", "vae_tiling", "hf_cache", "threads")
    unknown = set(data) - set(known)
    if unknown:
        raise CtrlgenError(
            f"{path}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(known)}"
        )
    roots = data.get("model_roots", [])
    if isinstance(roots, str):
        roots = [roots]
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise CtrlgenError(f"{path}: model_roots must be a list of folder paths")
    env_roots = os.environ.get("CTRLGEN_MODEL_ROOTS")
    if env_roots:
        roots = [r for r in env_roots.split(os.pathsep) if r.strip()] + list(roots)
    allow_pickle = _env_flag("CTRLGEN_ALLOW_PICKLE")
    hf_cache = _env_flag("CTRLGEN_HF_CACHE")
    from .threads import parse_threads

    if os.environ.get("CTRLGEN_THREADS", "").strip():
        threads = parse_threads(os.environ["CTRLGEN_THREADS"], "CTRLGEN_THREADS")
    else:
        threads = parse_threads(data.get("threads"), f"{path}: threads")
    return Settings(
        model_roots=tuple(Path(r).expanduser() for r in roots),
        allow_pickle=bool(data.get("allow_pickle", False)) if allow_pickle is None else allow_pickle,
        device=os.environ.get("CTRLGEN_DEVICE") or str(data.get("device", "auto")),
        precision=os.environ.get("CTRLGEN_PRECISION") or str(data.get("precision", "auto")),
        memory=os.environ.get("CTRLGEN_MEMORY") or str(data.get("memory", "auto")),
        vae_tiling=os.environ.get("CTRLGEN_VAE_TILING") or str(data.get("vae_tiling", "auto")),
        hf_cache=bool(data.get("hf_cache", True)) if hf_cache is None else hf_cache,
        threads=threads,
        source={"config_file": str(path)},
    )
