"""Name -> factory registries (algorithms, reward functions, rollout strategies, environments).

Configs name things (`config.algo.name`, `config.rewards`, `config.rollout.name`, an
environment of `multi_turn`); whatever a user registers anywhere (a file, a notebook cell) is
usable by name at once. No allow-lists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def qualified_name(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


class Registry:
    """`register(name)` decorates a factory; `get(name)` returns it or raises a ValueError
    naming the config field, every known name and how to register one.

    Registering the same function again (a re-run notebook cell, a reloaded module) is fine;
    another function under a taken name needs `overwrite=True`.
    """

    def __init__(self, kind: str, config_field: str, decorator: str):
        self.kind, self.config_field, self.decorator = kind, config_field, decorator
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str, *, overwrite: bool = False):
        def decorator(factory):
            previous = self._entries.get(name)
            if previous is not None and not overwrite and qualified_name(previous) != qualified_name(factory):
                raise ValueError(
                    f"{self.kind} {name!r} is already registered to {qualified_name(previous)}; "
                    "pass overwrite=True to replace it"
                )
            self._entries[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r} (config field {self.config_field}); known {self.kind}s: "
                f"{', '.join(self.names()) or 'none'}. Register one with @{self.decorator}(name)."
            )
        return self._entries[name]
