"""The `Algorithm` seams for losses that couple rows: `statistics` (mini-batch-wide quantities of
the current policy, totalled before the gradient) and `whole_groups` (mini- and micro-batches
keep a group's rows together)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_microbatch_invariance import FAST_COMPILE, moved, prepared_batch

import jaxrl_llm as jrl
from jaxrl_llm.train.trainer import Phase, update_order, whole_group_size


def _scaled_reinforce(mean_probability):
    """REINFORCE on the advantages, scaled by sg(p̄²) with p̄ the mean token probability of the
    current policy: a loss that is not a sum over rows of a per-row quantity."""

    def objective(outputs, batch, state):
        mask = jrl.loss_mask(batch)
        p = jax.lax.stop_gradient(mean_probability(outputs, batch, mask))
        pg = jrl.token_mean(-batch.advantages * outputs.logp, mask, batch)
        return p**2 * pg, {"p_bar": p * jrl.sequence_mean(jnp.ones(mask.shape[0]), batch)}

    return objective


@jrl.register_algorithm("seams_stats_reinforce")
def stats_reinforce() -> jrl.Algorithm:
    """p̄ from `statistics`: Σ m·π over the mini-batch / num_tokens."""

    def statistics(outputs, batch, state):
        return {"p_sum": jnp.sum(jnp.exp(outputs.logp) * jrl.loss_mask(batch))}

    objective = _scaled_reinforce(
        lambda outputs, batch, mask: outputs.stats["p_sum"] / batch.extras["num_tokens"]
    )
    return jrl.Algorithm("rollout", jrl.group_advantages(), objective, statistics=statistics)


@jrl.register_algorithm("seams_micro_reinforce")
def micro_reinforce() -> jrl.Algorithm:
    """p̄ from the micro-batch alone (the mistake the statistics seam exists to avoid)."""
    objective = _scaled_reinforce(
        lambda outputs, batch, mask: jnp.sum(jnp.exp(outputs.logp) * mask) / jnp.sum(mask)
    )
    return jrl.Algorithm("rollout", jrl.group_advantages(), objective)


@pytest.fixture(scope="module")
def grpo_batch(tfds_dir, tmp_path_factory):
    """(trainer, state, batch): a smoke GRPO trainer's first prepared batch, shared by the tests."""
    return prepared_batch("grpo", tfds_dir, tmp_path_factory.mktemp("seams"))


def test_statistics_are_mini_batch_totals_with_any_number_of_micro_batches(grpo_batch):
    trainer, state, batch = grpo_batch
    params = moved(state.params)
    args = (trainer.model_config, params, batch)
    kwargs = dict(temperature=trainer.sampling.temperature, compiler_options=FAST_COMPILE)
    report = jrl.check_microbatch_invariance(jrl.make_algorithm("seams_stats_reinforce"), *args, **kwargs)
    assert report.values["grad_norm"] > 0 and 0 < report.values["p_bar"] < 1
    with pytest.raises(AssertionError, match="loss differs"):
        jrl.check_microbatch_invariance(jrl.make_algorithm("seams_micro_reinforce"), *args, **kwargs)


def _rollout(group_ids):
    n = len(group_ids)
    return jrl.Rollout(
        prompt_ids=np.zeros((n, 2), np.int32),
        prompt_mask=np.ones((n, 2), np.int32),
        response_ids=np.zeros((n, 3), np.int32),
        response_mask=np.ones((n, 3), np.int32),
        group_ids=np.asarray(group_ids, np.int32),
    )


def _phase(minibatches):
    return Phase("main", jrl.make_algorithm("grpo"), 1, 8, None, None, minibatches=minibatches)


def test_whole_groups_are_checked_and_permuted_as_blocks():
    batch = _rollout(np.repeat(np.arange(8), 4))  # 8 groups of 4
    assert whole_group_size(batch, _phase(2), 4) == 4  # 32 rows / 2 / 4 = 4 rows per micro-batch
    with pytest.raises(ValueError, match=r"micro-batch has 2 rows .*train.microbatches=8"):
        whole_group_size(batch, _phase(2), 8)
    with pytest.raises(ValueError, match="consecutive blocks of one size"):
        whole_group_size(_rollout([0, 0, 1, 1, 0, 0, 2, 2]), _phase(1), 1)
    with pytest.raises(ValueError, match="consecutive blocks of one size"):
        whole_group_size(_rollout([0, 0, 0, 1, 2, 2]), _phase(1), 1)
    order = update_order(jax.random.PRNGKey(3), 32, 2, whole=4)
    assert sorted(order) == list(range(32)) and list(order) != list(range(32))
    blocks = order.reshape(8, 4)
    assert (blocks == blocks[:, :1] + np.arange(4)).all() and (blocks[:, 0] % 4 == 0).all()
    rows = update_order(jax.random.PRNGKey(3), 32, 2)  # rows: the permutation the trainer always used
    np.testing.assert_array_equal(rows, np.asarray(jax.random.permutation(jax.random.PRNGKey(3), 32)))
    np.testing.assert_array_equal(update_order(jax.random.PRNGKey(3), 32, 1, whole=4), np.arange(32))


@jrl.register_algorithm("seams_dual_ascent")
def dual_ascent(eta: float = 2.0) -> jrl.Algorithm:
    """REINFORCE with a multiplier λ ← λ + η·D after each update, D the mini-batch token-mean k3
    KL between the pre-update policy (logp_old) and the updated one."""

    def statistics(outputs, batch, state):
        mask = jrl.loss_mask(batch)
        kl = jrl.kl_estimate(batch.logp_old, outputs.logp, "k3")
        return {"kl_sum": jnp.sum(kl * mask), "tokens": jnp.sum(mask)}

    def objective(outputs, batch, state):
        mask = jrl.loss_mask(batch)
        pg = jrl.token_mean(-batch.advantages * outputs.logp, mask, batch)
        return pg, {"lam": state["lam"] * jrl.sequence_mean(jnp.ones(mask.shape[0]), batch)}

    advantages = jrl.group_advantages()

    def update(batch, state):  # GRPO advantages; the state passes through
        return advantages.update(batch, ())[0], state

    return jrl.Algorithm(
        "rollout",
        jrl.RolloutTransform(lambda: {"lam": jnp.zeros(())}, update),
        objective,
        statistics=statistics,
        post_update=lambda state, stats: {"lam": state["lam"] + eta * stats["kl_sum"] / stats["tokens"]},
    )


def test_post_update_sees_the_statistics_of_the_updated_policy(grpo_batch):
    import optax

    from jaxrl_llm.train.forward import batch_policy_outputs
    from jaxrl_llm.train.steps import TrainState, make_step_fns

    trainer, state, batch = grpo_batch
    algorithm = jrl.make_algorithm("seams_dual_ascent")
    cfg, temperature = trainer.model_config, trainer.sampling.temperature
    logp = lambda params: batch_policy_outputs(cfg, params, batch, temperature).logp  # noqa: E731
    batch = batch._replace(logp_old=logp(state.params), metrics={})
    rows = jnp.arange(batch.prompt_ids.shape[0])
    lams, params = [], []
    for micro in (1, 4):
        opt = optax.sgd(0.5)
        _, update = make_step_fns(
            algorithm, cfg, opt, None, temperature=temperature, microbatches=micro, recompute_old_logp=False
        )
        start = TrainState(
            jnp.zeros((), jnp.int32),
            jax.tree.map(jnp.copy, state.params),
            opt.init(state.params),
            {"lam": jnp.zeros(())},
            jax.random.PRNGKey(0),
        )
        new, metrics, finite = update(start, batch, rows)
        assert bool(finite) and float(metrics["lam"]) == 0.0  # the objective saw the state before
        lams.append(float(new.algo_state["lam"]))
        params.append(new.params)
    mask = np.asarray(batch.response_mask, np.float32)
    kl = np.asarray(jrl.kl_estimate(batch.logp_old, logp(params[0]), "k3"))
    expected = 2.0 * float((kl * mask).sum() / mask.sum())
    assert expected > 1e-6
    np.testing.assert_allclose(lams, [expected, expected], rtol=1e-4)
