"""The plugin manager: built-ins and third-party plugins, loaded the same way.

- Built-ins are the modules in :data:`DEFAULT_PLUGINS`; third parties register through
  the entry-point group ``ctrlgen``.
- ``CTRLGEN_DISABLE_PLUGINS=a,b`` blocks plugins (built-in or not) by plugin name or
  distribution name; ``CTRLGEN_LOAD_PLUGINS=a,b`` loads only those third-party plugins
  (an empty value loads none).
- A plugin that fails to import, implements a misspelled hook, or raises in a hook is
  isolated: recorded in its :class:`PluginInfo` (shown as ``FAILED``) and skipped.
- A name two plugins provide is withheld, not the kind: see
  :class:`~ctrlgen.core.plugins.registry.Conflict` and :meth:`PluginHost.conflicts`.
- ``CTRLGEN_STRICT_PLUGINS=1`` re-raises instead (failures and conflicts), for plugin authors.

Nothing here runs at import time: :func:`get_plugin_manager` builds the manager on first
use and caches it; :func:`reset` drops the cache (tests, reloads).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from ctrlgen.core.errors import PluginError
from ctrlgen.core.plugins import hookspecs
from ctrlgen.core.plugins.registry import AppContext, Conflict, ConflictingNameError, Provider, Registry
from ctrlgen.core.plugins.specs import SPEC_TYPES

log = logging.getLogger("ctrlgen.plugins")

ENTRY_POINT_GROUP = "ctrlgen"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "ctrlgen.core.models.sources",
    "ctrlgen.preprocessors.canny",
    "ctrlgen.preprocessors.depth",
    "ctrlgen.preprocessors.normal",
    "ctrlgen.preprocessors.pose.openpose",
    "ctrlgen.preprocessors.pose.dwpose",
    "ctrlgen.preprocessors.pose.mediapipe_pose",
    "ctrlgen.preprocessors.pose.hands",
    "ctrlgen.preprocessors.lines.lineart",
    "ctrlgen.preprocessors.lines.softedge",
    "ctrlgen.preprocessors.lines.scribble",
    "ctrlgen.preprocessors.lines.mlsd",
    "ctrlgen.preprocessors.sam",
    "ctrlgen.preprocessors.segmentation.semantic",
    "ctrlgen.preprocessors.segmentation.mediapipe_selfie",
    "ctrlgen.preprocessors.face.keypoints",
    "ctrlgen.preprocessors.face.mediapipe_face",
    "ctrlgen.preprocessors.shuffle",
    "ctrlgen.preprocessors.tile",
    "ctrlgen.preprocessors.inpaint",
    "ctrlgen.detectors.mediapipe_face",
    "ctrlgen.detectors.mediapipe_hands",
    "ctrlgen.detectors.mediapipe_person",
    "ctrlgen.detectors.scrfd",
    "ctrlgen.detectors.yolo",
    "ctrlgen.detectors.sam",
    "ctrlgen.detectors.cli",
    "ctrlgen.detectors.fix_cli",
    "ctrlgen.core.engine.architectures",
    "ctrlgen.adapters.controlnet",
    "ctrlgen.adapters.reference",
    "ctrlgen.adapters.lora",
    "ctrlgen.adapters.embeddings",
    "ctrlgen.adapters.ip_adapter",
    "ctrlgen.adapters.instantid",
    "ctrlgen.adapters.layerdiffuse",
    "ctrlgen.adapters.regions",
    "ctrlgen.host_bridges.krita",
    "ctrlgen.host_bridges.gimp",
    "ctrlgen.host_bridges.server.cli",
    "ctrlgen.host_bridges.client_cli",
    "ctrlgen.host_bridges.install_cli",
)

hookimpl = pluggy.HookimplMarker("ctrlgen")


def _version() -> str:
    from ctrlgen._version import __version__

    return __version__


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def strict_plugins() -> bool:
    return os.environ.get("CTRLGEN_STRICT_PLUGINS", "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class PluginInfo:
    """What ``ctrlgen plugins`` shows about one plugin."""

    name: str
    distribution: str
    version: str
    builtin: bool
    module: str = ""
    hooks: list[str] = field(default_factory=list)
    provides: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    blocked: bool = False
    # What its ctrlgen_preprocessors / _detectors / _adapters yielded (conflicting names included).
    specs: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def loaded(self) -> bool:
        """Imported and registered (it may still have failed in a hook: see :attr:`status`)."""
        return not self.blocked and not any(e.startswith("load:") for e in self.errors)

    @property
    def status(self) -> str:
        """``blocked`` (by the env vars), ``FAILED`` (import or any hook raised) or ``loaded``."""
        if self.blocked:
            return "blocked"
        return "FAILED" if self.errors else "loaded"

    def provider(self) -> Provider:
        return Provider(self.name, self.distribution, self.version)

    def to_json(self) -> dict[str, Any]:
        data = {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "module": self.module,
            "status": self.status,
            "hooks": sorted(self.hooks),
            "provides": {k: sorted(v) for k, v in self.provides.items() if v},
            "errors": list(self.errors),
            "blocked": self.blocked,
        }
        for kind in ("preprocessors", "detectors", "adapters"):  # their Param schemas, as hosts build widgets from
            if self.specs.get(kind):
                data[kind] = [spec.to_json() for spec in sorted(self.specs[kind], key=lambda s: s.name)]
        return data


class PluginHost:
    """A pluggy manager plus what ctrlgen learnt while loading into it."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("ctrlgen")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._registries: dict[str, Registry] = {}
        self._lock = threading.RLock()
        self._load_all()

    # -- loading -----------------------------------------------------------
    def _blocked(self, *names: str) -> bool:
        from ctrlgen._moved import current_name

        # built-ins that moved in the layout change are still blocked by their old names
        disabled = {current_name(name) for name in _env_list("CTRLGEN_DISABLE_PLUGINS") or ()}
        return any(n in disabled for n in names if n)

    def _load_all(self) -> None:
        version = _version()
        for module_name in DEFAULT_PLUGINS:
            info = PluginInfo(module_name, "ctrlgen", version, builtin=True, module=module_name)
            self._load_one(info, lambda m=module_name: importlib.import_module(m))
        allowed = _env_list("CTRLGEN_LOAD_PLUGINS")
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist
            info = PluginInfo(
                ep.name,
                dist.name if dist else "unknown",
                dist.version if dist else "unknown",
                builtin=False,
                module=ep.value,
            )
            if ep.name in self.infos:
                info.errors.append(
                    f"load: another plugin is already named {ep.name!r} "
                    f"({self.infos[ep.name].distribution}); rename the entry point"
                )
                self.infos[f"{ep.name}@{info.distribution}"] = info
                continue
            if allowed is not None and ep.name not in allowed and info.distribution not in allowed:
                info.blocked = True
                self.infos[ep.name] = info
                continue
            self._load_one(info, ep.load)
        self._reject_unknown_hooks()
        self.pm.check_pending()

    def _load_one(self, info: PluginInfo, loader) -> None:
        self.infos[info.name] = info
        if self._blocked(info.name, info.distribution if not info.builtin else ""):
            info.blocked = True
            return
        try:
            plugin = loader()
            self.pm.register(plugin, name=info.name)
        except Exception as exc:
            if strict_plugins():
                raise
            info.errors.append(f"load: {type(exc).__name__}: {exc}")
            log.warning("ctrlgen plugin %r failed to load: %s", info.name, exc)
            return
        info.hooks = sorted(impl_caller for impl_caller in self._hooks_of(info.name))
        self._isolate_hooks(info)

    def _hooks_of(self, plugin_name: str) -> list[str]:
        plugin = self.pm.get_plugin(plugin_name)
        return [caller.name for caller in (self.pm.get_hookcallers(plugin) or [])]

    def _reject_unknown_hooks(self) -> None:
        """A misspelled ``ctrlgen_*`` hook is a load error for that plugin only."""
        known = sorted(n for n in dir(hookspecs) if n.startswith("ctrlgen_"))
        for name in list(vars(self.pm.hook)):
            caller = getattr(self.pm.hook, name)
            if not isinstance(caller, pluggy.HookCaller) or caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                message = (
                    f"load: implements unknown hook {name!r}; is it misspelled? "
                    f"Known hooks: {', '.join(known)}"
                )
                if strict_plugins():
                    raise PluginError(f"plugin {impl.plugin_name!r} {message[6:]}")
                info = self.infos.get(impl.plugin_name)
                if info is not None:
                    info.errors.append(message)
                self.pm.unregister(name=impl.plugin_name)

    def _isolate_hooks(self, info: PluginInfo) -> None:
        """Wrap the plugin's hook functions so an exception is recorded, not spread."""
        plugin = self.pm.get_plugin(info.name)
        for caller in self.pm.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin or impl.hookwrapper or impl.wrapper:
                    continue
                impl.function = _isolated(impl.function, info, caller.name)

    # -- registries ---------------------------------------------------------
    def registry(self, kind: str) -> Registry:
        """The registry for ``kind`` (``preprocessors``, ``adapters``, ...), built once."""
        with self._lock:
            if kind not in self._registries:
                self._registries[kind] = self._build_registry(kind)
            return self._registries[kind]

    def _build_registry(self, kind: str) -> Registry:
        if kind not in SPEC_TYPES:
            raise ValueError(f"unknown registry kind {kind!r}; one of {sorted(SPEC_TYPES)}")
        spec_type = SPEC_TYPES[kind]
        registry: Registry = Registry(kind)
        caller = getattr(self.pm.hook, f"ctrlgen_{kind}")
        for impl in caller.get_hookimpls():  # registration order: built-ins first
            info = self.infos.get(impl.plugin_name) or PluginInfo(
                impl.plugin_name, "unknown", "unknown", builtin=False
            )
            specs = []
            try:
                result = impl.function()
                for item in result or ():
                    if not isinstance(item, spec_type):
                        raise PluginError(
                            f"ctrlgen_{kind} yielded {type(item).__name__}, expected {spec_type.__name__}"
                        )
                    specs.append(item)
            except Exception as exc:
                if strict_plugins():
                    raise
                info.errors.append(f"ctrlgen_{kind}: {type(exc).__name__}: {exc}")
                log.warning("ctrlgen plugin %r: ctrlgen_%s failed: %s", info.name, kind, exc)
                continue
            for spec in specs:
                registry.add(spec, info.provider())
                info.provides.setdefault(kind, []).append(spec.name)
                if kind in ("preprocessors", "detectors", "adapters"):
                    info.specs.setdefault(kind, []).append(spec)
        if registry.conflicts and strict_plugins():
            raise ConflictingNameError(registry.conflicts[0].message)
        return registry

    def conflicts(self) -> list[Conflict]:
        """Build every registry and list the names withheld because several plugins provide them."""
        return [conflict for kind in SPEC_TYPES for conflict in self.registry(kind).conflicts]


class _HookFailed:
    """Marker returned by an isolated hook that raised (filtered from results)."""


def _isolated(function, info: PluginInfo, hook_name: str):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            if strict_plugins():
                raise
            info.errors.append(f"{hook_name}: {type(exc).__name__}: {exc}")
            log.warning("ctrlgen plugin %r: %s failed: %s", info.name, hook_name, exc)
            return None

    return wrapper


_host: PluginHost | None = None
_host_lock = threading.Lock()


def get_host() -> PluginHost:
    """The process-wide plugin host, built on first use."""
    global _host
    with _host_lock:
        if _host is None:
            _host = PluginHost()
        return _host


def get_plugin_manager() -> pluggy.PluginManager:
    """The cached pluggy manager with built-in and entry-point plugins registered."""
    return get_host().pm


def get_registry(kind: str) -> Registry:
    return get_host().registry(kind)


def reset() -> None:
    """Forget the loaded plugins so the next call loads them afresh (env vars re-read)."""
    global _host
    with _host_lock:
        _host = None


def emit_event(event) -> None:
    """Tell every ``ctrlgen_job_event`` observer about ``event`` (observers are isolated)."""
    get_plugin_manager().hook.ctrlgen_job_event(event=event)


def startup() -> AppContext:
    """Call ``ctrlgen_startup`` once per plugin host (historic, so late plugins get it too)."""
    host = get_host()
    context = AppContext(host.registry)
    if not getattr(host, "_started", False):
        host._started = True
        host.pm.hook.ctrlgen_startup.call_historic(kwargs={"context": context})
    return context
