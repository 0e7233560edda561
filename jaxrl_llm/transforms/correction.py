"""Rollout correction: pieces any algorithm adds to handle the gap between the policy that
sampled a batch (the behaviour policy, `Rollout.logp_behav`: the sampler's log-probs, possibly
k steps stale under `jaxrl_llm.rollout.replay`) and the trainer's policy (`Rollout.logp_old`:
the `old_policy_pass` recomputes it with the trainer's forward).

With Δ_t = logp_old_t − logp_behav_t (the log importance ratio π_old/π_behav of token t),
m the loss mask, L_i = Σ_t m_{i,t}:

* `truncated_is(level, cap)`: truncated importance sampling (TIS) weights in
  `extras['is_weight']`, which `policy_surrogate` multiplies into its per-token loss;
* `rejection_mask(level, low, high, veto)`: masked importance sampling / rejection (MIS, RS):
  tokens or whole sequences whose ratio leaves [low, high] get loss_mask 0;
* `mismatch_metrics()`: max and mean |Δ|, ratio quantiles and KL estimates, every step;
* `behaviour_as_old()`: logp_old <- logp_behav, for off-policy methods whose "old" policy is
  the one that sampled (BAPO, OPMD, AsymRE under replay);
* `with_correction(algorithm, *transforms)`: the algorithm with these run before its own
  transform (and the `old_policy_pass` added, which they read).

    algorithm = with_correction(jrl.make_algorithm("grpo"), truncated_is(cap=2.0))

The pure functions of arrays (`truncated_importance_weights`, `ratio_keep_mask`,
`mismatch_stats`) are separate from the transforms. Log-ratios are clamped to [−20, 20]
before every exp (verl's SAFETY_BOUND), so no weight is inf.

Sources: F. Yao, L. Liu et al., "Your Efficient RL Framework Secretly Brings You Off-Policy RL
Training" (2025, fengyao.notion.site/off-policy-rl): TIS, min(π_train/π_rollout, C) per token,
C = 2 in their verl example. J. Liu, Y. Li et al., "When Speed Kills Stability: Demystifying RL
Collapse from the Training-Inference Mismatch" (2025, richardli.xyz/rl-collapse): sequence-level
IS, masking (MIS) and geometric-mean rejection. Code read: volcengine/verl
`verl/trainer/ppo/rollout_corr_helper.py` (`compute_rollout_correction_weights`: `rollout_is`
'token' | 'sequence', `rollout_is_threshold` = 2.0, upper truncation only;
`compute_rollout_rejection_mask`: `rollout_rs` 'token' | 'sequence' | 'geometric',
`rollout_rs_threshold` with lower default 1/upper; `rollout_token_veto_threshold`), and
`docs/advance/rollout_is.md` (the metrics).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.objectives import IS_WEIGHT, loss_mask
from jaxrl_llm.train.passes import old_policy_pass
from jaxrl_llm.transforms.rollout import _require
from jaxrl_llm.types import Algorithm, Rollout, RolloutTransform, add_metrics

SAFETY_BOUND = 20.0  # |log-ratio| clamp before exp (verl's SAFETY_BOUND)
IS_LEVELS = ("token", "sequence")
REJECTION_LEVELS = ("token", "sequence", "geometric")
QUANTILES = (0.05, 0.5, 0.95)


def _check_level(level: str, levels: tuple, name: str) -> None:
    if level not in levels:
        raise ValueError(f"{name}: level={level!r}; use one of {levels}")


def _log_ratios(logp_old, logp_behav, mask):
    """(Δ [B, T] zeroed off the mask, mask as float32)."""
    mask = jnp.asarray(mask, jnp.float32)
    delta = jnp.asarray(logp_old, jnp.float32) - jnp.asarray(logp_behav, jnp.float32)
    return jnp.where(mask > 0, delta, 0.0), mask


def truncated_importance_weights(logp_old, logp_behav, mask, level: str = "token", cap: float = 2.0):
    """Truncated importance weights (TIS). [B, T] x3 -> (weights [B, T], truncated [B, T]).

        token:     w_{i,t} = min(exp(clamp(Δ_{i,t}, ±20)), C)
        sequence:  w_{i,t} = min(exp(clamp(Σ_t m_{i,t} Δ_{i,t}, ±20)), C)   (one weight per row)

    Weights are 0 off the mask; `truncated` is 1.0 where the untruncated weight exceeds C
    (the truncation fraction metric). Upper truncation only, as TIS and verl's `rollout_is`.

    Example (C = 2): Δ = [log 3, log 0.5] -> token weights [2, 0.5] (the first truncated);
    the sequence weight is min(3 · 0.5, 2) = 1.5 on both tokens.
    """
    _check_level(level, IS_LEVELS, "truncated_importance_weights")
    if not cap > 0:
        raise ValueError(f"truncated_importance_weights: cap={cap} must be > 0")
    delta, mask = _log_ratios(logp_old, logp_behav, mask)
    log_w = (
        delta if level == "token" else jnp.broadcast_to(jnp.sum(delta, axis=-1, keepdims=True), delta.shape)
    )
    raw = jnp.exp(jnp.clip(log_w, -SAFETY_BOUND, SAFETY_BOUND))
    weights = jnp.minimum(raw, cap) * mask
    return weights, (raw > cap).astype(jnp.float32) * mask


def ratio_keep_mask(
    logp_old,
    logp_behav,
    mask,
    level: str = "token",
    low: float | None = None,
    high: float = 2.0,
    veto: float | None = None,
):
    """Rejection (masked IS): 1.0 where a token is kept, 0.0 where it is rejected. [B, T] x3 -> [B, T].

    With ρ the ratio of the level, a token is kept when low ≤ ρ ≤ high (compared in log space):

        token:      ρ_{i,t} = exp(Δ_{i,t})
        sequence:   ρ_i = exp(Σ_t m Δ)               (the whole row kept or rejected)
        geometric:  ρ_i = exp(Σ_t m Δ / L_i)          (the per-token geometric mean)

    low defaults to 1/high (verl). veto: a row with any loss token of ratio < veto is rejected
    whole (verl's `rollout_token_veto_threshold`; None: off). The result is 0 off the mask.

    Example (high 2, low 0.5): Δ = [log 3, 0, log 0.6] -> token keep [0, 1, 1];
    sequence ρ = 1.8 -> keep all; geometric ρ = 1.8^(1/3) ≈ 1.216 -> keep all.
    """
    _check_level(level, REJECTION_LEVELS, "ratio_keep_mask")
    low = 1.0 / high if low is None else low
    if not 0 < low <= high:
        raise ValueError(f"ratio_keep_mask: need 0 < low <= high, got low={low}, high={high}")
    delta, mask = _log_ratios(logp_old, logp_behav, mask)
    if level == "token":
        log_rho = delta
    else:
        log_rho = jnp.sum(delta, axis=-1, keepdims=True)
        if level == "geometric":
            log_rho = log_rho / jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1.0)
    keep = (log_rho >= jnp.log(low)) & (log_rho <= jnp.log(high))
    if veto is not None:
        vetoed = jnp.any((delta < jnp.log(veto)) & (mask > 0), axis=-1, keepdims=True)
        keep = keep & ~vetoed
    return jnp.broadcast_to(keep, delta.shape).astype(jnp.float32) * mask


def mismatch_stats(logp_old, logp_behav, mask) -> dict:
    """Behaviour-vs-trainer mismatch over the mask-1 tokens (scalars):

        max_abs_logp_diff = max |Δ|,  mean_abs_logp_diff = mean |Δ|,
        ratio_p5 / ratio_p50 / ratio_p95: quantiles of exp(Δ) (linear interpolation),
        kl_k1 = mean(−Δ), kl_k3 = mean(exp(Δ) − Δ − 1): estimates of KL(π_behav ‖ π_old) on
        the behaviour's samples (verl's mismatch_kl and mismatch_k3_kl).

    Empty mask: 0 for the differences and KLs, 1 for the ratio quantiles.

    Example: Δ = [log 2, 0, log 0.5] -> max 0.6931, mean 0.4621, p50 1, kl_k1 0,
    kl_k3 = ((2 − 0.6931 − 1) + 0 + (0.5 + 0.6931 − 1)) / 3 = 0.1667.
    """
    delta, mask = _log_ratios(logp_old, logp_behav, mask)
    count = jnp.sum(mask)
    some = count > 0
    on = mask > 0
    abs_delta = jnp.abs(delta)
    ratio = jnp.exp(jnp.clip(delta, -SAFETY_BOUND, SAFETY_BOUND))
    quantiles = jnp.nanquantile(jnp.where(on, ratio, jnp.nan).reshape(-1), jnp.asarray(QUANTILES))
    quantiles = jnp.where(some, quantiles, 1.0)
    mean = lambda x: jnp.sum(jnp.where(on, x, 0.0)) / jnp.maximum(count, 1.0)  # noqa: E731
    stats = {
        "max_abs_logp_diff": jnp.max(jnp.where(on, abs_delta, 0.0)),
        "mean_abs_logp_diff": mean(abs_delta),
        "kl_k1": mean(-delta),
        "kl_k3": mean(jnp.expm1(jnp.clip(delta, -SAFETY_BOUND, SAFETY_BOUND)) - delta),
    }
    for q, value in zip(QUANTILES, quantiles, strict=True):
        stats[f"ratio_p{round(q * 100)}"] = value
    return stats


def _stateless(name: str, fn) -> RolloutTransform:
    def update(rollout: Rollout, state):
        _require(rollout, name, "logp_old", "logp_behav")
        return fn(rollout), state

    return RolloutTransform(init=lambda: (), update=update)


def mismatch_metrics() -> RolloutTransform:
    """Logs `mismatch_stats` of the batch as mismatch/<name> every step (needs logp_old: the
    `old_policy_pass`, which `with_correction` adds, and logp_behav)."""

    def fn(r: Rollout) -> Rollout:
        stats = mismatch_stats(r.logp_old, r.logp_behav, loss_mask(r))
        return add_metrics(r, **{f"mismatch/{k}": v for k, v in stats.items()})

    return _stateless("mismatch_metrics", fn)


def truncated_is(level: str = "token", cap: float = 2.0) -> RolloutTransform:
    """TIS weights (`truncated_importance_weights`) into extras['is_weight'] (multiplied into
    weights already there), read by `policy_surrogate` and `objectives.importance_weight`.
    cap C = 2.0: verl's `rollout_is_threshold` default and the TIS post's example.
    Metrics: tis/mean_weight (token mean over the loss mask), tis/truncated_fraction (of loss
    tokens whose untruncated weight exceeds C; at sequence level every token of the row)."""
    _check_level(level, IS_LEVELS, "truncated_is")

    def fn(r: Rollout) -> Rollout:
        mask = loss_mask(r)
        weights, truncated = truncated_importance_weights(r.logp_old, r.logp_behav, mask, level, cap)
        tokens = jnp.maximum(jnp.sum(mask), 1.0)
        previous = r.extras.get(IS_WEIGHT)
        weights = weights if previous is None else weights * previous
        r = r._replace(extras={**r.extras, IS_WEIGHT: weights})
        return add_metrics(
            r,
            **{
                "tis/mean_weight": jnp.sum(weights) / tokens,
                "tis/truncated_fraction": jnp.sum(truncated) / tokens,
            },
        )

    return _stateless("truncated_is", fn)


def rejection_mask(
    level: str = "token", high: float = 2.0, low: float | None = None, veto: float | None = None
) -> RolloutTransform:
    """loss_mask <- loss_mask · `ratio_keep_mask(...)`: rejected tokens or rows carry no loss
    and leave the mini-batch token count (verl's rejection through the response mask). Defaults:
    verl's `rollout_rs_threshold` 2.0, low = 1/high; for 'geometric' verl recommends a high of
    1.0002-1.001. Metrics: rs/masked_fraction (of loss tokens), rs/masked_seq_fraction (of rows
    with loss tokens: rows that lost at least one)."""
    _check_level(level, REJECTION_LEVELS, "rejection_mask")

    def fn(r: Rollout) -> Rollout:
        mask = loss_mask(r)
        keep = ratio_keep_mask(r.logp_old, r.logp_behav, mask, level, low, high, veto)
        rejected = mask - keep
        rows = jnp.sum(mask, axis=-1) > 0
        r = r._replace(loss_mask=keep)
        return add_metrics(
            r,
            **{
                "rs/masked_fraction": jnp.sum(rejected) / jnp.maximum(jnp.sum(mask), 1.0),
                "rs/masked_seq_fraction": jnp.sum(jnp.any(rejected > 0, axis=-1))
                / jnp.maximum(jnp.sum(rows), 1.0),
            },
        )

    return _stateless("rejection_mask", fn)


def behaviour_as_old() -> RolloutTransform:
    """logp_old <- logp_behav: the objective's ratio is then taken against the policy that
    sampled the batch (off-policy PPO-style methods under `replay`: BAPO, OPMD, AsymRE), over
    every epoch and mini-batch. Put it after `mismatch_metrics` (which compares the two)."""

    def update(r: Rollout, state):
        _require(r, "behaviour_as_old", "logp_behav")
        return r._replace(logp_old=r.logp_behav), state

    return RolloutTransform(init=lambda: (), update=update)


def with_correction(
    algorithm: Algorithm, *transforms: RolloutTransform, metrics: bool = True, old_pass: bool = True
) -> Algorithm:
    """`algorithm` with the stateless correction `transforms` (and first `mismatch_metrics()`
    unless `metrics=False`) applied, in order, before its own transform; its transform state
    stays its own (scheduled hyper-parameters keep working). `old_pass`: adds the
    `old_policy_pass` (logp_old with the trainer's forward, which the corrections compare with
    logp_behav) unless the algorithm lists one; `with_correction(a, behaviour_as_old(),
    metrics=False, old_pass=False)` needs no extra forward."""
    pre = ((mismatch_metrics(),) if metrics else ()) + transforms
    for t in pre:
        if jax.tree.leaves(t.init()):
            raise ValueError("with_correction: correction transforms must be stateless (init() -> ())")
    inner = algorithm.transform

    def update(batch, state):
        for t in pre:
            batch, _ = t.update(batch, ())
        return inner.update(batch, state)

    passes = algorithm.passes
    if old_pass and not any(p.name == "old_logp" for p in passes):
        passes = (*passes, old_policy_pass())
    return algorithm._replace(transform=RolloutTransform(inner.init, update), passes=passes)


CORRECTIONS = {
    "behaviour_as_old": behaviour_as_old,
    "truncated_is": truncated_is,
    "rejection_mask": rejection_mask,
}


def correction_from_config(algorithm: Algorithm, correction) -> Algorithm:
    """`algorithm` with the corrections a config names (`config.correction`: {name: {arguments}},
    applied in order; names: `CORRECTIONS`) through `with_correction`, the mismatch metrics
    included; an empty mapping returns `algorithm` unchanged.

        config.correction = {"truncated_is": {"level": "token", "cap": 2.0}}
        config.correction = {"behaviour_as_old": {}}   # off-policy methods under replay
    """
    if not correction:
        return algorithm
    transforms = []
    for name, arguments in correction.items():
        if name not in CORRECTIONS:
            raise ValueError(
                f"unknown rollout correction {name!r} in config field correction; known: "
                f"{', '.join(sorted(CORRECTIONS))} (each maps to a dict of its arguments)"
            )
        try:
            transforms.append(CORRECTIONS[name](**dict(arguments or {})))
        except TypeError as error:
            raise ValueError(f"config field correction.{name}: {error}") from None
    return with_correction(algorithm, *transforms)
