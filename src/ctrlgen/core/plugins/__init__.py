"""The plugin system (the ground floor: imports nothing of ctrlgen but ``core.errors``/``core.config``).

- ``hookspecs.py`` — every hook a plugin can implement, each with a docstring and an example.
- ``manager.py`` — the pluggy manager: built-ins (:data:`DEFAULT_PLUGINS`) and entry-point
  plugins loaded the same way, blocking/allow lists, isolation of a failing plugin.
- ``registry.py`` — one :class:`Registry` per kind (a name several plugins provide is withheld
  as a :class:`Conflict`, the rest of the kind works), and the :class:`AppContext` that
  ``ctrlgen_startup`` receives.
- ``specs.py`` — the frozen spec types hooks yield (``PreprocessorSpec``, ``AdapterSpec``,
  ``ArchitectureSpec``, ``HostBridgeSpec``, ``ModelSourceSpec``) and ``Param``, with validation.
- ``events.py`` — :class:`JobEvent`, the payload of the ``ctrlgen_job_event`` hook.

The manager's functions are importable from here: ``from ctrlgen.core.plugins import get_registry``.
"""

from __future__ import annotations

_EXPORTS = ("DEFAULT_PLUGINS", "ENTRY_POINT_GROUP", "PluginHost", "PluginInfo", "emit_event", "get_host",
            "get_plugin_manager", "get_registry", "hookimpl", "reset", "startup", "strict_plugins")


def __getattr__(name: str):
    if name in _EXPORTS:
        from ctrlgen.core.plugins import manager

        return getattr(manager, name)
    if name == "AppContext":
        from ctrlgen.core.plugins.registry import AppContext

        return AppContext
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
