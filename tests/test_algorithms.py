"""Algorithm factories, registry, composition and hyper-parameter injection (golden values from the papers
and their reference implementations, cited in each function's docstring)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from batch_helpers import outputs, prepare, rollout, rows

from jaxrl_llm.algorithms import make_algorithm, register, registered_algorithms
from jaxrl_llm.transforms.base import InjectState, chain, identity, inject_hyperparams, named_chain
from jaxrl_llm.transforms.base import schedule as jrl_schedule
from jaxrl_llm.transforms.rollout import (
    gae,
    kl_penalty_in_reward,
    normalize_rewards,
    reward_to_tokens,
)
from jaxrl_llm.types import Algorithm, ModelOutputs, PreferenceBatch, RolloutTransform


def test_registry_lists_known_algorithms_for_unknown_name():
    assert {"grpo", "ppo", "dpo", "sft"} <= set(registered_algorithms())
    with pytest.raises(
        ValueError,
        match=r"unknown algorithm 'gpro'.*algo\.name.*known algorithms: (.*, )?dpo, (.*, )?grpo, (.*, )?ppo, (.*, )?sft",
    ):
        make_algorithm("gpro")


def test_unknown_hyperparameter_names_the_config_field():
    with pytest.raises(ValueError, match=r"algo\.betta.*accepts: clip_eps"):
        make_algorithm("grpo", betta=0.1)


def test_register_refuses_silent_overwrite():
    @register("test_identity_algo")
    def first():
        return Algorithm("rollout", identity(), lambda o, b, s: (0.0, {}))

    with pytest.raises(ValueError, match="already registered"):
        register("test_identity_algo")(lambda: None)
    register("test_identity_algo")(first)  # the same function again (a re-run cell) is fine


def test_grpo_golden_token_loss():
    # GRPO golden (DeepSeekMath, verl): rewards [1,0,0,0] -> A = [1.5, -.5, -.5, -.5]; on-policy token with
    # A = 1.5, pi = 0.5, pi_ref = 0.4, beta = 0.04 -> l = -1.5 + 0.04 * 0.023144 = -1.499074.
    algo = make_algorithm("grpo", beta=0.04)
    batch, state = prepare(algo, rollout([1.0, 0.0, 0.0, 0.0], np.ones((4, 1))))
    np.testing.assert_allclose(batch.advantages[:, 0], [1.5, -0.5, -0.5, -0.5], atol=1e-5)
    logp = jnp.full((4, 1), math.log(0.5))
    batch = batch._replace(logp_ref=jnp.full((4, 1), math.log(0.4)))
    loss, metrics = algo.objective(outputs(logp[:1]), rows(batch, slice(0, 1)), state)
    np.testing.assert_allclose(loss, -1.499074, atol=1e-5)
    np.testing.assert_allclose(metrics["kl"], 0.023144, atol=1e-6)
    assert [p.name for p in algo.passes] == ["reference"]
    assert make_algorithm("grpo", beta=0.0).passes == ()


def test_dr_grpo_advantages_and_aggregation():
    algo = make_algorithm("grpo", std="none", loss_agg="seq_mean_token_sum_norm", beta=0.0, max_len=4)
    batch, _ = prepare(algo, rollout([1.0, 0.0, 0.0, 0.0], np.ones((4, 1))))
    np.testing.assert_allclose(batch.advantages[:, 0], [0.75, -0.25, -0.25, -0.25], atol=1e-6)


def test_ppo_transform_chain_matches_gae_golden():
    # PPO-RLHF golden (MOSS-RLHF GAE): r = [0, 0, 1], V = [.5, .6, .7], gamma 1, lam .95.
    algo = make_algorithm("ppo", kl_coef=0.0, whiten=False)
    assert [p.name for p in algo.passes] == ["critic"] and algo.value_objective is not None
    batch, _ = prepare(algo, rollout([1.0], np.ones((1, 3)), values=jnp.asarray([[0.5, 0.6, 0.7]])))
    np.testing.assert_allclose(batch.advantages[0], [0.46575, 0.385, 0.3], atol=1e-5)
    np.testing.assert_allclose(batch.returns[0], [0.96575, 0.985, 1.0], atol=1e-5)
    # value clip golden (test (b)): V_old 0.5, V 1.0, R 1.2, eps 0.2 -> 0.125
    vb = batch._replace(values=jnp.full((1, 3), 0.5), returns=jnp.full((1, 3), 1.2))
    loss, _ = algo.value_objective(ModelOutputs(values=jnp.full((1, 3), 1.0)), vb, algo.transform.init())
    np.testing.assert_allclose(loss, 0.125, atol=1e-6)


def test_ppo_kl_penalty_in_reward_uses_old_and_reference():
    algo = make_algorithm("ppo", kl_coef=0.1, whiten=False, lam=1.0)
    assert {p.name for p in algo.passes} == {"critic", "reference", "old_logp"}
    batch = rollout(
        [1.0],
        np.ones((1, 2)),
        values=jnp.zeros((1, 2)),
        logp_old=jnp.log(jnp.full((1, 2), 0.5)),
        logp_ref=jnp.log(jnp.full((1, 2), 0.4)),
    )
    batch, _ = prepare(algo, batch)
    k1 = math.log(0.5 / 0.4)
    np.testing.assert_allclose(batch.token_rewards[0], [-0.1 * k1, 1.0 - 0.1 * k1], atol=1e-6)


def test_running_reward_normalisation_state_carries_across_batches():
    t = normalize_rewards()
    batch, state = t.update(rollout([1.0, 2.0, 3.0], np.ones((3, 1))), t.init())
    np.testing.assert_allclose(batch.rewards, [-1.0, 0.0, 1.0], atol=1e-5)  # spec §1 test (c)
    _, state = t.update(rollout([3.0, 3.0, 3.0], np.ones((3, 1))), state)
    assert float(state.count) == 6 and float(state.mean) == pytest.approx(2.5)


def test_dpo_golden_loss_and_metrics():
    # DPO golden toy pair -> 0.620957; one token per completion.
    algo = make_algorithm("dpo", beta=0.1)
    ones = jnp.ones((1, 1), jnp.int32)
    batch = PreferenceBatch(
        prompt_ids=ones,
        prompt_mask=ones,
        chosen_ids=ones,
        chosen_mask=ones,
        rejected_ids=ones,
        rejected_mask=ones,
        ref_chosen_logps=jnp.asarray([[-11.0]]),
        ref_rejected_logps=jnp.asarray([[-11.5]]),
    )
    logp = jnp.asarray([[-10.0], [-12.0]])  # chosen rows, then rejected rows
    loss, metrics = algo.objective(ModelOutputs(logp=logp), batch, algo.transform.init())
    np.testing.assert_allclose(loss, 0.620957, atol=1e-6)
    assert float(metrics["reward_accuracy"]) == 1.0
    grad = jax.grad(lambda lp: algo.objective(ModelOutputs(logp=lp), batch, algo.transform.init())[0])(logp)
    assert grad[0, 0] < 0 < grad[1, 0]  # raises the chosen, lowers the rejected


def test_chain_and_named_chain_compose_in_order():
    def add(value):
        def update(batch, state):
            return batch._replace(rewards=batch.rewards + value), state + 1

        return RolloutTransform(init=lambda: 0, update=update)

    scale = RolloutTransform(init=lambda: (), update=lambda b, s: (b._replace(rewards=b.rewards * 10), s))
    batch = rollout([1.0], np.ones((1, 1)))
    out, state = chain(add(1.0), scale, add(2.0)).update(batch, chain(add(1.0), scale, add(2.0)).init())
    assert float(out.rewards[0]) == 22.0 and state == (1, (), 1)
    named = named_chain(("plus", add(1.0)), ("times", scale))
    out, state = named.update(batch, named.init())
    assert float(out.rewards[0]) == 20.0 and state == {"plus": 1, "times": ()}
    with pytest.raises(ValueError, match="duplicate"):
        named_chain(("a", scale), ("a", scale))


def test_missing_field_error_names_the_pass():
    with pytest.raises(ValueError, match=r"gae needs Rollout.values.*critic_pass"):
        chain(reward_to_tokens(), gae()).update(rollout([1.0], np.ones((1, 2))), ((), ()))
    with pytest.raises(ValueError, match="logp_old, logp_ref"):
        kl_penalty_in_reward(0.1).update(rollout([1.0], np.ones((1, 2))), ())


def test_scheduled_hyperparameter_lives_in_state_and_never_recompiles():
    schedule = optax.linear_schedule(0.04, 0.0, 4)
    algo = make_algorithm("grpo", beta=jrl_schedule(schedule))
    assert [p.name for p in algo.passes] == ["reference"]  # a schedule keeps the term and its pass
    state = algo.transform.init()
    assert isinstance(state, InjectState)
    batch = rollout([1.0, 0.0], np.ones((2, 3)))
    batch = batch._replace(logp_ref=jnp.full((2, 3), -1.0))
    out = outputs(jnp.full((2, 3), -0.5))

    @jax.jit
    def step(batch, state):
        batch, state = prepare(algo, batch, state)
        loss, metrics = algo.objective(out, batch, state)
        return state, loss, metrics

    losses = []
    for i in range(4):
        state, loss, metrics = step(batch, state)
        assert float(state.hyperparams["beta"]) == pytest.approx(0.04 * (1 - i / 4))
        losses.append(float(loss))
    assert step._cache_size() == 1
    kl = float(metrics["kl"])
    np.testing.assert_allclose(np.diff(losses), -0.01 * kl, rtol=1e-4)  # loss moves with beta only


def test_inject_hyperparams_wraps_any_factory():
    def my_algo(coef: float = 1.0):
        return Algorithm("rollout", identity(), lambda o, b, s: (coef * jnp.sum(o.logp), {}))

    algo = inject_hyperparams(my_algo)(coef=jrl_schedule(lambda step: 2.0 + step))
    state = algo.transform.init()
    _, state = algo.transform.update(None, state)
    _, state = algo.transform.update(None, state)
    loss, _ = algo.objective(ModelOutputs(logp=jnp.ones(3)), None, state)
    assert float(loss) == 9.0  # coef(1) = 3 for the second batch


def test_only_marked_schedules_are_scheduled_and_the_factory_runs_once():
    calls = []

    def factory(coef: float = 1.0, env=None):
        calls.append(coef)
        return Algorithm("rollout", identity(), lambda o, b, s: (coef * env(jnp.sum(o.logp)), {}))

    algo = inject_hyperparams(factory)(coef=2.0, env=lambda x: x + 1)  # a plain callable: unchanged
    assert len(calls) == 1 and not isinstance(algo.transform.init(), InjectState)
    loss, _ = algo.objective(ModelOutputs(logp=jnp.ones(3)), None, ())
    assert float(loss) == 8.0


def test_transform_goldens_remax_reinforce_pp_and_bessel_whitening():
    from jaxrl_llm.transforms.rollout import reinforce_pp_advantages, remax_advantages, whiten_advantages

    # ReMax golden: R = 0.8, greedy R = 0.5, no KL -> advantage 0.3 on every loss token.
    batch = rollout([0.8], [[1, 1, 0]], extras={"baseline_rewards": jnp.asarray([0.5])})
    out, _ = remax_advantages().update(batch, ())
    np.testing.assert_allclose(out.advantages, [[0.3, 0.3, 0.0]], atol=1e-6)
    with pytest.raises(ValueError, match=r"extras\['baseline_rewards'\].*greedy_baseline"):
        remax_advantages().update(rollout([0.8], [[1, 1, 0]]), ())
    # REINFORCE++ golden: lengths 1 and 3, R = [1, 0] -> returns [1 | 0 0 0] -> population whitening.
    batch = rollout([1.0, 0.0], [[1, 0, 0], [1, 1, 1]], group_ids=[0, 1])
    out, _ = reinforce_pp_advantages().update(batch, ())
    np.testing.assert_allclose(out.advantages, [[1.7320508, 0, 0], [-0.5773503] * 3], atol=1e-5)
    out, _ = whiten_advantages(unbiased=True).update(batch._replace(advantages=out.returns), ())
    np.testing.assert_allclose(out.advantages, [[1.5, 0, 0], [-0.5] * 3], atol=1e-5)  # verl's Bessel form


def test_transforms_report_metrics_and_respect_the_loss_mask():
    batch = rollout(
        [1.0], [[1, 1, 1]], logp_old=jnp.log(jnp.full((1, 3), 0.5)), logp_ref=jnp.log(jnp.full((1, 3), 0.4)),
        loss_mask=jnp.asarray([[1.0, 0.0, 1.0]]),
    )  # fmt: skip
    out, _ = chain(kl_penalty_in_reward(0.1), reward_to_tokens()).update(batch, ((), ()))
    k1 = math.log(0.5 / 0.4)
    np.testing.assert_allclose(out.metrics["kl_in_reward"], k1, rtol=1e-5)
    np.testing.assert_allclose(out.token_rewards[0], [-0.1 * k1, 0.0, 1.0 - 0.1 * k1], atol=1e-6)
    algo = make_algorithm("grpo", beta=0.0)
    out, _ = algo.transform.update(
        rollout([1.0, 0.0], [[1, 1, 1]] * 2, loss_mask=jnp.asarray([[1.0, 0, 1]] * 2)), ()
    )
    assert out.advantages[:, 1].tolist() == [0.0, 0.0]  # an attended token without loss gets no advantage


def test_batch_split_is_checked_on_the_batch_the_transform_returns():
    from jaxrl_llm.train.trainer import Phase, check_batch_split

    phase = Phase("main", make_algorithm("grpo"), 1, 4, None, None, minibatches=2)
    check_batch_split(rollout(np.zeros(8), np.ones((8, 2))), phase, microbatches=2)
    with pytest.raises(ValueError, match=r"6 rows.*train.minibatches=2 x train.microbatches=2"):
        check_batch_split(rollout(np.zeros(6), np.ones((6, 2))), phase, microbatches=2)
