"""The model store: find weights in the folders people already have, never copying them.

A :class:`ModelStore` scans :class:`~ctrlgen.core.plugins.specs.ModelRoot` folders — an
AUTOMATIC1111/Forge or ComfyUI install (or its ``models`` folder), the Hugging Face cache,
or a flat folder — identifies each file by its contents (:mod:`ctrlgen.core.models.identify`)
and resolves references such as ``sd15/dreamshaper_8``, ``dreamshaper_8``,
``dreamshaper_8.safetensors``, a path, or a Hugging Face repo id.

It never touches the network and imports nothing heavy: only pickles, when allowed,
need torch. Example::

    store = ModelStore.from_settings()
    entry = store.find("dreamshaper_8", category=("checkpoints", "diffusers"))
    entry.identity.architecture   # "sd15"
    hed = store.find_file("ControlNetHED.pth")
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctrlgen.core.config import Settings, config_dir, load_settings
from ctrlgen.core.errors import CtrlgenError, ModelNotFoundError
from ctrlgen.core.models.identify import PICKLE_SUFFIXES, ModelIdentity, identify_file
from ctrlgen.core.models.layouts import (
    CATEGORIES,
    KIND_CATEGORY,
    MODEL_SUFFIXES,
    CategoryFolder,
    ResolvedRoot,
    is_model_folder,
    normalize_category,
    resolve_root,
    suggested_folder,
    walk,
)
from ctrlgen.core.plugins.specs import ModelRoot, WeightFile

__all__ = ["CATEGORIES", "AmbiguousModelError", "ModelEntry", "ModelStore", "PathNotAllowedError",
           "identify_cached"]

log = logging.getLogger("ctrlgen.models")

_UNINSPECTED = ("annotators", "insightface", "detectors")  # looked up by file name, never identified
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class AmbiguousModelError(CtrlgenError, LookupError):
    """A model reference matches several different files."""


class PathNotAllowedError(CtrlgenError, PermissionError):
    """A model reference is a file path, and this store takes paths only inside its roots."""


def _looks_absolute(text: str) -> bool:
    """An absolute path here, or a Windows drive or UNC path (``C:\\x``, ``\\\\host\\x``)."""
    return os.path.isabs(text) or bool(re.match(r"^([A-Za-z]:)?[\\/]", text))


@dataclass(frozen=True)
class ModelEntry:
    """One model found in a root.

    ``name`` is the path relative to its category folder, without extension, with
    forward slashes (``sd15/dreamshaper_8``); in the Hugging Face cache it starts with the
    repo id (``h94/IP-Adapter/models/ip-adapter_sd15``). ``source`` is the name of the
    model source (plugin) that supplied the root, ``"path"`` for a file given by path.
    """

    name: str
    path: Path
    category: str
    identity: ModelIdentity
    size_bytes: int
    root: Path
    source: str = ""

    @property
    def is_folder(self) -> bool:
        return self.identity.details.get("container") == "folder"

    @property
    def filename(self) -> str:
        """The name with the file's extension (``sd15/dreamshaper_8.safetensors``)."""
        return self.name if self.is_folder else self.name + self.path.suffix

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "category": self.category,
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "root": str(self.root),
            "source": self.source,
            "identity": self.identity.to_json(),
        }


# Identification results by (real path, size, mtime, allow_pickle), shared by all stores.
_IDENTITY_CACHE: dict[tuple[Any, ...], ModelIdentity] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_LIMIT = 8192


def _cache_key(path: Path, allow_pickle: bool) -> tuple[Any, ...]:
    stamp_of = path
    if path.is_dir():  # a folder changes when its config does
        stamp_of = next((c for c in (path / "model_index.json", path / "config.json") if c.exists()), path)
    stat = stamp_of.stat()
    return (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, allow_pickle)


def identify_cached(path: str | os.PathLike[str], allow_pickle: bool = False) -> ModelIdentity:
    """:func:`~ctrlgen.core.models.identify.identify_file`, cached, and never raising.

    A file that cannot be read becomes ``unknown`` with the reason in
    ``details["error"]``; so does a pickle that is not allowed (it is never opened).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        key = _cache_key(path, allow_pickle)
    except OSError as exc:
        return ModelIdentity(details={"error": f"cannot read: {exc.strerror or exc}"})
    with _CACHE_LOCK:
        cached = _IDENTITY_CACHE.get(key)
    if cached is not None:
        return cached
    try:
        identity = identify_file(path, allow_pickle=allow_pickle)
    except CtrlgenError as exc:
        container = "pickle" if suffix in PICKLE_SUFFIXES else suffix.lstrip(".") or "folder"
        identity = ModelIdentity(details={"container": container, "error": str(exc)})
    with _CACHE_LOCK:
        if len(_IDENTITY_CACHE) >= _CACHE_LIMIT:
            _IDENTITY_CACHE.clear()
        _IDENTITY_CACHE[key] = identity
    return identity


def _size(path: Path) -> int:
    try:
        if not path.is_dir():
            return path.stat().st_size
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    except OSError:
        return 0


def _categorize(folder: CategoryFolder, identity: ModelIdentity, path: Path, relative: str) -> str:
    if folder.category in _UNINSPECTED:
        return folder.category
    if identity.kind == "checkpoint" and identity.details.get("container") == "folder":
        return "diffusers"
    if identity.kind in KIND_CATEGORY:  # content wins over the folder it was put in
        return KIND_CATEGORY[identity.kind]
    if folder.category:
        return folder.category
    # Flat folders and the HF cache: what is not a recognised model is auxiliary weights.
    where = f"{folder.repo}/{relative}".lower()
    if path.suffix.lower() == ".onnx" and any(w in where for w in ("antelopev2", "buffalo", "insightface")):
        return "insightface"
    if path.suffix.lower() == ".onnx" and (re.search(r"yolov\d", where) or "adetailer" in where
                                           or "ultralytics" in where):  # not DWPose's yolox_l.onnx
        return "detectors"
    return "annotators"


class ModelStore:
    """Model files found under ``roots``, identified by content and found by name.

    ``allow_pickle`` lets ``.ckpt/.pt/.pth/.bin`` files be opened (weights-only) to
    identify them; otherwise they are listed in their folder's category, unopened.

    ``allow_paths`` (default on, for local use) lets :meth:`find` take any file path. Off
    (the server: references come from clients), a reference is a name the store knows or an
    absolute path inside one of the roots; any other path is refused without looking at the
    filesystem, so the answer never tells whether a file exists, and a relative reference is
    only ever a name (never resolved against the working directory).
    """

    def __init__(
        self,
        roots: Sequence[ModelRoot | str | os.PathLike[str]] | None = None,
        *,
        allow_pickle: bool = False,
        sources: Sequence[str] | None = None,
        allow_paths: bool = True,
    ) -> None:
        self.allow_pickle = allow_pickle
        self.allow_paths = allow_paths
        self._roots: list[tuple[ModelRoot, str]] = []
        seen: set[tuple[str, str]] = set()
        for index, root in enumerate(roots or ()):
            if not isinstance(root, ModelRoot):
                root = ModelRoot(Path(root))
            root = ModelRoot(Path(root.path).expanduser(), root.layout)
            key = (os.path.realpath(root.path), root.layout)
            if key not in seen:
                seen.add(key)
                self._roots.append((root, sources[index] if sources and index < len(sources) else ""))
        self._lock = threading.RLock()
        self._resolved: list[tuple[ResolvedRoot, str]] | None = None
        self._entries: list[ModelEntry] | None = None
        self._by_real_path: dict[str, ModelEntry] = {}

    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, allow_paths: bool = True) -> ModelStore:
        """A store over every root the ``ctrlgen_model_sources`` plugins provide.

        With ``settings`` given, the built-in sources use them instead of re-reading
        ``config.toml`` and the environment. ``allow_paths``: see :class:`ModelStore`.
        """
        from ctrlgen.core.models import sources as default_sources
        from ctrlgen.core.plugins.manager import get_registry, strict_plugins

        explicit = settings is not None
        settings = settings if settings is not None else load_settings()
        registry = get_registry("model_sources")
        roots: list[ModelRoot] = []
        names: list[str] = []
        for spec in registry:
            try:
                if explicit and registry.provider(spec.name).plugin == default_sources.__name__:
                    found = default_sources.roots_for(spec.name, settings)
                else:
                    found = spec.roots()
                for root in found or ():
                    roots.append(root if isinstance(root, ModelRoot) else ModelRoot(Path(root)))
                    names.append(spec.name)
            except Exception as exc:
                if strict_plugins():
                    raise
                log.warning("model source %r failed: %s", spec.name, exc)
        return cls(roots, allow_pickle=settings.allow_pickle, sources=names, allow_paths=allow_paths)

    @property
    def roots(self) -> tuple[ModelRoot, ...]:
        return tuple(root for root, _ in self._roots)

    def resolved_roots(self) -> list[ResolvedRoot]:
        """The roots with their detected layouts and category folders."""
        with self._lock:
            if self._resolved is None:
                self._resolved = [(resolve_root(root), source) for root, source in self._roots]
            return [resolved for resolved, _ in self._resolved]

    def folders(self, category: str | Iterable[str] | None = None) -> list[CategoryFolder]:
        """Folders scanned, optionally only those meant for ``category``."""
        wanted = self._categories(category)
        return [
            folder
            for resolved in self.resolved_roots()
            for folder in resolved.folders
            if wanted is None or folder.category in wanted
        ]

    # -- scanning -----------------------------------------------------------------
    def scan(self, refresh: bool = False) -> list[ModelEntry]:
        """Every model under the roots (cached; ``refresh`` rescans the folders)."""
        with self._lock:
            if self._entries is not None and not refresh:
                return list(self._entries)
            if refresh:
                self._resolved = None
            self.resolved_roots()
            entries: list[ModelEntry] = []
            for resolved, source in self._resolved or ():
                for path, folder in self._unique_paths(resolved):
                    entries.append(self._entry(path, folder, source))
            self._entries = entries
            self._by_real_path = {}
            for entry in entries:
                self._by_real_path.setdefault(os.path.realpath(entry.path), entry)
            return list(entries)

    @staticmethod
    def _unique_paths(resolved: ResolvedRoot) -> list[tuple[Path, CategoryFolder]]:
        """Each real file of a root once, preferring its real location over a symlink to it."""
        found: dict[str, tuple[Path, CategoryFolder]] = {}
        for folder in resolved.folders:
            for path in walk(folder.path, group_folders=folder.category not in _UNINSPECTED):
                real = os.path.realpath(path)
                if real not in found or (found[real][0].is_symlink() and not path.is_symlink()):
                    found[real] = (path, folder)
        return list(found.values())

    def _entry(self, path: Path, folder: CategoryFolder, source: str) -> ModelEntry:
        relative = path.relative_to(folder.path).as_posix()
        stem = relative if path.is_dir() else relative[: len(relative) - len(path.suffix)]
        if folder.repo:
            name = folder.repo if stem == "." else f"{folder.repo}/{stem}"
        else:
            name = path.name if stem == "." else stem
        if folder.category in _UNINSPECTED:
            identity = ModelIdentity(details={"container": path.suffix.lstrip(".").lower() or "folder"})
        else:
            identity = identify_cached(path, self.allow_pickle)
        category = _categorize(folder, identity, path, relative)
        return ModelEntry(name, path, category, identity, _size(path), folder.root, source)

    def entries(self, category: str | Iterable[str] | None = None) -> list[ModelEntry]:
        """Scanned entries, optionally of one category (or several)."""
        wanted = self._categories(category)
        return [e for e in self.scan() if wanted is None or e.category in wanted]

    @staticmethod
    def _categories(category: str | Iterable[str] | None) -> tuple[str, ...] | None:
        if category is None:
            return None
        if isinstance(category, str):
            category = (category,)
        return tuple(normalize_category(c) for c in category)

    # -- finding ---------------------------------------------------------------------
    def find(self, ref: str | os.PathLike[str], category: str | Iterable[str] | None = None) -> ModelEntry:
        """Resolve ``ref`` to one model.

        ``ref`` may be a path to an existing file or folder, a name relative to its
        category folder (``sd15/dreamshaper_8``), a bare stem (``dreamshaper_8``), a file
        name with extension, or a Hugging Face repo id. Raises :class:`ModelNotFoundError`
        (naming every folder searched and how to get the model) or
        :class:`AmbiguousModelError` (listing the candidates). Without ``allow_paths``, a
        path outside the roots raises :class:`PathNotAllowedError` (the same for every such
        path, whether or not it exists). A name that is not found rescans the roots once, so
        a long-running server sees models added since its last scan.
        """
        wanted = self._categories(category)
        text = os.fspath(ref).strip() if isinstance(ref, os.PathLike) else str(ref).strip()
        if not text:
            raise ModelNotFoundError("an empty model name was given; name a model or give a file path")
        if self.allow_paths or self._inside_roots(text):
            by_path = self._entry_for_path(text, wanted)
            if by_path is not None:
                return by_path
        elif _looks_absolute(text):
            raise PathNotAllowedError(
                f"{text!r} is a file path outside the model folders, which is not allowed here; name the model "
                "as the model store lists it (`ctrlgen models`, or the server's GET /v1/capabilities), or put "
                "the file into one of the model folders")
        try:
            return self._find_by_name(text, wanted)
        except ModelNotFoundError:
            if self._entries is None:
                raise
            self.scan(refresh=True)
            return self._find_by_name(text, wanted)

    def _inside_roots(self, text: str) -> bool:
        """Whether ``text`` is an absolute path inside one of the roots (lexically: no ``..``)."""
        if not _looks_absolute(text) or ".." in re.split(r"[\\/]", text):
            return False
        path = Path(text)
        for root, _ in self._roots:
            for base in {Path(root.path).absolute(), Path(os.path.realpath(root.path))}:
                if path == base or base in path.parents:
                    return True
        return False

    def _find_by_name(self, text: str, wanted: tuple[str, ...] | None) -> ModelEntry:
        norm = text.replace("\\", "/").strip("/")
        while norm.startswith("./"):
            norm = norm[2:]
        suffix = next((s for s in MODEL_SUFFIXES if norm.lower().endswith(s)), "")
        stem = norm[: len(norm) - len(suffix)]
        low = stem.lower()

        def suffix_ok(entry: ModelEntry) -> bool:
            return not suffix or entry.path.suffix.lower() == suffix

        tiers = (
            lambda e: e.name == stem and suffix_ok(e),
            lambda e: e.name.lower() == low and suffix_ok(e),
            lambda e: e.name.lower().endswith("/" + low) and suffix_ok(e),
            lambda e: not suffix and e.name.lower().startswith(low + "/"),
        )
        candidates = self.entries(wanted)
        for matches_tier in tiers:
            matches = [e for e in candidates if matches_tier(e)]
            distinct = {os.path.realpath(e.path): e for e in reversed(matches)}
            if len(distinct) == 1:
                return matches[0]
            if len(distinct) > 1:
                raise self._ambiguous(text, matches)
        raise self._not_found(text, wanted, candidates)

    def _entry_for_path(self, text: str, wanted: tuple[str, ...] | None) -> ModelEntry | None:
        path = Path(text).expanduser()
        try:
            if not path.exists() or (path.is_dir() and not is_model_folder(path)):
                return None
        except OSError:
            return None
        self.scan()
        known = self._by_real_path.get(os.path.realpath(path))
        if known is not None:
            return known
        identity = identify_cached(path, self.allow_pickle)
        category = KIND_CATEGORY.get(identity.kind, "")
        if identity.kind == "checkpoint" and path.is_dir():
            category = "diffusers"
        category = category or (wanted[0] if wanted else "annotators")
        name = path.name if path.is_dir() else path.stem
        return ModelEntry(
            name, path.absolute(), category, identity, _size(path), path.absolute().parent, "path"
        )

    def _ambiguous(self, ref: str, matches: list[ModelEntry]) -> AmbiguousModelError:
        lines = [f"Model reference {ref!r} is ambiguous; it matches {len(matches)} models:"]
        lines += [f"  {e.category}/{e.name}  ({e.path})" for e in matches]
        lines.append("Use the full name shown after the category, pass the category, or give the file path.")
        return AmbiguousModelError("\n".join(lines))

    def _searched_lines(self) -> list[str]:
        lines = []
        for resolved in self.resolved_roots():
            root = Path(resolved.root.path)
            if not resolved.exists:
                lines.append(f"  {root}  (does not exist)")
            elif resolved.layout == "hf-cache":
                lines.append(f"  {root}  (Hugging Face cache, {len(resolved.folders)} model repos)")
            elif not resolved.folders:
                lines.append(f"  {root}  ({resolved.layout} layout; it has no model folders yet)")
            else:
                for folder in resolved.folders:
                    label = folder.category or "any kind, recognised by content"
                    lines.append(f"  {folder.path}  ({label})")
        return lines

    def _how_to_get(self, ref: str, wanted: tuple[str, ...] | None, source: str = "") -> str:
        category = wanted[0] if wanted else "checkpoints"
        target = next(
            (p for r in self.resolved_roots() if (p := suggested_folder(r, category)) is not None), None
        )
        where = f"into {target}" if target else "into one of the folders above"
        if _REPO_ID.match(source or ""):
            single = f" {ref}" if ref and "/" not in ref.strip("/") and "." in ref else ""
            pull = f"`ctrlgen models pull {source}{single}` fetches it into the Hugging Face cache"
        elif _REPO_ID.match(ref):
            pull = f"if {ref!r} is a Hugging Face repo, `ctrlgen models pull {ref}` fetches it into the cache"
        else:
            pull = "a Hugging Face repo can be fetched into the cache with `ctrlgen models pull ORG/NAME`"
        origin = f"It is published at {source}. " if source else ""
        return (
            f"{origin}To get it, download it {where}, or {pull} "
            "(the only ctrlgen command that uses the network)."
        )

    def _no_roots_line(self) -> str:
        return (
            "No model folders are configured, so nothing was searched. Tell ctrlgen where your models are: "
            f"set CTRLGEN_MODEL_ROOTS=/path/to/webui{os.pathsep}/path/to/ComfyUI, or add "
            f'model_roots = ["/path/to/webui", "/path/to/ComfyUI"] to {config_dir() / "config.toml"}.'
        )

    def _not_found(
        self, ref: str, wanted: tuple[str, ...] | None, candidates: list[ModelEntry]
    ) -> ModelNotFoundError:
        scope = ", ".join(wanted) if wanted else "any category"
        lines = [f"Model {ref!r} was not found ({scope})."]
        if not self._roots:
            lines.append(self._no_roots_line())
        else:
            lines.append("Searched these folders:")
            lines += self._searched_lines()
        by_lower: dict[str, str] = {}
        for entry in candidates:
            by_lower.setdefault(entry.name.lower(), entry.name)
            by_lower.setdefault(entry.name.rsplit("/", 1)[-1].lower(), entry.name)
        key = ref.replace("\\", "/").lower()
        close = difflib.get_close_matches(key, list(by_lower), n=5, cutoff=0.6)
        suggestions = list(dict.fromkeys(by_lower[c] for c in close))
        if suggestions:
            lines.append("Did you mean: " + ", ".join(repr(s) for s in suggestions) + "?")
        lines.append(self._how_to_get(ref, wanted))
        return ModelNotFoundError("\n".join(lines))

    def find_file(
        self,
        filename: str,
        categories: Iterable[str] = ("annotators",),
        alternatives: Iterable[str] = (),
        *,
        source: str = "",
    ) -> Path:
        """Path of a weight file known by its conventional name (``ControlNetHED.pth``).

        ``filename`` may carry leading folders (``lllyasviel/Annotators/body_pose_model.pth``,
        ``antelopev2/glintr100.onnx``); it is looked for at that place in each folder of
        ``categories`` and then anywhere below them. ``alternatives`` are tried next.
        ``source`` (repo id or URL) goes into the error message.
        """
        wanted = self._categories(tuple(categories)) or ()
        names = [filename, *alternatives]
        # A miss rescans once: a long-running server must see files added since its last scan.
        for attempt in range(2):
            if attempt:
                self.scan(refresh=True)
            found = self._search_file(names, wanted)
            if found is not None:
                return found
        shown = " or ".join(repr(n) for n in names)
        lines = [f"Weight file {shown} was not found ({', '.join(wanted)})."]
        if not self._roots:
            lines.append(self._no_roots_line())
        else:
            lines.append("Searched these folders:")
            lines += self._searched_lines()
        lines.append(self._how_to_get(filename, wanted, source))
        raise ModelNotFoundError("\n".join(lines))

    def _search_file(self, names: list[str], wanted: tuple[str, ...]) -> Path | None:
        folders = [f for f in self.folders() if f.category in wanted or not f.category]
        for name in names:
            relative = name.replace("\\", "/").strip("/")
            for folder in folders:
                candidate = folder.path / relative
                if folder.repo and relative.lower().startswith(folder.repo.lower() + "/"):
                    candidate = folder.path / relative[len(folder.repo) + 1 :]
                if candidate.is_file():
                    return candidate
            low = relative.lower()
            for entry in self.entries(wanted):
                full = entry.filename.lower()
                if full == low or full.endswith("/" + low) or entry.path.as_posix().lower().endswith("/" + low):
                    return entry.path
        return None

    def find_weight(self, weight: WeightFile) -> Path:
        """:meth:`find_file` for a preprocessor's or adapter's declared :class:`WeightFile`."""
        return self.find_file(weight.filename, weight.folders, weight.alternatives, source=weight.source)
