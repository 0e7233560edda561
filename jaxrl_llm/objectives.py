"""Objective helpers and composable objective terms.

An objective is `(outputs: ModelOutputs, batch, state) -> (loss, metrics)`. The trainer SUMS
loss, gradients and metrics over the micro-batches of a mini-batch, so every quantity must be
normalised by the whole mini-batch's denominators (`batch.extras['num_tokens']` = loss-mask
tokens, `['num_seqs']` = rows), never by the micro-batch's own: use `token_mean`,
`sequence_mean` or `aggregate(..., **normalisers(batch))`, not `jnp.mean`.

Terms are objectives too; `sum_objectives(*terms)` adds their losses and merges their metrics:

    objective = sum_objectives(
        policy_surrogate(clip_eps=0.2, loss_agg="token_mean"),
        kl_to_reference(coef=0.04, estimator="k3"),
        entropy_bonus(coef=0.001),
    )

Every aggregation mode is linear in the per-token loss, so a sum of terms aggregated one by one
equals the aggregate of the summed per-token loss.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrl_llm.losses.aggregation import AGGREGATION_MODES, aggregate
from jaxrl_llm.losses.clipping import only_token_mean
from jaxrl_llm.losses.policy import kl_estimate, ppo_clip_loss
from jaxrl_llm.losses.value import clipped_value_loss
from jaxrl_llm.transforms.base import is_static_zero
from jaxrl_llm.types import Objective, PreferenceBatch


def normalisers(batch) -> dict:
    """The whole mini-batch's denominators the trainer puts in `batch.extras`, as keyword
    arguments of `aggregate` (None outside the trainer: `aggregate` then uses the batch's own)."""
    extras = batch.extras or {}
    return dict(num_tokens=extras.get("num_tokens"), num_seqs=extras.get("num_seqs"))


def loss_mask(batch) -> jax.Array:
    """Float mask of the positions that carry loss: `Rollout.loss_mask` (default: the response
    mask) [B, T], or a PreferenceBatch's chosen then rejected masks [2B, T] (the row order of
    `ModelOutputs` for preference batches)."""
    if isinstance(batch, PreferenceBatch):
        return jnp.concatenate([batch.chosen_mask, batch.rejected_mask]).astype(jnp.float32)
    mask = batch.response_mask if batch.loss_mask is None else batch.loss_mask
    return jnp.asarray(mask, jnp.float32)


def token_mean(x: jax.Array, mask: jax.Array, batch) -> jax.Array:
    """Σ m·x / num_tokens of the whole mini-batch: a masked token mean that sums correctly
    over micro-batches (what every per-token metric must be)."""
    return aggregate(x, mask, "token_mean", **normalisers(batch))


def sequence_mean(x: jax.Array, batch) -> jax.Array:
    """Σ_i x_i / num_seqs of the whole mini-batch, for per-sequence values x [B]."""
    num_seqs = normalisers(batch)["num_seqs"]
    num_seqs = x.shape[0] if num_seqs is None else num_seqs
    return jnp.sum(jnp.asarray(x, jnp.float32)) / jnp.maximum(num_seqs, 1.0)


LOSS_AGG_MODES = (*AGGREGATION_MODES, "only_token_mean")  # of a token_loss_objective
PAIR_WEIGHT = "pair_weight"  # PreferenceBatch.extras: per-pair loss weights [B] (online pairs; ties 0)
NUM_CHOSEN_TOKENS = "num_chosen_tokens"  # PreferenceBatch.extras: the mini-batch's chosen tokens (NLL terms)
IS_WEIGHT = "is_weight"  # Rollout.extras key of the rollout-correction importance weights [B, T]


def importance_weight(batch) -> jax.Array | None:
    """`batch.extras['is_weight']` [B, T]: per-token importance weights a rollout-correction
    transform wrote (`jaxrl_llm.transforms.correction.truncated_is`), or None. Policy terms
    multiply their per-token loss by it (`policy_surrogate` does)."""
    return (batch.extras or {}).get(IS_WEIGHT)


def old_logp(outputs, batch) -> jax.Array:
    """logp_old, or stop_gradient(logp) when the trainer skipped the pass (one update per
    rollout: the current parameters are then exactly the pre-update ones)."""
    return jax.lax.stop_gradient(outputs.logp) if batch.logp_old is None else batch.logp_old


def sum_objectives(*terms: Objective) -> Objective:
    """The objective whose loss is the sum of the terms' losses; metrics are merged (a name
    reported by two terms is an error: rename one)."""

    def objective(outputs, batch, state):
        total, metrics = 0.0, {}
        for term in terms:
            loss, m = term(outputs, batch, state)
            clash = set(m) & set(metrics)
            if clash:
                raise ValueError(f"sum_objectives: metrics {sorted(clash)} are reported by two terms")
            total, metrics = total + loss, {**metrics, **m}
        return total, metrics

    return objective


def token_loss_objective(
    per_token: Callable, loss_agg: str = "seq_mean_token_mean", max_len: int | None = None
) -> Objective:
    """The objective of a per-token policy loss `per_token(outputs, batch, state, mask) ->
    (loss [B, T], metrics)` (mask = `loss_mask(batch)`; its metrics already normalised the
    contract's way): the way every per-token policy loss becomes an objective.

    The loss is multiplied by the rollout-correction weights when the batch has them
    (`importance_weight`, stop-gradient: truncated IS between the trainer's and the sampler's
    log-probs, verl's `pg_losses * rollout_is_weights`), then aggregated with `loss_agg` (an
    `aggregate` mode, with the whole mini-batch's denominators, or DCPO's 'only_token_mean',
    `losses.clipping.only_token_mean`). Metrics: pg_loss (token mean of the weighted loss),
    then the per_token's."""
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


def policy_surrogate(
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    loss_agg: str = "seq_mean_token_mean",
    max_len: int | None = None,
) -> Objective:
    """PPO clipped surrogate on `batch.advantages` (`ppo_clip_loss`: asymmetric and dual clip,
    ratio against `old_logp`), a `token_loss_objective` (rollout-correction weights, `loss_agg`
    over the loss mask). Metrics: pg_loss (token mean, weighted), clip_fraction."""

    def per_token(outputs, batch, state, mask):
        pg, clipped = ppo_clip_loss(
            outputs.logp, old_logp(outputs, batch), batch.advantages, clip_eps, clip_eps_high, dual_clip
        )
        return pg, {"clip_fraction": token_mean(clipped, mask, batch)}

    return token_loss_objective(per_token, loss_agg, max_len)


def kl_to_reference(
    coef: float, estimator: str = "k3", loss_agg: str = "seq_mean_token_mean", max_len: int | None = None
) -> Objective:
    """coef · KL(π‖π_ref) per token (`kl_estimate` of logp against `batch.logp_ref`; needs the
    `reference_pass`), aggregated like the surrogate. Metric: kl (token mean)."""

    def objective(outputs, batch, state):
        mask = loss_mask(batch)
        kl = kl_estimate(outputs.logp, batch.logp_ref, kind=estimator)
        loss = coef * aggregate(kl, mask, loss_agg, **normalisers(batch), max_len=max_len)
        return loss, {"kl": token_mean(kl, mask, batch)}

    return objective


def entropy_bonus(
    coef: float, loss_agg: str = "seq_mean_token_mean", max_len: int | None = None
) -> Objective:
    """−coef · H(π) per token (maximises entropy for coef > 0). No metric: the trainer logs
    the entropy of every update."""

    def objective(outputs, batch, state):
        mask = loss_mask(batch)
        return -coef * aggregate(outputs.entropy, mask, loss_agg, **normalisers(batch), max_len=max_len), {}

    return objective


def nll(coef: float = 1.0, loss_agg: str = "token_mean", max_len: int | None = None) -> Objective:
    """coef · (−log π(y_t)) over the loss mask: SFT, or an NLL regulariser (RPO, PPO-ptx).
    Metric: nll (token mean)."""

    def objective(outputs, batch, state):
        mask = loss_mask(batch)
        loss = aggregate(-outputs.logp, mask, loss_agg, **normalisers(batch), max_len=max_len)
        return coef * loss, {"nll": token_mean(-outputs.logp, mask, batch)}

    return objective


def value_loss(clip_eps: float | None = 0.2) -> Objective:
    """Critic objective: clipped squared error of `outputs.values` against `batch.returns`
    (`clipped_value_loss`, V_old = batch.values), token mean over the loss mask.
    Metrics: value_loss, value_mean, return_mean."""

    def objective(outputs, batch, state):
        mask = loss_mask(batch)
        loss = clipped_value_loss(outputs.values, batch.values, batch.returns, clip_eps)
        metrics = {
            "value_loss": token_mean(loss, mask, batch),
            "value_mean": token_mean(outputs.values, mask, batch),
            "return_mean": token_mean(batch.returns, mask, batch),
        }
        return token_mean(loss, mask, batch), metrics

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
    entropy_coef is a static 0): a policy loss with its usual regularisers."""
    terms = [surrogate]
    if not is_static_zero(beta):
        terms.append(kl_to_reference(beta, kl_estimator, loss_agg, max_len))
    if not is_static_zero(entropy_coef):
        terms.append(entropy_bonus(entropy_coef, loss_agg, max_len))
    return sum_objectives(*terms)


def pg_terms(
    clip_eps, clip_eps_high, dual_clip, beta, kl_estimator, loss_agg, max_len, entropy_coef
) -> Objective:
    """The GRPO-family objective: `regularised(policy_surrogate(...))`."""
    surrogate = policy_surrogate(clip_eps, clip_eps_high, dual_clip, loss_agg, max_len)
    return regularised(surrogate, beta, kl_estimator, entropy_coef, loss_agg, max_len)
