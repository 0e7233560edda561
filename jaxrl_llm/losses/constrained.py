"""Constrained-RLHF quantities: pure functions of per-sequence arrays.

CGPO's calibrated, judge- and KL-gated reward (Xu et al., "The Perfect Blend: Redefining RLHF
with Mixture of Judges", arXiv 2409.20370) and the occupancy-measure divergences of Laidlaw et
al. ("Correlated Proxies: A New Definition and Improved Mitigation for Reward Hacking", arXiv
2403.03185). Shapes: N sequences; every input is cast to float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def calibrated_reward(rewards: Array, baseline_rewards: Array) -> Array:
    """CGPO's calibrated reward c = σ(R(x, y) − R(x, y_base)), y_base the prompt's reference
    response: in (0, 1), 0.5 when the sample scores as well as the reference. [N], [N] -> [N].

    Example: R − R_base = 1 -> 0.731059; 0 -> 0.5.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    return jax.nn.sigmoid(rewards - jnp.asarray(baseline_rewards, jnp.float32))


def kl_gate(seq_kl: Array, kl_threshold) -> Array:
    """CRPG's KL regulariser max(1 − KL/KL_thr, 0): 1 at the reference, falling linearly to 0
    at the threshold and staying 0 beyond. [N] -> [N].

    Example: KL 5, KL_thr 10 -> 0.5; KL 12 -> 0; KL −2 (a sampled log-ratio can be negative) -> 1.2.
    """
    return jnp.maximum(1.0 - jnp.asarray(seq_kl, jnp.float32) / kl_threshold, 0.0)


def crpg_rewards(
    rewards: Array, baseline_rewards: Array, judges: Array, seq_kl: Array, kl_threshold
) -> Array:
    """CRPG's constrained, calibrated, regularised reward (arXiv 2409.20370 §4; TRL
    `cgpo_trainer.py::crpg_optimization`). [N] x4 -> [N]:

        ĉ_i = judge_i · σ(R_i − R_base,i) · max(1 − KL_i/KL_thr, 0)

    judge_i ∈ {0, 1}: every judge passed; KL_i = Σ_t (log π − log π_ref) of sample i.

    Example (spec): R − R_base = 1, judge 1, KL 5, KL_thr 10 -> 0.731059 · 0.5 = 0.365529.
    """
    gate = kl_gate(seq_kl, kl_threshold)
    return jnp.asarray(judges, jnp.float32) * calibrated_reward(rewards, baseline_rewards) * gate


def crpg_advantages(c_hat: Array) -> Array:
    """CRPG's advantage ĉ_i − mean_batch ĉ over the N sequences of the batch. [N] -> [N].

    Example: ĉ [0.5, 0.1, 0.0] -> [0.3, −0.1, −0.2].
    """
    c_hat = jnp.asarray(c_hat, jnp.float32)
    return c_hat - jnp.mean(c_hat)


def clipped_expm1(x: Array, clip: float = 10.0) -> Array:
    """e^x − 1 for x < clip, continued linearly beyond: e^clip·(1 + x − clip) − 1 (the
    official `llm_optimization` `modeling.py` clip of the sequence log-ratio, 10 there): finite
    values and gradients (≤ e^clip) for any x. [N] -> [N].

    Example: x 0.5 -> 0.648721; x 12, clip 10 -> 3e^10 − 1 = 66078.39; x −1e3 -> −1.
    """
    x = jnp.asarray(x, jnp.float32)
    linear = jnp.exp(clip) * (1.0 + x - clip) - 1.0
    return jnp.where(x >= clip, linear, jnp.expm1(jnp.minimum(x, clip)))


def occupancy_divergences(seq_log_ratio: Array, clip: float = 10.0) -> tuple[Array, Array]:
    """Per-sequence estimates of the χ² and KL divergences between the occupancy measures of π
    and π_ref from samples of π (Laidlaw et al., arXiv 2403.03185; for a language model the
    occupancy ratio is the sequence ratio e^L, L = Σ_t (log π − log π_ref)). [N] -> ([N], [N]):

        χ²_i = (e^{L_i} − 1) + (e^{−L_i} − 1)      KL_i = L_i + (e^{−L_i} − 1)

    (the second term of χ² is a zero-mean control variate under samples of π), the exps by
    `clipped_expm1` (linear beyond |L| = clip, as the official code). Mean them over the
    sequences for the estimates χ̂², K̂L.

    Example (spec): L 0.5 -> χ² 0.255252, KL 0.106531.
    """
    log_ratio = jnp.asarray(seq_log_ratio, jnp.float32)
    inverse = clipped_expm1(-log_ratio, clip)
    return clipped_expm1(log_ratio, clip) + inverse, log_ratio + inverse


def sqrt_chi2(chi2: Array, floor: float = 1e-4) -> Array:
    """The regulariser √χ̂² of Laidlaw et al.'s language-model experiments, sqrt(max(χ̂², floor))
    (floor 1e-4 as the official code: finite gradient at χ̂² = 0, none below the floor).

    Example (spec): χ̂² 0.255252 -> 0.505225; 0 -> 0.01.
    """
    return jnp.sqrt(jnp.maximum(jnp.asarray(chi2, jnp.float32), floor))
