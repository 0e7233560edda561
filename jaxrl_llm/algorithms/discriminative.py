"""Group-coupled objectives: DisCO (arXiv 2505.12366), DRPO (arXiv 2510.04474), PACS (arXiv
2509.02522), TRPA (arXiv 2504.04524) and Reg-GRPO (arXiv 2506.07464).

Their losses couple the G responses of a question (a log-sum-exp over its negatives, a
leave-one-out centre, pairs, a group standardisation), so each Algorithm sets `whole_groups=True`:
every micro-batch holds whole groups and the group terms are exact inside one objective call
(`jaxrl_llm.losses.discriminative`, pairwise same-group matrices). What is wide over the whole
mini-batch comes through the objective contract:

* a denominator that counts rows or tokens: `sequence_mean` / `token_mean` (PACS, Reg-GRPO);
* a denominator that counts questions or pairs (DisCO's #questions, TRPA's #pairs), and a
  quantity of the current policy (DisCO's KL multiplier sg(β[D − δ]_+), TRPA's sqrt(D + 0.25)):
  the `statistics` seam sums them over the micro-batches (Σ_i 1/G_i per micro-batch, the
  number of pairs, the token-mean KL) before the gradient; the objective reads the totals in
  `outputs.stats` (computed from its own batch when called outside the trainer).

A mini-batch-wide scalar v is reported as a metric through `_spread` (v·B_micro/num_seqs, which
sums to v over the micro-batches).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.losses import discriminative as dl
from jaxrl_llm.losses.policy import kl_estimate
from jaxrl_llm.objectives import loss_mask, normalisers, old_logp, sequence_mean, token_mean
from jaxrl_llm.train.passes import reference_pass
from jaxrl_llm.transforms.base import identity, is_static_zero
from jaxrl_llm.transforms.estimators import masked_mean
from jaxrl_llm.transforms.rollout import group_advantages
from jaxrl_llm.types import Algorithm, RolloutTransform

sg = jax.lax.stop_gradient


def _totals(statistics, outputs, batch, state) -> dict:
    """The mini-batch totals of `statistics` (the trainer's `outputs.stats`), or this batch's own."""
    if outputs.stats is not None:
        return outputs.stats
    return statistics(jax.tree.map(sg, outputs), batch, state)


def _spread(value, batch):
    """A mini-batch-wide scalar as a metric that sums to itself over the micro-batches."""
    return sequence_mean(jnp.full(batch.response_ids.shape[0], sg(value)), batch)


def _length_weights(mask, correct, batch, length_lambda, max_len):
    """DRPO's weights of the positives (L_max = max_len, default the response buffer length);
    None (DisCO: a plain mean) without length_lambda."""
    if length_lambda is None:
        return None
    budget = mask.shape[-1] if max_len is None else max_len
    return dl.drpo_length_weights(jnp.sum(mask, -1), correct, batch.group_ids, budget, length_lambda)


@register("disco")
def disco(
    score: str = "logL",
    variant: str = "dro",
    tau: float | None = None,
    delta: float = 1e-4,
    beta: float = 1e3,
    lse: str = "true",
    correct_threshold: float = 0.5,
    length_lambda: float | None = None,
    max_len: int | None = None,
    constraint: str = "penalty",
    dual_lr: float = 1e3,
) -> Algorithm:
    """DisCO: maximise J = Σ_{valid q} J_q / #questions of the mini-batch subject to D ≤ δ.

    J_q (`disco_question_objective`) contrasts the scores s (`disco_scores`: score 'logL' or
    'Lratio') of a question's positives (R > correct_threshold) and negatives: variant 'dro'
    (DisCO, the log-sum-exp over negatives with τ; default τ = 10 for logL, 1 for Lratio) or 'b'
    (DisCO-b, mean positive − mean negative). Questions without a positive or a negative are
    skipped but counted in #questions (as the code). D = token mean over the mini-batch of
    k3(π_old‖π_θ) = r − log r − 1 (r = π_θ/π_old); loss = −J + sg(β[D − δ]_+)·D, the multiplier
    from the mini-batch D of the current policy (`statistics`; the code uses its micro-batch's
    D; the paper's penalty β[D − δ]_+² has twice this gradient). lse 'true' reports the true
    log-sum-exp, 'surrogate' the code's S/sg(S) value (same gradient). length_lambda: DRPO's
    length weights among positives (`drpo_length_weights`, L_max = max_len or the buffer length).
    Defaults: δ = 1e-4, β = 1e3 (scripts/train/run_disco_*.sh). Code: Optimization-AI/DisCO
    `verl/trainer/ppo/core_algos.py::compute_policy_loss_disco_logL` (and _Lratio, discob_*).
    constraint 'multiplier' replaces the penalty's multiplier by a Lagrange multiplier λ carried
    in the algorithm state (loss −J + sg(λ)·D), updated after every optimiser step by dual ascent
    on the KL that step produced: λ ← [λ + η(D_after − δ)]_+ with η = dual_lr (`post_update`;
    our option: the paper and code use the penalty; η = 1e3 makes one step of violation D − δ
    move λ by as much as the penalty's multiplier β[D − δ]_+).
    """
    if constraint not in ("penalty", "multiplier"):
        raise ValueError(f"disco: constraint={constraint!r}; expected 'penalty' or 'multiplier'")
    tau = (10.0 if score == "logL" else 1.0) if tau is None else tau

    def statistics(outputs, batch, state):
        kl = kl_estimate(old_logp(outputs, batch), outputs.logp, "k3")
        num_questions = jnp.sum(1.0 / dl.group_sizes(batch.group_ids))
        return {"trust_kl": token_mean(kl, loss_mask(batch), batch), "num_questions": num_questions}

    def objective(outputs, batch, state):
        totals, mask = _totals(statistics, outputs, batch, state), loss_mask(batch)
        logp_old, correct = old_logp(outputs, batch), batch.rewards > correct_threshold
        weights = _length_weights(mask, correct, batch, length_lambda, max_len)
        scores = dl.disco_scores(outputs.logp, logp_old, mask, score)
        j_q, valid = dl.disco_question_objective(scores, correct, batch.group_ids, variant, tau, weights, lse)
        share = valid / dl.group_sizes(batch.group_ids) / jnp.maximum(totals["num_questions"], 1.0)
        j = jnp.sum(share * j_q)
        kl = token_mean(kl_estimate(logp_old, outputs.logp, "k3"), mask, batch)
        if constraint == "penalty":
            multiplier = dl.kl_penalty_multiplier(totals["trust_kl"], delta, beta)
        else:
            multiplier = sg(state["multiplier"])
        metrics = {"pg_loss": sg(-j), "trust_kl": sg(kl), "kl_multiplier": _spread(multiplier, batch)}
        metrics["valid_question_fraction"] = jnp.sum(share)
        return -j + multiplier * kl, metrics

    if constraint == "penalty":
        return Algorithm("rollout", identity(), objective, whole_groups=True, statistics=statistics)

    def dual_ascent(state, stats):
        return {"multiplier": jnp.maximum(state["multiplier"] + dual_lr * (stats["trust_kl"] - delta), 0.0)}

    transform = RolloutTransform(lambda: {"multiplier": jnp.zeros(())}, lambda batch, state: (batch, state))
    return Algorithm(
        "rollout", transform, objective, whole_groups=True, statistics=statistics, post_update=dual_ascent
    )


@register("drpo")
def drpo(
    length_lambda: float = 0.1,
    tau: float = 10.0,
    delta: float = 1e-4,
    beta: float = 1e3,
    max_len: int | None = None,
    lse: str = "true",
    correct_threshold: float = 0.5,
) -> Algorithm:
    """DRPO: DisCO (logL scores, log-sum-exp over negatives, the same KL penalty) with the
    positives weighted by w_i ∝ exp((1 − L_i/L_max)/λ) within their question, so a long correct
    answer is never pushed down. L_max = max_len, default the response buffer length (the code's
    padded length). Defaults λ = 0.1, τ = 10, δ = 1e-4, β = 1e3 (scripts/train/run_drpo_*.sh).
    Code: Optimization-AI/DRPO `verl/trainer/ppo/core_algos.py::compute_policy_loss_drpo`."""
    return disco("logL", "dro", tau, delta, beta, lse, correct_threshold, length_lambda, max_len)


@register("pacs")
def pacs(
    beta: float = 1.0,
    score: str = "log_ratio",
    centre: str = "rloo",
    class_weights: bool = True,
    correct_threshold: float = 0.5,
    eps: float = 1e-6,
) -> Algorithm:
    """PACS: the outcome as a label, ψ as its logit, binary cross-entropy.

    r̂_i = β·Σ_t m(logp − logp_old) (score 'log_ratio', the code's reward_method 1, with the mask
    the code omits) or β·mean_t logp ('mean_logp', method 2); ψ = `pacs_logits` (centre 'rloo'
    default, 'grpo', 'raw'); loss = (1/B) Σ_i w_i·BCEWithLogits(ψ_i, R_i), R = rewards >
    correct_threshold, w the per-question class-balanced weights n/(2 n_c) (`class_weights`).
    ∂L/∂ψ_i = w_i(σ(ψ_i) − R_i)/B. Defaults β = 1, rloo, weights on (scripts/pacs/pacs_beta_1.0.sh).
    Code: ritzz-ai/PACS `src/pacs/pacs_core_algos.py::compute_pacs_loss`.
    """
    if score not in ("log_ratio", "mean_logp"):
        raise ValueError(f"pacs: unknown score={score!r}; expected 'log_ratio' or 'mean_logp'")

    def objective(outputs, batch, state):
        mask = loss_mask(batch)
        if score == "log_ratio":
            r_hat = beta * jnp.sum(jnp.where(mask > 0, outputs.logp - old_logp(outputs, batch), 0.0), -1)
        else:
            r_hat = beta * masked_mean(outputs.logp, mask, axis=-1)
        psi = dl.pacs_logits(r_hat, batch.group_ids, centre, eps)
        labels = batch.rewards > correct_threshold
        weights = dl.class_balanced_weights(labels, batch.group_ids) if class_weights else None
        loss = dl.pacs_bce(psi, labels, weights)
        metrics = {
            "pg_loss": sg(loss),
            "pacs/psi_abs": jnp.abs(sg(psi)),
            "pacs/accuracy": (psi > 0) == labels,
        }
        return sequence_mean(loss, batch), {k: sequence_mean(v, batch) for k, v in metrics.items()}

    return Algorithm("rollout", identity(), objective, whole_groups=True)


@register("trpa")
def trpa(
    beta: float = 0.1,
    kappa: float = 2.5,
    tr_coef: float = 1e-3,
    tr_sqrt: bool = False,
    correct_threshold: float = 0.5,
    levels=None,
) -> Algorithm:
    """TRPA: DPO-like pairs between the preference levels of a question, plus a trust region.

    Levels (1 = best): extras['pref_level'] if the batch has it, else `levels(batch)`, default
    `reward_levels` (1 correct, 2 wrong but finished, 3 wrong and unfinished). Every cross-level
    pair (a better than b) of a question: h = κβ(u_a − u_b) if a is level 1, else β(u_a − u_b),
    u = mean_t logp − mean_t logp_ref; loss = `trpa_loss` (mean −log σ(h) over the mini-batch's
    pairs; without any pair, the code's fallback mean −log σ(±u)) + c_tr·D, D = token mean of
    k3 of logp against logp_old (verl low_var_kl with π_old as reference, as the code), or with
    tr_sqrt c_tr·sqrt(D + 0.25) (D of the mini-batch, not the code's per micro-batch). Defaults
    β = 0.1, κ = 2.5, c_tr = 1e-3 (main_TRPA.sh). Code: XueruiSu/Trust-Region-Preference-
    Approximation `verl/trainer/ppo/core_algos.py::compute_pairwise_policy_loss`, `dp_actor.py`.
    """

    def levels_of(batch):
        if "pref_level" in batch.extras:
            return batch.extras["pref_level"]
        if levels is not None:
            return levels(batch)
        return dl.reward_levels(batch.rewards, batch.extras.get("finished"), correct_threshold)

    def statistics(outputs, batch, state):  # trust_kl only for tr_sqrt: else no forward is needed
        totals = {"num_pairs": jnp.sum(dl.trpa_pairs(levels_of(batch), batch.group_ids))}
        if tr_sqrt:
            kl = kl_estimate(outputs.logp, old_logp(outputs, batch), "k3")
            totals["trust_kl"] = token_mean(kl, loss_mask(batch), batch)
        return totals

    def objective(outputs, batch, state):
        totals, mask, lv = _totals(statistics, outputs, batch, state), loss_mask(batch), levels_of(batch)
        u = masked_mean(outputs.logp - batch.logp_ref, mask, axis=-1)
        rows = normalisers(batch)["num_seqs"]
        pref = dl.trpa_loss(u, lv, batch.group_ids, beta, kappa, totals["num_pairs"], rows)
        kl = token_mean(kl_estimate(outputs.logp, old_logp(outputs, batch), "k3"), mask, batch)
        metrics = {
            "pg_loss": sg(pref),
            "trust_kl": sg(kl),
            "trpa/pairs": jnp.sum(dl.trpa_pairs(lv, batch.group_ids)),
        }
        if is_static_zero(tr_coef):
            return pref, metrics
        if tr_sqrt:  # value sqrt(D + 0.25) spread over the micro-batches, gradient ∇D / (2 sqrt(D + 0.25))
            root = jnp.sqrt(sg(totals["trust_kl"]) + 0.25)
            kl = _spread(root, batch) + (kl - sg(kl)) / (2.0 * root)
        return pref + tr_coef * kl, metrics

    return Algorithm(
        "rollout", identity(), objective, passes=(reference_pass(),), whole_groups=True, statistics=statistics
    )


@register("reg_grpo")
def reg_grpo(beta: float = 1.0, eps: float = 1e-6, std: str = "unbiased", adv_eps: float = 1e-6) -> Algorithm:
    """Reg-GRPO [assumed parameterisation]: regress the GRPO advantage A_i (`group_advantages`
    transform, std/adv_eps) on the implicit advantage Â^θ = group-standardised ρ,
    ρ_i = β·mean_t (logp − logp_old); loss = (1/B) Σ_i (A_i − Â^θ_i)² (`reg_grpo_loss`). No clip.

    The std of ρ is sqrt(var + ε²) (`group_standardise`), so at θ = θ_old (ρ ≡ 0, every
    first update) Â^θ = 0, the loss is mean A² and the gradient is finite:
    ∂L/∂ρ_j = −2(A_j − mean_g A)/(B·ε) (= −2A_j/(B·ε) for GRPO advantages): the policy-gradient
    direction Σ_j A_j ∇ρ_j scaled by 1/ε, because Â^θ is scale-free in ρ (the trainer's
    global-norm clipping, train.grad_clip, bounds that step). β only matters relative to ε. No paper body or code could be
    read (arXiv 2506.07464, github.com/mlvlab/DeepVideoR1 not available): β = 1 and the length
    normalisation are assumptions; the difficulty-aware augmentation is a data strategy, not here.
    """

    def objective(outputs, batch, state):
        mask = loss_mask(batch)
        rho = beta * masked_mean(outputs.logp - old_logp(outputs, batch), mask, axis=-1)
        advantages = masked_mean(batch.advantages, mask, axis=-1)  # A_i, constant over its tokens
        loss, implicit = dl.reg_grpo_loss(advantages, rho, batch.group_ids, eps)
        metrics = {"pg_loss": sg(loss), "reg_grpo/implicit_abs": jnp.abs(sg(implicit))}
        return sequence_mean(loss, batch), {k: sequence_mean(v, batch) for k, v in metrics.items()}

    return Algorithm("rollout", group_advantages(std=std, eps=adv_eps), objective, whole_groups=True)
