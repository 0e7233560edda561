"""Sequence-ratio policy losses: GSPO, GSPO-token (arXiv 2507.18071) and GMPO (arXiv 2507.20673).

Both replace PPO's per-token ratio by the geometric mean of a response's token ratios,
exp((1/L_i) Σ_t log r_{i,t}): GSPO clips that sequence ratio, GMPO clips each token's
log-ratio first (a wide range) and then takes the geometric mean. Advantages are GRPO's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.losses.policy import ppo_clip_loss
from jaxrl_llm.objectives import (
    loss_mask,
    old_logp,
    regularised,
    sequence_mean,
    token_loss_objective,
    token_mean,
)
from jaxrl_llm.train.passes import reference_passes
from jaxrl_llm.transforms.estimators import masked_mean
from jaxrl_llm.transforms.rollout import group_advantages
from jaxrl_llm.types import Algorithm, Objective

Array = jax.Array


def gspo_loss(
    logp: Array,
    logp_old: Array,
    advantages: Array,
    mask: Array,
    clip_eps_low: float = 3e-4,
    clip_eps_high: float = 4e-4,
    token_level: bool = False,
    max_log_ratio: float = 10.0,
) -> tuple[Array, Array]:
    """GSPO clipped surrogate on the sequence ratio. [B, T] x4 -> (loss, clipped) [B, T].

        log s_i = min((1/L_i) Σ_t m (logp − logp_old), max_log_ratio)     (verl clamps at 10)
        GSPO:        ℓ_i   = max(−A_i s_i, −A_i clip(s_i, 1 − ε_lo, 1 + ε_hi)),  A_i = mean_t A
        GSPO-token:  s_i,t = sg[s_i] · π(y_t) / sg[π(y_t)],  ℓ_i,t with A_i,t per token

    GSPO's ℓ_i is written on every token of row i (aggregate with `seq_mean_token_mean` for
    the paper's (1/B) Σ_i ℓ_i); its gradient flows through all of the row's tokens via s_i.
    GSPO-token has the same value and, with a constant A over the row, the same gradient
    (verl's `compute_policy_loss_gspo` is this form). ``clipped`` marks where the clipped
    branch is active (zero gradient): the whole row for GSPO.

    Paper: Zheng et al., arXiv 2507.18071. Example (the spec's golden):
      >>> lr = jnp.array([[0.1, -0.1, 0.3]]); loss, c = gspo_loss(lr, jnp.zeros((1, 3)), jnp.ones((1, 3)), jnp.ones((1, 3)))
      >>> loss, c  # [[−1.0004] * 3], [[1, 1, 1]]: s = e^0.1 = 1.105171 > 1 + 4e-4
    """
    mask = jnp.asarray(mask, jnp.float32)
    logp = jnp.asarray(logp, jnp.float32)
    seq = masked_mean(logp - logp_old, mask, axis=-1)  # [B]
    if token_level:
        log_s = logp - jax.lax.stop_gradient(logp) + jax.lax.stop_gradient(seq)[:, None]
        adv = jnp.broadcast_to(jnp.asarray(advantages, jnp.float32), mask.shape)
    else:
        log_s, adv = seq, masked_mean(advantages, mask, axis=-1)
    loss, clipped = ppo_clip_loss(jnp.minimum(log_s, max_log_ratio), 0.0, adv, clip_eps_low, clip_eps_high)
    if not token_level:
        loss, clipped = (jnp.broadcast_to(x[:, None], mask.shape) for x in (loss, clipped))
    return loss, clipped


def gmpo_loss(
    logp: Array,
    logp_old: Array,
    advantages: Array,
    mask: Array,
    clip_eps_low: float = 0.4,
    clip_eps_high: float = 0.4,
) -> tuple[Array, Array]:
    """GMPO per-sequence loss (geometric mean of clipped token ratios). -> (loss [B], clipped [B, T]).

    With d_t = clip(logp − logp_old, −20, 20), A_i = mean_t A over the row and σ = sign(A_i):

        d̂_t = σ · min(σ d_t, σ clip(d_t, −ε_lo, ε_hi))      (A > 0: min(d, ε_hi); A < 0: max(d, −ε_lo))
        ℓ_i = −A_i · exp((1/L_i) Σ_t m d̂_t)

    i.e. J = (Π_t |min(ρ_t A, clip(ρ_t, e^−ε_lo, e^ε_hi) A)|)^{1/L_i} · sgn(A): PPO's
    pessimistic clip per token in log space, then the geometric mean. Clipped tokens (A > 0
    and d > ε_hi, or A < 0 and d < −ε_lo: ``clipped`` = 1) get no gradient. Aggregate ℓ_i
    with a mean over sequences.

    Paper: Zhao et al., arXiv 2507.20673, clip range (e^−0.4, e^0.4); code callsys/GMPO
    `train_zero_math_gmpo.py` (critic_type_modify='gmpo', CLIPRANGE=0.4) and verl
    `compute_policy_loss_geo_mean` (both: the same clip, a per-row mean; the ±20 clamp is
    verl's commented option, kept so one wild token cannot overflow exp).

    Example (A = 1, d = [0.5, 0.1, −0.6], ε = 0.4): d̂ = [0.4, 0.1, −0.6], ℓ = −e^{−0.1/3} = −0.967216.
    """
    mask = jnp.asarray(mask, jnp.float32)
    d = jnp.clip(jnp.asarray(logp, jnp.float32) - logp_old, -20.0, 20.0)
    adv = masked_mean(advantages, mask, axis=-1)  # [B]
    sign = jnp.sign(adv)[:, None]
    d_hat = sign * jnp.minimum(sign * d, sign * jnp.clip(d, -clip_eps_low, clip_eps_high))
    loss = -adv * jnp.exp(masked_mean(d_hat, mask, axis=-1))
    clipped = ((sign > 0) & (d > clip_eps_high)) | ((sign < 0) & (d < -clip_eps_low))
    return loss, clipped.astype(jnp.float32)


def sequence_ratio_surrogate(
    kind: str, clip_eps: float, clip_eps_high: float, loss_agg: str = "seq_mean_token_mean"
) -> Objective:
    """The policy term of `gspo` ('gspo'), `gspo_token` ('gspo_token') or `gmpo` ('gmpo') on
    `batch.advantages`, against `old_logp`. GSPO's per-token loss goes through
    `token_loss_objective` (multiplied by rollout-correction weights when the batch has them,
    as verl); GMPO's per-sequence loss is averaged over sequences, unweighted (verl's geo_mean
    takes none). Metrics: pg_loss, clip_fraction (token means), seq_log_ratio (sequence mean of
    (1/L_i) Σ_t log r_t)."""

    def ratio_metrics(outputs, batch, mask, clipped):
        seq_log_ratio = masked_mean(outputs.logp - old_logp(outputs, batch), mask, axis=-1)
        return {
            "clip_fraction": token_mean(clipped, mask, batch),
            "seq_log_ratio": sequence_mean(jax.lax.stop_gradient(seq_log_ratio), batch),
        }

    if kind == "gmpo":

        def objective(outputs, batch, state):
            mask = loss_mask(batch)
            seq_loss, clipped = gmpo_loss(
                outputs.logp, old_logp(outputs, batch), batch.advantages, mask, clip_eps, clip_eps_high
            )
            loss = sequence_mean(seq_loss, batch)
            return loss, {"pg_loss": loss, **ratio_metrics(outputs, batch, mask, clipped)}

        return objective

    def per_token(outputs, batch, state, mask):
        old, token_level = old_logp(outputs, batch), kind == "gspo_token"
        pg, clipped = gspo_loss(
            outputs.logp, old, batch.advantages, mask, clip_eps, clip_eps_high, token_level
        )
        return pg, ratio_metrics(outputs, batch, mask, clipped)

    return token_loss_objective(per_token, loss_agg)


def _sequence_ratio_algorithm(
    kind, clip_eps, clip_eps_high, beta, kl_estimator, std, adv_eps, loss_agg, entropy_coef
):
    surrogate = sequence_ratio_surrogate(kind, clip_eps, clip_eps_high, loss_agg)
    return Algorithm(
        data="rollout",
        transform=group_advantages(std, adv_eps),
        objective=regularised(surrogate, beta, kl_estimator, entropy_coef, loss_agg),
        passes=reference_passes(beta),
    )


@register("gspo")
def gspo(
    clip_eps: float = 3e-4,
    clip_eps_high: float = 4e-4,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    std: str = "unbiased",
    adv_eps: float = 1e-6,
    loss_agg: str = "seq_mean_token_mean",
    entropy_coef: float = 0.0,
) -> Algorithm:
    """GSPO (Group Sequence Policy Optimization, arXiv 2507.18071; verl
    `core_algos.py::compute_policy_loss_gspo`, TRL importance_sampling_level="sequence"):
    `gspo_loss` on the sequence ratio s_i = exp(mean_t log r_t) (log s ≤ 10) with GRPO
    advantages, eps_lo=3e-4, eps_hi=4e-4 (GSPO v2 §5.1), `seq_mean_token_mean`, no KL."""
    return _sequence_ratio_algorithm(
        "gspo", clip_eps, clip_eps_high, beta, kl_estimator, std, adv_eps, loss_agg, entropy_coef
    )


@register("gspo_token")
def gspo_token(
    clip_eps: float = 3e-4,
    clip_eps_high: float = 4e-4,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    std: str = "unbiased",
    adv_eps: float = 1e-6,
    loss_agg: str = "seq_mean_token_mean",
    entropy_coef: float = 0.0,
) -> Algorithm:
    """GSPO-token (arXiv 2507.18071 §4.3): s_i,t = sg[s_i] · π(y_t)/sg[π(y_t)] with per-token
    advantages `batch.advantages` (any transform may write them; with GRPO's constant A it
    equals `gspo` in value and gradient). Defaults as `gspo`."""
    return _sequence_ratio_algorithm(
        "gspo_token", clip_eps, clip_eps_high, beta, kl_estimator, std, adv_eps, loss_agg, entropy_coef
    )


@register("gmpo")
def gmpo(
    clip_eps: float = 0.4,
    clip_eps_high: float = 0.4,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    std: str = "unbiased",
    adv_eps: float = 1e-6,
) -> Algorithm:
    """GMPO (Geometric-Mean Policy Optimization, arXiv 2507.20673; code callsys/GMPO
    `train_zero_math_gmpo.py`, verl `compute_policy_loss_geo_mean`): `gmpo_loss`, the
    geometric mean of the token ratios clipped per token in log space to (e^−0.4, e^0.4)
    (clip_eps, clip_eps_high are log-space bounds), −A_i times it, mean over sequences.
    GRPO advantages (the code's critic_type='grpo': unbiased group std), no KL (beta=0)."""
    return _sequence_ratio_algorithm(
        "gmpo", clip_eps, clip_eps_high, beta, kl_estimator, std, adv_eps, "seq_mean_token_mean", 0.0
    )
