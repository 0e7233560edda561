"""The clipping and token-selection family: BAPO (adaptive clip bounds), DCPO (per-token bounds,
smooth advantages across steps), CISPO (clipped IS weight), SAPO (soft gate), Clip-Cov and KL-Cov
(covariance-selected tokens) and the top-20% high-entropy tokens.

Every algorithm uses GRPO group advantages (unbiased std) unless stated, no KL to a reference.
The pure pieces (bounds, losses, selections) are in `jaxrl_llm.losses.clipping`; the batch-wide
token selections are transforms here (`top_entropy_tokens`, `clip_cov_tokens`, `kl_cov_tokens`,
`dcpo_advantages`), each chainable after any advantage transform.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.losses.clipping import (
    BAPO_RULES,
    bapo_contributions,
    bapo_search_path,
    bapo_select,
    cispo_loss,
    clip_cov_selection,
    dcpo_bounds,
    dcpo_smooth_advantages,
    kl_cov_loss,
    kl_cov_selection,
    sapo_loss,
    top_entropy_mask,
)
from jaxrl_llm.losses.policy import kl_estimate, ppo_clip_loss
from jaxrl_llm.objectives import (
    loss_mask,
    old_logp,
    pg_terms,
    sequence_mean,
    token_loss_objective,
    token_mean,
)
from jaxrl_llm.train.passes import old_policy_pass
from jaxrl_llm.transforms.base import chain
from jaxrl_llm.transforms.estimators import masked_mean
from jaxrl_llm.transforms.rollout import _require, _require_extra, group_advantages
from jaxrl_llm.types import Algorithm, RolloutTransform, add_metrics

# ------------------------------------------------------------------------------------ transforms


def top_entropy_tokens(rho: float = 0.2, mode: str = "advantages") -> RolloutTransform:
    """Only the top-ρ highest-entropy tokens carry policy-gradient loss ("Beyond the 80/20 Rule",
    arXiv 2506.01939): keep_t = 1[H_t ≥ τ], τ the (1 − ρ) quantile of `entropy_old` over every
    loss token of the batch (batch-wide, once per batch; `losses.clipping.top_entropy_mask`).

    mode 'advantages' (default, the paper's objective: the indicator inside the DAPO token mean,
      whose denominator still counts every token): advantages *= keep, so the other tokens'
      surrogate and gradient are 0 (for any per-token loss proportional to A: PPO-clip, CISPO,
      SAPO). Chain it after the advantage transform.
    mode 'loss_mask': loss_mask *= keep (the dropped tokens leave the token-mean denominator
      and every term, KL included).
    Needs `entropy_old` (the `old_policy_pass`). Metrics: top_entropy/threshold, /kept_fraction.
    """
    if mode not in ("advantages", "loss_mask"):
        raise ValueError(f"top_entropy_tokens: mode={mode!r}; expected 'advantages' or 'loss_mask'")

    def update(r, state):
        _require(r, "top_entropy_tokens", "entropy_old")
        mask = loss_mask(r)
        keep, tau = top_entropy_mask(r.entropy_old, mask, rho)
        if mode == "advantages":
            _require(r, "top_entropy_tokens", "advantages")
            r = r._replace(advantages=r.advantages * keep)
        else:
            r = r._replace(loss_mask=keep)
        tau = jnp.where(jnp.isnan(tau), 0.0, tau)
        return add_metrics(
            r, **{"top_entropy/threshold": tau, "top_entropy/kept_fraction": masked_mean(keep, mask)}
        ), state

    return RolloutTransform(init=lambda: (), update=update)


def clip_cov_tokens(
    ratio: float = 2e-4, lower: float = 1.0, upper: float = 5.0, seed: int = 0
) -> RolloutTransform:
    """Clip-Cov's gradient detachment (arXiv 2505.22617): `clip_cov_selection` picks
    max(⌊ratio·N⌋, 1) random tokens with covariance (A − Ā)(logp − mean logp) in (lower, upper)
    over every loss token of the batch, and their advantages are set to 0 (the per-token
    PPO-clip loss, and its gradient, is then 0 there: the code's `pg_losses * corr`).

    The selection is batch-wide and uses logp_old (the `old_policy_pass`): identical to the
    current policy at the first update. The official code recomputes it from the current logp
    in every micro-batch (and also skips tokens the PPO clip already clipped, none at r = 1).
    State: the PRNG key of the draws (split every batch; checkpointed, so a resumed run repeats
    them). Metric: clip_cov/fraction.
    """

    def update(r, key):
        _require(r, "clip_cov_tokens", "logp_old", "advantages")
        key, draw = jax.random.split(key)
        mask = loss_mask(r)
        uniform = jax.random.uniform(draw, mask.shape)
        selected = clip_cov_selection(r.logp_old, r.advantages, mask, uniform, ratio, lower, upper)
        r = r._replace(advantages=r.advantages * (1.0 - selected))
        return add_metrics(r, **{"clip_cov/fraction": masked_mean(selected, mask)}), key

    return RolloutTransform(init=lambda: jax.random.PRNGKey(seed), update=update)


def kl_cov_tokens(ratio: float = 2e-3) -> RolloutTransform:
    """KL-Cov's selection (arXiv 2505.22617): `kl_cov_selection`, the max(⌊ratio·N⌋, 1) loss
    tokens of the batch with the largest covariance, written to extras['kl_cov_selected']
    [B, T] (read by the `kl_cov` objective). Batch-wide, from logp_old (the `old_policy_pass`;
    identical to the current policy at the first update; the code selects per micro-batch from
    the current logp). Metric: kl_cov/fraction."""

    def update(r, state):
        _require(r, "kl_cov_tokens", "logp_old", "advantages")
        mask = loss_mask(r)
        selected = kl_cov_selection(r.logp_old, r.advantages, mask, ratio)
        r = r._replace(extras={**r.extras, "kl_cov_selected": selected})
        return add_metrics(r, **{"kl_cov/fraction": masked_mean(selected, mask)}), state

    return RolloutTransform(init=lambda: (), update=update)


class DcpoState(NamedTuple):
    """DCPO's per-prompt cumulative reward statistics, a table indexed by record % table_size."""

    mean: jax.Array  # [table_size] float32, μ_tot
    std: jax.Array  # [table_size] float32, σ_tot
    times: jax.Array  # [table_size] int32, appearances so far


def dcpo_advantages(table_size: int = 65536, old_scale: float = 1.0) -> RolloutTransform:
    """DCPO's smooth advantage standardisation across steps (`dcpo_smooth_advantages`) on every
    loss token, with the per-prompt state {μ_tot, σ_tot, times} carried in `DcpoState`.

    A prompt's identity is its dataset record, extras['record_index'] (every scoring strategy
    writes it), stored at slot record % table_size: records ≥ table_size share slots with
    smaller ones (raise table_size above the dataset size to avoid it). A prompt is assumed to
    appear at most once per batch (one group). Metrics: dcpo/nonzero_advantage (fraction of
    rows), dcpo/appearance (mean i)."""

    def init():  # three distinct buffers: the trainer donates the state
        return DcpoState(*(jnp.zeros(table_size, dtype) for dtype in (jnp.float32, jnp.float32, jnp.int32)))

    def update(r, state):
        _require(r, "dcpo_advantages", "rewards")
        _require_extra(r, "dcpo_advantages", "record_index", "the rollout strategy (reward_extras)")
        slot = jnp.asarray(r.extras["record_index"], jnp.int32) % table_size
        times = state.times[slot]
        sas = dcpo_smooth_advantages(
            r.rewards, r.group_ids, state.mean[slot], state.std[slot], times, old_scale
        )
        state = DcpoState(
            state.mean.at[slot].set(sas.mean),
            state.std.at[slot].set(sas.std),
            state.times.at[slot].set(times + 1),
        )
        r = r._replace(advantages=sas.advantages[:, None] * loss_mask(r))
        metrics = {
            "dcpo/nonzero_advantage": jnp.mean(sas.advantages != 0),
            "dcpo/appearance": jnp.mean(times + 1.0),
        }
        return add_metrics(r, **metrics), state

    return RolloutTransform(init=init, update=update)


# ------------------------------------------------------------------------------------------ BAPO

_BAPO_DEFAULTS = {
    "paper": dict(
        target=0.4, c_low_range=(0.6, 0.9), c_high_range=(1.2, 3.0), c_low_step=0.02, c_high_step=0.05,
        dual_clip=None, rollout_weights=True,
    ),
    "code": dict(
        target=1.0, c_low_range=(0.6, 0.8), c_high_range=(1.2, 2.0), c_low_step=0.05, c_high_step=0.05,
        dual_clip=3.0, rollout_weights=False,
    ),
}  # fmt: skip


def _bapo_statistics(search, rollout_weights: bool):
    """`Algorithm.statistics`: P and N of every candidate bound, summed over the micro-batch."""

    def statistics(outputs, batch, state):
        mask = loss_mask(batch)
        weights = mask
        if rollout_weights:
            _require(batch, "bapo (rollout_weights: π_rollout = exp(logp_behav))", "logp_behav")
            weights = jnp.where(mask > 0, jnp.exp(jnp.minimum(batch.logp_behav, 0.0)), 0.0)
        old = old_logp(outputs, batch)
        pos, neg = bapo_contributions(
            outputs.logp, old, batch.advantages, weights, search.c_lows, search.c_highs
        )
        return {"bapo/pos": pos, "bapo/neg": neg}

    return statistics


def _bapo_loss(search, rule, target, dual_clip, statistics):
    def per_token(outputs, batch, state, mask):
        stats = outputs.stats  # mini-batch totals; outside the trainer: this batch's own
        stats = statistics(jax.lax.stop_gradient(outputs), batch, state) if stats is None else stats
        b = bapo_select(stats["bapo/pos"], stats["bapo/neg"], search, rule, target)
        old = old_logp(outputs, batch)
        loss, clipped = ppo_clip_loss(
            outputs.logp, old, batch.advantages, 1.0 - b.c_low, b.c_high - 1.0, dual_clip
        )
        share = sequence_mean(jnp.ones(mask.shape[0]), batch)  # the rows' share: sums to 1 over micro-batches
        chosen = {
            "c_low": b.c_low,
            "c_high": b.c_high,
            "target_met": b.target_met,
            "positive_share": b.positive_share,
        }
        return loss, {
            "clip_fraction": token_mean(clipped, mask, batch),
            **{f"bapo/{k}": v * share for k, v in chosen.items()},
        }

    return per_token


@register("bapo")
def bapo(
    rule: str = "paper",
    target: float | None = None,
    c_low_range: tuple[float, float] | None = None,
    c_high_range: tuple[float, float] | None = None,
    c_low_step: float | None = None,
    c_high_step: float | None = None,
    dual_clip: float | None = None,
    rollout_weights: bool | None = None,
    std: str = "unbiased",
    loss_agg: str = "token_mean",
) -> Algorithm:
    """BAPO, Balanced Policy Optimization with Adaptive Clipping (arXiv 2510.18927): before each
    update the absolute ratio bounds c_low < 1 < c_high are searched over the CURRENT policy's
    ratios of the whole mini-batch (the `statistics` seam: P, N of every candidate, totalled
    before the gradient) until positive-advantage tokens carry enough of the loss, then
    ℓ = PPO-clip with clip(r, c_low, c_high) (+ dual clip) on GRPO advantages.

    rule='paper' (Alg. 1, default): ρ = P/(P+N) ≥ ρ0 = 0.4, P/N weighted by π_rollout =
      exp(logp_behav); start (a⁻, a⁺) = (0.6, 1.2); raise c_high by δ1 = 0.05 up to b⁺ = 3.0
      first, then c_low by δ2 = 0.02 up to b⁻ = 0.9; no dual clip.
    rule='code' (github.com/WooooDyy/BAPO `recipe/bapo/policy_loss.py`, `bapo_trainer.yaml`):
      P/N ≥ 1 unweighted; raise c_low first (0.6 → 0.8), then c_high (1.2 → 2.0), steps 0.05;
      dual clip c = 3. (There, raising c_low only increases N, so it cannot help the target.)
    P, N and the search: `losses.clipping.bapo_contributions`, `bapo_search_path`, `bapo_select`.
    None = the rule's default for target, c_*_range (start, max), c_*_step, dual_clip (0 turns
    it off) and rollout_weights. Metrics (sum correctly over micro-batches): bapo/c_low,
    bapo/c_high, bapo/target_met, bapo/positive_share (P/(P+N)), clip_fraction, pg_loss.
    """
    if rule not in BAPO_RULES:
        raise ValueError(f"bapo: unknown rule={rule!r}; expected one of {BAPO_RULES}")
    given = dict(target=target, c_low_range=c_low_range, c_high_range=c_high_range, c_low_step=c_low_step)
    given.update(c_high_step=c_high_step, dual_clip=dual_clip, rollout_weights=rollout_weights)
    s = {**_BAPO_DEFAULTS[rule], **{k: v for k, v in given.items() if v is not None}}
    ranges = tuple(s["c_low_range"]), tuple(s["c_high_range"])
    search = bapo_search_path(rule, *ranges, s["c_low_step"], s["c_high_step"])
    statistics = _bapo_statistics(search, s["rollout_weights"])
    return Algorithm(
        data="rollout",
        transform=group_advantages(std=std),
        objective=token_loss_objective(
            _bapo_loss(search, rule, s["target"], s["dual_clip"] or None, statistics), loss_agg
        ),
        statistics=statistics,
    )


# ------------------------------------------------------------------------- DCPO, CISPO, SAPO


@register("dcpo")
def dcpo(
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.28,
    clip_ratio_c: float = 10.0,
    loss_agg: str = "only_token_mean",
    table_size: int = 65536,
    old_stats_scale: float = 1.0,
) -> Algorithm:
    """DCPO, Dynamic Clipping Policy Optimization (arXiv 2509.02333; github.com/lime-RL/DCPO
    `verl/trainer/ppo/core_algos.py`: `get_clip_low_high`, `compute_policy_loss_dcpo`,
    `compute_dcpo_outcome_advantage`, `agg_loss`; `recipe/dcpo/run_dcpo.sh`).

    Advantages: smooth advantage standardisation with per-prompt cumulative state across steps
      (`dcpo_advantages`, keyed by extras['record_index']; `old_stats_scale` is the code's
      `user_old_mean_ratio`).
    Loss: PPO-clip with per-token bounds [r_lo, r_hi] from q = exp(logp_old) (`dcpo_bounds`,
      C = max(clip_ratio_c, 10)) and dual clip −A·clip_ratio_c for A < 0 (clip_type 'dynamic').
    loss_agg: 'only_token_mean' (default, the README's OTM: each response's token mean, summed
      over responses, no batch averaging); the code's current OTM is the micro-batch token mean,
      whose micro-batch-invariant form is 'token_mean'; any `aggregate` mode.
    ε defaults: the shipped scripts' ε_lo = 0.2 (run_base.sh), ε_hi = 0.28 (run_dcpo.sh), what
    the paper's runs used; the README's bounds table illustrates ε_lo = 0.16, ε_hi = 0.2.
    No KL, no group filtering. Metrics: pg_loss, clip_fraction, dcpo/r_low, dcpo/r_high.
    """

    def per_token(outputs, batch, state, mask):
        old = old_logp(outputs, batch)
        low, high = dcpo_bounds(old, clip_eps_low, clip_eps_high, clip_ratio_c)
        loss, clipped = ppo_clip_loss(
            outputs.logp, old, batch.advantages, 1.0 - low, high - 1.0, clip_ratio_c
        )
        metrics = {"clip_fraction": clipped, "dcpo/r_low": low, "dcpo/r_high": high}
        return loss, {k: token_mean(v, mask, batch) for k, v in metrics.items()}

    return Algorithm(
        data="rollout",
        transform=dcpo_advantages(table_size, old_stats_scale),
        objective=token_loss_objective(per_token, loss_agg),
    )


@register("cispo")
def cispo(
    clip_eps_low: float | None = None,
    clip_eps_high: float = 4.0,
    std: str = "unbiased",
    loss_agg: str = "token_mean",
) -> Algorithm:
    """CISPO (MiniMax-M1, arXiv 2506.13585): ℓ_t = −sg(clip(r_t, 1 − ε_lo, 1 + ε_hi))·A_t·logp_t
    (`losses.clipping.cispo_loss`), token mean over the mini-batch (the paper's 1/Σ|o_i|), GRPO
    advantages, no KL. Every token keeps its gradient, weighted by the clipped IS weight.

    Defaults: no lower bound (clip_eps_low=None; the paper sets ε_low large and tunes only
    ε_high), upper weight 1 + ε_hi = 5 (TRL `loss_type="cispo"` with its recommended ε_max = 5,
    from ScaleRL, arXiv 2510.13786). verl `compute_policy_loss_cispo` takes the actor's clip
    ratios (1 ± 0.2 unless set). Metrics: pg_loss, clip_fraction (weights that were clipped).
    """

    def per_token(outputs, batch, state, mask):
        loss, clipped = cispo_loss(
            outputs.logp, old_logp(outputs, batch), batch.advantages, clip_eps_low, clip_eps_high
        )
        return loss, {"clip_fraction": token_mean(clipped, mask, batch)}

    return Algorithm("rollout", group_advantages(std=std), token_loss_objective(per_token, loss_agg))


@register("sapo")
def sapo(
    tau_pos: float = 1.0, tau_neg: float = 1.05, std: str = "unbiased", loss_agg: str = "seq_mean_token_mean"
) -> Algorithm:
    """SAPO, Soft Adaptive Policy Optimization (arXiv 2511.20347): the hard clip replaced by the
    gate f(r) = σ(τ(r − 1))·4/τ, τ = τ_pos for A > 0 else τ_neg; ℓ = −f(r)·A
    (`losses.clipping.sapo_loss`), GRPO advantages, no KL, `seq_mean_token_mean` (the paper's
    1/G Σ_i 1/|y_i| Σ_t, which verl `compute_policy_loss_sapo` forces). Defaults τ_pos = 1.0,
    τ_neg = 1.05 (the paper's, verl's and TRL's). Metrics: pg_loss, sapo/gate (token mean of f).
    """

    def per_token(outputs, batch, state, mask):
        loss, gate = sapo_loss(outputs.logp, old_logp(outputs, batch), batch.advantages, tau_pos, tau_neg)
        return loss, {"sapo/gate": token_mean(gate, mask, batch)}

    return Algorithm("rollout", group_advantages(std=std), token_loss_objective(per_token, loss_agg))


# ------------------------------------------------------------------ covariance and entropy tokens


@register("clip_cov")
def clip_cov(
    ratio: float = 2e-4,
    cov_lower: float = 1.0,
    cov_upper: float = 5.0,
    clip_eps: float = 1.0,
    clip_eps_high: float | None = None,
    seed: int = 0,
    std: str = "unbiased",
    loss_agg: str = "token_mean",
) -> Algorithm:
    """Clip-Cov ("The Entropy Mechanism of RL for Reasoning LMs", arXiv 2505.22617): PPO-clip
    where a random fraction `ratio` of the tokens whose covariance (A − Ā)(logp − mean logp)
    lies in (cov_lower, cov_upper) have their gradient detached (`clip_cov_tokens`: their
    advantages are zeroed), token mean, no KL.

    The selection is batch-wide from logp_old (so the algorithm runs the `old_policy_pass`;
    identical to the current policy at the first update), not per micro-batch from the current
    logp as in the code (github.com/PRIME-RL/Entropy-Mechanism-of-RL `core_algos.py::
    compute_policy_loss_clip_cov`; verl's port). Defaults from the official recipe
    (`recipe/dapo/7b_clip_cov.sh`): ratio 2e-4, band (1, 5), clip ratios 1 (r clipped to [0, 2]).
    Metrics: pg_loss, clip_fraction (PPO clip), clip_cov/fraction (per batch).
    """
    return Algorithm(
        data="rollout",
        transform=chain(group_advantages(std=std), clip_cov_tokens(ratio, cov_lower, cov_upper, seed)),
        objective=pg_terms(clip_eps, clip_eps_high, None, 0.0, "k3", loss_agg, None, 0.0),
        passes=(old_policy_pass(),),
    )


@register("kl_cov")
def kl_cov(
    ratio: float = 2e-3,
    coef: float = 1.0,
    estimator: str = "abs",
    std: str = "unbiased",
    loss_agg: str = "token_mean",
) -> Algorithm:
    """KL-Cov (arXiv 2505.22617): the unclipped surrogate −A·r on every token plus coef·KL on
    the top `ratio` fraction of tokens by covariance (`kl_cov_tokens`, `kl_cov_loss`), token
    mean, no KL to a reference.

    The selection is batch-wide from logp_old (the algorithm runs the `old_policy_pass`;
    identical to the current policy at the first update), not per micro-batch from the current
    logp as in the code (PRIME-RL/Entropy-Mechanism-of-RL `compute_policy_loss_kl_cov`, verl's
    port). Defaults from the official 7B recipe (`recipe/dapo/7b_kl_cov.sh`: k_percent = 0.2 %,
    ppo_kl_coef = 1; the 32B recipe and verl's default use 0.02 %, verl's yaml coef 0.1);
    estimator 'abs' = |logp − logp_old| as in the code ('k2': the paper's KL as ½d²).
    Metrics: pg_loss, kl_cov/kl (token mean of the penalty), kl_cov/fraction (per batch).
    """

    def per_token(outputs, batch, state, mask):
        selected = batch.extras["kl_cov_selected"]
        old = old_logp(outputs, batch)
        loss = kl_cov_loss(outputs.logp, old, batch.advantages, selected, coef, estimator)
        penalty = coef * selected * kl_estimate(outputs.logp, old, kind=estimator)
        return loss, {"kl_cov/kl": token_mean(penalty, mask, batch)}

    return Algorithm(
        data="rollout",
        transform=chain(group_advantages(std=std), kl_cov_tokens(ratio)),
        objective=token_loss_objective(per_token, loss_agg),
        passes=(old_policy_pass(),),
    )


@register("high_entropy")
def high_entropy(
    rho: float = 0.2,
    mode: str = "advantages",
    clip_eps: float = 0.2,
    clip_eps_high: float = 0.28,
    std: str = "unbiased",
    loss_agg: str = "token_mean",
) -> Algorithm:
    """Top-ρ high-entropy ("forking") tokens only ("Beyond the 80/20 Rule", arXiv 2506.01939):
    the paper's DAPO setup (clip-higher ε_lo = 0.2, ε_hi = 0.28, token mean, no KL) where only
    tokens with entropy_old in the batch's top ρ = 20% carry policy-gradient loss
    (`top_entropy_tokens(rho, mode)`, chainable onto any algorithm's advantages; the
    `old_policy_pass` writes entropy_old). DAPO's dynamic sampling / overlong shaping are not
    included (config `rollout.name='dynamic_sampling'` adds the former).
    Metrics: pg_loss, clip_fraction, top_entropy/threshold, top_entropy/kept_fraction.
    """
    return Algorithm(
        data="rollout",
        transform=chain(group_advantages(std=std), top_entropy_tokens(rho, mode)),
        objective=pg_terms(clip_eps, clip_eps_high, None, 0.0, "k3", loss_agg, None, 0.0),
        passes=(old_policy_pass(),),
    )
