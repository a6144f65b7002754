"""One registry per kind of spec, keyed by normalised name.

A name two plugins provide is a :class:`Conflict`: ctrlgen never picks one (no renaming, no
last-one-wins), so that name is withheld — asking for it raises :class:`ConflictingNameError`
naming both providers and the fix — while every other name of the kind keeps working.

:class:`AppContext` is what ``ctrlgen_startup`` receives: the loaded registries by kind.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ctrlgen.core.errors import CtrlgenError, PluginError
from ctrlgen.core.plugins.specs import normalize_name

T = TypeVar("T")

_SINGULAR = {
    "preprocessors": "preprocessor",
    "detectors": "detector",
    "adapters": "adapter",
    "host_bridges": "host bridge",
    "model_sources": "model source",
}


@dataclass(frozen=True)
class Provider:
    """Who provided a spec: the plugin name and its distribution and version."""

    plugin: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"{self.distribution} {self.version} (plugin {self.plugin!r})"

    def to_json(self) -> dict[str, str]:
        return {"plugin": self.plugin, "distribution": self.distribution, "version": self.version}


class UnknownNameError(CtrlgenError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ConflictingNameError(UnknownNameError, PluginError):
    """A name several plugins provide: withheld until all but one are blocked.

    An :class:`UnknownNameError` too, so whoever answers "no such preprocessor" for a name
    answers this one the same way, with the conflict's message."""


@dataclass(frozen=True)
class Conflict:
    """Several plugins provide the same ``name`` of one ``kind``; none of them is used."""

    kind: str
    name: str
    providers: tuple[Provider, ...]

    @property
    def message(self) -> str:
        singular = _SINGULAR.get(self.kind, self.kind)
        *first, last = [str(p) for p in self.providers]
        listed = f"{', '.join(first)} and {last}"
        plugins = list(dict.fromkeys(p.plugin for p in self.providers))
        if len(plugins) == 1:
            fix = (f"the plugin yields it more than once: fix the plugin, or block it with "
                   f"CTRLGEN_DISABLE_PLUGINS={plugins[0]}")
        else:
            keep, other = plugins[0], plugins[1]
            fix = (f"block all but one: CTRLGEN_DISABLE_PLUGINS={','.join(plugins[1:])} keeps {keep!r}, "
                   f"CTRLGEN_DISABLE_PLUGINS={','.join(p for p in plugins if p != other)} keeps {other!r}")
        return (f"Conflicting plugins provide the {singular} {self.name!r}: {listed}. ctrlgen never picks "
                f"one silently, so {self.name!r} is unavailable (everything else works); {fix}.")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "providers": [p.to_json() for p in self.providers],
                "message": self.message}


class Registry(Generic[T]):
    """Specs of one kind by normalised name, remembering who provided each.

    A name added twice is withheld (see :class:`Conflict`): absent from :meth:`names`,
    iteration and ``in``; :meth:`get` raises :class:`ConflictingNameError` for it.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, tuple[T, Provider]] = {}
        self._conflicts: dict[str, list[Provider]] = {}

    @property
    def singular(self) -> str:
        return _SINGULAR.get(self.kind, self.kind)

    def add(self, spec: T, provider: Provider) -> None:
        key = spec.name  # specs normalise their own names
        if key in self._conflicts:
            self._conflicts[key].append(provider)
        elif key in self._items:
            self._conflicts[key] = [self._items.pop(key)[1], provider]
        else:
            self._items[key] = (spec, provider)

    @property
    def conflicts(self) -> list[Conflict]:
        """The withheld names, each with every plugin that provides it (in load order)."""
        return [Conflict(self.kind, key, tuple(providers)) for key, providers in sorted(self._conflicts.items())]

    def get(self, name: str) -> T:
        try:
            key = normalize_name(name)
        except ValueError:
            key = str(name)
        if key in self._items:
            return self._items[key][0]
        if key in self._conflicts:
            raise ConflictingNameError(Conflict(self.kind, key, tuple(self._conflicts[key])).message)
        hint = difflib.get_close_matches(key, self._items, n=3)
        suggestion = f" Did you mean {', '.join(map(repr, hint))}?" if hint else ""
        available = ", ".join(sorted(self._items)) or "none loaded"
        raise UnknownNameError(
            f"Unknown {self.singular} {name!r}.{suggestion} Available: {available}. "
            "`ctrlgen plugins --all` shows what is installed and any plugin that failed to load."
        )

    def provider(self, name: str) -> Provider:
        self.get(name)
        return self._items[normalize_name(name)][1]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        try:
            return isinstance(name, str) and normalize_name(name) in self._items
        except ValueError:
            return False

    def __iter__(self) -> Iterator[T]:
        return iter([self._items[k][0] for k in sorted(self._items)])

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class AppContext:
    """What ``ctrlgen_startup`` receives: the loaded registries, built on first use."""

    registry: Callable[[str], Registry]

    @property
    def preprocessors(self) -> Registry:
        return self.registry("preprocessors")

    @property
    def adapters(self) -> Registry:
        return self.registry("adapters")

    @property
    def detectors(self) -> Registry:
        return self.registry("detectors")

    @property
    def architectures(self) -> Registry:
        return self.registry("architectures")

    @property
    def host_bridges(self) -> Registry:
        return self.registry("host_bridges")

    @property
    def model_sources(self) -> Registry:
        return self.registry("model_sources")
