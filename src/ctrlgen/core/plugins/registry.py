"""One registry per kind of spec, keyed by normalised name; duplicates are errors.

:class:`AppContext` is what ``ctrlgen_startup`` receives: the loaded registries by kind.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from ctrlgen.core.errors import CtrlgenError, PluginError
from ctrlgen.core.plugins.specs import normalize_name

T = TypeVar("T")

_SINGULAR = {
    "preprocessors": "preprocessor",
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


class UnknownNameError(CtrlgenError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Specs of one kind by normalised name, remembering who provided each."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, tuple[T, Provider]] = {}

    @property
    def singular(self) -> str:
        return _SINGULAR.get(self.kind, self.kind)

    def add(self, spec: T, provider: Provider) -> None:
        key = spec.name  # specs normalise their own names
        if key in self._items:
            other = self._items[key][1]
            raise PluginError(
                f"Conflicting plugins provide the {self.singular} {key!r}: {other} and {provider}. "
                f"ctrlgen never picks one silently; block one with "
                f"CTRLGEN_DISABLE_PLUGINS={provider.plugin} (or ={other.plugin})."
            )
        self._items[key] = (spec, provider)

    def get(self, name: str) -> T:
        try:
            key = normalize_name(name)
        except ValueError:
            key = str(name)
        if key in self._items:
            return self._items[key][0]
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
    def architectures(self) -> Registry:
        return self.registry("architectures")

    @property
    def host_bridges(self) -> Registry:
        return self.registry("host_bridges")

    @property
    def model_sources(self) -> Registry:
        return self.registry("model_sources")
