"""Objective pieces shared by the policy-gradient family (grpo, gspo, clipping, ...), on top of
the terms of `jaxrl_llm.objectives`.

`token_loss_objective` turns any per-token policy loss into an objective the contract's way
(rollout-correction weights, `aggregate` with the mini-batch denominators, a pg_loss metric):
the piece `objectives.policy_surrogate` is for PPO-clip, for every other per-token loss.
`regularised` adds the KL to the reference and the entropy bonus to such a surrogate (what
`objectives.pg_terms` does for PPO-clip); `reference_passes` is the matching pass tuple.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from jaxrl_llm.losses.aggregation import AGGREGATION_MODES, aggregate
from jaxrl_llm.losses.clipping import only_token_mean
from jaxrl_llm.objectives import (
    entropy_bonus,
    importance_weight,
    kl_to_reference,
    loss_mask,
    normalisers,
    sum_objectives,
    token_mean,
)
from jaxrl_llm.train.passes import reference_pass
from jaxrl_llm.transforms.base import is_static_zero
from jaxrl_llm.types import Objective

LOSS_AGG_MODES = (*AGGREGATION_MODES, "only_token_mean")


def token_loss_objective(
    per_token: Callable, loss_agg: str = "seq_mean_token_mean", max_len: int | None = None
) -> Objective:
    """The objective of a per-token loss `per_token(outputs, batch, state, mask) -> (loss [B, T],
    metrics)` (mask = `loss_mask(batch)`; metrics already normalised the contract's way).

    The loss is multiplied by the rollout-correction weights when the batch has them
    (`importance_weight`, stop-gradient, as in `policy_surrogate`), then aggregated with
    `loss_agg` (an `aggregate` mode, with the whole mini-batch's denominators, or DCPO's
    'only_token_mean', `losses.clipping.only_token_mean`). Metrics: pg_loss (token mean of the
    weighted loss), then the per_token's."""
    if loss_agg not in LOSS_AGG_MODES:
        raise ValueError(f"Unknown loss_agg={loss_agg!r}; expected one of {LOSS_AGG_MODES}.")

    def objective(outputs, batch, state):
        mask = loss_mask(batch)
        loss, metrics = per_token(outputs, batch, state, mask)
        weight = importance_weight(batch)
        if weight is not None:
            loss = loss * jax.lax.stop_gradient(weight)
        if loss_agg == "only_token_mean":
            total = only_token_mean(loss, mask)
        else:
            total = aggregate(loss, mask, loss_agg, **normalisers(batch), max_len=max_len)
        return total, {"pg_loss": token_mean(loss, mask, batch), **metrics}

    return objective


def regularised(
    surrogate: Objective,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    entropy_coef: float = 0.0,
    loss_agg: str = "seq_mean_token_mean",
    max_len: int | None = None,
) -> Objective:
    """`surrogate` + `kl_to_reference` (unless beta is a static 0) + `entropy_bonus` (unless
    entropy_coef is a static 0): `pg_terms` for a policy loss other than PPO-clip."""
    terms = [surrogate]
    if not is_static_zero(beta):
        terms.append(kl_to_reference(beta, kl_estimator, loss_agg, max_len))
    if not is_static_zero(entropy_coef):
        terms.append(entropy_bonus(entropy_coef, loss_agg, max_len))
    return sum_objectives(*terms)


def reference_passes(beta) -> tuple:
    """(reference_pass(),) unless beta is a static 0 (no KL term: no reference forward)."""
    return () if is_static_zero(beta) else (reference_pass(),)
