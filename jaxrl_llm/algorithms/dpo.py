"""The direct-alignment family on one pairwise core (`preference_link`): DPO (Rafailov et al.,
arXiv 2305.18290; cDPO label smoothing), robust DPO (rDPO, arXiv 2403.00409), hinge (SLiC),
IPO (arXiv 2310.12036) and SimPO (arXiv 2405.14734). h = [S(y_w) - S(y_l)] - [S_ref(y_w) -
S_ref(y_l)] on summed (or length-averaged) completion log-probs; the loss is the link of h."""

from __future__ import annotations

import jax.numpy as jnp

from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.losses.preference import dpo_loss, sequence_logps
from jaxrl_llm.objectives import sequence_mean
from jaxrl_llm.train.passes import reference_pass
from jaxrl_llm.transforms.base import identity
from jaxrl_llm.types import Algorithm


@register("dpo")
def dpo(
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    reference_free: bool = False,
    loss_type: str = "sigmoid",
    length_normalize: bool = False,
    margin: float = 0.0,
) -> Algorithm:
    """DPO on a `PreferenceBatch`; the reference log-probs are computed once per batch by the
    trainer (frozen reference = the initial policy). Defaults: beta=0.1 (TRL, DPO repo).

    loss_type: 'sigmoid' (DPO; cDPO with label_smoothing), 'robust' (rDPO), 'hinge', 'ipo'
      (see `preference_link`). length_normalize: S(y) averaged over the completion's tokens
      (IPO as in TRL, SimPO). margin: SimPO's target margin gamma (subtracted from beta * h).
    """

    def objective(outputs, batch, state):
        b = batch.chosen_ids.shape[0]

        def seq(logp, mask):
            return sequence_logps(logp, mask, average=length_normalize)

        chosen, rejected = (
            seq(outputs.logp[:b], batch.chosen_mask),
            seq(outputs.logp[b:], batch.rejected_mask),
        )
        if reference_free:
            ref_c = ref_r = jnp.zeros_like(chosen)
        else:
            ref_c = seq(batch.ref_chosen_logps, batch.chosen_mask)
            ref_r = seq(batch.ref_rejected_logps, batch.rejected_mask)
        losses, pair_metrics = dpo_loss(
            chosen, rejected, ref_c, ref_r, beta, label_smoothing, reference_free, loss_type, margin
        )
        metrics = {k: sequence_mean(v, batch) for k, v in pair_metrics.items()}
        return sequence_mean(losses, batch), metrics

    return Algorithm(
        data="preference",
        transform=identity(),
        objective=objective,
        passes=() if reference_free else (reference_pass(),),
    )


@register("ipo")
def ipo(beta: float = 0.1, length_normalize: bool = True) -> Algorithm:
    """IPO: L = (h - 1/(2 beta))^2. length_normalize=True averages S(y) over tokens, as TRL does
    (its authors confirmed it matches the paper's results); False is the paper's summed form
    (eq. 17, the DPO repo's `ipo=True`). Default beta (tau) = 0.1 (TRL)."""
    return dpo(beta=beta, loss_type="ipo", length_normalize=length_normalize)


@register("simpo")
def simpo(beta: float = 2.0, gamma_beta_ratio: float = 0.25, label_smoothing: float = 0.0) -> Algorithm:
    """SimPO: L = -log sigmoid(beta [A(y_w) - A(y_l)] - gamma), A = length-averaged log-prob, no
    reference; gamma = beta * gamma_beta_ratio. Defaults from princeton-nlp/SimPO's config class
    (beta 2.0, gamma/beta 0.25)."""
    return dpo(
        beta=beta,
        label_smoothing=label_smoothing,
        reference_free=True,
        length_normalize=True,
        margin=beta * gamma_beta_ratio,
    )
