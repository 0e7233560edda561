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

    With z = β·h − margin (margin γ: SimPO's target reward margin, a scalar; or one per pair
    [B], MODPO's weighted margin-reward difference, `modpo_loss`) and ε = label_smoothing:

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
    return loss, pair_reward_metrics(beta * chosen_ratio, beta_l * rejected_ratio)


def pair_reward_metrics(reward_chosen: Array, reward_rejected: Array) -> dict[str, Array]:
    """The DPO family's per-pair metrics of implicit rewards r(y_w), r(y_l) [B] (stop-gradient):
    reward_chosen, reward_rejected, reward_margin = r_w − r_l, reward_accuracy = [r_w > r_l]."""
    reward_chosen, reward_rejected = jax.lax.stop_gradient((reward_chosen, reward_rejected))
    return {
        "reward_chosen": reward_chosen,
        "reward_rejected": reward_rejected,
        "reward_margin": reward_chosen - reward_rejected,
        "reward_accuracy": (reward_chosen > reward_rejected).astype(jnp.float32),
    }


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


def tgdpo_loss(
    policy_chosen: Array,
    policy_rejected: Array,
    ref_chosen: Array,
    ref_rejected: Array,
    guide_chosen: Array,
    guide_rejected: Array,
    chosen_mask: Array,
    rejected_mask: Array,
    beta: float = 0.1,
    alpha: float = 0.5,
    clamp_weights: bool = False,
) -> tuple[Array, dict[str, Array]]:
    """TGDPO's per-pair loss: DPO with token-level reward guidance (Zhu et al., arXiv 2506.14574,
    ICML 2025; official dvlab-research/TGDPO `src/llamafactory/train/tgdpo/trainer.py::dpo_loss`,
    its sigmoid branch). Per-token log-probs [B, T] of the chosen / rejected completions under
    the policy, the reference and the token-level reward model π_rm (`guide_*`), masks [B, T]
    -> ([B], metrics of [B]).

        q_t = lp_θ,t − lp_ref,t,    r̂_t = β·(lp_rm,t − lp_ref,t)                (r̂ stop-gradient)
        z = Σ_t β(1 + α·r̂^w_t)·q^w_t − Σ_t β(1 − α·r̂^l_t)·q^l_t,    ℓ = −log σ(z)

    i.e. `dpo_loss` on the token-weighted scores Σ_t w_t·lp_t with w^w = 1 + α·r̂^w and
    w^l = 1 − α·r̂^l: chosen tokens π_rm rates above the reference, and rejected tokens it rates
    below, get a larger effective β; α = 0 is DPO. π_rm is any DPO/SimPO-trained model over the
    same tokenizer (its implicit per-token reward, on the scale of β·log-ratio). A weight is
    negative where α·|r̂_t| > 1: the official code does not clamp, `clamp_weights=True` clamps
    the weights at 0 (this library's option, off by default). Defaults: β 0.1 (`pref_beta`),
    α 0.5 (`tgdpo_alpha`, examples/llama3_8b_instruct_tgdpo.yaml).

    Metrics (stop-gradient, means over tokens where noted): reward_chosen, reward_rejected,
    reward_margin, reward_accuracy of the plain implicit reward β·Σ_t q_t (what the official
    code logs); token_weight_chosen / token_weight_rejected, each completion's mean weight.

    Example (spec §11): chosen lp_θ [−1, −2, −0.5], lp_ref [−1.2, −1.8, −0.9], lp_rm [−0.8, −1.9,
    −0.4]; rejected lp_θ [−2, −3], lp_ref [−1.5, −2.5], lp_rm [−2.5, −2.7]; β 0.1, α 0.5 ->
    z = 0.1445, ℓ = 0.623505 (α = 0: DPO, 0.625595).
    """
    ref_chosen, ref_rejected, guide_chosen, guide_rejected = (
        jax.lax.stop_gradient(jnp.asarray(x, jnp.float32))
        for x in (ref_chosen, ref_rejected, guide_chosen, guide_rejected)
    )
    weight_chosen = 1.0 + alpha * beta * (guide_chosen - ref_chosen)
    weight_rejected = 1.0 - alpha * beta * (guide_rejected - ref_rejected)
    if clamp_weights:
        weight_chosen, weight_rejected = jnp.maximum(weight_chosen, 0.0), jnp.maximum(weight_rejected, 0.0)
    policy_chosen = jnp.asarray(policy_chosen, jnp.float32)
    policy_rejected = jnp.asarray(policy_rejected, jnp.float32)
    losses, _ = dpo_loss(
        sequence_logps(weight_chosen * policy_chosen, chosen_mask),
        sequence_logps(weight_rejected * policy_rejected, rejected_mask),
        sequence_logps(weight_chosen * ref_chosen, chosen_mask),
        sequence_logps(weight_rejected * ref_rejected, rejected_mask),
        beta,
    )
    _, metrics = dpo_loss(
        sequence_logps(policy_chosen, chosen_mask),
        sequence_logps(policy_rejected, rejected_mask),
        sequence_logps(ref_chosen, chosen_mask),
        sequence_logps(ref_rejected, rejected_mask),
        beta,
    )
    metrics["token_weight_chosen"] = sequence_logps(weight_chosen, chosen_mask, "mean")
    metrics["token_weight_rejected"] = sequence_logps(weight_rejected, rejected_mask, "mean")
    return losses, metrics


MODPO_LINKS = ("sigmoid", "hinge")


def modpo_loss(
    policy_chosen: Array,
    policy_rejected: Array,
    ref_chosen: Array,
    ref_rejected: Array,
    margin_chosen: Array,
    margin_rejected: Array,
    weights,
    beta: float = 0.1,
    link: str = "sigmoid",
) -> tuple[Array, dict[str, Array]]:
    """MODPO's per-pair loss (Zhou et al., "Beyond one-preference-fits-all alignment:
    multi-objective direct preference optimization", arXiv 2310.03708; official ZHZisZZ/modpo
    `src/trainer/modpo_trainer.py::modpo_loss`). Summed sequence log-probs [B] x4, the margin
    rewards of the chosen / rejected completions [B, K − 1] x2 and the weights (w_0, ..., w_{K−1})
    -> ([B], metrics of [B]).

        R(y) = (1/w_0)·[β·ρ(y) − Σ_{k≥1} w_k·r_k(x, y)],    ρ(y) = S_θ(y) − S_ref(y)
        ℓ = −log σ(R(y_w) − R(y_l))            (link 'hinge': max(0, 1 − [R(y_w) − R(y_l)]))

    w_0 weighs the objective whose preferences the batch holds, r_k (stop-gradient) are frozen
    reward models of the other objectives (a reward head's score, or an implicit DPO reward
    β_k·(S_k − S_ref)). Computed on the DPO core: `dpo_loss` with β/w_0 and the per-pair margin
    Σ_k w_k·(r_k(y_w) − r_k(y_l)) / w_0 (`preference_link`'s z = β·h − margin). w_0 > 0.

    Metrics (stop-gradient): reward_chosen = R(y_w), reward_rejected = R(y_l) (the official
    code's rewards), reward_margin, reward_accuracy.

    Example (spec §12): β 0.1, w (0.5, 0.5), ρ(y_w) 1.0, ρ(y_l) −0.5, r(y_w) 1.0, r(y_l) 0.2 ->
    R(y_w) = −0.8, R(y_l) = −0.3, ℓ = softplus(0.5) = 0.974077.
    """
    if link not in MODPO_LINKS:
        raise ValueError(f"MODPO link={link!r}; expected one of {MODPO_LINKS}")
    w = jnp.asarray(weights, jnp.float32)
    margin_chosen = jax.lax.stop_gradient(jnp.asarray(margin_chosen, jnp.float32))
    margin_rejected = jax.lax.stop_gradient(jnp.asarray(margin_rejected, jnp.float32))
    if w.ndim != 1 or margin_chosen.shape[-1] != w.shape[0] - 1:
        raise ValueError(
            f"MODPO: {margin_chosen.shape[-1]} margin rewards per completion need {margin_chosen.shape[-1] + 1} "
            f"weights (w_0 for the preference data, then one per margin model), got {tuple(w.shape)}"
        )
    offset = (margin_chosen - margin_rejected) @ w[1:] / w[0]
    losses, _ = dpo_loss(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta / w[0], link=link, margin=offset
    )
    rho_chosen = jnp.asarray(policy_chosen, jnp.float32) - jnp.asarray(ref_chosen, jnp.float32)
    rho_rejected = jnp.asarray(policy_rejected, jnp.float32) - jnp.asarray(ref_rejected, jnp.float32)
    return losses, pair_reward_metrics(
        (beta * rho_chosen - margin_chosen @ w[1:]) / w[0],
        (beta * rho_rejected - margin_rejected @ w[1:]) / w[0],
    )


def srpo_loss(
    gen_chosen: Array,
    gen_rejected: Array,
    rev_chosen_on_rejected: Array,
    rev_rejected_on_rejected: Array,
    rev_chosen_on_chosen: Array,
    rev_rejected_on_chosen: Array,
    beta: float = 0.1,
    alpha: float = 0.8,
    pref_prob=1.0,
) -> tuple[Array, dict[str, Array]]:
    """SRPO's offline loss (Choi et al., "Self-improving robust preference optimization", arXiv
    2406.01660, ICLR 2025; no official code: the form follows the paper's optimality conditions
    and the community TRL PR huggingface/trl#1772, frasermince/trl `srpo_trainer.py::srpo_loss`).
    Six summed log-ratios r = S_θ − S_ref [B] each -> ([B], metrics of [B]):

        r0(y)     = ρ(y | x)                     gen_chosen (y_w), gen_rejected (y_l)
        r(y'|y)   = ρ(y' | x, "improve: y")      rev_<y'>_on_<y>: the revision y' of the draft y

        self-improvement: (β[r(y_w|y_l) − r(y_l|y_l)] − (p − ½))² + (β[r(y_w|y_w) − r(y_l|y_w)] − (p − ½))²
        generative:       (β[r0(y_w) + r(y_w|y_l) − r0(y_l) − r(y_l|y_w)] − (2p − 1))²
        ℓ = (1 − α)·generative + α·self-improvement

    p = pref_prob, p(y_w ≻ y_l) (1: hard labels; scalar or [B]). Defaults β 0.1, α 0.8 (the
    PR's; the paper's are not confirmed). Squared losses of summed log-ratios grow fast with
    length. Metrics: srpo_self_improvement, srpo_generative (per pair, before weighting).

    Example (spec §13): β 0.1, α 0.8, p 1; r(y_w|y_l) 2, r(y_l|y_l) −1, r(y_w|y_w) 1,
    r(y_l|y_w) −3, r0(y_w) 0.5, r0(y_l) −0.5 -> self-improvement 0.04 + 0.01, generative
    (0.6 − 1)² = 0.16, ℓ = 0.2·0.16 + 0.8·0.05 = 0.072.
    """
    f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    p = f(pref_prob)
    self_improvement = jnp.square(
        beta * (f(rev_chosen_on_rejected) - f(rev_rejected_on_rejected)) - (p - 0.5)
    )
    self_improvement += jnp.square(beta * (f(rev_chosen_on_chosen) - f(rev_rejected_on_chosen)) - (p - 0.5))
    robust = f(gen_chosen) + f(rev_chosen_on_rejected) - f(gen_rejected) - f(rev_rejected_on_chosen)
    generative = jnp.square(beta * robust - (2.0 * p - 1.0))
    loss = (1.0 - alpha) * generative + alpha * self_improvement
    metrics = {"srpo_self_improvement": self_improvement, "srpo_generative": generative}
    return loss, jax.tree.map(jax.lax.stop_gradient, metrics)


def brain_weights(
    rewards: Array, ref_logps: Array, proposal_logps: Array, policy_logps: Array, beta: float = 1.0
) -> Array:
    """BRAIn's self-normalised importance weights minus its self-normalised baseline (Pandey et
    al., "BRAIn: Bayesian reward-conditioned amortized inference for natural language generation
    from feedback", arXiv 2402.02479, ICML 2024; author repo gauravpandeyamu/BRAIn_experiments
    `gradient_estimators.py::estimator_brain`). Over the n samples y_i of one prompt from the
    proposal q (the last axis): [..., n] x4 -> [..., n], stop-gradient.

        α̂ = softmax_i(log π_ref(y_i) + r(y_i)/β − log q(y_i))   (the posterior ∝ π_ref·e^{r/β})
        β̂ = softmax_i(log π_θ(y_i) − log q(y_i))                (the self-normalised baseline)
        weights = α̂ − β̂                                          (they sum to 0)

    Log-probs are summed sequence log-probs. With q = the current policy, β̂ = 1/n; without β̂
    the estimator is DPG. β (the posterior's temperature) default 1.0: the paper's LLM value is
    not confirmed. Rows b·n .. b·n + n − 1 of the trainer's rollouts: reshape [B] to [B/n, n].

    Example (spec §16): r [1, 0, −1], S_ref [−5, −4, −6], S_q = S_θ [−4.5, −4.5, −5], β 1 ->
    α̂ [0.480288, 0.480288, 0.039424], β̂ 1/3 each, weights [0.146954, 0.146954, −0.293909].
    """
    f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    target = jax.nn.softmax(f(ref_logps) + f(rewards) / beta - f(proposal_logps), axis=-1)
    baseline = jax.nn.softmax(f(policy_logps) - f(proposal_logps), axis=-1)
    return jax.lax.stop_gradient(target - baseline)


def brain_surrogate(policy_logps: Array, weights: Array) -> Array:
    """BRAIn's surrogate per prompt, −Σ_i w_i·S_θ(y_i) with `brain_weights` (constants): its
    gradient is the estimator −Σ_i (α̂_i − β̂_i)·∇ log π_θ(y_i). [..., n] x2 -> [...]."""
    return -jnp.sum(jax.lax.stop_gradient(weights) * jnp.asarray(policy_logps, jnp.float32), axis=-1)


def superhf_top_k(scores: Array, top_k: int = 1, valid: Array | None = None) -> Array:
    """SuperHF's filter (Mukobi et al., "SuperHF: supervised iterative learning from human
    feedback", arXiv 2310.16763; official openfeedback/superhf `src/superhf/filtering.py::
    CompletionFilterTopK`): keep the top_k highest reward-model scores among the n completions
    of a prompt (the last axis), never an invalid (e.g. empty) one. [..., n] -> [..., n] bool.
    Ties keep the lower index. Default top_k 1 (`default.yaml`).

    Example: scores [0.1, 0.9, 0.5], top_k 1 -> [False, True, False].
    """
    valid = jnp.ones(jnp.shape(scores), bool) if valid is None else jnp.asarray(valid, bool)
    index = top_k_indices(scores, top_k, valid)
    keep = jnp.sum(jax.nn.one_hot(index, jnp.shape(scores)[-1]), axis=-2) > 0
    return keep & valid


def top_k_indices(scores: Array, top_k: int, valid: Array | None = None) -> Array:
    """Indices of the top_k highest scores on the last axis, invalid entries last (ranked
    below every valid one; still returned when fewer than top_k are valid, so the shape is
    static). Ties: the lower index first. [..., n] -> [..., top_k] int32."""
    scores = jnp.asarray(scores, jnp.float32)
    if valid is not None:
        scores = jnp.where(jnp.asarray(valid, bool), scores, -jnp.inf)
    return jax.lax.top_k(scores, top_k)[1]


def superhf_kl(token_kl: Array, mask: Array) -> Array:
    """SuperHF's KL term per completion: the forward KL(π_ref ‖ π_θ) of the full next-token
    distributions (`full_kl(ref_logits, policy_logits)`, [..., T]), averaged over the
    completion's tokens and clamped at 0 (official `src/superhf/training.py`: torch
    KLDivLoss(input=log π_θ, target=log π_ref, log_target=True); π_ref the base model, LoRA
    adapters off). [..., T], mask [..., T] -> [...].

        KL_t = Σ_v π_ref(v)·(log π_ref(v) − log π_θ(v)),    kl = max(0, Σ_t m_t KL_t / Σ_t m_t)

    The loss is CE(kept completions) + c_KL·kl over the kept completions (c_KL 0.35 in
    `default.yaml`; `superhf`).

    Example (spec §15): π_θ [[0.7, 0.3], [0.5, 0.5]], π_ref uniform -> kl = 0.043588; with CE 1.0,
    c_KL 0.35: 1.015256.
    """
    mask = jnp.asarray(mask, jnp.float32)
    mean = jnp.sum(jnp.asarray(token_kl, jnp.float32) * mask, axis=-1) / jnp.maximum(
        jnp.sum(mask, axis=-1), 1.0
    )
    return jnp.maximum(mean, 0.0)


def apo_reference_logratio(
    current_chosen: Array,
    current_rejected: Array,
    previous_chosen: Array,
    previous_rejected: Array,
    alpha: float = 0.3,
) -> Array:
    """APO's exact reference log-ratio for the next round's DPO step (He, Yuan, Gu,
    "Accelerated preference optimization for LLM alignment", arXiv 2410.06293; no official
    code). The extrapolated reference log π_{t+1} = (1 + α)·log π̂_{t+1} − α·log π̂_t − log Z_t(x)
    enters a pairwise logit without its normaliser, so from the summed log-probs [B] of the last
    two rounds' (un-extrapolated) policies:

        S_ref(y_w) − S_ref(y_l) = (1 + α)·[S_{t+1}(y_w) − S_{t+1}(y_l)] − α·[S_t(y_w) − S_t(y_l)]

    -> [B]; use it as `dpo_loss(..., ref_chosen=logratio, ref_rejected=0)`. α = 0 is iterative
    DPO with the previous iterate as reference. This exact form is a derivation (the paper
    extrapolates parameters); α's default 0.3 is unconfirmed.

    Example (spec §10): α 0.3, S_{t+1} (−10, −12), S_t (−11, −11.5) -> 1.3·2 − 0.3·0.5 = 2.45.
    """
    current = jnp.asarray(current_chosen, jnp.float32) - jnp.asarray(current_rejected, jnp.float32)
    previous = jnp.asarray(previous_chosen, jnp.float32) - jnp.asarray(previous_rejected, jnp.float32)
    return jax.lax.stop_gradient((1.0 + alpha) * current - alpha * previous)


def ranking_accuracy(policy_chosen: Array, policy_rejected: Array) -> Array:
    """Whether the model itself ranks the chosen completion first (Chen et al., "Preference
    learning algorithms do not learn preference rankings", arXiv 2405.19534; official
    angie-chen55/pref-learning-ranking-acc `rlhf_minimizer_client.py::compute_ranks`): 1.0 where
    S_θ(y_w) > S_θ(y_l) strictly (a tie counts as wrong). Sequence scores [B] x2 (summed, or
    length-averaged for the normalised variant: `sequence_logps`) -> [B]; R = their mean.

    Example (spec §18): S(y_w) [−10, −20, −5, −7], S(y_l) [−12, −15, −6, −7] -> [1, 0, 1, 0], R = 0.5.
    """
    return (jnp.asarray(policy_chosen, jnp.float32) > jnp.asarray(policy_rejected, jnp.float32)).astype(
        jnp.float32
    )


def idealised_ranking_accuracy(
    ref_chosen: Array, ref_rejected: Array, rater_fraction: Array, beta: float, eps: float = 1e-3
) -> Array:
    """The ranking accuracy of the exact RLHF/DPO optimum π* ∝ π_ref·e^{r*/β} (Chen et al., arXiv
    2405.19534, `calculate_upper_bound_rlhf.py`), with a Bradley–Terry reward gap from the
    fraction α_i of raters preferring y_w (clipped to [eps, 1 − eps]):

        1[ S_ref(y_w) − S_ref(y_l) + (1/β)·log(α_i / (1 − α_i)) > 0 ]

    Summed reference log-probs [B] x2, rater fractions [B] -> [B]; R* = their mean. (The
    official code's non-length-normalised branch divides log-probs; this is the formula.)

    Example (spec §18): reference gaps [2, −5, 1], α [0.6, 0.9, 0.5]: β 0.1 -> R* = 1.0;
    β 1 -> logits [2.405465, −2.802775, 1.0], R* = 0.666667.
    """
    alpha = jnp.clip(jnp.asarray(rater_fraction, jnp.float32), eps, 1.0 - eps)
    gap = jnp.asarray(ref_chosen, jnp.float32) - jnp.asarray(ref_rejected, jnp.float32)
    return (gap + (jnp.log(alpha) - jnp.log1p(-alpha)) / beta > 0).astype(jnp.float32)


def kl_budget(policy_logps: Array, ref_logps: Array, mask: Array) -> tuple[Array, Array]:
    """The KL budget of an over-optimisation curve (Rafailov et al., "Scaling laws for reward
    model overoptimization in direct alignment algorithms", arXiv 2406.02900; no code found):
    the Monte-Carlo sequence KL over samples y ~ π_θ of held-out prompts,

        KL̂ = mean_i Σ_t m_it·(lp_θ,it − lp_ref,it),    d = sqrt(max(KL̂, 0))

    Per-token log-probs [N, T] x2, mask [N, T] -> (KL̂, d) scalars (over the N rows given).

    Example (spec §19): two samples with Σ_t (lp_θ − lp_ref) = 1.2 and 0.8 -> KL̂ = 1.0, d = 1.0.
    """
    mask = jnp.asarray(mask, jnp.float32)
    diff = jnp.asarray(policy_logps, jnp.float32) - jnp.asarray(ref_logps, jnp.float32)
    kl = jnp.mean(jnp.sum(jnp.where(mask > 0, diff, 0.0), axis=-1))
    return kl, jnp.sqrt(jnp.maximum(kl, 0.0))


GAO_FORMS = ("rl", "bon")


def gao_fit(d: Array, reward: Array, form: str = "rl") -> tuple[Array, Array, Array]:
    """Least-squares fit of Gao et al.'s over-optimisation forms (arXiv 2210.10760) to points
    (d_i = sqrt(KL_i), R_i) of checkpoints / a β sweep, as arXiv 2406.02900 does for direct
    alignment (which form that paper reports as primary is unconfirmed: fit both):

        'rl':   R(d) = d·(a − b·log d)          'bon':  R(d) = d·(a − b·d)

    Linear in (a, b), no intercept (R(0) = 0; d log d → 0 at d = 0). [N] x2 -> (a, b, R²) with
    R² = 1 − Σ(R − R̂)² / Σ(R − mean R)² (NaN when every R is equal).

    Example: points of R = d(2 − 0.5 d) at d = [0.5, 1, 2, 3], form 'bon' -> a 2, b 0.5, R² 1.
    """
    if form not in GAO_FORMS:
        raise ValueError(f"Unknown Gao form={form!r}; expected one of {GAO_FORMS}")
    d = jnp.asarray(d, jnp.float32)
    reward = jnp.asarray(reward, jnp.float32)
    if form == "rl":
        curvature = jnp.where(d > 0, d * jnp.log(jnp.where(d > 0, d, 1.0)), 0.0)
    else:
        curvature = d * d
    features = jnp.stack([d, -curvature], axis=-1)
    coef, *_ = jnp.linalg.lstsq(features, reward)
    residual = jnp.sum(jnp.square(reward - features @ coef))
    total = jnp.sum(jnp.square(reward - jnp.mean(reward)))
    r2 = jnp.where(total > 0, 1.0 - residual / jnp.where(total > 0, total, 1.0), jnp.nan)
    return coef[0], coef[1], r2
