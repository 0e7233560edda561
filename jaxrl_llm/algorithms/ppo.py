"""The PPO family with a critic or a pairwise comparison (issue 13).

`ppo`: PPO for RLHF with a critic, GAE and the KL penalty in the reward (Ouyang et al. 2022;
"Secrets of RLHF Part I" = PPO-max, arXiv 2307.04964, MOSS-RLHF `ppo/ppo_trainer.py`).
Rewards: r_t = -beta * (logp_old - logp_ref)_t, plus R (optionally running-scaled /
normalised and clipped) on the last token; advantages by GAE(gamma, lam) on the critic's
values, optionally whitened and clipped over the batch; policy loss PPO-clip token-mean; critic
loss clipped value loss against the returns. `ppo_max` is the paper's recipe, `pf_ppo` filters
the batch by reward first (arXiv 2409.06957), `p3o` is the critic-free pairwise form
(arXiv 2310.00212).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.losses.policy import ppo_clip_loss
from jaxrl_llm.objectives import (
    loss_mask,
    old_logp,
    pg_terms,
    sequence_mean,
    sum_objectives,
    token_mean,
    value_loss,
)
from jaxrl_llm.train.passes import critic_pass, old_policy_pass, reference_pass
from jaxrl_llm.transforms import rollout as rt
from jaxrl_llm.transforms.base import chain, is_static_zero
from jaxrl_llm.transforms.rollout import (
    adaptive_kl_penalty_in_reward,
    clip_advantages,
    clip_rewards,
    kl_penalty_in_sequence_reward,
    pf_ppo_filter,
)
from jaxrl_llm.types import Algorithm, Objective

P3O_CLIP_MODES = ("separate", "joint")
_ENTROPY_STAT = "ppo/entropy_mean"


def _reward_steps(reward_norm, reward_scaling, reward_clip) -> list:
    """MOSS-RLHF's three flags: scaling R / sigma_run, norm (R - mu_run) / sigma_run, clip +-delta."""
    if reward_norm or reward_scaling:
        return [rt.normalize_rewards(shift_mean=bool(reward_norm), clip=reward_clip)]
    return [] if reward_clip is None else [clip_rewards(reward_clip)]


def _kl_step(kl_coef, kl_estimator, kl_target, kl_horizon) -> list:
    if kl_target is None:
        return [] if is_static_zero(kl_coef) else [rt.kl_penalty_in_reward(kl_coef, kl_estimator)]
    if not isinstance(kl_coef, int | float) or kl_coef <= 0:
        raise ValueError(f"ppo: kl_target needs a constant kl_coef > 0 (the initial beta), got {kl_coef!r}")
    return [adaptive_kl_penalty_in_reward(kl_coef, kl_target, kl_horizon, kl_estimator)]


def entropy_band(coef: float, target: float) -> Objective:
    """MOSS-RLHF's entropy term coef * |H_bar - H_target| (H_bar: token-mean policy entropy of
    the mini-batch; `entropy_clip` = 35 there). H_bar comes from `Algorithm.statistics`, so
    the sign is the mini-batch's and the micro-batch terms sum to exactly coef * |H_bar - H|.
    Metric: ppo/entropy_gap (|H_bar - H_target|)."""

    def objective(outputs, batch, state):
        mask = loss_mask(batch)
        stats = outputs.stats or {}
        h_bar = stats.get(_ENTROPY_STAT, token_mean(jax.lax.stop_gradient(outputs.entropy), mask, batch))
        gap = jnp.sign(h_bar - target) * token_mean(outputs.entropy - target, mask, batch)
        return coef * gap, {"ppo/entropy_gap": gap}

    return objective


def _entropy_statistics(outputs, batch, state) -> dict:
    return {_ENTROPY_STAT: token_mean(outputs.entropy, loss_mask(batch), batch)}


@register("ppo")
def ppo(
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    value_clip: float | None = 0.2,
    kl_coef: float = 0.02,
    kl_estimator: str = "k1",
    kl_target: float | None = None,
    kl_horizon: float = 10000.0,
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten: bool = True,
    adv_clip: float | None = None,
    reward_norm: bool = False,
    reward_scaling: bool = False,
    reward_clip: float | None = None,
    loss_agg: str = "token_mean",
    entropy_coef: float = 0.0,
    entropy_target: float | None = None,
) -> Algorithm:
    """PPO. Defaults from MOSS-RLHF: eps=0.2, value clip 0.2, kl_coef (eta) 0.02 with k1,
    gamma=1, lam=0.95, token-mean aggregation, advantage whitening (population variance).

    Reward (MOSS `use_reward_scaling` / `use_reward_norm` / `use_reward_clip`, running moments
    across steps): reward_scaling R / sigma_run; reward_norm (R - mu_run) / sigma_run; then
    reward_clip clips to +-delta (with or without either).
    kl_target: adaptive KL controller (Ziegler et al. 2019, arXiv 1909.08593): beta starts at
      kl_coef and follows `adaptive_kl_coef` (target in nats per sequence, 6 in Ziegler / TRL;
      horizon in samples, 10000 there); metric kl_coef. kl_coef=0 (no controller) drops the penalty and the reference pass.
    adv_clip: clip the (whitened) advantages to +-a (MOSS advantage_clip, 0.5 there; off).
    entropy_coef: bonus -coef * H; with entropy_target, MOSS's coef * |H_bar - target| instead.
    """
    steps = [
        *_reward_steps(reward_norm, reward_scaling, reward_clip),
        rt.reward_to_tokens(),
        *_kl_step(kl_coef, kl_estimator, kl_target, kl_horizon),
        rt.gae(gamma, lam),
        *([rt.whiten_advantages()] if whiten else []),
        *([clip_advantages(adv_clip)] if adv_clip is not None else []),
    ]
    band = entropy_target is not None and not is_static_zero(entropy_coef)
    objective = pg_terms(
        clip_eps, clip_eps_high, dual_clip, 0.0, "k1", loss_agg, None, 0.0 if band else entropy_coef
    )
    use_kl = kl_target is not None or not is_static_zero(kl_coef)
    return Algorithm(
        data="rollout",
        transform=chain(*steps),
        objective=sum_objectives(objective, entropy_band(entropy_coef, entropy_target))
        if band
        else objective,
        value_objective=value_loss(value_clip),
        passes=(critic_pass(), reference_pass(), old_policy_pass()) if use_kl else (critic_pass(),),
        statistics=_entropy_statistics if band else None,
    )


@register("ppo_max")
def ppo_max(
    clip_eps: float = 0.2,
    value_clip: float | None = 0.2,
    kl_coef: float = 0.01,
    kl_target: float | None = None,
    reward_clip: float | None = 0.8,
    whiten: bool = False,
    adv_clip: float | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    entropy_coef: float = 0.0,
    entropy_target: float | None = None,
) -> Algorithm:
    """PPO-max, the recipe of "Secrets of RLHF Part I" §5.4 (arXiv 2307.04964): rewards
    normalised with the running (historical) mean/std and clipped (delta = 0.8, the paper's
    Fig. 6/14 value; MOSS's config default 10 barely clips), token KL penalty in the reward
    (0.01, the released `train_ppo_en.sh`), value-loss clipping 0.2, PPO clip 0.2.

    Conflict: Appendix B.1 finds that operations on the advantage (normalisation / clipping)
    conflict with value clipping, and that the two configurations that converge are reward
    scaling + value clip (`ppo(reward_scaling=True, kl_coef=0.01)`, also what train_ppo_en.sh
    runs) and reward + advantage normalisation and clipping without value clip
    (`ppo_max(value_clip=None, whiten=True, adv_clip=0.5)`, 0.5 = MOSS's advantage_clip; the
    figure used 0.8). The default follows §5.4 and so leaves the advantages alone (whiten=False,
    adv_clip=None). The paper's other ingredients are not loss terms: critic initialised from
    the reward model and pre-trained, global gradient clipping (`optim`), a small experience
    buffer, and the optional PPO-ptx pretraining loss.
    """
    return ppo(
        clip_eps=clip_eps,
        value_clip=value_clip,
        kl_coef=kl_coef,
        kl_target=kl_target,
        gamma=gamma,
        lam=lam,
        whiten=whiten,
        adv_clip=adv_clip,
        reward_norm=True,
        reward_clip=reward_clip,
        entropy_coef=entropy_coef,
        entropy_target=entropy_target,
    )


@register("pf_ppo")
def pf_ppo(
    method: str = "pow",
    weight_pow: float = 2.0,
    seed: int = 0,
    clip_eps: float = 0.2,
    value_clip: float | None = 0.2,
    kl_coef: float = 0.02,
    kl_estimator: str = "k1",
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten: bool = True,
    reward_norm: bool = False,
    reward_clip: float | None = None,
    entropy_coef: float = 0.0,
    filter_after_advantages: bool | None = None,
) -> Algorithm:
    """PF-PPO (policy filtration, arXiv 2409.06957): `ppo` trained on a reward-filtered batch
    (`pf_ppo_filter` by the sequence rewards; the passes' logp_old / logp_ref / values travel
    with their rows).

    method: 'pow' (weights |R|^weight_pow, verl's example: k=2), 'max_min', 'max_random':
      verl's `compute_pf_ppo_reweight_data`, B rows resampled with replacement from the WHOLE
      batch (its max/min are batch-wide); 'bon', 'br', 'bw': the paper's per-prompt subsets
      (best-of-N, best + random, best + worst), the other rows masked out of every loss.
    filter_after_advantages: where the filter runs. True: after GAE and whitening, as verl
      (the whitening statistics are the whole batch's, so kept successes keep positive
      advantages); False: before reward normalisation, the KL shaping, GAE and whitening, as
      the paper trains PPO on the filtered set (whitening then uses the kept rows only). None
      (default): True for verl's methods, False for the paper's subsets. With 0/1 verifier
      rewards 'pow' keeps only the correct answers, and whitening among them alone gives half
      of them negative advantages: PF-PPO collapsed from 38.9% to 1.6% test greedy in 50
      steps on arithmetic that way (experiments/README.md, "Algorithms"). After the advantages
      with reward_norm, the weights use the normalised rewards. With the filter first and
      reward_norm, the running moments take the resampled rows, or, for the per-prompt
      subsets (rows masked, not removed), every row.
    seed: the resampling key is fold_in(PRNGKey(seed), batch counter) (deterministic, resumable).
    """
    algo = ppo(
        clip_eps=clip_eps,
        value_clip=value_clip,
        kl_coef=kl_coef,
        kl_estimator=kl_estimator,
        gamma=gamma,
        lam=lam,
        whiten=whiten,
        reward_norm=reward_norm,
        reward_clip=reward_clip,
        entropy_coef=entropy_coef,
    )
    after = method not in ("bon", "br", "bw") if filter_after_advantages is None else filter_after_advantages
    pieces = (algo.transform, pf_ppo_filter(method, weight_pow, seed))
    return algo._replace(transform=chain(*(pieces if after else pieces[::-1])))


def p3o_terms(seq_log_ratio, delta, group_ids, clip_eps: float = 0.2, clip: str = "separate"):
    """P3O's clipped pairwise objective, per row (to be MAXIMISED). [B] x3 -> (J, clipped, count), [B].

    With rho_i = pi(y_i) / pi_old(y_i) (sequence ratio, log given), Delta_i = R_i - R_other:

        'separate' (V1):  J_i = min(rho_i Delta_i / 2, clip(rho_i, 1 +- eps) Delta_i / 2)   (each row)
        'joint'    (V2):  J_i = min(r Delta_i / 2, clip(r, 1 +- eps) Delta_i / 2),  r = rho_i / rho_other
                          on the pair's first row only (y_1 = the earlier row), 0 on the other

    so a pair's objective is the sum of its rows' J (V1: J = 0.1 for Delta = 1, rho = (1.3, 1.0),
    eps = 0.2). `count` is each row's group size (same-group matrix [B, B]); in groups of more
    than 2 rows "other" is the mean of the others (log-ratios, and rewards via the
    leave-one-out Delta), a generalisation. The exact clipping is the spec's [assumed] reading
    of arXiv 2310.00212 (no official code). The log-ratio is clamped to +-20 (`ppo_clip_loss`).
    """
    if clip not in P3O_CLIP_MODES:
        raise ValueError(f"Unknown P3O clip mode clip={clip!r}; expected one of {P3O_CLIP_MODES}.")
    seq_log_ratio = jnp.asarray(seq_log_ratio, jnp.float32)
    same = group_ids[:, None] == group_ids[None, :]
    count = jnp.sum(same, axis=1).astype(jnp.float32)
    active = jnp.ones_like(count)
    if clip == "joint":
        idx = jnp.arange(count.shape[0])
        others = same & (idx[None, :] != idx[:, None])
        other = jnp.sum(jnp.where(others, seq_log_ratio[None, :], 0.0), axis=1) / jnp.maximum(
            count - 1.0, 1.0
        )
        seq_log_ratio = seq_log_ratio - other
        active = (~jnp.any(same & (idx[None, :] < idx[:, None]), axis=1)).astype(jnp.float32)
    loss, clipped = ppo_clip_loss(
        seq_log_ratio, jnp.zeros_like(seq_log_ratio), 0.5 * jnp.asarray(delta, jnp.float32), clip_eps
    )
    return -loss * active, clipped * active, count


def p3o_objective(clip_eps: float = 0.2, clip: str = "separate") -> Objective:
    """Loss = -(1 / number of groups) * sum of the groups' `p3o_terms` (mini-batch normalised:
    sum_i J_i * count_i / num_seqs). Delta is read from `batch.advantages` (constant per row).
    Metrics: pg_loss, clip_fraction (of rows for V1, of pairs for V2)."""

    def objective(outputs, batch, state):
        mask = loss_mask(batch)
        log_ratio = jnp.sum(jnp.where(mask > 0, outputs.logp - old_logp(outputs, batch), 0.0), axis=-1)
        delta = jnp.sum(batch.advantages * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
        j, clipped, count = p3o_terms(log_ratio, delta, batch.group_ids, clip_eps, clip)
        loss = -sequence_mean(j * count, batch)
        weight = count if clip == "joint" else jnp.ones_like(count)
        return loss, {"pg_loss": loss, "clip_fraction": sequence_mean(clipped * weight, batch)}

    return objective


@register("p3o")
def p3o(
    clip_eps: float = 0.2, clip: str = "separate", kl_coef: float = 0.05, kl_estimator: str = "k1"
) -> Algorithm:
    """P3O (pairwise PPO, arXiv 2310.00212; BAIR blog "Rethinking the role of PPO in RLHF"): no
    critic; two responses per prompt (set sampling.num_samples=2), reward with the KL in it,
    R^_i = RM_i - beta * sum_t (logp_old - logp_ref) (`kl_penalty_in_sequence_reward`), and
    Delta = R^_1 - R^_2 (`rloo_advantages` of a pair); loss `p3o_objective` with 'separate' (V1)
    or 'joint' (V2) clipping. eps=0.2; beta is tuned per run in the paper (0.05 here, not
    confirmed). The objective couples a pair's rows: whole_groups=True.
    """
    if clip not in P3O_CLIP_MODES:
        raise ValueError(f"Unknown P3O clip mode clip={clip!r}; expected one of {P3O_CLIP_MODES}.")
    use_kl = not is_static_zero(kl_coef)
    steps = [kl_penalty_in_sequence_reward(kl_coef, kl_estimator)] if use_kl else []
    return Algorithm(
        data="rollout",
        transform=chain(*steps, rt.rloo_advantages()),
        objective=p3o_objective(clip_eps, clip),
        passes=(reference_pass(), old_policy_pass()) if use_kl else (),
        whole_groups=True,
    )
