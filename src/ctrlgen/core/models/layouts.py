"""Where model files live in the folders people already have.

A *root* is a folder given to ctrlgen: an AUTOMATIC1111/Forge or ComfyUI install, its
``models`` folder, the Hugging Face cache, or any folder of files ("flat"). This module
turns a root into :class:`CategoryFolder` s (folder + canonical category) and walks them,
following symlinks without looping. It reads no file contents and imports nothing heavy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ctrlgen.core.plugins.specs import ModelRoot

CATEGORIES = (
    "checkpoints",
    "diffusers",
    "controlnet",
    "loras",
    "vae",
    "embeddings",
    "ipadapter",
    "clip_vision",
    "insightface",
    "annotators",
    "detectors",
    "unet",
    "text_encoders",
    "upscale_models",
    "layer_model",
)

CATEGORY_ALIASES = {
    "checkpoint": "checkpoints",
    "stable-diffusion": "checkpoints",
    "lora": "loras",
    "lycoris": "loras",
    "controlnets": "controlnet",
    "ip_adapter": "ipadapter",
    "ip-adapter": "ipadapter",
    "ipadapters": "ipadapter",
    "embedding": "embeddings",
    "textual_inversion": "embeddings",
    "annotator": "annotators",
    "adetailer": "detectors",
    "ultralytics": "detectors",
    "diffusion_models": "unet",
    "transformer": "unet",
    "clip": "text_encoders",
    "text_encoder": "text_encoders",
    "vaes": "vae",
    "upscaler": "upscale_models",
    "upscalers": "upscale_models",
    "esrgan": "upscale_models",
    "layerdiffuse": "layer_model",
    "layer_models": "layer_model",
}

# Where an identified kind belongs, whatever folder it was found in.
KIND_CATEGORY = {
    "checkpoint": "checkpoints",
    "unet": "unet",
    "transformer": "unet",
    "controlnet": "controlnet",
    "lora": "loras",
    "ip_adapter": "ipadapter",
    "vae": "vae",
    "embedding": "embeddings",
    "clip_vision": "clip_vision",
    "text_encoder": "text_encoders",
    "upscaler": "upscale_models",
    "layerdiffuse": "layer_model",
}

MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".onnx", ".gguf")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")

# Sub-folders of a ``models`` folder (matched case-insensitively): A1111/Forge and ComfyUI.
MODELS_SUBFOLDERS = {
    "stable-diffusion": "checkpoints",  # A1111
    "checkpoints": "checkpoints",  # ComfyUI
    "controlnet": "controlnet",  # A1111 "ControlNet" (IP-Adapters too), ComfyUI "controlnet"
    "lora": "loras",
    "loras": "loras",
    "lycoris": "loras",
    "vae": "vae",
    "embeddings": "embeddings",
    "ipadapter": "ipadapter",
    "instantid": "ipadapter",  # ComfyUI_InstantID keeps its ip-adapter.bin here
    "clip_vision": "clip_vision",
    "insightface": "insightface",
    "diffusers": "diffusers",
    "unet": "unet",
    "diffusion_models": "unet",
    "clip": "text_encoders",
    "text_encoders": "text_encoders",
    "controlnetpreprocessor": "annotators",  # Forge
    "adetailer": "detectors",  # ADetailer's YOLO models (ctrlgen reads their .onnx exports)
    "ultralytics": "detectors",  # ComfyUI-Impact-Pack: ultralytics/bbox, ultralytics/segm
    "upscale_models": "upscale_models",  # ComfyUI
    "esrgan": "upscale_models",  # A1111 (and its RealESRGAN, SwinIR, DAT folders)
    "realesrgan": "upscale_models",
    "swinir": "upscale_models",
    "dat": "upscale_models",
    "layer_model": "layer_model",  # LayerDiffuse: ComfyUI-layerdiffuse and Forge's sd-forge-layerdiffuse
}

# Folders outside ``models`` (relative to the install folder).
INSTALL_EXTRAS = (
    ("embeddings", "embeddings"),  # A1111 keeps embeddings next to models/
    ("extensions/sd-webui-controlnet/annotator/downloads", "annotators"),
    ("extensions/sd-webui-controlnet/models", "controlnet"),
    ("custom_nodes/comfyui_controlnet_aux/ckpts", "annotators"),
)

# Where a user should put a file of each category (for "how to get it" hints).
SUGGESTED_FOLDERS = {
    "a1111": {
        "checkpoints": "models/Stable-diffusion",
        "controlnet": "models/ControlNet",
        "ipadapter": "models/ControlNet",
        "loras": "models/Lora",
        "vae": "models/VAE",
        "embeddings": "embeddings",
        "insightface": "models/insightface",
        "annotators": "extensions/sd-webui-controlnet/annotator/downloads",
        "detectors": "models/adetailer",
        "clip_vision": "extensions/sd-webui-controlnet/annotator/downloads/clip_vision",
        "upscale_models": "models/ESRGAN",
        "layer_model": "models/layer_model",
    },
    "comfyui": {
        "checkpoints": "models/checkpoints",
        "controlnet": "models/controlnet",
        "ipadapter": "models/ipadapter",
        "loras": "models/loras",
        "vae": "models/vae",
        "embeddings": "models/embeddings",
        "clip_vision": "models/clip_vision",
        "insightface": "models/insightface",
        "diffusers": "models/diffusers",
        "unet": "models/diffusion_models",
        "text_encoders": "models/text_encoders",
        "annotators": "custom_nodes/comfyui_controlnet_aux/ckpts",
        "detectors": "models/ultralytics/bbox",
        "upscale_models": "models/upscale_models",
        "layer_model": "models/layer_model",
    },
}

# Hugging Face repos whose files are preprocessor weights, looked up by file name.
ANNOTATOR_REPOS = (
    "lllyasviel/annotators",
    "yzd-v/dwpose",
    "hr16/",
    "liheyoung/depth-anything",
    "depth-anything/",
)

_A1111_MARKERS = {
    "webui.py",
    "launch.py",
    "extensions",
    "stable-diffusion",
    "lora",
    "lycoris",
    "controlnetpreprocessor",
}
_COMFY_MARKERS = {
    "custom_nodes",
    "comfy",
    "main.py",
    "checkpoints",
    "loras",
    "diffusion_models",
    "ipadapter",
    "unet",
}


@dataclass(frozen=True)
class CategoryFolder:
    """A folder whose files belong to ``category`` ("" = decide per file by identity).

    ``root`` is the :class:`ModelRoot` path it came from; ``repo`` the Hugging Face repo
    id for a snapshot folder of the HF cache.
    """

    path: Path
    category: str
    root: Path
    layout: str
    repo: str = ""


@dataclass(frozen=True)
class ResolvedRoot:
    """A root with its layout detected: the folders to scan and where files should go."""

    root: ModelRoot
    layout: str
    folders: tuple[CategoryFolder, ...]
    install: Path | None = None
    models: Path | None = None
    exists: bool = True


def normalize_category(category: str) -> str:
    key = category.strip().lower().replace(" ", "_")
    key = CATEGORY_ALIASES.get(key, key)
    if key not in CATEGORIES:
        from ctrlgen.core.errors import CtrlgenError

        raise CtrlgenError(f"unknown model category {category!r}; categories are: {', '.join(CATEGORIES)}")
    return key


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub computes it (without importing it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "huggingface" / "hub"


def _children(folder: Path) -> dict[str, list[Path]]:
    """Sub-folders by lower-case name (A1111 writes "Lora", ComfyUI "loras")."""
    found: dict[str, list[Path]] = {}
    try:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_dir():
                found.setdefault(entry.name.lower(), []).append(Path(entry.path))
    except OSError:
        pass
    return found


def _is_models_folder(children: dict[str, list[Path]]) -> bool:
    return any(name in MODELS_SUBFOLDERS for name in children)


def _is_hf_cache(folder: Path) -> bool:
    try:
        return any(e.name.startswith("models--") and e.is_dir() for e in os.scandir(folder))
    except OSError:
        return False


def _guess_layout(models_children: dict[str, list[Path]], install: Path | None) -> str:
    markers = set(models_children)
    if install is not None:
        try:
            markers |= {name.lower() for name in os.listdir(install)}
        except OSError:
            pass
    a1111, comfy = len(markers & _A1111_MARKERS), len(markers & _COMFY_MARKERS)
    return "comfyui" if comfy > a1111 else "a1111"


def resolve_root(root: ModelRoot) -> ResolvedRoot:
    """Detect ``root``'s layout (when ``auto``) and list the category folders to scan."""
    path = Path(root.path).expanduser()
    if not path.is_dir():
        return ResolvedRoot(root, root.layout, (), exists=False)
    layout = root.layout
    if layout == "hf-cache" or (layout == "auto" and (_is_hf_cache(path) or _is_hf_cache(path / "hub"))):
        cache = path if _is_hf_cache(path) or not _is_hf_cache(path / "hub") else path / "hub"
        return ResolvedRoot(root, "hf-cache", tuple(_hf_folders(cache, path)))
    if layout == "flat":
        return ResolvedRoot(root, "flat", (CategoryFolder(path, "", path, "flat"),))
    children = _children(path)
    models_children = _children(children["models"][0]) if "models" in children else {}
    if _is_models_folder(models_children):
        install, models, models_children = path, children["models"][0], models_children
    elif _is_models_folder(children):
        install = path.parent if path.name.lower() == "models" else None
        models, models_children = path, children
    elif layout in ("a1111", "comfyui"):
        install, models, models_children = path, path / "models", {}
    else:
        return ResolvedRoot(root, "flat", (CategoryFolder(path, "", path, "flat"),))
    if layout not in ("a1111", "comfyui"):
        layout = _guess_layout(models_children, install)
    folders = [
        CategoryFolder(folder, MODELS_SUBFOLDERS[name], path, layout)
        for name, paths in models_children.items()
        if name in MODELS_SUBFOLDERS
        for folder in paths
    ]
    if install is not None:
        for relative, category in INSTALL_EXTRAS:
            if (install / relative).is_dir():
                folders.append(CategoryFolder(install / relative, category, path, layout))
    return ResolvedRoot(root, layout, tuple(folders), install=install, models=models)


def suggested_folder(resolved: ResolvedRoot, category: str) -> Path | None:
    """Where a user of this root's layout would put a file of ``category``.

    The layout's conventional folder (matched case-insensitively among existing ones),
    else an existing folder of that category, else the conventional folder to create.
    """
    if resolved.layout == "hf-cache" or not resolved.exists:
        return None
    if resolved.layout == "flat":
        return Path(resolved.root.path).expanduser()
    existing = [f.path for f in resolved.folders if f.category == category]
    relative = SUGGESTED_FOLDERS.get(resolved.layout, {}).get(category)
    conventional = None
    if relative is not None and relative.startswith("models/") and resolved.models is not None:
        conventional = resolved.models / relative[len("models/") :]
    elif relative is not None and resolved.install is not None:
        conventional = resolved.install / relative
    if conventional is not None:
        match = next((p for p in existing if str(p).lower() == str(conventional).lower()), None)
        if match is not None:
            return match
    return existing[0] if existing else conventional


def _snapshot(repo_dir: Path) -> Path | None:
    """The snapshot ``refs/main`` points at, else the newest one."""
    snapshots = repo_dir / "snapshots"
    ref = repo_dir / "refs" / "main"
    try:
        if ref.is_file():
            revision = ref.read_text(encoding="utf-8").strip()
            if (snapshots / revision).is_dir():
                return snapshots / revision
        candidates = [p for p in snapshots.iterdir() if p.is_dir()]
    except OSError:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def _hf_folders(cache: Path, root: Path) -> Iterator[CategoryFolder]:
    try:
        repo_dirs = sorted(p for p in cache.iterdir() if p.name.startswith("models--") and p.is_dir())
    except OSError:
        return
    for repo_dir in repo_dirs:
        repo = repo_dir.name[len("models--") :].replace("--", "/")
        snapshot = _snapshot(repo_dir)
        if snapshot is None:
            continue
        category = "annotators" if repo.lower().startswith(ANNOTATOR_REPOS) else ""
        yield CategoryFolder(snapshot, category, root, "hf-cache", repo)


def is_model_folder(folder: Path) -> bool:
    """A diffusers pipeline, or a diffusers/transformers component with its weights."""
    if (folder / "model_index.json").is_file():
        return True
    if not (folder / "config.json").is_file():
        return False
    try:
        return any(e.name.endswith(WEIGHT_SUFFIXES) for e in os.scandir(folder) if e.is_file())
    except OSError:
        return False


def _is_model_file(entry: os.DirEntry) -> bool:
    try:
        return (
            not entry.name.startswith(".") and entry.is_file() and entry.name.lower().endswith(MODEL_SUFFIXES)
        )
    except OSError:
        return False


def walk(folder: Path, group_folders: bool = True) -> Iterator[Path]:
    """Model files under ``folder`` (and model folders, when ``group_folders``).

    Follows symlinks (the HF cache is made of them) but never enters a real folder twice,
    so symlink loops end. Hidden entries are skipped; a model folder is yielded whole.
    """
    seen: set[str] = set()
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            real = os.path.realpath(current)
            if real in seen:
                continue
            seen.add(real)
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue
        if group_folders and is_model_folder(current):
            yield current
            if (current / "model_index.json").is_file():
                # Hub repos often ship a single-file checkpoint next to the pipeline's folders.
                yield from (Path(e.path) for e in entries if _is_model_file(e))
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    subfolders.append(Path(entry.path))
                elif _is_model_file(entry):
                    yield Path(entry.path)
            except OSError:
                continue
        stack.extend(reversed(subfolders))
