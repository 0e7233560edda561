"""Direct preference losses over summed sequence log-probs."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


SEQUENCE_REDUCTIONS = ("sum", "mean", "log_odds")


def sequence_logps(logp: Array, mask: Array, reduction: str = "sum") -> Array:
    """A completion's score from its per-token log-probs. [B, T], [B, T] -> [B].

    With S(y) = Σ_t m_t·logp_t and L(y) = Σ_t m_t:

    * ``sum`` (DPO, CPO, RPO):  S(y)
    * ``mean`` (SimPO, IPO as in TRL):  A(y) = S(y) / max(L(y), 1)
    * ``log_odds`` (ORPO, arXiv 2403.07691):  A(y) − log(1 − e^{A(y)}), the log-odds of the
      length-averaged likelihood (`log_odds`)

    Example:
      >>> sequence_logps(jnp.array([[-1.0, -2.0, -5.0]]), jnp.array([[1, 1, 0]]))  # [-3.]
      >>> sequence_logps(jnp.array([[-1.0, -2.0, -5.0]]), jnp.array([[1, 1, 0]]), "mean")  # [-1.5]
    """
    if reduction not in SEQUENCE_REDUCTIONS:
        raise ValueError(f"Unknown sequence reduction={reduction!r}; expected one of {SEQUENCE_REDUCTIONS}.")
    mask = jnp.asarray(mask, jnp.float32)
    total = jnp.sum(jnp.where(mask > 0, jnp.asarray(logp, jnp.float32), 0.0), axis=-1)
    if reduction == "sum":
        return total
    average = total / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
    return average if reduction == "mean" else log_odds(average)


def log_odds(a: Array, max_logp: float = -1e-8) -> Array:
    """log(p / (1 − p)) of p = e^a from a log-probability a ≤ 0: a − log(−expm1(a)). a is
    clamped to ≤ max_logp (the spec's −1e-8), so p = 1 (a = 0) gives a finite value (18.4)
    instead of inf and a zero gradient instead of NaN. [B] -> [B].
    Example: a = log 0.5 -> 0; a = −0.5 -> 0.432752; a = −1 -> −0.541325."""
    a = jnp.minimum(jnp.asarray(a, jnp.float32), max_logp)
    return a - jnp.log(-jnp.expm1(a))


PREFERENCE_LINKS = ("sigmoid", "robust", "hinge", "ipo")


def preference_link(
    h: Array, beta: float = 0.1, link: str = "sigmoid", label_smoothing: float = 0.0, margin: float = 0.0
) -> Array:
    """Per-pair loss of the pairwise preference logit h (one core for the DPO family). [B] -> [B].

    With z = β·h − margin (margin γ: SimPO's target reward margin) and ε = label_smoothing:

    * ``sigmoid`` (DPO, arXiv 2305.18290; cDPO when ε > 0):  (1 − ε)·softplus(−z) + ε·softplus(z)
    * ``robust`` (rDPO, arXiv 2403.00409, ε ∈ [0, 0.5)):  [(1 − ε)·softplus(−z) − ε·softplus(z)] / (1 − 2ε)
    * ``hinge`` (SLiC, arXiv 2305.10425):  max(0, 1 − z)
    * ``ipo`` (IPO, arXiv 2310.12036; β plays τ):  (h − 1/(2β))²   (ε and margin unused)

    h = [S_θ(y_w) − S_θ(y_l)] − [S_ref(y_w) − S_ref(y_l)] from summed or length-averaged sequence
    log-probs (`sequence_logps`); reference terms are the caller's constants. Reference code:
    DPO repo `trainers.py::preference_loss`, TRL `dpo_trainer.py` loss types "sigmoid", "robust",
    "hinge", "ipo".

    Example (the DPO toy pair: h = 1.5, β = 0.1):
      >>> preference_link(jnp.array([1.5]))                               # [0.620957]
      >>> preference_link(jnp.array([1.5]), label_smoothing=0.1)          # [0.635957] (cDPO)
      >>> preference_link(jnp.array([1.5]), link="robust", label_smoothing=0.1)  # [0.602207] (rDPO)
      >>> preference_link(jnp.array([1.5]), link="ipo")                   # [12.25]
    """
    if link not in PREFERENCE_LINKS:
        raise ValueError(f"Unknown preference link={link!r}; expected one of {PREFERENCE_LINKS}.")
    h = jnp.asarray(h, jnp.float32)
    if link == "ipo":
        return jnp.square(h - 1.0 / (2.0 * beta))
    z = beta * h - margin
    if link == "hinge":
        return jax.nn.relu(1.0 - z)
    if link == "robust":
        if isinstance(label_smoothing, int | float) and not 0 <= label_smoothing < 0.5:
            raise ValueError(f"robust DPO needs label_smoothing in [0, 0.5), got {label_smoothing}")
        eps = label_smoothing
        return ((1.0 - eps) * jax.nn.softplus(-z) - eps * jax.nn.softplus(z)) / (1.0 - 2.0 * eps)
    return (1.0 - label_smoothing) * jax.nn.softplus(-z) + label_smoothing * jax.nn.softplus(z)


def dpo_loss(
    policy_chosen: Array,
    policy_rejected: Array,
    ref_chosen: Array | None,
    ref_rejected: Array | None,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    reference_free: bool = False,
    link: str = "sigmoid",
    margin: float = 0.0,
    beta_rejected: float | None = None,
) -> tuple[Array, dict[str, Array]]:
    """DPO-family loss per pair. [B] x4 -> ([B], metrics of [B]).

    Inputs are sequence log-probs S(y) (summed or length-averaged, see `sequence_logps`) of the
    chosen y_w and rejected y_l completions under the policy and the frozen reference:

        h = [S_θ(y_w) − S_θ(y_l)] − [S_ref(y_w) − S_ref(y_l)]   (reference_free: ref term dropped)
        ℓ = preference_link(h, beta, link, label_smoothing, margin)

    (link 'sigmoid', ε = 0: ℓ = −log σ(β h), DPO; see `preference_link` for cDPO, rDPO, hinge,
    IPO and SimPO's margin.) beta_rejected β_l (Flex-DPO, Yan et al. arXiv 2406.07327, "3D
    properties"): the logit becomes β·ρ(y_w) − β_l·ρ(y_l), a separate temperature on the
    rejected side (None: β_l = β, DPO; not with the 'ipo' link). Reference log-probs are treated as constants (stop_gradient). Metrics
    (all stop_gradient): implicit rewards ``reward_chosen`` = β·(S_θ(y_w) − S_ref(y_w)),
    ``reward_rejected`` likewise, ``reward_margin`` = their difference and ``reward_accuracy`` =
    1.0 where chosen > rejected. With reference_free the implicit rewards are β·S_θ.

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
    beta_l = beta if beta_rejected is None else beta_rejected
    if beta_rejected is not None and link == "ipo":
        raise ValueError("beta_rejected (Flex-DPO) needs a link of a logit beta * h, not 'ipo'")
    # β h_eff = β ρ_w − β_l ρ_l
    h = chosen_ratio - (beta_l / beta) * rejected_ratio
    loss = preference_link(h, beta, link, label_smoothing, margin)
    reward_chosen = jax.lax.stop_gradient(beta * chosen_ratio)
    reward_rejected = jax.lax.stop_gradient(beta_l * rejected_ratio)
    metrics = {
        "reward_chosen": reward_chosen,
        "reward_rejected": reward_rejected,
        "reward_margin": reward_chosen - reward_rejected,
        "reward_accuracy": (reward_chosen > reward_rejected).astype(jnp.float32),
    }
    return loss, metrics


def kto_loss(
    policy_logps: Array,
    ref_logps: Array,
    desirable: Array,
    kl_anchor: Array,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Array, dict[str, Array]]:
    """KTO's per-example loss (Ethayarajh et al., arXiv 2402.01306; TRL `kto_trainer.py::
    _compute_loss`) on unpaired completions. [B] x3, scalar -> ([B], metrics of [B]).

        r = S_θ(y) − S_ref(y)                                    (summed log-probs)
        desirable:    λ_D · (1 − σ(β (r − z0)))
        undesirable:  λ_U · (1 − σ(β (z0 − r)))

    z0 = `kl_anchor`, the reference point: max(0, mean_j [S_θ(y'_j) − S_ref(y'_j)]) over
    mismatched (prompt, completion) pairs of the whole mini-batch, computed by the caller and
    held constant here (stop_gradient). Keep λ_D n_D / (λ_U n_U) in [1, 4/3] (the paper).
    Metrics: reward (β r), desirable (1.0 where desirable).

    Example (β 0.1, z0 0.2): desirable r = 1 -> 0.480011; undesirable r = −0.5 -> 0.482507.
    """
    r = jnp.asarray(policy_logps, jnp.float32) - jax.lax.stop_gradient(jnp.asarray(ref_logps, jnp.float32))
    z0 = jax.lax.stop_gradient(jnp.asarray(kl_anchor, jnp.float32))
    good = jnp.asarray(desirable, jnp.float32)
    loss = good * desirable_weight * (1.0 - jax.nn.sigmoid(beta * (r - z0)))
    loss += (1.0 - good) * undesirable_weight * (1.0 - jax.nn.sigmoid(beta * (z0 - r)))
    return loss, {"reward": jax.lax.stop_gradient(beta * r), "desirable": good}


def kto_kl_anchor(kl_policy_logps: Array, kl_ref_logps: Array, num_pairs=None) -> Array:
    """KTO's reference point z0 = max(0, Σ_j [S_θ(y'_j) − S_ref(y'_j)] / num_pairs) over the
    mismatched pairs (prompt i with completion i − 1), stop-gradient; num_pairs defaults to
    this batch's (pass the whole mini-batch's, or use totals, under micro-batching). [B] x2 -> scalar."""
    diff = jnp.asarray(kl_policy_logps, jnp.float32) - jnp.asarray(kl_ref_logps, jnp.float32)
    n = diff.shape[0] if num_pairs is None else num_pairs
    return jax.lax.stop_gradient(jnp.maximum(jnp.sum(diff) / jnp.maximum(n, 1.0), 0.0))
