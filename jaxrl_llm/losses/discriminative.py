"""Group-coupled losses: discriminative (DisCO, DRPO), classification (PACS), pairwise (TRPA) and
regression (Reg-GRPO) objectives over the G responses of each question.

Every function is a pure `jax.numpy` function of float32 arrays (jittable, no Python control flow
on array values). Shapes: B responses, T response tokens; ``group_ids`` [B] are arbitrary
integers (responses to the same question share one). Groups are found with the pairwise
same-group matrix ``same_group(group_ids)`` [B, B] (B is a micro-batch: small), so a group's
statistics are exact as long as all of its rows are in the arrays given (the trainer's
``Algorithm.whole_groups``). Unlike the advantage estimators of `jaxrl_llm.transforms.estimators`
(which are constants of the batch), these are differentiated: nothing here masks a degenerate
group with a ``where`` that would cut its gradient, and every branch stays finite (empty groups,
equal scores, huge log-ratios) so its gradient is finite too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.transforms.estimators import masked_mean

Array = jax.Array

DISCO_SCORES = ("logL", "Lratio")
DISCO_VARIANTS = ("dro", "b")
LSE_VALUES = ("true", "surrogate")
PACS_CENTRES = ("rloo", "grpo", "raw")


def same_group(group_ids: Array) -> Array:
    """[B] -> [B, B] float32: 1 where rows i and j answer the same question."""
    g = jnp.asarray(group_ids)
    return (g[:, None] == g[None, :]).astype(jnp.float32)


def group_sizes(group_ids: Array) -> Array:
    """[B] -> [B]: the size G_i of each row's group (so Σ_i 1/G_i is the number of questions)."""
    return jnp.sum(same_group(group_ids), axis=1)


def _group_mean(x: Array, weights: Array, same: Array) -> Array:
    """Σ_{j∈g(i)} w_j x_j / Σ_{j∈g(i)} w_j per row, 0 where the group has no weight."""
    den = same @ weights
    return (same @ (weights * x)) / jnp.where(den > 0, den, 1.0)


def _group_logsumexp(x: Array, member: Array, same: Array) -> Array:
    """log Σ_{j∈g(i), member_j} exp(x_j) per row (max-shifted), 0 where that set is empty."""
    inside = (same * member[None, :]) > 0
    nonempty = jnp.any(inside, axis=1)
    top = jax.lax.stop_gradient(jnp.max(jnp.where(inside, x[None, :], -jnp.inf), axis=1))
    top = jnp.where(nonempty, top, 0.0)
    shifted = jnp.where(inside, x[None, :] - top[:, None], 0.0)
    total = jnp.sum(jnp.where(inside, jnp.exp(shifted), 0.0), axis=1)
    return jnp.where(nonempty, top + jnp.log(jnp.where(nonempty, total, 1.0)), 0.0)


def disco_scores(logp: Array, logp_old: Array, mask: Array, score: str = "logL") -> Array:
    """DisCO's score of each response. [B, T] x3 -> [B].

    * ``logL``:   s_i = (1/L_i) Σ_t m·logp            (length-normalised log-likelihood)
    * ``Lratio``: s_i = (1/L_i) Σ_t m·exp(logp − logp_old)   (length-normalised likelihood ratio;
      the log-ratio is clamped to [−20, 20] before the exp, as `ppo_clip_loss` does)

    Example:
      >>> disco_scores(jnp.array([[-1.0, -3.0, -9.0]]), jnp.zeros((1, 3)), jnp.array([[1, 1, 0]]))  # [-2.]
    """
    if score not in DISCO_SCORES:
        raise ValueError(f"Unknown DisCO score={score!r}; expected one of {DISCO_SCORES}.")
    logp = jnp.asarray(logp, jnp.float32)
    if score == "logL":
        return masked_mean(logp, mask, axis=-1)
    ratio = jnp.exp(jnp.clip(logp - jnp.asarray(logp_old, jnp.float32), -20.0, 20.0))
    return masked_mean(ratio, mask, axis=-1)


def disco_question_objective(
    scores: Array,
    correct: Array,
    group_ids: Array,
    variant: str = "dro",
    tau: float = 10.0,
    pos_weights: Array | None = None,
    lse: str = "true",
) -> tuple[Array, Array]:
    """Per-question DisCO objective J_q (to be maximised), on every row of the question. -> (J [B], valid [B]).

    With P / N the positives (``correct``) / negatives of row i's question and w the positives'
    weights (``pos_weights``, default 1: a plain mean; DRPO: `drpo_length_weights`):

    * ``b`` (DisCO-b):       J_q = Σ_P w s / Σ_P w − mean_N s
    * ``dro`` (DisCO):       J_q = Σ_P w s / Σ_P w − τ·log Σ_{j∈N} exp(s_j/τ)

    ``valid`` is False for a question with no positive or no negative (its J is 0: skipped).
    ``lse='true'`` gives the log-sum-exp its true value; ``'surrogate'`` the value of the code's
    S/sg(S) surrogate (DisCO `compute_policy_loss_disco_logL`: value 1, i.e. J_q = mean_P s − τ)
    with the same gradient ∇log S.

    Paper: DisCO, arXiv 2505.12366 (DRPO, arXiv 2510.04474, for the weights).

    Example (one question, scores [−1, −2, −4], correctness [1, 0, 0]):
      >>> s, c, g = jnp.array([-1.0, -2, -4]), jnp.array([True, False, False]), jnp.zeros(3, jnp.int32)
      >>> disco_question_objective(s, c, g, "b")[0]           # [2., 2., 2.]
      >>> disco_question_objective(s, c, g, "dro", tau=1.0)[0]  # [0.873072] * 3 = −1 − log(e^−2 + e^−4)
    """
    if variant not in DISCO_VARIANTS:
        raise ValueError(f"Unknown DisCO variant={variant!r}; expected one of {DISCO_VARIANTS}.")
    if lse not in LSE_VALUES:
        raise ValueError(f"Unknown lse={lse!r}; expected one of {LSE_VALUES}.")
    scores = jnp.asarray(scores, jnp.float32)
    same = same_group(group_ids)
    pos = jnp.asarray(correct).astype(jnp.float32)
    neg = 1.0 - pos
    weights = pos if pos_weights is None else pos * jnp.asarray(pos_weights, jnp.float32)
    valid = ((same @ pos) > 0) & ((same @ neg) > 0)
    positive = _group_mean(scores, weights, same)
    if variant == "b":
        negative = _group_mean(scores, neg, same)
    else:
        log_sum = _group_logsumexp(scores / tau, neg, same)
        if lse == "surrogate":
            log_sum = 1.0 + log_sum - jax.lax.stop_gradient(log_sum)
        negative = tau * log_sum
    return jnp.where(valid, positive - negative, 0.0), valid


def drpo_length_weights(
    lengths: Array, correct: Array, group_ids: Array, max_len: float, lam: float = 0.1
) -> Array:
    """DRPO's weights of the positives, normalised within each question. [B] x3 -> [B].

        w_i ∝ exp(r_len,i / λ),  r_len,i = 1 − L_i / L_max,   Σ_{i∈P_q} w_i = 1;  w = 0 on negatives

    (a softmax over the question's positives, so a small λ cannot overflow). L_max is the
    constant response budget (DRPO `compute_policy_loss_drpo`: the padded response length).

    Paper: DRPO, arXiv 2510.04474.

    Example (two positives with L/L_max = 0.5 and 0.25, λ = 0.1):
      >>> drpo_length_weights(jnp.array([2.0, 1.0]), jnp.array([True, True]), jnp.zeros(2, jnp.int32), 4.0)
      >>> # [0.075858, 0.924142] = softmax([5, 7.5])
    """
    pos = jnp.asarray(correct)
    log_w = (1.0 - jnp.asarray(lengths, jnp.float32) / max_len) / lam
    log_norm = _group_logsumexp(log_w, pos.astype(jnp.float32), same_group(group_ids))
    return jnp.where(pos, jnp.exp(jnp.where(pos, log_w - log_norm, 0.0)), 0.0)


def kl_penalty_multiplier(kl: Array, delta: float = 1e-4, beta: float = 1e3) -> Array:
    """DisCO's squared-hinge multiplier sg(β·[D − δ]_+) of a KL estimate D (scalar).

    The penalty in the loss is multiplier × D (the code's form: gradient β[D − δ]_+ ∇D; the
    paper writes β[D − δ]_+², whose gradient carries a factor 2 the code absorbs into β).

    Example:
      >>> kl_penalty_multiplier(3e-4, delta=1e-4, beta=1e3)  # 0.2
    """
    return jax.lax.stop_gradient(beta * jax.nn.relu(jnp.asarray(kl, jnp.float32) - delta))


def class_balanced_weights(correct: Array, group_ids: Array) -> Array:
    """PACS's per-question class weights (sklearn 'balanced'). [B], [B] -> [B].

        w_i = n / (2·n_c)  (n = group size, n_c = rows of the group with row i's label)
              when the group has both labels, else 1.

    Example:
      >>> class_balanced_weights(jnp.array([True, False, False, False]), jnp.zeros(4, jnp.int32))
      >>> # [2.0, 0.666667, 0.666667, 0.666667]
    """
    same = same_group(group_ids)
    labels = jnp.asarray(correct)
    n = jnp.sum(same, axis=1)
    n_pos = same @ labels.astype(jnp.float32)
    n_class = jnp.where(labels, n_pos, n - n_pos)
    mixed = (n_pos > 0) & (n_pos < n)
    return jnp.where(mixed, n / (2.0 * jnp.maximum(n_class, 1.0)), 1.0)


def leave_one_out_centre(x: Array, group_ids: Array) -> Array:
    """x_i − mean_{j≠i, same group} x_j, differentiable (PACS's RLOO ψ). [B], [B] -> [B].

    A single-row group keeps x (baseline 0), as `estimators.rloo_advantages` does; unlike that
    estimator a constant group is not special-cased (it is exactly 0 anyway, and keeps its
    gradient).

    Example:
      >>> leave_one_out_centre(jnp.array([1.0, 0, 0, 0]), jnp.zeros(4, jnp.int32))  # [1, −1/3, −1/3, −1/3]
    """
    x = jnp.asarray(x, jnp.float32)
    same = same_group(group_ids)
    n = jnp.sum(same, axis=1)
    others = (same @ x - x) / jnp.maximum(n - 1.0, 1.0)
    return jnp.where(n > 1, x - others, x)


def group_standardise(x: Array, group_ids: Array, eps: float = 1e-6) -> Array:
    """(x_i − mean_g x) / sqrt(var_g x + ε²), unbiased (N − 1) variance, differentiable. [B], [B] -> [B].

    sqrt(var + ε²) equals GRPO's std + ε up to O(ε) and is smooth at var = 0 (where a plain
    std has an infinite derivative and the gradient would be NaN): a constant group (and a
    single-row group) gives 0 with gradient (∂x_i − mean_g ∂x)/ε there.

    Example:
      >>> group_standardise(jnp.array([0.2, 0.0, -0.1, -0.1]), jnp.zeros(4, jnp.int32))
      >>> # [1.414214, 0, −0.707107, −0.707107]
    """
    x = jnp.asarray(x, jnp.float32)
    same = same_group(group_ids)
    n = jnp.sum(same, axis=1)
    centred = x - (same @ x) / n
    var = (same @ jnp.square(centred)) / jnp.maximum(n - 1.0, 1.0)
    return centred / jnp.sqrt(var + eps**2)


def pacs_logits(scores: Array, group_ids: Array, centre: str = "rloo", eps: float = 1e-6) -> Array:
    """PACS's ψ from the per-response scores r̂. [B], [B] -> [B].

    ``rloo``: `leave_one_out_centre` (default); ``grpo``: `group_standardise` (the code's
    (r̂ − mean)/(std + ε), smoothed at std = 0); ``raw``: ψ = r̂ (the code's "naive").
    """
    if centre not in PACS_CENTRES:
        raise ValueError(f"Unknown PACS centre={centre!r}; expected one of {PACS_CENTRES}.")
    if centre == "rloo":
        return leave_one_out_centre(scores, group_ids)
    if centre == "grpo":
        return group_standardise(scores, group_ids, eps)
    return jnp.asarray(scores, jnp.float32)


def pacs_bce(psi: Array, labels: Array, weights: Array | None = None) -> Array:
    """Weighted binary cross-entropy with logits per response: w·[softplus(ψ) − R·ψ]. [B] x3 -> [B].

    (= −w·[R log σ(ψ) + (1 − R) log(1 − σ(ψ))], stable for any ψ; ∂/∂ψ = w·(σ(ψ) − R).)
    PyTorch's BCEWithLogitsLoss(weight=w) is the mean of this over the batch.

    Example:
      >>> pacs_bce(jnp.zeros(2), jnp.array([1.0, 0.0]))  # [0.693147, 0.693147] (ln 2)
    """
    psi = jnp.asarray(psi, jnp.float32)
    loss = jax.nn.softplus(psi) - jnp.asarray(labels, jnp.float32) * psi
    return loss if weights is None else jnp.asarray(weights, jnp.float32) * loss


def reward_levels(rewards: Array, finished: Array | None = None, threshold: float = 0.5) -> Array:
    """Default TRPA preference levels of scalar rewards (1 = best). [B] (, [B]) -> int32 [B].

        1: correct (R > threshold);  2: wrong but finished;  3: wrong and unfinished (truncated)

    Without ``finished`` (the strategies' extras['finished']) every wrong response is level 2.
    TRPA's K&K levels (reward_score/kk.py) are 1 format+answer right, 2 format right + answer
    wrong, 3 format right + answer incomplete, 4 format wrong; give those as extras['pref_level'].
    """
    correct = jnp.asarray(rewards, jnp.float32) > threshold
    wrong = 2 if finished is None else jnp.where(jnp.asarray(finished) > 0, 2, 3)
    return jnp.where(correct, 1, wrong).astype(jnp.int32)


def trpa_pairs(levels: Array, group_ids: Array) -> Array:
    """[B], [B] -> [B, B] float32: 1 where row a is strictly preferred to row b of its group
    (level_a < level_b): every cross-level pair of a question, counted once."""
    levels = jnp.asarray(levels)
    return same_group(group_ids) * (levels[:, None] < levels[None, :])


def trpa_pair_logits(u: Array, levels: Array, beta: float = 0.1, kappa: float = 2.5) -> Array:
    """h[a, b] = κβ(u_a − u_b) when a is level 1, else β(u_a − u_b). [B], [B] -> [B, B]."""
    u = jnp.asarray(u, jnp.float32)
    scale = jnp.where(jnp.asarray(levels) == 1, kappa * beta, beta)
    return scale[:, None] * (u[:, None] - u[None, :])


def trpa_loss(
    u: Array,
    levels: Array,
    group_ids: Array,
    beta: float = 0.1,
    kappa: float = 2.5,
    num_pairs: Array | float | None = None,
    num_rows: Array | float | None = None,
) -> Array:
    """TRPA's preference loss (without the trust-region KL). [B] x3 -> scalar.

    With u_i = mean_t logp − mean_t logp_ref (the length-normalised log-ratio to the reference)
    and h from `trpa_pair_logits` over the pairs of `trpa_pairs`:

        L = Σ_pairs −log σ(h) / num_pairs                        if num_pairs > 0
        L = Σ_i −log σ(±u_i) / num_rows  (+ for level 1, − otherwise; no β)   otherwise

    ``num_pairs`` / ``num_rows`` default to this batch's own counts; pass the whole mini-batch's
    (the objective contract) so that the sum over micro-batches is the mini-batch's loss.

    Paper: TRPA, arXiv 2504.04524; code: Trust-Region-Preference-Approximation
    `core_algos.py::compute_pairwise_policy_loss` (the fallback there is per micro-batch).

    Example (levels [1, 2, 4], u = [0.2, 0.1, −0.1]: h = [0.025, 0.075, 0.02]):
      >>> trpa_loss(jnp.array([0.2, 0.1, -0.1]), jnp.array([1, 2, 4]), jnp.zeros(3, jnp.int32))  # 0.673424
    """
    u = jnp.asarray(u, jnp.float32)
    pairs = trpa_pairs(levels, group_ids)
    h = trpa_pair_logits(u, levels, beta, kappa)
    pair_total = jnp.sum(jnp.where(pairs > 0, jax.nn.softplus(-h), 0.0))
    sign = jnp.where(jnp.asarray(levels) == 1, 1.0, -1.0)
    fallback_total = jnp.sum(jax.nn.softplus(-sign * u))
    num_pairs = jnp.sum(pairs) if num_pairs is None else num_pairs
    num_rows = u.shape[0] if num_rows is None else num_rows
    return jnp.where(
        num_pairs > 0, pair_total / jnp.maximum(num_pairs, 1.0), fallback_total / jnp.maximum(num_rows, 1.0)
    )


def reg_grpo_loss(advantages: Array, rho: Array, group_ids: Array, eps: float = 1e-6) -> tuple[Array, Array]:
    """Reg-GRPO's regression of the advantage on the policy's implicit advantage. -> ([B], [B]).

        Â^θ = group_standardise(ρ),   ℓ_i = (A_i − Â^θ_i)²

    with ρ_i = β·(length-normalised) log π_θ/π_old of response i. Returns (ℓ, Â^θ).
    [assumed] parameterisation (no paper body or code available, see the algorithm).

    Paper: DeepVideo-R1, arXiv 2506.07464.

    Example:
      >>> loss, a = reg_grpo_loss(jnp.array([1.5, -.5, -.5, -.5]), jnp.array([.2, 0, -.1, -.1]), jnp.zeros(4, int))
      >>> a, loss.mean()  # [1.414214, 0, −0.707107, −0.707107], 0.085786
    """
    implicit = group_standardise(rho, group_ids, eps)
    return jnp.square(jnp.asarray(advantages, jnp.float32) - implicit), implicit
