"""Reward and advantage transforms: `RolloutTransform`s over the shared `Rollout`.

Each is a thin, jittable wrapper around a pure function of arrays in `estimators.py` /
`losses/`; the spec references are in those functions' docstrings.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxrl_llm.losses.policy import kl_estimate
from jaxrl_llm.transforms import estimators
from jaxrl_llm.types import Rollout, RolloutTransform


def _require(rollout: Rollout, transform: str, *fields: str) -> None:
    missing = [f for f in fields if getattr(rollout, f) is None]
    if missing:
        raise ValueError(
            f"{transform} needs Rollout.{', '.join(missing)}, which this batch does not have; "
            "add the transform that writes it earlier in the chain, or the pass that computes it "
            "(Algorithm.passes: 'reference' -> logp_ref, 'critic' -> values, 'old_logp' -> logp_old)"
        )


def _stateless(name: str, fn, *fields: str) -> RolloutTransform:
    def update(rollout, state):
        _require(rollout, name, *fields)
        return fn(rollout), state

    return RolloutTransform(init=lambda: (), update=update)


def group_relative_advantages(std: str = "unbiased", eps: float = 1e-6) -> RolloutTransform:
    """GRPO / Dr.GRPO advantages: A_i = (R_i - mean_g R) / (std_g R + eps), on every response token.

    std: 'unbiased' (verl/TRL, GRPO), 'population', or 'none' (Dr.GRPO: no division).
    """

    def fn(r: Rollout) -> Rollout:
        adv = estimators.group_advantages(r.rewards, r.group_ids, std=std, eps=eps)
        return r._replace(advantages=adv[:, None] * r.response_mask.astype(jnp.float32))

    return _stateless("group_relative_advantages", fn, "rewards", "group_ids")


def rloo_advantages() -> RolloutTransform:
    """Leave-one-out baseline: A_i = R_i - mean_{j != i, same group} R_j, on every token."""

    def fn(r: Rollout) -> Rollout:
        adv = estimators.rloo_advantages(r.rewards, r.group_ids)
        return r._replace(advantages=adv[:, None] * r.response_mask.astype(jnp.float32))

    return _stateless("rloo_advantages", fn, "rewards", "group_ids")


def reward_to_tokens() -> RolloutTransform:
    """token_rewards += R placed on each response's last token (sparse outcome reward)."""

    def fn(r: Rollout) -> Rollout:
        dense = estimators.last_token_rewards(r.rewards, r.response_mask)
        return r._replace(token_rewards=dense if r.token_rewards is None else r.token_rewards + dense)

    return _stateless("reward_to_tokens", fn, "rewards")


def kl_penalty_in_reward(coef: float, estimator: str = "k1") -> RolloutTransform:
    """token_rewards -= coef * KL_t(pi_old || pi_ref) on response tokens (PPO-RLHF, REINFORCE++).

    Uses logp_old (the sampling policy), so the algorithm must ask for the 'old_logp' and
    'reference' passes.
    """

    def fn(r: Rollout) -> Rollout:
        mask = r.response_mask.astype(jnp.float32)
        kl = kl_estimate(r.logp_old, r.logp_ref, kind=estimator) * mask
        base = jnp.zeros_like(kl) if r.token_rewards is None else r.token_rewards
        return r._replace(token_rewards=base - coef * kl)

    return _stateless("kl_penalty_in_reward", fn, "logp_old", "logp_ref")


def gae_advantages(gamma: float = 1.0, lam: float = 0.95) -> RolloutTransform:
    """Generalised advantage estimation from token_rewards and critic values; writes
    advantages and returns (the critic's regression target)."""

    def fn(r: Rollout) -> Rollout:
        adv, ret = estimators.gae(r.token_rewards, r.values, r.response_mask, gamma=gamma, lam=lam)
        return r._replace(advantages=adv, returns=ret)

    return _stateless("gae_advantages", fn, "token_rewards", "values")


def whiten_advantages(shift_mean: bool = True, eps: float = 1e-8) -> RolloutTransform:
    """Advantages normalised over all response tokens of the batch (population variance)."""

    def fn(r: Rollout) -> Rollout:
        return r._replace(
            advantages=estimators.masked_whiten(r.advantages, r.response_mask, shift_mean=shift_mean, eps=eps)
        )

    return _stateless("whiten_advantages", fn, "advantages")


def normalize_rewards(shift_mean: bool = True, clip: float | None = None) -> RolloutTransform:
    """Running reward normalisation across steps (PPO-max): the moments are updated with the
    batch first, then R <- clip((R - mu_run) / sigma_run, -clip, clip) (no shift when
    shift_mean=False). State: `estimators.RunningMoments`."""

    def update(r: Rollout, state):
        _require(r, "normalize_rewards", "rewards")
        state = estimators.running_moments_update(state, r.rewards)
        centred = r.rewards - state.mean if shift_mean else r.rewards
        rewards = centred / estimators.running_std(state)
        if clip is not None:
            rewards = jnp.clip(rewards, -clip, clip)
        return r._replace(rewards=rewards), state

    return RolloutTransform(init=estimators.running_moments_init, update=update)
