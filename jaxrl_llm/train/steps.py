"""The jitted step functions of the trainer, algorithm-agnostic.

`prepare(state, batch, aux)` runs the algorithm's passes (`Algorithm.passes`, plus `old_logp`
when several updates per rollout need it) and its `transform` once per batch (`aux`: the
frozen auxiliary models' params, name -> params); `update(state, batch, rows)` takes
one optimiser step on the mini-batch `batch[rows]`, accumulating gradients over micro-batches
with the mini-batch denominators, and refuses non-finite steps (parameters unchanged).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrl_llm import lora, sharding
from jaxrl_llm.models.config import TransformerConfig
from jaxrl_llm.models.transformer import remat_compiler_options
from jaxrl_llm.objectives import NUM_CHOSEN_TOKENS, loss_mask, token_mean
from jaxrl_llm.train.forward import batch_policy_outputs, batch_reward_outputs, critic_values
from jaxrl_llm.train.passes import old_policy_pass
from jaxrl_llm.types import Algorithm, ModelOutputs, PassContext, PreferenceBatch, Rollout, Rounds


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
    anchor_params: Any = None  # θ̂_t, the policy at the end of the last round (`Rounds`, α > 0)


def reference_params(state: TrainState, model_config: TransformerConfig):
    """The reference policy's params: under LoRA the frozen base (the adapters dropped, sharing
    the policy's arrays: no copy), otherwise `state.ref_params` (None without a reference pass)."""
    if model_config.lora is not None:
        return lora.base_params(state.params)
    return state.ref_params


def next_round(state: TrainState, rounds: Rounds, model_config: TransformerConfig) -> TrainState:
    """The state after a round boundary of `rounds` (pure; the trainer jits it, the state
    donated). With extrapolation α:

        θ_{t+1} = θ̂_{t+1} + α (θ̂_{t+1} − θ̂_t)   (in float32, stored in each leaf's dtype)
        reference ← θ_{t+1},   anchor_params ← θ̂_{t+1}

    θ̂_{t+1} = `state.params`, θ̂_t = `state.anchor_params` (α > 0 only). Under LoRA (α = 0
    only, validated) the adapters fold into the frozen base, which is the reference, and restart
    from zero (`lora.merge_adapters(keep_adapters=True)`: the policy is unchanged). The optimiser
    state carries on across the boundary."""
    if model_config.lora is not None:
        return state._replace(params=lora.merge_adapters(model_config, state.params, keep_adapters=True))
    params, anchor = state.params, state.anchor_params
    if rounds.extrapolation:
        a = rounds.extrapolation

        def extrapolate(new, old):
            new32 = jnp.asarray(new, jnp.float32)
            return (new32 + a * (new32 - jnp.asarray(old, jnp.float32))).astype(new.dtype)

        anchor = jax.tree.map(jnp.copy, params)
        params = jax.tree.map(extrapolate, params, state.anchor_params)
    return state._replace(params=params, ref_params=jax.tree.map(jnp.copy, params), anchor_params=anchor)


def state_shardings(
    state: TrainState,
    model_config: TransformerConfig,
    partitioning: sharding.Partitioning,
    head: str = "causal_lm",
):
    """NamedShardings of every leaf of `state` (concrete or abstract): the trained model
    (`head`: the algorithm's, 'causal_lm' for a policy), the reference and the critic by their
    heads' logical axes, optimiser states like their (trainable) parameters where param-shaped,
    step, RNG and algorithm state replicated."""
    p = partitioning

    def model(params, head):
        return None if params is None else sharding.param_shardings(params, model_config, p, head)

    def optimizer(opt_state, params, head):
        if opt_state is None:
            return None
        trainable, _ = lora.split_trainable(model_config, params)
        return sharding.optimizer_shardings(opt_state, trainable, model_config, p, head)

    return TrainState(
        step=sharding.replicated(state.step, p),
        params=model(state.params, head),
        opt_state=optimizer(state.opt_state, state.params, head),
        algo_state=sharding.replicated(state.algo_state, p),
        rng=sharding.replicated(state.rng, p),
        ref_params=model(state.ref_params, "causal_lm"),
        critic_params=model(state.critic_params, "value"),
        critic_opt_state=optimizer(state.critic_opt_state, state.critic_params, "value"),
        anchor_params=model(state.anchor_params, head),
    )


def with_normalisers(batch):
    """Adds the whole mini-batch's loss-mask token count and row count to `batch.extras` (and,
    for a `PreferenceBatch`, its chosen-token count `num_chosen_tokens`, of NLL terms)."""
    tokens = jnp.sum(loss_mask(batch))
    preference = isinstance(batch, PreferenceBatch)
    seqs = batch.chosen_ids.shape[0] if preference else batch.response_ids.shape[0]
    extras = {
        **batch.extras,
        "num_tokens": jnp.maximum(tokens, 1).astype(jnp.float32),
        "num_seqs": jnp.asarray(seqs, jnp.float32),
    }
    if preference:
        extras[NUM_CHOSEN_TOKENS] = jnp.maximum(jnp.sum(batch.chosen_mask), 1).astype(jnp.float32)
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


def _shared(batch, group_size: int) -> int:
    """`group_size` where `batch`'s rows form whole groups, else 1 (every row runs its prompt)."""
    return group_size if group_size > 1 and batch.prompt_ids.shape[0] % group_size == 0 else 1


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
    aux_models: dict | None = None,
    group_size: int = 1,
    grouped_update_rows: bool = False,
    donate_prepare: bool = False,
):
    """Returns (prepare, update), both jitted; see the module docstring.

    With a `partitioning` (a mesh of more than one device) both take explicit in/out shardings:
    the state by `state_shardings`, batches on their leading axis, metrics replicated.
    `group_size`: G when rows b * G .. b * G + G - 1 of every Rollout share one prompt (the
    trainer's rollouts): the policy passes of `prepare` then run each prompt once
    (`policy_outputs`' group_size), and so does `update` when `grouped_update_rows` promises that
    its `rows` keep whole groups in order (the trainer's single mini-batch: rows = arange), each
    micro-batch holds whole groups and there is no adapter dropout (which would draw one mask
    per prompt instead of one per row).
    `update` donates the state it is given. `prepare` does with `donate_prepare` (the trainer):
    its returned state then aliases the input's buffers; without, XLA copies the whole state
    (params, optimiser state, reference) into new buffers, which also leaves the caller's arrays
    valid after the next `update`.
    Under LoRA (`model_config.lora`) gradients and optimiser states cover only the trainable
    half of the params (`lora.split_trainable`), and the reference is the base model; with
    adapter dropout, `update` draws the dropout key from `state.rng` (and advances it).
    """
    has_critic = algorithm.value_objective is not None
    passes = algorithm.passes
    if recompute_old_logp and not any(p.name == "old_logp" for p in passes):
        passes = (*passes, old_policy_pass())
    aux_models = aux_models or {}
    uses_dropout = model_config.lora is not None and model_config.lora.dropout > 0

    def outputs_of(params, batch, dropout_rng=None, grouped: bool = True, kl_params=None) -> ModelOutputs:
        if algorithm.head == "reward":
            return batch_reward_outputs(model_config, params, batch, dropout_rng)
        g = _shared(batch, group_size) if grouped and isinstance(batch, Rollout) else 1
        direction = algorithm.full_kl or "forward"
        return batch_policy_outputs(
            model_config, params, batch, temperature, dropout_rng, g, kl_params, direction
        )

    def values_of(params, batch, dropout_rng=None):
        b = batch
        return critic_values(
            model_config, params, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask, dropout_rng
        )

    def prepare(state: TrainState, batch, aux=None):
        aux = {name: m._replace(params=(aux or {})[name]) for name, m in aux_models.items()}
        ctx = PassContext(
            params=state.params,
            ref_params=reference_params(state, model_config),
            critic_params=state.critic_params,
            aux=aux,
            policy_outputs=outputs_of,
            critic_values=values_of,
        )
        for p in passes:
            batch = p.run(ctx, batch)
        batch, algo_state = algorithm.transform.update(batch, state.algo_state)
        return batch, state._replace(algo_state=algo_state)

    grouped_update = grouped_update_rows and not uses_dropout

    def statistics_of(params, batch, algo_state, outputs=None):
        """`Algorithm.statistics` of the current policy on `batch` (no gradient)."""
        if outputs is None:
            outputs = outputs_of(params, batch, None, grouped_update)
        return algorithm.statistics(jax.lax.stop_gradient(outputs), batch, algo_state)

    def minibatch_statistics(params, batch, algo_state):
        """`Algorithm.statistics` totalled over the micro-batches of the mini-batch `batch`."""
        if microbatches == 1:
            return statistics_of(params, batch, algo_state)

        def add(total, micro):
            return jax.tree.map(jnp.add, total, statistics_of(params, micro, algo_state)), None

        shapes = jax.eval_shape(statistics_of, params, _rows(batch, slice(0, 1)), algo_state)
        total, _ = jax.lax.scan(add, jax.tree.map(jnp.zeros_like, shapes), _split(batch, microbatches))
        return total

    def policy_loss(trainable, frozen, batch, algo_state, dropout_rng, stats, kl_params):
        outputs = outputs_of(lora.join(trainable, frozen), batch, dropout_rng, grouped_update, kl_params)
        if algorithm.statistics is not None:  # one micro-batch: the totals are this forward's
            stats = statistics_of(None, batch, algo_state, outputs) if stats is None else stats
            outputs = outputs._replace(stats=stats)
        loss, metrics = algorithm.objective(outputs, batch, algo_state)
        if outputs.entropy is not None:
            metrics = {**metrics, "entropy": token_mean(outputs.entropy, loss_mask(batch), batch)}
        return loss, metrics

    def critic_loss(trainable, frozen, batch, algo_state, dropout_rng):
        values = values_of(lora.join(trainable, frozen), batch, dropout_rng)
        return algorithm.value_objective(ModelOutputs(values=values), batch, algo_state)

    def grads(state: TrainState, batch, dropout_rng, stats=None):
        """Gradients with respect to the trainable halves of the policy and critic params."""
        policy_rng, critic_rng = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
        kl_params = reference_params(state, model_config) if algorithm.full_kl else None
        (loss, metrics), g = jax.value_and_grad(policy_loss, has_aux=True)(
            *lora.split_trainable(model_config, state.params),
            batch,
            state.algo_state,
            policy_rng,
            stats,
            kl_params,
        )
        metrics = {**metrics, "loss": loss}
        critic_g = None
        if has_critic:
            (vloss, vmetrics), critic_g = jax.value_and_grad(critic_loss, has_aux=True)(
                *lora.split_trainable(model_config, state.critic_params), batch, state.algo_state, critic_rng
            )
            metrics = {**metrics, **vmetrics, "critic_loss": vloss}
        return (g, critic_g), metrics

    def apply_gradients(opt, grads, opt_state, params):
        """(params with the update applied to their trainable half, new optimiser state)."""
        trainable, frozen = lora.split_trainable(model_config, params)
        updates, opt_state = opt.update(grads, opt_state, trainable)
        return lora.join(optax.apply_updates(trainable, updates), frozen), opt_state

    def update(state: TrainState, batch, rows):
        batch = with_normalisers(_rows(batch, rows))
        dropout_rng = None
        if uses_dropout:
            rng, dropout_rng = jax.random.split(state.rng)
            state = state._replace(rng=rng)
        if microbatches == 1:
            (g, critic_g), metrics = grads(state, batch, dropout_rng)
        else:
            micros = (_split(batch, microbatches), jnp.arange(microbatches))
            first = jax.tree.map(lambda x: x[0], micros[0])  # one micro-batch (whole groups)
            stats = None  # totals over the mini-batch, before the gradient
            if algorithm.statistics is not None:
                stats = minibatch_statistics(state.params, batch, state.algo_state)

            def accumulate(total, micro):
                micro_batch, index = micro
                rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, index)
                new, metrics = grads(state, micro_batch, rng, stats)
                return jax.tree.map(jnp.add, total, (new, metrics)), None

            shapes = jax.eval_shape(grads, state, first, dropout_rng, stats)
            zeros = jax.tree.map(jnp.zeros_like, shapes)
            ((g, critic_g), metrics), _ = jax.lax.scan(accumulate, zeros, micros)
        finite = _all_finite((metrics["loss"], g, critic_g, metrics.get("critic_loss", 0.0)))
        metrics = {**metrics, "grad_norm": optax.global_norm(g)}
        if has_critic:
            metrics["critic_grad_norm"] = optax.global_norm(critic_g)

        def apply(operand):
            state, g, critic_g = operand
            params, opt_state = apply_gradients(optimizer, g, state.opt_state, state.params)
            new = state._replace(params=params, opt_state=opt_state)
            if has_critic:
                critic_params, critic_opt = apply_gradients(
                    critic_optimizer, critic_g, state.critic_opt_state, state.critic_params
                )
                new = new._replace(critic_params=critic_params, critic_opt_state=critic_opt)
            return new

        # A non-finite step changes nothing; the host stops or skips as configured. A cond, not
        # a select between the new and the old state: the optimiser then updates the donated
        # buffers in place (a select kept both states alive and copied them every step).
        new = jax.lax.cond(finite, apply, lambda operand: operand[0], (state, g, critic_g))
        if algorithm.post_update is not None:  # statistics at the updated params -> algo state
            after = algorithm.post_update(
                new.algo_state, minibatch_statistics(new.params, batch, new.algo_state)
            )
            algo_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), after, new.algo_state)
            new = new._replace(algo_state=algo_state)
        return new, metrics, finite

    options = remat_compiler_options(model_config)  # `update` differentiates: remat applies
    if partitioning is None:
        prepare_jit = jax.jit(prepare, donate_argnums=0 if donate_prepare else ())
        return prepare_jit, jax.jit(update, donate_argnums=0, compiler_options=options)
    p = partitioning

    def state_of(state):
        return state_shardings(state, model_config, p, algorithm.head)

    def aux_of(aux):
        return {
            n: sharding.param_shardings(a, aux_models[n].config, p, aux_models[n].head)
            for n, a in (aux or {}).items()
        }

    prepare_sharded = sharding.ShardedJit(
        prepare,
        p,
        in_shardings=lambda state, batch, *aux: (
            state_of(state),
            sharding.batch_shardings(batch, p),
            *map(aux_of, aux),
        ),
        out_shardings=lambda out: (sharding.batch_shardings(out[0], p), state_of(out[1])),
        donate_argnums=0 if donate_prepare else (),
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
        compiler_options=options,
    )
    return prepare_sharded, update_sharded
