"""Algorithms by name: `register` a factory, `make_algorithm(name, **hyperparams)` builds it.

Configs name algorithms (`config.algo.name = 'grpo'`); a new algorithm registered anywhere
(a user's file, a notebook) is immediately usable from a config. No allow-lists.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from jaxrl_llm.transforms.base import inject_hyperparams
from jaxrl_llm.types import PASSES, Algorithm

_REGISTRY: dict[str, Callable[..., Algorithm]] = {}
_DATA_KINDS = ("rollout", "preference", "supervised")


def register(name: str, *, overwrite: bool = False):
    """Decorator: `@register('my_grpo')` on a factory `(**hyperparams) -> Algorithm`."""

    def decorator(factory):
        previous = _REGISTRY.get(name)
        # Re-registering the same function (a re-run notebook cell, a reloaded module) is fine.
        if previous is not None and not overwrite and _qualified(previous) != _qualified(factory):
            raise ValueError(f"algorithm {name!r} is already registered; pass overwrite=True to replace it")
        _REGISTRY[name] = factory
        return factory

    return decorator


def _qualified(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def registered_algorithms() -> list[str]:
    return sorted(_REGISTRY)


def get_factory(name: str) -> Callable[..., Algorithm]:
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown algorithm {name!r} (config field algo.name); known algorithms: "
            f"{', '.join(registered_algorithms())}. Register a new one with "
            "@jaxrl_llm.register_algorithm(name)."
        )
    return _REGISTRY[name]


def make_algorithm(name: str, **hyperparams) -> Algorithm:
    """Builds a registered algorithm with float hyper-parameters injected into its state
    (schedulable without recompiling, see `inject_hyperparams`)."""
    factory = get_factory(name)
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(hyperparams) - set(params))
    if unknown and not takes_any:
        raise ValueError(
            f"algorithm {name!r} has no hyper-parameter(s) {unknown} (config fields "
            f"{', '.join('algo.' + k for k in unknown)}); it accepts: {', '.join(params) or 'none'}"
        )
    algorithm = inject_hyperparams(factory)(**hyperparams)
    if algorithm.data not in _DATA_KINDS:
        raise ValueError(f"algorithm {name!r} has data={algorithm.data!r}; expected one of {_DATA_KINDS}")
    bad = sorted(set(algorithm.passes) - set(PASSES))
    if bad:
        raise ValueError(f"algorithm {name!r} asks for unknown passes {bad}; the trainer runs {PASSES}")
    return algorithm
