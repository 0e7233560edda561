"""DPO (Rafailov et al., arXiv 2305.18290): L = -log sigmoid(beta * h) with
h = [S(y_w) - S(y_l)] - [S_ref(y_w) - S_ref(y_l)] on summed completion log-probs; cDPO label
smoothing eps: (1 - eps) softplus(-beta h) + eps softplus(beta h)."""

from __future__ import annotations

import jax.numpy as jnp

from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.losses.preference import dpo_loss, sequence_logps
from jaxrl_llm.objectives import sequence_mean
from jaxrl_llm.train.passes import reference_pass
from jaxrl_llm.transforms.base import identity
from jaxrl_llm.types import Algorithm


@register("dpo")
def dpo(beta: float = 0.1, label_smoothing: float = 0.0, reference_free: bool = False) -> Algorithm:
    """DPO on a `PreferenceBatch`; the reference log-probs are computed once per batch by the
    trainer (frozen reference = the initial policy). Defaults: beta=0.1 (TRL, DPO repo)."""

    def objective(outputs, batch, state):
        b = batch.chosen_ids.shape[0]
        chosen = sequence_logps(outputs.logp[:b], batch.chosen_mask)
        rejected = sequence_logps(outputs.logp[b:], batch.rejected_mask)
        if reference_free:
            ref_c = ref_r = jnp.zeros_like(chosen)
        else:
            ref_c = sequence_logps(batch.ref_chosen_logps, batch.chosen_mask)
            ref_r = sequence_logps(batch.ref_rejected_logps, batch.rejected_mask)
        losses, pair_metrics = dpo_loss(chosen, rejected, ref_c, ref_r, beta, label_smoothing, reference_free)
        metrics = {k: sequence_mean(v, batch) for k, v in pair_metrics.items()}
        return sequence_mean(losses, batch), metrics

    return Algorithm(
        data="preference",
        transform=identity(),
        objective=objective,
        passes=() if reference_free else (reference_pass(),),
    )
