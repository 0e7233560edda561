"""Reward and advantage transforms: `RolloutTransform`s over the shared `Rollout`.

Each is a thin, jittable wrapper around a pure function of arrays in `jaxrl_llm.estimators`
(same name where it writes what the estimator computes); the formulas and papers are in those
functions' docstrings. Advantages are written on the loss-mask positions only (observation,
hint and filtered tokens get 0).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrl_llm.losses.policy import kl_estimate
from jaxrl_llm.losses.preference import brain_weights, top_k_indices
from jaxrl_llm.objectives import PAIR_WEIGHT, loss_mask
from jaxrl_llm.transforms import estimators
from jaxrl_llm.types import PreferenceBatch, Rollout, RolloutTransform, add_metrics

Array = jax.Array

_WRITERS = {
    "logp_ref": "the reference_pass()",
    "logp_old": "the old_policy_pass()",
    "entropy_old": "the old_policy_pass()",
    "logp_behav": "the sampler",
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


def group_advantages(
    std: str = "unbiased", eps: float = 1e-6, virtual_reward: float = 1.0, virtual_count: int = 0
) -> RolloutTransform:
    """GRPO / Dr.GRPO advantages `estimators.group_advantages` on every loss token.

    std: 'unbiased' (verl/TRL, GRPO), 'population', or 'none' (Dr.GRPO: no division).
    virtual_count: k virtual samples of reward `virtual_reward` in each group's statistics
      (NGRPO); 0 = none (GRPO).
    """

    def fn(r: Rollout) -> Rollout:
        adv = estimators.group_advantages(
            r.rewards,
            r.group_ids,
            std=std,
            eps=eps,
            virtual_reward=virtual_reward,
            virtual_count=virtual_count,
        )
        return _on_tokens(r, adv)

    return _stateless("group_advantages", fn, "rewards", "group_ids")


def response_lengths(r: Rollout):
    """|y| per row [B] float32: the response's existing positions (Σ response_mask; in a
    multi-turn episode observation tokens count, as they fill the same buffer)."""
    return jnp.sum(jnp.asarray(r.response_mask, jnp.float32), axis=1)


def overlong_penalty(
    max_len: int | None = None,
    cache_len: int | None = None,
    factor: float = 1.0,
    hard_beyond_max: bool = False,
) -> RolloutTransform:
    """DAPO soft overlong punishment `estimators.overlong_penalty` added to `rewards`.

    max_len: L_max (None = the response buffer length T, i.e. the sampler's max_new_tokens).
    cache_len: L_cache (None = round(0.2 · L_max), at least 1: DAPO's 4096 of 20480).
    hard_beyond_max: the paper's −factor beyond L_max (default: verl's line, see the estimator).
    Metrics: overlong/penalty (row mean), overlong/fraction (rows penalised).
    """

    def fn(r: Rollout) -> Rollout:
        limit = r.response_ids.shape[1] if max_len is None else max_len
        cache = max(1, round(0.2 * limit)) if cache_len is None else cache_len
        penalty = estimators.overlong_penalty(response_lengths(r), limit, cache, factor, hard_beyond_max)
        r = r._replace(rewards=r.rewards + penalty)
        return add_metrics(
            r, **{"overlong/penalty": jnp.mean(penalty), "overlong/fraction": jnp.mean(penalty < 0)}
        )

    return _stateless("overlong_penalty", fn, "rewards")


def filter_all_correct_groups(threshold: float = 0.5, inclusive: bool = False) -> RolloutTransform:
    """Loss mask 0 on every row of a group whose rewards are all > threshold (≥ with inclusive)
    (`estimators.all_correct_groups`, NGRPO's all-correct filter): those rows carry no loss and
    leave the token count (the token-mean denominator). Metric: filtered_rows (fraction)."""

    def fn(r: Rollout) -> Rollout:
        drop = estimators.all_correct_groups(r.rewards, r.group_ids, threshold, inclusive)
        mask = (loss_mask(r) * (~drop)[:, None]).astype(r.response_mask.dtype)
        r = r._replace(loss_mask=mask, advantages=None if r.advantages is None else r.advantages * mask)
        return add_metrics(r, filtered_rows=jnp.mean(drop))

    return _stateless("filter_all_correct_groups", fn, "rewards", "group_ids")


def valid_group_scale(mode: str = "valid_groups") -> RolloutTransform:
    """Advantages × GPG's α = B / B_valid (`estimators.valid_group_scale`). Metric: gpg/alpha."""

    def fn(r: Rollout) -> Rollout:
        alpha = estimators.valid_group_scale(r.rewards, r.group_ids, mode)
        return add_metrics(r._replace(advantages=alpha * r.advantages), **{"gpg/alpha": alpha})

    return _stateless("valid_group_scale", fn, "rewards", "group_ids", "advantages")


def grpo_lambda_rewards(
    fraction: float = 0.5, correct_threshold: float = 0.5, penalise_unsolved: bool = False
) -> RolloutTransform:
    """GRPO-λ rewards `estimators.grpo_lambda_rewards` from the response lengths (written to
    `rewards`). Metrics: grpo_lambda/selected (fraction of rows length-penalised),
    grpo_lambda/accuracy."""

    def fn(r: Rollout) -> Rollout:
        shaped, selected = estimators.grpo_lambda_rewards(
            r.rewards, response_lengths(r), r.group_ids, fraction, correct_threshold, penalise_unsolved
        )
        metrics = {
            "grpo_lambda/selected": jnp.mean(selected),
            "grpo_lambda/accuracy": jnp.mean(r.rewards > correct_threshold),
        }
        return add_metrics(r._replace(rewards=shaped), **metrics)

    return _stateless("grpo_lambda_rewards", fn, "rewards", "group_ids")


def copo_advantages(kappa: float, h0: float, std: str = "unbiased", eps: float = 1e-6) -> RolloutTransform:
    """COPO (arXiv 2508.04138; form assumed): local GRPO advantages on the loss tokens,
    extras['copo/global_advantages'] = `estimators.prompt_advantages` [B] and
    extras['copo/local_weight'] = w_q = σ(κ (H_q − h0)) [B], H_q = `estimators.outcome_entropy`.
    Metrics: copo/local_weight, copo/entropy (row means)."""

    def fn(r: Rollout) -> Rollout:
        entropy = estimators.outcome_entropy(r.rewards, r.group_ids)
        weight = jax.nn.sigmoid(kappa * (entropy - h0))
        extras = {
            **r.extras,
            "copo/global_advantages": estimators.prompt_advantages(r.rewards, r.group_ids, eps),
            "copo/local_weight": weight,
        }
        local = estimators.group_advantages(r.rewards, r.group_ids, std=std, eps=eps)
        r = _on_tokens(r._replace(extras=extras), local)
        return add_metrics(r, **{"copo/local_weight": jnp.mean(weight), "copo/entropy": jnp.mean(entropy)})

    return _stateless("copo_advantages", fn, "rewards", "group_ids")


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


def clip_rewards(clip: float) -> RolloutTransform:
    """R <- clip(R, −c, c) (MOSS-RLHF `use_reward_clip`, applied with or without running
    normalisation)."""

    def fn(r: Rollout) -> Rollout:
        return r._replace(rewards=jnp.clip(r.rewards, -clip, clip))

    return _stateless("clip_rewards", fn, "rewards")


def clip_advantages(clip: float) -> RolloutTransform:
    """A <- clip(A, −a, a) on every loss token (MOSS-RLHF `use_advantage_clip`, after
    whitening; "Secrets of RLHF Part I", arXiv 2307.04964). Metric: adv_clip_fraction."""

    def fn(r: Rollout) -> Rollout:
        mask = loss_mask(r)
        clipped = (jnp.abs(r.advantages) > clip) & (mask > 0)
        r = r._replace(advantages=jnp.clip(r.advantages, -clip, clip))
        return add_metrics(r, adv_clip_fraction=jnp.sum(clipped) / jnp.maximum(jnp.sum(mask), 1.0))

    return _stateless("clip_advantages", fn, "advantages")


class AdaptiveKLState(NamedTuple):
    """The adaptive KL controller's coefficient β (float32 scalar)."""

    coef: Array


def adaptive_kl_penalty_in_reward(
    init_coef: float, target: float, horizon: float = 10000.0, estimator: str = "k1"
) -> RolloutTransform:
    """`kl_penalty_in_reward` with β from the state, then β updated by `adaptive_kl_coef` from
    this batch's KL (Ziegler et al. 2019: the mean over rows of Σ_t KL_t(π_old‖π_ref), with
    n_steps = the batch's rows). The penalty uses the β before the update, as in
    lm-human-preferences / TRL / OpenRLHF. Metrics: kl_coef (the β used), kl_seq (measured)."""

    def update(r: Rollout, state: AdaptiveKLState):
        _require(r, "adaptive_kl_penalty_in_reward", "logp_old", "logp_ref")
        mask = loss_mask(r)
        kl = jnp.where(mask > 0, kl_estimate(r.logp_old, r.logp_ref, kind=estimator), 0.0)
        kl_seq = jnp.mean(jnp.sum(kl, axis=-1))
        r, _ = kl_penalty_in_reward(state.coef, estimator).update(r, ())
        new = AdaptiveKLState(estimators.adaptive_kl_coef(state.coef, kl_seq, target, horizon, kl.shape[0]))
        return add_metrics(r, kl_coef=state.coef, kl_seq=kl_seq), new

    return RolloutTransform(init=lambda: AdaptiveKLState(jnp.asarray(init_coef, jnp.float32)), update=update)


def kl_penalty_in_sequence_reward(coef: float, estimator: str = "k1") -> RolloutTransform:
    """R_i <- R_i − coef·Σ_t KL_t(π_old‖π_ref) over the loss tokens: the sequence-level KL in
    the reward of RLOO (arXiv 2402.14740, TRL `RLOOTrainer`) and P3O (arXiv 2310.00212).
    Needs the old_logp and reference passes. Metric: kl_in_reward (token mean)."""

    def fn(r: Rollout) -> Rollout:
        mask = loss_mask(r)
        kl = jnp.where(mask > 0, kl_estimate(r.logp_old, r.logp_ref, kind=estimator), 0.0)
        r = r._replace(rewards=r.rewards - coef * jnp.sum(kl, axis=-1))
        return add_metrics(r, kl_in_reward=jnp.sum(kl) / jnp.maximum(jnp.sum(mask), 1.0))

    return _stateless("kl_penalty_in_sequence_reward", fn, "logp_old", "logp_ref")


def baseline_advantages(baseline: str = "mean", tau: float = 1.0, shift: float = 0.0) -> RolloutTransform:
    """`group_baseline_advantages` (OPMD / AsymRE) on every loss token."""
    if baseline not in estimators.GROUP_BASELINES:
        raise ValueError(
            f"Unknown group baseline={baseline!r}; expected one of {estimators.GROUP_BASELINES}."
        )

    def fn(r: Rollout) -> Rollout:
        return _on_tokens(
            r, estimators.group_baseline_advantages(r.rewards, r.group_ids, baseline, tau, shift)
        )

    return _stateless("baseline_advantages", fn, "rewards", "group_ids")


def _select_rows(batch, index):
    return jax.tree.map(lambda x: x[index] if jnp.ndim(x) else x, batch)


def pf_ppo_filter(method: str = "pow", weight_pow: float = 2.0, seed: int = 0) -> RolloutTransform:
    """PF-PPO's policy filtration of the rollout batch (arXiv 2409.06957), by `batch.rewards`.

    'pow' / 'max_min' / 'max_random': verl's whole-batch resampling, B rows drawn with
    replacement with probabilities ∝ `pf_ppo_weights` (the batch size is kept; the max/min are
    over the WHOLE batch, not per prompt, as verl). 'bon' / 'br' / 'bw': the paper's per-prompt
    subsets (`pf_ppo_subset`), kept by zeroing the loss mask of the other rows (shapes fixed;
    token-mean losses and the mini-batch token count then cover the kept rows only).

    State: an int32 counter; the draw of batch n uses fold_in(PRNGKey(seed), n), so a resumed
    run repeats it. Metrics: pf_ppo/kept_fraction (distinct or kept rows / B), pf_ppo/reward_mean.
    """
    if method not in estimators.PF_PPO_FILTERS:
        raise ValueError(f"Unknown PF-PPO filter={method!r}; expected one of {estimators.PF_PPO_FILTERS}.")

    def update(r: Rollout, count):
        _require(r, "pf_ppo_filter", "rewards", *(("group_ids",) if method in ("bon", "br", "bw") else ()))
        key = jax.random.fold_in(jax.random.PRNGKey(seed), count)
        b = r.rewards.shape[0]
        if method in ("bon", "br", "bw"):
            keep = estimators.pf_ppo_subset(r.rewards, r.group_ids, method, key)
            mask = (loss_mask(r) * keep[:, None]).astype(r.response_mask.dtype)
            r = r._replace(loss_mask=mask)
            reward_mean = jnp.sum(keep * r.rewards) / jnp.maximum(jnp.sum(keep), 1.0)
        else:
            weights = estimators.pf_ppo_weights(r.rewards, method, weight_pow)
            index = jax.random.choice(key, b, shape=(b,), replace=True, p=weights / jnp.sum(weights))
            r = _select_rows(r, index)
            keep = jnp.zeros(b).at[index].set(1.0)
            reward_mean = jnp.mean(r.rewards)
        r = add_metrics(r, **{"pf_ppo/kept_fraction": jnp.mean(keep), "pf_ppo/reward_mean": reward_mean})
        return r, count + 1

    return RolloutTransform(init=lambda: jnp.zeros((), jnp.int32), update=update)


PAIR_CHOICES = ("max_min", "max_random")


def preference_pairs(
    group_size: int, choose: str = "max_min", missing_eos_penalty: float = 0.0, seed: int = 0
):
    """Online preference pairs from a group-sampled Rollout (online / iterative DPO): each
    group of `group_size` consecutive rows (group_sampling's layout, rows b·G .. b·G + G − 1)
    becomes one pair of a `PreferenceBatch`, ranked by `rewards` (a verifier or a reward model,
    as configured in `config.rewards`).

    score_i = reward_i − missing_eos_penalty · [row i did not finish] (TRL OnlineDPO's penalty
    for completions without EOS); 'max_min' (RLHFlow's iterative DPO, `choose_type=max_min`;
    with G = 2 it is TRL OnlineDPO's pair): y_w = the highest score, y_l = the lowest;
    'max_random': y_l uniform among the other rows. Ties (every score equal): the pair gets
    `extras['pair_weight']` 0 (no gradient), otherwise 1; the first row is y_w and the next y_l.
    The reference log-probs (`logp_ref`, from the reference pass over the Rollout) come along.

    [B·G] rows -> B pairs. Metrics: pairs/tie_fraction, pairs/score_margin (mean over pairs
    of score_w − score_l). State: a draw counter for 'max_random' (fold_in(PRNGKey(seed), n)).
    Example: G = 4, scores [0.3, 1.2, −0.4, 0.9] -> 'max_min' picks rows (1, 2).
    """
    if choose not in PAIR_CHOICES:
        raise ValueError(f"preference_pairs: choose={choose!r}; expected one of {PAIR_CHOICES}")
    if group_size < 2:
        raise ValueError(f"preference_pairs: group_size={group_size}; a pair needs two samples per prompt")

    def update(r: Rollout, count):
        _require(r, "preference_pairs", "rewards", "logp_ref")
        g = group_size
        n = r.rewards.shape[0] // g
        scores = r.rewards.astype(jnp.float32)
        if missing_eos_penalty:
            finished = r.extras["finished"].astype(jnp.float32)
            scores = scores - missing_eos_penalty * (1.0 - finished)
        scores = scores.reshape(n, g)
        best = jnp.argmax(scores, axis=1)
        if choose == "max_min":
            worst = jnp.argmin(scores, axis=1)
        else:
            key = jax.random.fold_in(jax.random.PRNGKey(seed), count)
            worst = (best + jax.random.randint(key, (n,), 1, g)) % g
        tie = jnp.max(scores, axis=1) == jnp.min(scores, axis=1)
        worst = jnp.where(tie, (best + 1) % g, worst)
        c, j = jnp.arange(n) * g + best, jnp.arange(n) * g + worst
        weight = 1.0 - tie.astype(jnp.float32)
        margin = (
            jnp.take_along_axis(scores, best[:, None], 1)[:, 0]
            - jnp.take_along_axis(scores, worst[:, None], 1)[:, 0]
        )
        batch = PreferenceBatch(
            r.prompt_ids[c],
            r.prompt_mask[c],
            r.response_ids[c],
            r.response_mask[c],
            r.response_ids[j],
            r.response_mask[j],
            ref_chosen_logps=r.logp_ref[c],
            ref_rejected_logps=r.logp_ref[j],
            extras={PAIR_WEIGHT: weight},
            metrics=dict(r.metrics),
        )
        batch = add_metrics(
            batch, **{"pairs/tie_fraction": jnp.mean(tie), "pairs/score_margin": jnp.mean(margin)}
        )
        return batch, count + 1

    return RolloutTransform(init=lambda: jnp.zeros((), jnp.int32), update=update)


def top_k_completions(group_size: int, top_k: int = 1) -> RolloutTransform:
    """SuperHF's filter (arXiv 2310.16763; `superhf_top_k`, through `top_k_indices`): of each group of `group_size`
    consecutive rows (group_sampling's layout), keep the `top_k` rows with the highest reward,
    never an empty completion (no token before the stop token; kept only when a group has
    nothing else, then with a zero loss mask). [B·G] rows -> [B·top_k] rows, in group order.
    Metrics: superhf/kept_reward (mean reward of the kept rows), superhf/empty_fraction."""
    if not 1 <= top_k <= group_size:
        raise ValueError(f"top_k_completions: top_k={top_k} must be in [1, group_size={group_size}]")

    def fn(r: Rollout) -> Rollout:
        n = r.rewards.shape[0] // group_size
        lengths = jnp.sum(r.response_mask, axis=1)
        finished = r.extras.get("finished", jnp.ones_like(lengths, dtype=bool)).astype(jnp.int32)
        valid = (lengths - finished) > 0  # a token besides the stop token
        index = top_k_indices(r.rewards.reshape(n, group_size), top_k, valid.reshape(n, group_size))
        rows = (jnp.arange(n)[:, None] * group_size + index).reshape(-1)
        kept = _select_rows(r, rows)
        mask = loss_mask(kept) * valid[rows][:, None].astype(jnp.float32)
        kept = kept._replace(loss_mask=mask.astype(r.response_mask.dtype))
        return add_metrics(
            kept,
            **{
                "superhf/kept_reward": jnp.mean(kept.rewards),
                "superhf/empty_fraction": 1.0 - jnp.mean(valid),
            },
        )

    return _stateless("top_k_completions", fn, "rewards")


BRAIN_WEIGHT = "brain_weight"  # Rollout.extras: BRAIn's per-sample weights [B]


def brain_weights_transform(group_size: int, beta: float = 1.0) -> RolloutTransform:
    """BRAIn's per-sample weights (`brain_weights`, arXiv 2402.02479) for each group of
    `group_size` consecutive rows (group_sampling's layout), written to `extras['brain_weight']`
    [B] (w_i = α̂_i − β̂_i; they sum to 0 within a group).

    The proposal q is the sampler (S_q = Σ_t logp_behav), the posterior target is
    π_ref·exp(r/β) (S_ref = Σ_t logp_ref) and the baseline policy is the proposal itself (on
    policy: β̂ = 1/n exactly). Metrics: brain/ess (mean over groups of 1 / Σ α̂², the effective
    sample size of the self-normalised weights), brain/max_weight."""

    def fn(r: Rollout) -> Rollout:
        n, g = r.rewards.shape[0] // group_size, group_size
        mask = loss_mask(r).astype(jnp.float32)
        s_ref = jnp.sum(r.logp_ref * mask, axis=1).reshape(n, g)
        s_q = jnp.sum(r.logp_behav * mask, axis=1).reshape(n, g)
        weights = brain_weights(r.rewards.reshape(n, g), s_ref, s_q, s_q, beta)
        target = weights + 1.0 / g  # α̂ (β̂ = 1/n on policy)
        r = r._replace(extras={**r.extras, BRAIN_WEIGHT: weights.reshape(-1)})
        ess = jnp.mean(1.0 / jnp.sum(jnp.square(target), axis=1))
        return add_metrics(r, **{"brain/ess": ess, "brain/max_weight": jnp.max(target)})

    return _stateless("brain_weights", fn, "rewards", "logp_ref", "logp_behav")
