"""Composition of rollout transforms and hyper-parameter injection (optax's `chain`,
`named_chain` and `inject_hyperparams`, for `RolloutTransform` / `Algorithm`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp

from jaxrl_llm.types import Algorithm, RolloutTransform


def identity() -> RolloutTransform:
    """The transform that leaves the batch unchanged (stateless)."""
    return RolloutTransform(init=lambda: (), update=lambda batch, state: (batch, state))


def chain(*transforms: RolloutTransform) -> RolloutTransform:
    """Applies `transforms` in order; the state is the tuple of their states."""

    def init():
        return tuple(t.init() for t in transforms)

    def update(batch, state):
        new_state = []
        for t, s in zip(transforms, state, strict=True):
            batch, s = t.update(batch, s)
            new_state.append(s)
        return batch, tuple(new_state)

    return RolloutTransform(init, update)


def named_chain(*named: tuple[str, RolloutTransform]) -> RolloutTransform:
    """Like `chain`, with the state a dict keyed by the given names (readable checkpoints/logs)."""
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"named_chain: duplicate transform names in {names}")

    def init():
        return {name: t.init() for name, t in named}

    def update(batch, state):
        new_state = {}
        for name, t in named:
            batch, new_state[name] = t.update(batch, state[name])
        return batch, new_state

    return RolloutTransform(init, update)


def is_static_zero(x: Any) -> bool:
    """True only for a Python number equal to 0: factories use it to drop optional terms and
    passes (e.g. no KL term and no reference forward when beta == 0). A scheduled value (an
    array) counts as non-zero, so a coefficient scheduled up from 0 keeps its term and pass."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == 0


class Schedule(NamedTuple):
    """A hyper-parameter that changes with the step: `schedule(optax.linear_schedule(0.04, 0, 500))`.

    Only values wrapped like this are scheduled by `inject_hyperparams` / `make_algorithm`;
    any other callable (an environment, a reward function, a predicate) is passed to the
    factory unchanged.
    """

    fn: Callable[[Any], Any]

    def __call__(self, step):
        return self.fn(step)


def schedule(fn: Callable[[Any], Any]) -> Schedule:
    """Marks `fn(step) -> value` as a scheduled hyper-parameter (see `Schedule`)."""
    return fn if isinstance(fn, Schedule) else Schedule(fn)


class InjectState(NamedTuple):
    """State of an algorithm built by `inject_hyperparams` with at least one `Schedule`.

    count: int32 scalar, number of batches transformed so far (the schedules' step).
    hyperparams: dict name -> float32 scalar, the scheduled values for the current batch.
    inner: the wrapped algorithm's transform state.
    """

    count: Any
    hyperparams: dict
    inner: Any


def inject_hyperparams(factory: Callable[..., Algorithm]) -> Callable[..., Algorithm]:
    """Wraps an `Algorithm` factory so scheduled hyper-parameters live in the state as arrays.

    `inject_hyperparams(grpo)(beta=schedule(optax.linear_schedule(0.04, 0.0, 500)), clip_eps=0.2)`:
    every `Schedule` argument becomes an entry of `InjectState.hyperparams`, evaluated at
    `count` in each `transform.update`; the objective reads the current value from the state,
    so a schedule never recompiles. Other arguments (numbers, strings, None, functions) are
    compile-time constants: a constant 0 removes its term (see `is_static_zero`).

    Without a `Schedule` the factory is called exactly once and its `Algorithm` returned as is.
    With one, it is called once for the template (strategy, passes, data kind), and again
    whenever `update` / `objective` are traced (at compile time, not per step) with array
    values for the scheduled arguments, so it must be a pure function that branches on them
    only through `is_static_zero`.
    """

    def make(**kwargs) -> Algorithm:
        schedules = {k: v for k, v in kwargs.items() if isinstance(v, Schedule)}
        if not schedules:
            return factory(**kwargs)
        template = factory(**{**kwargs, **{k: jnp.asarray(v(0), jnp.float32) for k, v in schedules.items()}})

        def build(hyperparams):
            return factory(**{**kwargs, **hyperparams})

        def init():
            hyperparams = {k: jnp.asarray(v(0), jnp.float32) for k, v in schedules.items()}
            return InjectState(jnp.zeros((), jnp.int32), hyperparams, template.transform.init())

        def update(batch, state):
            hyperparams = {k: jnp.asarray(v(state.count), jnp.float32) for k, v in schedules.items()}
            batch, inner = build(hyperparams).transform.update(batch, state.inner)
            return batch, InjectState(state.count + 1, hyperparams, inner)

        def objective(outputs, batch, state):
            return build(state.hyperparams).objective(outputs, batch, state.inner)

        def value_objective(outputs, batch, state):
            return build(state.hyperparams).value_objective(outputs, batch, state.inner)

        def statistics(outputs, batch, state):
            return build(state.hyperparams).statistics(outputs, batch, state.inner)

        def post_update(state, stats):
            return state._replace(inner=build(state.hyperparams).post_update(state.inner, stats))

        return template._replace(
            post_update=post_update if template.post_update is not None else None,
            transform=RolloutTransform(init, update),
            objective=objective,
            value_objective=value_objective if template.value_objective is not None else None,
            statistics=statistics if template.statistics is not None else None,
        )

    make.__name__ = getattr(factory, "__name__", "algorithm")
    make.__doc__ = factory.__doc__
    return make
