"""Algorithms by name: `register` a factory, `make_algorithm(name, **hyperparams)` builds it.

Configs name algorithms (`config.algo.name = 'grpo'`); a new algorithm registered anywhere
(a user's file, a notebook) is immediately usable from a config. No allow-lists.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from jaxrl_llm.registry import Registry
from jaxrl_llm.transforms.base import inject_hyperparams
from jaxrl_llm.types import Algorithm, Pass, RolloutStrategy

_ALGORITHMS = Registry("algorithm", "algo.name", "jaxrl_llm.register_algorithm")
_DATA_KINDS = ("rollout", "preference", "unpaired", "supervised", "scored")
_HEADS = ("causal_lm", "reward")


def register(name: str, *, overwrite: bool = False):
    """Decorator: `@register('my_grpo')` on a factory `(**hyperparams) -> Algorithm`."""
    return _ALGORITHMS.register(name, overwrite=overwrite)


def registered_algorithms() -> list[str]:
    return _ALGORITHMS.names()


def get_factory(name: str) -> Callable[..., Algorithm]:
    return _ALGORITHMS.get(name)


def make_algorithm(name: str, **hyperparams) -> Algorithm:
    """Builds a registered algorithm; hyper-parameters given as `schedule(fn)` are injected
    into its state (changed every step without recompiling, see `inject_hyperparams`)."""
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
    check_algorithm(algorithm, name)
    return algorithm


def check_algorithm(algorithm: Algorithm, name: str) -> None:
    """Clear errors for an `Algorithm` whose pieces have the wrong types."""
    if not isinstance(algorithm.passes, tuple) or not all(isinstance(p, Pass) for p in algorithm.passes):
        raise ValueError(
            f"algorithm {name!r}: passes must be a tuple of jaxrl_llm.Pass objects (e.g. "
            f"(jaxrl_llm.reference_pass(),)), got {algorithm.passes!r}"
        )
    names = [p.name for p in algorithm.passes]
    if len(set(names)) != len(names):
        raise ValueError(f"algorithm {name!r}: duplicate pass names {names}")
    if algorithm.strategy is not None and not isinstance(algorithm.strategy, RolloutStrategy):
        raise ValueError(
            f"algorithm {name!r}: strategy must be a jaxrl_llm.RolloutStrategy, got {algorithm.strategy!r}"
        )
    if algorithm.post_update is not None and algorithm.statistics is None:
        raise ValueError(
            f"algorithm {name!r}: post_update reads the statistics measured after each update; "
            "define Algorithm.statistics too"
        )
    if algorithm.head not in _HEADS:
        raise ValueError(f"algorithm {name!r}: head={algorithm.head!r}; expected one of {_HEADS}")
    if algorithm.full_kl not in (None, "forward", "reverse") or (
        algorithm.full_kl and algorithm.head != "causal_lm"
    ):
        raise ValueError(
            f"algorithm {name!r}: full_kl={algorithm.full_kl!r}; expected None, 'forward' or 'reverse' (a policy's KL)"
        )
    if algorithm.head == "reward" and (
        algorithm.data not in ("preference", "scored") or algorithm.value_objective is not None
    ):
        raise ValueError(
            f"algorithm {name!r}: a reward model (head='reward') trains on preference pairs or scored "
            f"completions (data='preference' or 'scored', no value_objective); got data={algorithm.data!r}"
        )
    if algorithm.strategy is not None and algorithm.data != "rollout":
        raise ValueError(f"algorithm {name!r}: a strategy collects rollouts, but data={algorithm.data!r}")
    if algorithm.pair_records is not None and algorithm.data != "preference":
        raise ValueError(
            f"algorithm {name!r}: pair_records maps preference pairs, but data={algorithm.data!r}"
        )
