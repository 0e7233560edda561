"""Reward and advantage transforms: `RolloutTransform`s over the shared `Rollout`.

Each is a thin, jittable wrapper around a pure function of arrays in `jaxrl_llm.estimators`
(same name where it writes what the estimator computes); the formulas and papers are in those
functions' docstrings. Advantages are written on the loss-mask positions only (observation,
hint and filtered tokens get 0).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxrl_llm.losses.policy import kl_estimate
from jaxrl_llm.objectives import loss_mask
from jaxrl_llm.transforms import estimators
from jaxrl_llm.types import Rollout, RolloutTransform, add_metrics

_WRITERS = {
    "logp_ref": "the reference_pass()",
    "logp_old": "the old_policy_pass()",
    "values": "the critic_pass()",
    "rewards": "the strategy's scoring (config.rewards)",
    "token_rewards": "reward_to_tokens() earlier in the chain",
    "advantages": "an advantage transform earlier in the chain",
}


def _require(rollout: Rollout, transform: str, *fields: str) -> None:
    missing = [f for f in fields if getattr(rollout, f) is None]
    if missing:
        how = "; ".join(f"{f}: {_WRITERS.get(f, 'a transform that writes it')}" for f in missing)
        raise ValueError(
            f"{transform} needs Rollout.{', '.join(missing)}, which this batch does not have; add what "
            f"writes it ({how}) to the algorithm"
        )


def _require_extra(rollout: Rollout, transform: str, key: str, writer: str) -> None:
    if key not in rollout.extras:
        raise ValueError(
            f"{transform} needs Rollout.extras[{key!r}], written by {writer}; add it to the algorithm"
        )


def _stateless(name: str, fn, *fields: str) -> RolloutTransform:
    def update(rollout, state):
        _require(rollout, name, *fields)
        return fn(rollout), state

    return RolloutTransform(init=lambda: (), update=update)


def _on_tokens(r: Rollout, advantages) -> Rollout:
    """Sequence advantages [B] broadcast onto the loss-mask tokens."""
    return r._replace(advantages=advantages[:, None] * loss_mask(r))


def group_advantages(std: str = "unbiased", eps: float = 1e-6) -> RolloutTransform:
    """GRPO / Dr.GRPO advantages `estimators.group_advantages` on every loss token.

    std: 'unbiased' (verl/TRL, GRPO), 'population', or 'none' (Dr.GRPO: no division).
    """

    def fn(r: Rollout) -> Rollout:
        return _on_tokens(r, estimators.group_advantages(r.rewards, r.group_ids, std=std, eps=eps))

    return _stateless("group_advantages", fn, "rewards", "group_ids")


def rloo_advantages() -> RolloutTransform:
    """Leave-one-out advantages `estimators.rloo_advantages` on every loss token."""

    def fn(r: Rollout) -> Rollout:
        return _on_tokens(r, estimators.rloo_advantages(r.rewards, r.group_ids))

    return _stateless("rloo_advantages", fn, "rewards", "group_ids")


def reward_to_tokens() -> RolloutTransform:
    """token_rewards += R placed on each response's last loss token (sparse outcome reward)."""

    def fn(r: Rollout) -> Rollout:
        dense = estimators.last_token_rewards(r.rewards, loss_mask(r))
        return r._replace(token_rewards=dense if r.token_rewards is None else r.token_rewards + dense)

    return _stateless("reward_to_tokens", fn, "rewards")


def kl_penalty_in_reward(coef: float, estimator: str = "k1") -> RolloutTransform:
    """token_rewards -= coef * KL_t(pi_old || pi_ref) on loss tokens (PPO-RLHF, REINFORCE++).

    Uses logp_old (the sampling policy): the algorithm lists the `old_logp` and
    `reference_pass`es. Reports `kl_in_reward` (token mean of the KL estimate).
    """

    def fn(r: Rollout) -> Rollout:
        mask = loss_mask(r)
        kl = kl_estimate(r.logp_old, r.logp_ref, kind=estimator) * mask
        base = jnp.zeros_like(kl) if r.token_rewards is None else r.token_rewards
        r = r._replace(token_rewards=base - coef * kl)
        return add_metrics(r, kl_in_reward=jnp.sum(kl) / jnp.maximum(jnp.sum(mask), 1.0))

    return _stateless("kl_penalty_in_reward", fn, "logp_old", "logp_ref")


def gae(gamma: float = 1.0, lam: float = 0.95) -> RolloutTransform:
    """Generalised advantage estimation `estimators.gae` from token_rewards and critic values
    over the loss tokens; writes advantages and returns (the critic's regression target)."""

    def fn(r: Rollout) -> Rollout:
        adv, ret = estimators.gae(r.token_rewards, r.values, loss_mask(r), gamma=gamma, lam=lam)
        return r._replace(advantages=adv, returns=ret)

    return _stateless("gae", fn, "token_rewards", "values")


def whiten_advantages(shift_mean: bool = True, eps: float = 1e-8, unbiased: bool = False) -> RolloutTransform:
    """Advantages normalised over all loss tokens of the batch (`estimators.masked_whiten`):
    population variance (OpenRLHF, PPO-max) or, with `unbiased`, Bessel-corrected (verl)."""

    def fn(r: Rollout) -> Rollout:
        adv = estimators.masked_whiten(
            r.advantages, loss_mask(r), shift_mean=shift_mean, eps=eps, unbiased=unbiased
        )
        return r._replace(advantages=adv)

    return _stateless("whiten_advantages", fn, "advantages")


def reinforce_pp_advantages(
    gamma: float = 1.0, baseline: bool = False, whiten: bool = True, unbiased: bool = False
) -> RolloutTransform:
    """REINFORCE++ (arXiv 2501.03262): returns-to-go of R on the last loss token plus any
    `token_rewards` (e.g. `kl_penalty_in_reward` earlier in the chain), whitened over every
    loss token of the batch. `baseline=True` is REINFORCE++-baseline: R minus its group mean
    first (`estimators.reinforce_pp_baseline_rewards`). Writes advantages and returns."""

    def fn(r: Rollout) -> Rollout:
        mask = loss_mask(r)
        rewards = estimators.reinforce_pp_baseline_rewards(r.rewards, r.group_ids) if baseline else r.rewards
        returns = estimators.reinforce_pp_returns(rewards, mask, gamma, token_rewards=r.token_rewards)
        adv = estimators.masked_whiten(returns, mask, unbiased=unbiased) if whiten else returns
        return r._replace(advantages=adv, returns=returns)

    fields = ("rewards", "group_ids") if baseline else ("rewards",)
    return _stateless("reinforce_pp_advantages", fn, *fields)


def remax_advantages(clip: float | None = 5.0, gamma: float = 1.0) -> RolloutTransform:
    """ReMax (arXiv 2310.10505): `estimators.remax_advantages` of R against the greedy
    response's reward `extras['baseline_rewards']` (the `greedy_baseline` strategy writes it),
    plus the current token's `token_rewards` (KL in reward) when present."""

    def update(r: Rollout, state):
        _require(r, "remax_advantages", "rewards")
        _require_extra(r, "remax_advantages", "baseline_rewards", "the greedy_baseline() strategy")
        adv = estimators.remax_advantages(
            r.rewards,
            r.extras["baseline_rewards"],
            loss_mask(r),
            clip=clip,
            gamma=gamma,
            token_rewards=r.token_rewards,
        )
        return r._replace(advantages=adv), state

    return RolloutTransform(init=lambda: (), update=update)


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
