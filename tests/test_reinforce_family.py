"""Golden values for the REINFORCE / PPO family of issue 13 (ppo options, ppo_max, pf_ppo, p3o,
remax, rloo, reinforce_pp(_baseline), opmd, asymre): pure functions on small arrays and the
factories' transforms/objectives on hand-built Rollouts (no model, no trainer)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from batch_helpers import outputs, prepare, rollout, rows

from jaxrl_llm.algorithms import make_algorithm
from jaxrl_llm.algorithms.ppo import p3o_terms
from jaxrl_llm.algorithms.reinforce import opmd_regulariser, reinforce_token_loss
from jaxrl_llm.train.steps import with_normalisers
from jaxrl_llm.transforms.estimators import (
    adaptive_kl_coef,
    group_baseline_advantages,
    pf_ppo_subset,
    pf_ppo_weights,
)
from jaxrl_llm.types import ModelOutputs

LOG_HALF = math.log(0.5)


def _close(actual, expected, tol=1e-5):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected, np.float32), rtol=tol, atol=tol)


# ---------------------------------------------------------------- PPO / PPO-max (§1)


def test_ppo_defaults_unchanged():
    algo = make_algorithm("ppo")
    assert [p.name for p in algo.passes] == ["critic", "reference", "old_logp"]
    assert algo.statistics is None and not algo.whole_groups


def test_ppo_gae_and_value_clip_goldens():
    # (a) r = [0, 0, 1], V = [.5, .6, .7], gamma 1, lam .95 -> A = [.46575, .385, .3], returns [.96575, .985, 1].
    algo = make_algorithm("ppo", kl_coef=0.0, whiten=False)
    batch, state = prepare(algo, rollout([1.0], np.ones((1, 3)), values=jnp.asarray([[0.5, 0.6, 0.7]])))
    _close(batch.advantages[0], [0.46575, 0.385, 0.3])
    _close(batch.returns[0], [0.96575, 0.985, 1.0])
    # (b) V_old 0.5, V 1.0, R 1.2, eps_v 0.2: max((1 - 1.2)^2, (0.7 - 1.2)^2) / 2 = 0.125.
    vb = batch._replace(values=jnp.full((1, 3), 0.5), returns=jnp.full((1, 3), 1.2))
    loss, _ = make_algorithm("ppo_max").value_objective(ModelOutputs(values=jnp.ones((1, 3))), vb, state)
    _close(loss, 0.125)


@pytest.mark.parametrize(
    "options, expected",
    [
        # (c) RunningMoments from empty with [1, 2, 3]: mean 2, sigma_run = sqrt((2/3) * 3/2) = 1.
        (dict(reward_norm=True), [-1.0, 0.0, 1.0]),
        (dict(reward_scaling=True), [1.0, 2.0, 3.0]),  # R / sigma_run, no mean shift
        (dict(reward_norm=True, reward_clip=0.8), [-0.8, 0.0, 0.8]),
        (dict(reward_scaling=True, reward_clip=2.0), [1.0, 2.0, 2.0]),
        (dict(reward_clip=1.5), [1.0, 1.5, 1.5]),  # clip alone (MOSS use_reward_clip)
    ],
)
def test_ppo_reward_scaling_norm_clip(options, expected):
    algo = make_algorithm("ppo", kl_coef=0.0, whiten=False, **options)
    batch, _ = prepare(algo, rollout([1.0, 2.0, 3.0], np.ones((3, 1)), values=jnp.zeros((3, 1))))
    _close(batch.rewards, expected)
    _close(batch.advantages[:, 0], expected)  # one token, V = 0: A = r


def test_ppo_advantage_clip_after_whitening():
    # Whitened [1, 2, 3] (population var 2/3) = [-1.224745, 0, 1.224745], clipped to +-0.5.
    algo = make_algorithm("ppo", kl_coef=0.0, adv_clip=0.5)
    batch, _ = prepare(algo, rollout([1.0, 2.0, 3.0], np.ones((3, 1)), values=jnp.zeros((3, 1))))
    _close(batch.advantages[:, 0], [-0.5, 0.0, 0.5])
    _close(batch.metrics["adv_clip_fraction"], 2 / 3)


def test_adaptive_kl_coef_hand_cases():
    # e = clip(KL / 6 - 1, +-0.2); beta * (1 + e * 256 / 10000)
    _close(adaptive_kl_coef(0.1, 9.0, 6.0, 10000, 256), 0.1 * (1 + 0.2 * 0.0256))  # e clipped at 0.2
    _close(adaptive_kl_coef(0.1, 6.6, 6.0, 10000, 256), 0.1 * (1 + 0.1 * 0.0256))
    _close(adaptive_kl_coef(0.1, 0.0, 6.0, 10000, 256), 0.1 * (1 - 0.2 * 0.0256))
    _close(adaptive_kl_coef(0.1, 6.0, 6.0, 10000, 256), 0.1)


def test_ppo_adaptive_kl_state_and_metric():
    # 2 rows x 2 tokens, k1 = 1 per token -> KL_seq = 2; target 1 -> e = 0.2; n_steps 2, horizon 2:
    # beta 0.1 -> 0.1 * (1 + 0.2) = 0.12. The penalty of this batch uses 0.1.
    algo = make_algorithm("ppo", kl_coef=0.1, kl_target=1.0, kl_horizon=2.0, whiten=False)
    assert {p.name for p in algo.passes} == {"critic", "reference", "old_logp"}
    batch = rollout(
        [1.0, 0.0],
        np.ones((2, 2)),
        values=jnp.zeros((2, 2)),
        logp_old=jnp.zeros((2, 2)),
        logp_ref=-jnp.ones((2, 2)),
    )
    out, state = prepare(algo, batch)
    _close(out.token_rewards, [[-0.1, 0.9], [-0.1, -0.1]])
    _close(out.metrics["kl_coef"], 0.1)
    _close(out.metrics["kl_seq"], 2.0)
    out2, state2 = prepare(algo, batch, state)
    _close(out2.metrics["kl_coef"], 0.12)
    _close(out2.token_rewards[1], [-0.12, -0.12])
    with pytest.raises(ValueError, match="kl_target needs a constant kl_coef > 0"):
        make_algorithm("ppo", kl_coef=0.0, kl_target=6.0)


def test_ppo_entropy_band_sums_over_microbatches():
    # MOSS entropy term coef * |H_bar - 35|: H = [[1, 2], [3, 4]], H_bar = 2.5 -> 0.1 * 32.5 = 3.25;
    # d/dH = -coef / num_tokens = -0.025 per token (H_bar < target).
    algo = make_algorithm("ppo", kl_coef=0.0, entropy_coef=0.1, entropy_target=35.0)
    assert algo.statistics is not None
    batch, state = prepare(algo, rollout([1.0, 0.0], np.ones((2, 2)), values=jnp.zeros((2, 2))))
    batch = with_normalisers(batch._replace(advantages=jnp.zeros((2, 2))))
    entropy = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])
    full, metrics = algo.objective(outputs(jnp.zeros((2, 2)), entropy), batch, state)
    _close(full, 3.25)
    _close(metrics["ppo/entropy_gap"], 32.5)
    stats = algo.statistics(outputs(jnp.zeros((2, 2)), entropy), batch, state)
    halves = [
        algo.objective(
            outputs(jnp.zeros((1, 2)), entropy[i : i + 1], stats),
            rows(batch, slice(i, i + 1)),
            state,
        )[0]
        for i in range(2)
    ]
    _close(sum(halves), 3.25)
    grad = jax.grad(lambda h: algo.objective(outputs(jnp.zeros((2, 2)), h, stats), batch, state)[0])(entropy)
    _close(grad, np.full((2, 2), -0.025))


def test_ppo_max_recipe():
    algo = make_algorithm("ppo_max")
    assert {p.name for p in algo.passes} == {"critic", "reference", "old_logp"}
    zeros = jnp.zeros((3, 1))
    batch, state = prepare(
        algo, rollout([1.0, 2.0, 3.0], np.ones((3, 1)), values=zeros, logp_old=zeros, logp_ref=zeros)
    )
    # running norm [-1, 0, 1], clipped to +-0.8; no KL (logp_old = logp_ref); no advantage whitening
    _close(batch.advantages[:, 0], [-0.8, 0.0, 0.8])
    assert float(state[0].count) == 3  # the running moments are the first piece of the state


# ---------------------------------------------------------------- PF-PPO (§16)

PF_R = jnp.asarray([0.9, 0.2, 0.5, 0.1])


def test_pf_ppo_weights_golden():
    w = pf_ppo_weights(PF_R, "pow", 2.0)
    _close(w / jnp.sum(w), np.array([0.81, 0.04, 0.25, 0.01]) / 1.11)
    _close(pf_ppo_weights(PF_R, "max_min"), [1.0, 1e-8, 1e-8, 1.0])
    _close(pf_ppo_weights(PF_R, "max_random"), [0.4, 0.1, 0.1, 0.1])


def test_pf_ppo_subset_goldens():
    ids = jnp.zeros(4, jnp.int32)
    _close(pf_ppo_subset(PF_R, ids, "bon"), [1, 0, 0, 0])
    _close(pf_ppo_subset(PF_R, ids, "bw"), [1, 0, 0, 1])
    for k in range(8):
        keep = np.asarray(pf_ppo_subset(PF_R, ids, "br", jax.random.PRNGKey(k)))
        assert keep[0] == 1 and keep.sum() == 2
    # Two groups with ties: the earlier row is the best, the later row the worst.
    r = jnp.asarray([0.1, 0.3, 0.3, 0.0, 1.0, 1.0, 0.0, 2.0])
    g = jnp.asarray([5, 5, 5, 5, 2, 2, 2, 2])
    _close(pf_ppo_subset(r, g, "bon"), [0, 1, 0, 0, 0, 0, 0, 1])
    _close(pf_ppo_subset(r, g, "bw"), [0, 1, 0, 1, 0, 0, 1, 1])
    _close(pf_ppo_subset(jnp.asarray([0.0, 0.0]), jnp.asarray([0, 1]), "bw"), [1, 1])  # singletons


def test_pf_ppo_resampling_deterministic_and_carries_rows():
    algo = make_algorithm("pf_ppo", kl_coef=0.0, whiten=False)
    values = jnp.asarray([[0.0], [1.0], [2.0], [3.0]])
    batch = rollout([0.0, 0.0, 0.0, 2.0], np.ones((4, 1)), values=values)
    out, state = prepare(algo, batch)
    # weights |R|^2 + 1e-8: every draw is row 3 (reward 2, value 3) -> A = r - V = -1
    _close(out.rewards, [2.0] * 4)
    _close(out.values[:, 0], [3.0] * 4)
    _close(out.advantages[:, 0], [-1.0] * 4)
    _close(out.metrics["pf_ppo/kept_fraction"], 0.25)
    assert int(state[-1]) == 1  # the filter's counter (it runs after the advantages, as verl)
    batch = rollout([0.9, 0.2, 0.5, 0.1], np.ones((4, 1)), values=10 * PF_R[:, None])
    a, s1 = prepare(algo, batch)
    b, _ = prepare(algo, batch)
    c, _ = prepare(algo, batch, s1)
    np.testing.assert_array_equal(a.rewards, b.rewards)  # same counter -> same draw
    assert not np.array_equal(a.rewards, c.rewards)  # the next batch draws afresh
    _close(a.values[:, 0], 10 * a.rewards)  # each drawn row keeps its own value
    jitted, _ = jax.jit(algo.transform.update)(batch, algo.transform.init())
    np.testing.assert_array_equal(jitted.rewards, a.rewards)


def test_pf_ppo_filters_after_the_whitening_as_verl_by_default():
    # 0/1 rewards, values 0, one token: GAE A = R; whitened over the whole batch [1, 1, 0, 0]
    # -> [1, 1, -1, -1]; 'pow' keeps only the reward-1 rows: every kept advantage is +1. Filtered
    # first (the paper's order) the kept rows are all reward 1, whitened among themselves -> 0.
    batch = rollout([1.0, 1.0, 0.0, 0.0], np.ones((4, 1)), values=jnp.zeros((4, 1)))
    verl, _ = prepare(make_algorithm("pf_ppo", kl_coef=0.0), batch)
    _close(verl.rewards, [1.0] * 4)
    _close(verl.advantages[:, 0], [1.0] * 4, tol=1e-4)
    first, _ = prepare(make_algorithm("pf_ppo", kl_coef=0.0, filter_after_advantages=False), batch)
    _close(first.rewards, [1.0] * 4)
    _close(first.advantages[:, 0], [0.0] * 4, tol=1e-4)


def test_pf_ppo_per_prompt_subset_masks_loss():
    algo = make_algorithm("pf_ppo", method="bw", kl_coef=0.0, whiten=False)
    out, _ = prepare(algo, rollout(PF_R, np.ones((4, 2)), values=jnp.zeros((4, 2))))
    _close(out.loss_mask, [[1, 1], [0, 0], [0, 0], [1, 1]])
    _close(out.advantages[1:3], np.zeros((2, 2)))  # GAE over the loss mask only
    _close(out.metrics["pf_ppo/reward_mean"], 0.5)


# ---------------------------------------------------------------- P3O (§17)


def test_p3o_terms_goldens():
    ids = jnp.zeros(2, jnp.int32)
    log_rho = jnp.log(jnp.asarray([1.3, 1.0]))
    # V1: Delta = 1, rho = (1.3, 1.0), eps 0.2: min(0.65, 0.6) + min(-0.5, -0.5) = 0.1
    j, clipped, count = p3o_terms(log_rho, jnp.asarray([1.0, -1.0]), ids, 0.2, "separate")
    _close(jnp.sum(j), 0.1)
    _close(clipped, [1.0, 0.0])
    _close(count, [2.0, 2.0])
    # V2: r = rho1 / rho2 = 1.3 -> min(0.65, 0.6) = 0.6 on the first row
    j, clipped, _ = p3o_terms(log_rho, jnp.asarray([1.0, -1.0]), ids, 0.2, "joint")
    _close(j, [0.6, 0.0])
    _close(clipped, [1.0, 0.0])
    # V2: rho = (1.0, 1.3) -> r = 1/1.3 = 0.769231: min(0.384615, 0.8 * 0.5 = 0.4) = 0.384615 (unclipped)
    j, clipped, _ = p3o_terms(log_rho[::-1], jnp.asarray([1.0, -1.0]), ids, 0.2, "joint")
    _close(j, [0.5 / 1.3, 0.0])
    _close(clipped, [0.0, 0.0])


def test_p3o_objective_pairs_and_microbatches():
    algo = make_algorithm("p3o", kl_coef=0.0)
    assert algo.whole_groups and algo.passes == ()
    # pair 0: R = (1, 0), rho = (1.3, 1.0) -> J = 0.1; pair 1: R = (0, 0.5), rho = 1 -> J = -0.25 + 0.25 = 0
    batch, state = prepare(algo, rollout([1.0, 0.0, 0.0, 0.5], np.ones((4, 2)), group_ids=[0, 0, 7, 7]))
    _close(batch.advantages, [[1, 1], [-1, -1], [-0.5, -0.5], [0.5, 0.5]])
    logp_old = jnp.full((4, 2), -1.0)
    batch = with_normalisers(batch._replace(logp_old=logp_old))
    logp = logp_old.at[0, 0].add(math.log(1.3))  # sequence ratio of row 0: 1.3
    loss, metrics = algo.objective(outputs(logp), batch, state)
    _close(loss, -0.05)  # -(0.1 + 0) / 2 pairs
    _close(metrics["clip_fraction"], 0.25)
    halves = [
        algo.objective(outputs(logp[i : i + 2]), rows(batch, slice(i, i + 2)), state)[0] for i in (0, 2)
    ]
    _close(sum(halves), -0.05)
    far = algo.objective(outputs(logp_old + 50.0), batch, state)[0]  # |logp - logp_old| = 50
    assert np.isfinite(float(far))
    assert np.all(
        np.isfinite(jax.grad(lambda x: algo.objective(outputs(x), batch, state)[0])(logp_old - 50.0))
    )


def test_p3o_kl_in_sequence_reward():
    # R^ = RM - beta * sum_t (logp_old - logp_ref): row 0 has 0.5 per token over 2 tokens -> 1 - 0.1 = 0.9
    algo = make_algorithm("p3o", kl_coef=0.1, clip="joint")
    assert {p.name for p in algo.passes} == {"reference", "old_logp"}
    logp_ref = jnp.asarray([[-0.5, -0.5], [0.0, 0.0]])
    batch, _ = prepare(
        algo, rollout([1.0, 0.0], np.ones((2, 2)), logp_old=jnp.zeros((2, 2)), logp_ref=logp_ref)
    )
    _close(batch.rewards, [0.9, 0.0])
    _close(batch.advantages[:, 0], [0.9, -0.9])


# ---------------------------------------------------------------- ReMax (§6)


def test_remax_golden_and_loss():
    algo = make_algorithm("remax", kl_coef=0.0)
    assert algo.strategy is not None and algo.passes == ()
    batch = rollout([0.8], [[1, 1, 0]])
    batch = batch._replace(extras={"baseline_rewards": jnp.asarray([0.5])})
    batch, state = prepare(algo, batch)
    _close(batch.advantages, [[0.3, 0.3, 0.0]])  # R = 0.8, R_greedy = 0.5, beta = 0 -> 0.3 on every token
    loss, metrics = algo.objective(outputs(jnp.full((1, 3), LOG_HALF)), batch, state)
    _close(loss, 0.3 * math.log(2))  # -0.3 * log 0.5 = 0.207944 (token mean)
    _close(reinforce_token_loss(jnp.asarray([LOG_HALF]), jnp.asarray([0.3])), [0.207944])


def test_remax_kl_in_reward_current_token_only():
    # beta 0.1, k1 = 0.2 per token: G_t = 0.3 - 0.02 = 0.28 on every token (not accumulated)
    algo = make_algorithm("remax")
    assert {p.name for p in algo.passes} == {"reference", "old_logp"}
    batch = rollout([0.8], np.ones((1, 3)), logp_old=jnp.zeros((1, 3)), logp_ref=jnp.full((1, 3), -0.2))
    batch, _ = prepare(algo, batch._replace(extras={"baseline_rewards": jnp.asarray([0.5])}))
    _close(batch.advantages, [[0.28, 0.28, 0.28]])


# ---------------------------------------------------------------- RLOO (§7)


def test_rloo_golden_and_losses():
    algo = make_algorithm("rloo", kl_coef=0.0)
    batch, state = prepare(algo, rollout([1.0, 0.0, 0.0, 0.0], np.ones((4, 1))))
    _close(batch.advantages[:, 0], [1.0, -1 / 3, -1 / 3, -1 / 3])
    # PPO-clip on-policy, token mean: rows of 2 and 1 tokens, A = (1, -1) -> (-2 + 1) / 3
    batch, state = prepare(algo, rollout([1.0, 0.0], [[1, 1], [1, 0]]))
    loss, _ = algo.objective(outputs(jnp.full((2, 2), LOG_HALF)), batch, state)
    _close(loss, -1 / 3)
    # sequence-level REINFORCE: mean_i -A_i sum_t logp = (2 log 2 - log 2) / 2 = 0.346574
    algo = make_algorithm("rloo", kl_coef=0.0, loss="reinforce")
    loss, _ = algo.objective(outputs(jnp.full((2, 2), LOG_HALF)), batch, state)
    _close(loss, math.log(2) / 2)


def test_rloo_kl_in_reward_before_leave_one_out():
    # beta 0.1, sum_t k1 = (1, 0) -> R^ = (0.9, 0) -> LOO (0.9, -0.9)
    algo = make_algorithm("rloo", kl_coef=0.1)
    logp_ref = jnp.asarray([[-0.5, -0.5], [0.0, 0.0]])
    batch, _ = prepare(
        algo, rollout([1.0, 0.0], np.ones((2, 2)), logp_old=jnp.zeros((2, 2)), logp_ref=logp_ref)
    )
    _close(batch.advantages[:, 0], [0.9, -0.9])
    _close(batch.metrics["kl_in_reward"], 0.25)


# ---------------------------------------------------------------- REINFORCE++ (§8)


@pytest.mark.parametrize("name", ["reinforce_pp", "reinforce_pp_baseline"])
def test_reinforce_pp_golden(name):
    # lengths 1 and 3, R = (1, 0), beta = 0: returns [1 | 0 0 0] -> population whitening
    # [1.7321 | -0.5774 x3]. Baseline variant (one group): R - mean = (0.5, -0.5), same whitened result.
    algo = make_algorithm(name, kl_coef=0.0)
    assert algo.passes == ()
    batch, _ = prepare(algo, rollout([1.0, 0.0], [[1, 0, 0], [1, 1, 1]]))
    _close(batch.advantages, [[1.7320508, 0, 0], [-0.5773503] * 3])


def test_reinforce_pp_kl_in_reward_returns():
    # R = 1, k1 = 0.5 per token, beta 0.1: r = (-0.05, 0.95), G = (0.9, 0.95) -> whitened (-1, 1)
    algo = make_algorithm("reinforce_pp", kl_coef=0.1)
    assert {p.name for p in algo.passes} == {"reference", "old_logp"}
    batch = rollout([1.0], np.ones((1, 2)), logp_old=jnp.zeros((1, 2)), logp_ref=jnp.full((1, 2), -0.5))
    batch, _ = prepare(algo, batch)
    _close(batch.returns, [[0.9, 0.95]])
    _close(batch.advantages, [[-1.0, 1.0]], tol=1e-4)


def test_reinforce_pp_baseline_kl_in_loss_k2():
    algo = make_algorithm("reinforce_pp_baseline")
    assert [p.name for p in algo.passes] == ["reference"]
    batch, state = prepare(algo, rollout([1.0, 0.0], np.ones((2, 1))))
    batch = batch._replace(logp_ref=jnp.full((2, 1), math.log(0.4)))
    _, metrics = algo.objective(outputs(jnp.full((2, 1), LOG_HALF)), batch, state)
    _close(metrics["kl"], 0.024897)  # k2 at pi = 0.5, pi_ref = 0.4


# ---------------------------------------------------------------- OPMD / AsymRE (§27)


def test_asymre_golden():
    algo = make_algorithm("asymre")
    batch, state = prepare(algo, rollout([1.0, 0.0, 0.0, 0.0], np.ones((4, 1))))
    _close(batch.advantages[:, 0], [0.85, -0.15, -0.15, -0.15])  # R - (0.25 - 0.1)
    loss, metrics = algo.objective(outputs(jnp.full((4, 1), LOG_HALF)), batch, state)
    _close(loss, 0.4 * math.log(2) / 4)  # sum_i -A_i log 0.5 / 4 tokens = 0.4 * 0.693147 / 4 = 0.069315
    assert set(metrics) == {"pg_loss"}


def test_opmd_logavgexp_golden_and_trinity_form():
    # tau = 1: b = ln((e + 3) / 4) = 0.357374 -> A = (0.642626, -0.357374 x3)
    algo = make_algorithm("opmd", form="trinity", baseline="logavgexp")
    batch, state = prepare(algo, rollout([1.0, 0.0, 0.0, 0.0], np.ones((4, 1))))
    _close(batch.advantages[:, 0], [0.642626, -0.357374, -0.357374, -0.357374])
    # mean baseline, tau 1: rows of 2, 1, 1, 1 tokens, A = (.75, -.25 x3), logp = log 0.5:
    # sum -A logp = 0.693147 * (1.5 - 0.75) = 0.519860; / 5 tokens / (1 + 1) = 0.051986
    algo = make_algorithm("opmd", form="trinity")
    batch, state = prepare(algo, rollout([1.0, 0.0, 0.0, 0.0], [[1, 1], [1, 0], [1, 0], [1, 0]]))
    loss, _ = algo.objective(outputs(jnp.full((4, 2), LOG_HALF)), batch, state)
    _close(loss, 0.051986)


def test_opmd_rec_regulariser_golden():
    _close(opmd_regulariser(jnp.asarray([0.1]), jnp.asarray([0.0]), 0.1), [0.001])
    # A = 0 (constant group): the loss is the token mean of the regulariser = 0.001
    algo = make_algorithm("opmd")
    batch, state = prepare(algo, rollout([1.0, 1.0], np.ones((2, 3))))
    batch = batch._replace(logp_old=jnp.full((2, 3), -1.0))
    loss, metrics = algo.objective(outputs(jnp.full((2, 3), -0.9)), batch, state)
    _close(loss, 0.001)
    _close(metrics["opmd/reg"], 0.001)
    far, _ = algo.objective(outputs(jnp.full((2, 3), 49.0)), batch, state)  # |logp - logp_old| = 50
    assert np.isfinite(float(far))


def test_group_baseline_degenerate_groups_and_second_case():
    r, ids = jnp.asarray([0.7, 0.2, 0.2]), jnp.asarray([0, 1, 1])  # singleton (b = 0), constant group
    _close(group_baseline_advantages(r, ids), [0.7, 0.0, 0.0])
    _close(group_baseline_advantages(r, ids, "logavgexp"), [0.7, 0.0, 0.0])
    _close(group_baseline_advantages(r, ids, shift=-0.1), [0.8, 0.1, 0.1])
    # [2, 0], tau 0.5: b = 0.5 * ln((e^4 + 1) / 2) = 1.662501 -> (0.337499, -1.662501)
    _close(
        group_baseline_advantages(jnp.asarray([2.0, 0.0]), jnp.zeros(2, jnp.int32), "logavgexp", 0.5),
        [0.337499, -1.662501],
    )
