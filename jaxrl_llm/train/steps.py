"""The jitted step functions of the trainer, algorithm-agnostic.

`prepare(state, batch)` runs the passes the algorithm asks for (reference log-probs, pre-update
log-probs, critic values) and its `transform` once per batch; `update(state, batch, rows)` takes
one optimiser step on the mini-batch `batch[rows]`, accumulating gradients over micro-batches
with the mini-batch denominators, and refuses non-finite steps (parameters unchanged).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrl_llm import sharding
from jaxrl_llm.algorithms.common import token_mean
from jaxrl_llm.models.config import TransformerConfig
from jaxrl_llm.train.forward import batch_policy_outputs, critic_values, loss_mask
from jaxrl_llm.types import Algorithm, ModelOutputs, PreferenceBatch, Rollout


class TrainState(NamedTuple):
    """Everything a checkpoint restores. `step` counts completed steps over all phases."""

    step: Any
    params: Any
    opt_state: Any
    algo_state: Any
    rng: Any
    ref_params: Any = None
    critic_params: Any = None
    critic_opt_state: Any = None


def state_shardings(state: TrainState, model_config: TransformerConfig, partitioning: sharding.Partitioning):
    """NamedShardings of every leaf of `state` (concrete or abstract): the policy, the reference
    and the critic by their heads' logical axes, optimiser states like their parameters where
    param-shaped, step, RNG and algorithm state replicated."""
    p = partitioning

    def model(params, head):
        return None if params is None else sharding.param_shardings(params, model_config, p, head)

    def optimizer(opt_state, params, head):
        if opt_state is None:
            return None
        return sharding.optimizer_shardings(opt_state, params, model_config, p, head)

    return TrainState(
        step=sharding.replicated(state.step, p),
        params=model(state.params, "causal_lm"),
        opt_state=optimizer(state.opt_state, state.params, "causal_lm"),
        algo_state=sharding.replicated(state.algo_state, p),
        rng=sharding.replicated(state.rng, p),
        ref_params=model(state.ref_params, "causal_lm"),
        critic_params=model(state.critic_params, "value"),
        critic_opt_state=optimizer(state.critic_opt_state, state.critic_params, "value"),
    )


def with_normalisers(batch):
    """Adds the whole mini-batch's response-token and sequence counts to `batch.extras`."""
    if isinstance(batch, PreferenceBatch):
        tokens = jnp.sum(batch.chosen_mask) + jnp.sum(batch.rejected_mask)
        seqs = batch.chosen_ids.shape[0]
    else:
        tokens, seqs = jnp.sum(batch.response_mask), batch.response_ids.shape[0]
    extras = {
        **batch.extras,
        "num_tokens": jnp.maximum(tokens, 1).astype(jnp.float32),
        "num_seqs": jnp.asarray(seqs, jnp.float32),
    }
    return batch._replace(extras=extras)


def _rows(batch, index):
    """batch[index] on every leaf with a leading batch axis (scalars in extras kept)."""
    return jax.tree.map(lambda x: x[index] if x.ndim else x, batch)


def _split(batch, num: int):
    """[B, ...] leaves -> [num, B/num, ...]; scalars broadcast to [num] (scanned alongside)."""
    return jax.tree.map(
        lambda x: x.reshape(num, x.shape[0] // num, *x.shape[1:]) if x.ndim else jnp.broadcast_to(x, (num,)),
        batch,
    )


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.asarray(True)


def make_step_fns(
    algorithm: Algorithm,
    model_config: TransformerConfig,
    optimizer: optax.GradientTransformation,
    critic_optimizer: optax.GradientTransformation | None,
    *,
    temperature: float,
    microbatches: int,
    recompute_old_logp: bool,
    partitioning: sharding.Partitioning | None = None,
):
    """Returns (prepare, update), both jitted; see the module docstring.

    With a `partitioning` (a mesh of more than one device) both take explicit in/out shardings:
    the state by `state_shardings`, batches on their leading axis, metrics replicated.
    """
    has_critic = algorithm.value_objective is not None
    passes = algorithm.passes

    def outputs_of(params, batch) -> ModelOutputs:
        return batch_policy_outputs(model_config, params, batch, temperature)

    def values_of(params, batch):
        return critic_values(
            model_config, params, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask
        )

    def prepare(state: TrainState, batch):
        if "reference" in passes:
            ref = outputs_of(state.ref_params, batch).logp
            if isinstance(batch, PreferenceBatch):
                b = batch.chosen_ids.shape[0]
                batch = batch._replace(ref_chosen_logps=ref[:b], ref_rejected_logps=ref[b:])
            else:
                batch = batch._replace(logp_ref=ref)
        if isinstance(batch, Rollout):
            if "old_logp" in passes or recompute_old_logp:
                batch = batch._replace(logp_old=outputs_of(state.params, batch).logp)
            if "critic" in passes:
                batch = batch._replace(values=values_of(state.critic_params, batch))
        batch, algo_state = algorithm.transform.update(batch, state.algo_state)
        return batch, state._replace(algo_state=algo_state)

    def policy_loss(params, batch, algo_state):
        outputs = outputs_of(params, batch)
        loss, metrics = algorithm.objective(outputs, batch, algo_state)
        metrics = {**metrics, "entropy": token_mean(outputs.entropy, loss_mask(batch), batch)}
        return loss, metrics

    def critic_loss(params, batch, algo_state):
        return algorithm.value_objective(ModelOutputs(values=values_of(params, batch)), batch, algo_state)

    def grads(state: TrainState, batch):
        (loss, metrics), g = jax.value_and_grad(policy_loss, has_aux=True)(
            state.params, batch, state.algo_state
        )
        metrics = {**metrics, "loss": loss}
        critic_g = None
        if has_critic:
            (vloss, vmetrics), critic_g = jax.value_and_grad(critic_loss, has_aux=True)(
                state.critic_params, batch, state.algo_state
            )
            metrics = {**metrics, **vmetrics, "critic_loss": vloss}
        return (g, critic_g), metrics

    def update(state: TrainState, batch, rows):
        batch = with_normalisers(_rows(batch, rows))
        if microbatches == 1:
            (g, critic_g), metrics = grads(state, batch)
        else:

            def accumulate(total, micro):
                new, metrics = grads(state, micro)
                return jax.tree.map(jnp.add, total, (new, metrics)), None

            zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grads, state, _rows(batch, slice(0, 1))))
            ((g, critic_g), metrics), _ = jax.lax.scan(accumulate, zeros, _split(batch, microbatches))
        finite = _all_finite((metrics["loss"], g, critic_g, metrics.get("critic_loss", 0.0)))
        metrics = {**metrics, "grad_norm": optax.global_norm(g)}

        updates, opt_state = optimizer.update(g, state.opt_state, state.params)
        new = state._replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)
        if has_critic:
            critic_updates, critic_opt = critic_optimizer.update(
                critic_g, state.critic_opt_state, state.critic_params
            )
            new = new._replace(
                critic_params=optax.apply_updates(state.critic_params, critic_updates),
                critic_opt_state=critic_opt,
            )
            metrics["critic_grad_norm"] = optax.global_norm(critic_g)
        # A non-finite step changes nothing; the host stops or skips as configured.
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
        return new, metrics, finite

    if partitioning is None:
        return jax.jit(prepare), jax.jit(update, donate_argnums=0)
    p = partitioning

    def state_of(state):
        return state_shardings(state, model_config, p)

    prepare_sharded = sharding.ShardedJit(
        prepare,
        p,
        in_shardings=lambda state, batch: (state_of(state), sharding.batch_shardings(batch, p)),
        out_shardings=lambda out: (sharding.batch_shardings(out[0], p), state_of(out[1])),
    )
    update_sharded = sharding.ShardedJit(
        update,
        p,
        in_shardings=lambda state, batch, rows: (
            state_of(state),
            sharding.batch_shardings(batch, p),
            sharding.replicated(rows, p),
        ),
        out_shardings=lambda out: (state_of(out[0]), *sharding.replicated(out[1:], p)),
        donate_argnums=0,
    )
    return prepare_sharded, update_sharded
