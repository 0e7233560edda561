"""Critic losses for the PPO family."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def clipped_value_loss(
    values: Array, values_old: Array, returns: Array, clip_eps: float | None = 0.2
) -> Array:
    """Clipped squared-error value loss per token. [B, T] x3 -> [B, T].

        V_c = clip(V, V_old − ε, V_old + ε)
        ℓ   = ½·max((V − R)², (V_c − R)²)        (clip_eps=None:  ℓ = ½·(V − R)²)

    The clip keeps the critic near the values it had at rollout time, like the policy ratio
    clip. Used by PPO-RLHF / PPO-max ("Secrets of RLHF Part I", arXiv 2307.04964); the clipped
    form comes from OpenAI baselines' PPO2 (arXiv 1707.06347).

    Example:
      >>> clipped_value_loss(jnp.array([1.0]), jnp.array([0.5]), jnp.array([1.2]), 0.2)  # [0.125]
    """
    values = jnp.asarray(values, jnp.float32)
    returns = jnp.asarray(returns, jnp.float32)
    unclipped = jnp.square(values - returns)
    if clip_eps is None:
        return 0.5 * unclipped
    values_old = jnp.asarray(values_old, jnp.float32)
    values_clipped = jnp.clip(values, values_old - clip_eps, values_old + clip_eps)
    return 0.5 * jnp.maximum(unclipped, jnp.square(values_clipped - returns))
