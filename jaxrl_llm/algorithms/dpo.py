"""The direct-alignment family on one pairwise core (`preference_objective`): DPO (Rafailov et
al., arXiv 2305.18290; cDPO label smoothing), robust DPO (rDPO, arXiv 2403.00409), hinge
(SLiC), IPO (arXiv 2310.12036), SimPO (arXiv 2405.14734), CPO (arXiv 2401.08417), ORPO (arXiv
2403.07691) and RPO (arXiv 2405.16436).

Every member is  pair_coef · link(h) + nll_coef · NLL(y_w)  with
h = [s(y_w) − s(y_l)] − [s_ref(y_w) − s_ref(y_l)] (no reference term when reference-free), s a
sequence reduction of the completion's token log-probs (`sequence_logps`: sum, mean or the
log-odds of the mean) and the link one of `preference_link`'s; the NLL of the chosen completion
is aggregated with the whole mini-batch's chosen-token count (`chosen_nll`).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.losses.aggregation import aggregate
from jaxrl_llm.losses.preference import dpo_loss, sequence_logps
from jaxrl_llm.objectives import NUM_CHOSEN_TOKENS, PAIR_WEIGHT, sequence_mean
from jaxrl_llm.train.passes import reference_pass
from jaxrl_llm.transforms.base import identity, is_static_zero
from jaxrl_llm.types import Algorithm, Objective


def chosen_nll(outputs, batch, agg: str = "token_mean"):
    """−log π(y_w) of the chosen completions (`outputs.logp[:B]` over `chosen_mask`) reduced by
    `aggregate` mode `agg` with the whole mini-batch's denominators: 'token_mean' over every
    chosen token of the mini-batch (`extras['num_chosen_tokens']`, the reference codes' HF
    cross-entropy), 'seq_mean_token_mean' (mean of per-completion means) or 'seq_mean_token_sum'
    (mean over pairs of −S(y_w), RPO's cumulative form). -> scalar."""
    b, extras = batch.chosen_ids.shape[0], batch.extras or {}
    return aggregate(
        -outputs.logp[:b],
        batch.chosen_mask,
        agg,
        num_tokens=extras.get(NUM_CHOSEN_TOKENS),
        num_seqs=extras.get("num_seqs"),
    )


def preference_objective(
    beta: float = 0.1,
    link: str = "sigmoid",
    label_smoothing: float = 0.0,
    margin: float = 0.0,
    reduction: str = "sum",
    reference_free: bool = False,
    pair_coef: float = 1.0,
    nll_coef: float = 0.0,
    nll_agg: str = "token_mean",
    beta_rejected: float | None = None,
) -> Objective:
    """pair_coef · mean over pairs of `dpo_loss` (h from `sequence_logps(·, reduction)`, the
    link, smoothing and margin of `preference_link`, Flex-DPO's beta_rejected) + nll_coef ·
    `chosen_nll(nll_agg)`.
    A per-pair `extras['pair_weight']` [B] (online pairs, `preference_pairs`: 0 for ties)
    multiplies each pair's loss; the mean is still over every pair of the mini-batch.
    Metrics (means over pairs): reward_chosen / reward_rejected (β·(s − s_ref)), reward_margin,
    reward_accuracy; nll when nll_coef is not a static 0."""

    def objective(outputs, batch, state):
        b = batch.chosen_ids.shape[0]
        chosen = sequence_logps(outputs.logp[:b], batch.chosen_mask, reduction)
        rejected = sequence_logps(outputs.logp[b:], batch.rejected_mask, reduction)
        if reference_free:
            ref_c = ref_r = jnp.zeros_like(chosen)
        else:
            ref_c = sequence_logps(batch.ref_chosen_logps, batch.chosen_mask, reduction)
            ref_r = sequence_logps(batch.ref_rejected_logps, batch.rejected_mask, reduction)
        losses, pair_metrics = dpo_loss(
            chosen, rejected, ref_c, ref_r, beta, label_smoothing, reference_free, link, margin, beta_rejected
        )
        metrics = {k: sequence_mean(v, batch) for k, v in pair_metrics.items()}
        if PAIR_WEIGHT in batch.extras:  # online pairs: ties carry no gradient
            losses = batch.extras[PAIR_WEIGHT] * losses
        loss = pair_coef * sequence_mean(losses, batch)
        if not is_static_zero(nll_coef):
            nll = chosen_nll(outputs, batch, nll_agg)
            loss, metrics = loss + nll_coef * nll, {**metrics, "nll": nll}
        return loss, metrics

    return objective


def _preference_algorithm(objective: Objective, reference_free: bool) -> Algorithm:
    passes = () if reference_free else (reference_pass(),)
    return Algorithm(data="preference", transform=identity(), objective=objective, passes=passes)


@register("dpo")
def dpo(
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    reference_free: bool = False,
    loss_type: str = "sigmoid",
    reduction: str = "sum",
    margin: float = 0.0,
    nll_coef: float = 0.0,
    nll_agg: str = "token_mean",
) -> Algorithm:
    """DPO on a `PreferenceBatch`; the reference log-probs are computed once per batch by the
    trainer (frozen reference = the initial policy). Defaults: beta=0.1 (TRL, DPO repo).

    loss_type: 'sigmoid' (DPO; cDPO with label_smoothing), 'robust' (rDPO), 'hinge', 'ipo'
      (see `preference_link`). reduction: the sequence score s(y), 'sum' (DPO), 'mean' (IPO as
      in TRL, SimPO) or 'log_odds' (ORPO). margin: SimPO's target margin gamma (subtracted from
      beta * h). nll_coef, nll_agg: an NLL term on the chosen completions (`chosen_nll`: CPO,
      RPO, SimPO's sft_weight, TRL's rpo_alpha).
    """
    return _preference_algorithm(
        preference_objective(
            beta, loss_type, label_smoothing, margin, reduction, reference_free, 1.0, nll_coef, nll_agg
        ),
        reference_free,
    )


@register("ipo")
def ipo(beta: float = 0.1, reduction: str = "mean") -> Algorithm:
    """IPO: L = (h - 1/(2 beta))^2. reduction='mean' averages s(y) over tokens, as TRL does
    (its authors confirmed it matches the paper's results); 'sum' is the paper's summed form
    (eq. 17, the DPO repo's `ipo=True`). Default beta (tau) = 0.1 (TRL)."""
    return dpo(beta=beta, loss_type="ipo", reduction=reduction)


@register("simpo")
def simpo(
    beta: float = 2.0, gamma_beta_ratio: float = 0.25, label_smoothing: float = 0.0, sft_weight: float = 0.0
) -> Algorithm:
    """SimPO: L = -log sigmoid(beta [A(y_w) - A(y_l)] - gamma) + sft_weight * NLL(y_w), A the
    length-averaged log-prob, no reference; gamma = beta * gamma_beta_ratio. Defaults from
    princeton-nlp/SimPO's config class (beta 2.0, gamma/beta 0.25, sft_weight 0)."""
    return dpo(
        beta=beta,
        label_smoothing=label_smoothing,
        reference_free=True,
        reduction="mean",
        margin=beta * gamma_beta_ratio,
        nll_coef=sft_weight,
    )


@register("cpo")
def cpo(beta: float = 0.1, alpha: float = 1.0, label_smoothing: float = 0.0) -> Algorithm:
    """CPO (Xu et al., arXiv 2401.08417, ALMA-R; TRL `cpo_trainer.py::cpo_loss`, by the CPO
    author): DPO without the reference plus behaviour cloning on the chosen completion,

        L = −log σ(β [S_θ(y_w) − S_θ(y_l)]) + α · NLL(y_w)      (summed log-probs; NLL token mean)

    Defaults (TRL): β 0.1, α (`cpo_alpha`) 1.0, no label smoothing. TRL's CPO-SimPO variant is
    `dpo(reference_free=True, reduction='mean', margin=..., nll_coef=alpha)`."""
    return dpo(beta=beta, label_smoothing=label_smoothing, reference_free=True, nll_coef=alpha)


@register("orpo")
def orpo(lam: float = 0.1, nll_agg: str = "token_mean") -> Algorithm:
    """ORPO (Hong et al., arXiv 2403.07691; official xfactlab/orpo `orpo_trainer.py::compute_loss`,
    TRL `odds_ratio_loss`): SFT on the chosen completion plus an odds-ratio penalty, no reference,

        L = NLL(y_w) + λ · −log σ(log odds(A_w) − log odds(A_l)),  log odds(A) = A − log(1 − e^A)

    with A the length-averaged log-prob (`sequence_logps(·, 'log_odds')`). Default λ 0.1 (the
    official scripts' --alpha, TRL's beta). The official code can also put the prompt tokens in
    the NLL (unless `disable_prompt_loss`); here the NLL covers the completion, like TRL."""
    objective = preference_objective(
        1.0,
        "sigmoid",
        reduction="log_odds",
        reference_free=True,
        pair_coef=lam,
        nll_coef=1.0,
        nll_agg=nll_agg,
    )
    return _preference_algorithm(objective, reference_free=True)


RPO_FORMS = ("average", "cumulative")


@register("rpo")
def rpo(beta: float | None = None, eta: float | None = None, form: str = "average") -> Algorithm:
    """RPO (Liu et al., "Provably mitigating overoptimization in RLHF", arXiv 2405.16436; official
    YSLIU627/Regularized-Preference-Optimization `rpo_trainer.py::dpo_loss`): DPO plus an SFT
    term on the chosen completion, in its two published forms,

        'average'    (Appendix F; the README's recommended default):  −log σ(β h) + η · NLL(y_w) (token mean)
        'cumulative' (the main paper's form):                         −log σ(β h) + η · β · (−S_θ(y_w))

    (summed log-probs in h; the cumulative SFT term is averaged over pairs). Defaults follow the
    released recipe of each form: 'average' β 0.5, η 0.2 (OpenRLHF `train_rpo.sh`, its
    `--nll_loss_coef`); 'cumulative' β 0.01, η 0.005 (alignment-handbook zephyr-7b-beta). TRL's
    `rpo_alpha` (Pang et al.'s iterative reasoning PO) is the 'average' form with η = α."""
    if form not in RPO_FORMS:
        raise ValueError(f"rpo: form={form!r}; expected one of {RPO_FORMS}")
    cumulative = form == "cumulative"
    beta = (0.01 if cumulative else 0.5) if beta is None else beta
    eta = (0.005 if cumulative else 0.2) if eta is None else eta
    if cumulative:
        return dpo(beta=beta, nll_coef=eta * beta, nll_agg="seq_mean_token_sum")
    return dpo(beta=beta, nll_coef=eta)


@register("flex_dpo")
def flex_dpo(beta: float = 0.1, beta_rejected: float = 0.1, nll_coef: float = 0.0) -> Algorithm:
    """The two regularisers Yan et al. propose against DPO's "3D properties" (arXiv 2406.07327:
    drastic drop of the rejected likelihood, degradation into suppression, dispersion):

        Flex-DPO:  L = −log σ(β_w ρ(y_w) − β_l ρ(y_l))     (a separate temperature per side)
        SFT-DPO:   L = L_DPO + λ · NLL(y_w)                 (nll_coef = λ, token mean)

    No code was released and the paper's β_w / β_l values are not confirmed; the defaults
    (β_w = β_l = 0.1, λ = 0) are DPO, so each regulariser is a deliberate choice. The paper's
    reading: β_l < β_w slows the collapse of the rejected likelihood."""
    objective = preference_objective(beta, nll_coef=nll_coef, beta_rejected=beta_rejected)
    return _preference_algorithm(objective, reference_free=False)
