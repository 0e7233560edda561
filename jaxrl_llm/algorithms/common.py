"""Small pieces shared by the algorithm factories."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.losses.aggregation import aggregate


def normalisers(batch) -> dict:
    """Mini-batch denominators the trainer puts in `batch.extras` (see `aggregate`)."""
    return dict(num_tokens=batch.extras.get("num_tokens"), num_seqs=batch.extras.get("num_seqs"))


def token_mean(x: jax.Array, mask: jax.Array, batch) -> jax.Array:
    """Masked token mean over the whole mini-batch: additive across micro-batches, which is
    what every objective metric must be (the trainer sums micro-batch metrics)."""
    return aggregate(x, mask, "token_mean", **normalisers(batch))


def old_logp(outputs, batch) -> jax.Array:
    """logp_old, or stop_gradient(logp) when the trainer skipped the pass (one update per
    rollout: the current parameters are then exactly the pre-update ones)."""
    return jax.lax.stop_gradient(outputs.logp) if batch.logp_old is None else batch.logp_old


def response_mask(batch) -> jax.Array:
    return batch.response_mask.astype(jnp.float32)
