"""Hand-made batches for the algorithm tests (no model, no trainer): a small `Rollout`, the
`ModelOutputs` of given log-probs, rows of a batch, an algorithm's transform applied once, and
an objective's loss, metrics and gradient."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.types import ModelOutputs, Rollout


def rollout(rewards, mask, group_ids=None, **fields) -> Rollout:
    """B rows with response mask `mask` [B, T] (2-token prompts, token ids 0), `rewards` [B]
    (None: no rewards), `group_ids` [B] (default: one group) and any other `Rollout` field."""
    mask = jnp.asarray(mask, jnp.int32)
    b, t = mask.shape
    return Rollout(
        prompt_ids=jnp.zeros((b, 2), jnp.int32),
        prompt_mask=jnp.ones((b, 2), jnp.int32),
        response_ids=jnp.zeros((b, t), jnp.int32),
        response_mask=mask,
        group_ids=jnp.zeros(b, jnp.int32) if group_ids is None else jnp.asarray(group_ids, jnp.int32),
        rewards=None if rewards is None else jnp.asarray(rewards, jnp.float32),
        **fields,
    )


def outputs(logp, entropy=None, stats=None) -> ModelOutputs:
    """`ModelOutputs` of current log-probs `logp` (float32), `entropy` (default 0) and `stats`."""
    logp = jnp.asarray(logp, jnp.float32)
    return ModelOutputs(logp=logp, entropy=jnp.zeros_like(logp) if entropy is None else entropy, stats=stats)


def rows(batch, index):
    """`batch[index]` on every leaf with a leading axis (scalars such as extras['num_tokens'] kept)."""
    return jax.tree.map(lambda x: x[index] if jnp.ndim(x) else x, batch)


def prepare(algo, batch, state=None):
    """(batch, state) after one `algo.transform.update` (from the transform's init state unless given)."""
    return algo.transform.update(batch, algo.transform.init() if state is None else state)


def loss_and_grad(algo, batch, state, logp):
    """(loss, metrics, d loss / d logp) of `algo.objective` at current log-probs `logp` (entropy 0)."""

    def f(lp):
        return algo.objective(outputs(lp), batch, state)

    (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(logp, jnp.float32))
    return float(loss), metrics, np.asarray(grad)
