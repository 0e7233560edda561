"""Direct preference losses over summed sequence log-probs."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def sequence_logps(logp: Array, mask: Array, average: bool = False) -> Array:
    """Masked sum of per-token log-probs: S(y) = Σ_t m_t·logp_t. [B, T], [B, T] -> [B].

    ``average=True`` gives the length-averaged S(y) / max(L(y), 1) (SimPO, IPO as in TRL).

    Example:
      >>> sequence_logps(jnp.array([[-1.0, -2.0, -5.0]]), jnp.array([[1, 1, 0]]))  # [-3.]
    """
    mask = jnp.asarray(mask, jnp.float32)
    total = jnp.sum(jnp.where(mask > 0, jnp.asarray(logp, jnp.float32), 0.0), axis=-1)
    if average:
        return total / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
    return total


def dpo_loss(
    policy_chosen: Array,
    policy_rejected: Array,
    ref_chosen: Array | None,
    ref_rejected: Array | None,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    reference_free: bool = False,
) -> tuple[Array, dict[str, Array]]:
    """DPO (sigmoid) loss per pair, with cDPO label smoothing. [B] x4 -> ([B], metrics of [B]).

    Inputs are summed sequence log-probs S(y) (see `sequence_logps`) of the chosen y_w and
    rejected y_l completions under the policy and the frozen reference:

        h = [S_θ(y_w) − S_θ(y_l)] − [S_ref(y_w) − S_ref(y_l)]   (reference_free: ref term dropped)
        ℓ = (1 − ε)·softplus(−β h) + ε·softplus(β h)             (= −log σ(β h) when ε = 0)

    Reference log-probs are treated as constants (stop_gradient). Metrics (all stop_gradient):
    implicit rewards ``reward_chosen`` = β·(S_θ(y_w) − S_ref(y_w)), ``reward_rejected`` likewise,
    ``reward_margin`` = their difference and ``reward_accuracy`` = 1.0 where chosen > rejected.
    With reference_free the implicit rewards are β·S_θ.

    Papers: DPO, arXiv 2305.18290; label smoothing (cDPO), Mitchell 2023 note "A note on DPO with
    noisy preferences & relationship to IPO".

    Example:
      >>> loss, m = dpo_loss(jnp.array([-10.0]), jnp.array([-12.0]), jnp.array([-11.0]), jnp.array([-11.5]))
      >>> loss  # [0.620957] = softplus(−0.1·1.5)
    """
    policy_chosen = jnp.asarray(policy_chosen, jnp.float32)
    policy_rejected = jnp.asarray(policy_rejected, jnp.float32)
    if reference_free:
        ref_chosen = jnp.zeros_like(policy_chosen)
        ref_rejected = jnp.zeros_like(policy_rejected)
    else:
        ref_chosen = jax.lax.stop_gradient(jnp.asarray(ref_chosen, jnp.float32))
        ref_rejected = jax.lax.stop_gradient(jnp.asarray(ref_rejected, jnp.float32))
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    logits = beta * (chosen_ratio - rejected_ratio)
    loss = (1.0 - label_smoothing) * jax.nn.softplus(-logits) + label_smoothing * jax.nn.softplus(logits)
    reward_chosen = jax.lax.stop_gradient(beta * chosen_ratio)
    reward_rejected = jax.lax.stop_gradient(beta * rejected_ratio)
    metrics = {
        "reward_chosen": reward_chosen,
        "reward_rejected": reward_rejected,
        "reward_margin": reward_chosen - reward_rejected,
        "reward_accuracy": (reward_chosen > reward_rejected).astype(jnp.float32),
    }
    return loss, metrics
