"""DisCO, DRPO, PACS, TRPA and Reg-GRPO (jaxrl_llm.losses.discriminative, jaxrl_llm.algorithms.discriminative):
the spec's goldens, hand-computed cases, the objective contract (micro-batches of whole groups with the
`statistics` totals sum to the whole mini-batch) and finiteness at extreme log-ratios. No model, no trainer."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from batch_helpers import loss_and_grad, outputs, prepare, rollout, rows

from jaxrl_llm.algorithms import make_algorithm
from jaxrl_llm.losses import discriminative as dl
from jaxrl_llm.train.steps import with_normalisers

FAMILY = ("disco", "drpo", "pacs", "trpa", "reg_grpo")
VARIANTS = [(n, {}) for n in FAMILY] + [
    ("disco", {"score": "Lratio"}),
    ("disco", {"variant": "b", "lse": "surrogate"}),
    ("trpa", {"tr_sqrt": True}),
    ("pacs", {"centre": "grpo", "score": "mean_logp"}),
]
sg = jax.lax.stop_gradient


def softplus(x):
    return math.log1p(math.exp(x))


def run(algo, batch, logp, stats=None):
    """(loss, metrics) of `algo` on `batch` (transformed first) with current log-probs `logp`."""
    batch, state = prepare(algo, batch)
    return algo.objective(outputs(logp, stats=stats), batch, state)


def objective_grad(algo, batch, logp):
    """d loss / d logp of the objective (statistics from the same batch)."""
    return loss_and_grad(algo, *prepare(algo, batch), logp)[2]


# ---- DisCO (§12) --------------------------------------------------------------------------------

S3, C3, G3 = jnp.array([-1.0, -2.0, -4.0]), jnp.array([True, False, False]), jnp.zeros(3, jnp.int32)


def test_disco_question_objective_goldens():
    # DisCO-b: J = -1 - mean(-2, -4) = 2.0 (loss -2.0). DRO, tau = 1: J = -1 - log(e^-2 + e^-4) = 0.873072.
    j_b, valid = dl.disco_question_objective(S3, C3, G3, "b")
    np.testing.assert_allclose(j_b, [2.0] * 3, atol=1e-6)
    assert bool(jnp.all(valid))
    j_dro, _ = dl.disco_question_objective(S3, C3, G3, "dro", tau=1.0)
    np.testing.assert_allclose(j_dro, [0.873072] * 3, atol=1e-6)
    # tau = 10: -1 - 10 log(e^-0.2 + e^-0.4) = -1 - 10 * 0.098138 = -1.981385 (hand: log(0.818731 + 0.670320)).
    j_10, _ = dl.disco_question_objective(S3, C3, G3, "dro", tau=10.0)
    np.testing.assert_allclose(j_10, [-1.0 - 10 * math.log(math.exp(-0.2) + math.exp(-0.4))] * 3, atol=1e-5)
    np.testing.assert_allclose(dl.kl_penalty_multiplier(3e-4, 1e-4, 1e3), 0.2, atol=1e-6)
    np.testing.assert_allclose(dl.kl_penalty_multiplier(0.5e-4, 1e-4, 1e3), 0.0)


def test_disco_surrogate_has_the_true_gradient_and_the_code_value():
    # The code's S/sg(S) surrogate: value J = mean_P s - tau * 1 = -2.0 at tau = 1; gradient of the true LSE.
    def j(s, lse):
        return jnp.sum(dl.disco_question_objective(s, C3, G3, "dro", 1.0, lse=lse)[0])

    np.testing.assert_allclose(
        dl.disco_question_objective(S3, C3, G3, "dro", 1.0, lse="surrogate")[0], [-2.0] * 3
    )
    np.testing.assert_allclose(jax.grad(j)(S3, "surrogate"), jax.grad(j)(S3, "true"), atol=1e-6)
    # d/ds_j of -log(e^-2 + e^-4), per row (3 rows): -3 * softmax([-2, -4]) = -3 * [0.880797, 0.119203].
    np.testing.assert_allclose(jax.grad(j)(S3, "true"), [3.0, -2.642391, -0.357609], atol=1e-5)


def test_disco_factory_golden_loss_and_skipped_question():
    # Scores [-1, -2, -4] as one-token log-probs, logp_old = logp (D = 0): DisCO-b loss -2.0, DRO (tau 1) -0.873072.
    logp = jnp.array([[-1.0], [-2.0], [-4.0]])
    batch = rollout([1.0, 0.0, 0.0], np.ones((3, 1)), logp_old=logp)
    loss_b, metrics = run(make_algorithm("disco", variant="b"), batch, logp)
    np.testing.assert_allclose(loss_b, -2.0, atol=1e-6)
    np.testing.assert_allclose(metrics["valid_question_fraction"], 1.0)
    loss_dro, _ = run(make_algorithm("disco", tau=1.0), batch, logp)
    np.testing.assert_allclose(loss_dro, -0.873072, atol=1e-6)
    # A second question with only correct answers is skipped but counted: J = (2 + 0) / 2 questions = 1.
    logp2 = jnp.array([[-1.0], [-2.0], [-4.0], [-1.0], [-3.0]])
    batch2 = rollout([1.0, 0, 0, 1, 1], np.ones((5, 1)), [0, 0, 0, 1, 1], logp_old=logp2)
    loss2, metrics2 = run(make_algorithm("disco", variant="b"), batch2, logp2)
    np.testing.assert_allclose(loss2, -1.0, atol=1e-6)
    np.testing.assert_allclose(metrics2["valid_question_fraction"], 0.5, atol=1e-6)


def test_disco_kl_penalty_uses_the_minibatch_statistic():
    # Row 0 has logp - logp_old = 0.1: k3 = e^0.1 - 0.1 - 1 = 0.005171, token mean over 3 tokens D = 0.0017236.
    logp = jnp.array([[-1.0], [-2.0], [-4.0]])
    batch = rollout([1.0, 0.0, 0.0], np.ones((3, 1)), logp_old=logp - jnp.array([[0.1], [0.0], [0.0]]))
    algo = make_algorithm("disco", variant="b")
    d = (math.exp(0.1) - 1.1) / 3
    loss, metrics = run(algo, batch, logp)  # statistics of this batch: multiplier 1e3 (D - 1e-4)
    mult = 1e3 * (d - 1e-4)
    np.testing.assert_allclose(metrics["trust_kl"], d, rtol=1e-4)
    np.testing.assert_allclose(metrics["kl_multiplier"], mult, rtol=1e-3)
    np.testing.assert_allclose(loss, -2.0 + mult * d, rtol=1e-6)
    # Golden: a mini-batch D of 3e-4 (from outputs.stats) -> multiplier 0.2, applied to this micro-batch's D.
    loss, metrics = run(
        algo, batch, logp, stats={"trust_kl": jnp.float32(3e-4), "num_questions": jnp.float32(1)}
    )
    np.testing.assert_allclose(metrics["kl_multiplier"], 0.2, atol=1e-6)
    np.testing.assert_allclose(loss, -2.0 + 0.2 * d, rtol=1e-6)
    # The penalty's gradient is multiplier * dD/dlogp = 0.2 (e^0.1 - 1) / 3 on row 0 (plus dJ/ds_0 = -1).
    batch_t, state = prepare(algo, batch)
    stats = {"trust_kl": jnp.float32(3e-4), "num_questions": jnp.float32(1)}
    grad = jax.grad(lambda lp: algo.objective(outputs(lp, stats=stats), batch_t, state)[0])(logp)
    np.testing.assert_allclose(grad[:, 0], [-1.0 + 0.2 * (math.exp(0.1) - 1) / 3, 0.5, 0.5], atol=1e-6)


def test_disco_lratio_scores_at_the_old_policy():
    # Lratio: s = mean_t exp(logp - logp_old) = 1 for every response at theta = theta_old; d s / d logp_t = 1/L.
    logp = jnp.array([[-1.0, -2.0], [-3.0, 0.0]])
    mask = jnp.array([[1, 1], [1, 0]])
    np.testing.assert_allclose(dl.disco_scores(logp, logp, mask, "Lratio"), [1.0, 1.0])
    grad = jax.grad(lambda lp: jnp.sum(dl.disco_scores(lp, sg(lp), mask, "Lratio")))(logp)
    np.testing.assert_allclose(grad, [[0.5, 0.5], [1.0, 0.0]])
    np.testing.assert_allclose(dl.disco_scores(logp, logp, mask, "logL"), [-1.5, -3.0])


# ---- DRPO (§24) ---------------------------------------------------------------------------------


def test_drpo_length_weights_golden():
    # L / L_max = 0.5 and 0.25, lambda 0.1: w ∝ exp(5), exp(7.5) -> [1/(1 + e^2.5), e^2.5/(1 + e^2.5)].
    w = dl.drpo_length_weights(
        jnp.array([2.0, 1.0, 3.0]), jnp.array([True, True, False]), jnp.zeros(3, jnp.int32), 4.0
    )
    np.testing.assert_allclose(w, [0.075858, 0.924142, 0.0], atol=1e-6)
    # A tiny lambda cannot overflow (softmax within the question's positives).
    w = dl.drpo_length_weights(
        jnp.array([2.0, 1.0]), jnp.array([True, True]), jnp.zeros(2, jnp.int32), 4.0, 1e-3
    )
    np.testing.assert_allclose(w, [0.0, 1.0], atol=1e-6)


def test_drpo_factory_weighted_positives():
    # Positives: s = -1 (2 tokens of 4), s = -2 (1 token); negative s = -3; tau = 10: tau log e^{s/tau} = -3.
    # J = 0.075858 * (-1) + 0.924142 * (-2) + 3 = 1.075858 -> loss -1.075858 (logp = logp_old: no penalty).
    logp = jnp.array([[-1.0, -1, 0, 0], [-2.0, 0, 0, 0], [-3.0, -3, -3, -3]])
    mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    batch = rollout([1.0, 1.0, 0.0], mask, logp_old=logp)
    loss, _ = run(make_algorithm("drpo"), batch, logp)
    np.testing.assert_allclose(loss, -1.075858, atol=1e-5)


# ---- PACS (§26) ---------------------------------------------------------------------------------


def test_pacs_weights_logits_and_bce_goldens():
    labels, g4 = jnp.array([True, False, False, False]), jnp.zeros(4, jnp.int32)
    np.testing.assert_allclose(dl.class_balanced_weights(labels, g4), [2.0, 2 / 3, 2 / 3, 2 / 3], atol=1e-6)
    np.testing.assert_allclose(dl.class_balanced_weights(jnp.ones(4, bool), g4), [1.0] * 4)
    np.testing.assert_allclose(
        dl.pacs_logits(jnp.array([1.0, 0, 0, 0]), g4), [1, -1 / 3, -1 / 3, -1 / 3], atol=1e-6
    )
    np.testing.assert_allclose(dl.pacs_bce(jnp.zeros(4), labels), [math.log(2)] * 4, atol=1e-6)
    # dL/dpsi_i = w_i (sigma(0) - R_i) / B = [2 * -0.5, 2/3 * 0.5 (x3)] / 4 = [-0.25, 0.083333 (x3)].
    w = dl.class_balanced_weights(labels, g4)
    grad = jax.grad(lambda psi: jnp.mean(dl.pacs_bce(psi, labels, w)))(jnp.zeros(4))
    np.testing.assert_allclose(grad, [-0.25, 1 / 12, 1 / 12, 1 / 12], atol=1e-6)


def test_pacs_factory_at_the_old_policy():
    # theta = theta_old: psi = 0, loss = sum_i w_i ln 2 / B = ln 2 (the weights sum to B = 4).
    # d loss / d logp_j (one token, beta 1, RLOO): g_j - sum_{i != j} g_i / 3 with g = [-0.25, 1/12 (x3)]
    # -> row 0: -0.25 - 0.25/3 = -0.333333; rows 1-3: 1/12 - (-0.25 + 2/12)/3 = 0.111111.
    logp = jnp.full((4, 1), -1.0)
    batch = rollout([1.0, 0, 0, 0], np.ones((4, 1)), logp_old=logp)
    algo = make_algorithm("pacs")
    loss, metrics = run(algo, batch, logp)
    np.testing.assert_allclose(loss, math.log(2), atol=1e-6)
    np.testing.assert_allclose(
        objective_grad(algo, batch, logp)[:, 0], [-1 / 3, 1 / 9, 1 / 9, 1 / 9], atol=1e-6
    )
    # Without class weights, psi = r_hat (raw): loss = mean softplus(psi) - R psi with psi = [0.5, 0, 0, 0].
    loss_raw, _ = run(
        make_algorithm("pacs", centre="raw", class_weights=False),
        batch,
        logp + jnp.array([[0.5], [0], [0], [0]]),
    )
    np.testing.assert_allclose(loss_raw, (softplus(-0.5) + 3 * math.log(2)) / 4, atol=1e-6)


# ---- TRPA (§37) ---------------------------------------------------------------------------------


def test_trpa_loss_golden_and_fallback():
    # levels [1, 2, 4], u = [0.2, 0.1, -0.1], beta 0.1, kappa 2.5: h = [0.025, 0.075, 0.02] -> 0.673424.
    u, levels, g3 = jnp.array([0.2, 0.1, -0.1]), jnp.array([1, 2, 4]), jnp.zeros(3, jnp.int32)
    np.testing.assert_allclose(dl.trpa_loss(u, levels, g3), 0.673424, atol=1e-6)
    h = dl.trpa_pair_logits(u, levels)
    pairs = dl.trpa_pairs(levels, g3)
    np.testing.assert_allclose(h[pairs > 0], [0.025, 0.075, 0.02], atol=1e-7)
    # No cross-level pair (all level 1): mean -log sigma(u) = (sp(-.2) + sp(-.1) + sp(.1)) / 3 = 0.662311.
    np.testing.assert_allclose(dl.trpa_loss(u, jnp.ones(3, jnp.int32), g3), 0.662311, atol=1e-6)
    # Pairs never cross questions: two one-row groups have none.
    assert float(jnp.sum(dl.trpa_pairs(jnp.array([1, 2]), jnp.array([0, 1])))) == 0.0


def test_trpa_default_levels():
    # 1 correct, 2 wrong but finished, 3 wrong and truncated; without 'finished' every wrong answer is 2.
    np.testing.assert_array_equal(
        dl.reward_levels(jnp.array([1.0, 0.0, 0.0]), jnp.array([1.0, 1.0, 0.0])), [1, 2, 3]
    )
    np.testing.assert_array_equal(dl.reward_levels(jnp.array([0.9, 0.2])), [1, 2])


def test_trpa_factory_golden_and_trust_region():
    # u = mean_t logp - mean_t logp_ref = [0.2, 0.1, -0.1]; levels from extras; logp = logp_old: KL term 0.
    logp = jnp.zeros((3, 2))
    logp_ref = -jnp.array([[0.2, 0.2], [0.1, 0.1], [-0.1, -0.1]])
    batch = rollout(
        [1.0, 0, 0],
        np.ones((3, 2)),
        logp_ref=logp_ref,
        logp_old=logp,
        extras={"pref_level": jnp.array([1, 2, 4])},
    )
    algo = make_algorithm("trpa")
    assert [p.name for p in algo.passes] == ["reference"]
    loss, metrics = run(algo, batch, logp)
    np.testing.assert_allclose(loss, 0.673424, atol=1e-6)
    np.testing.assert_allclose(metrics["trpa/pairs"], 3.0)
    # sqrt trust region: + c_tr sqrt(0 + 0.25) = 0.001 * 0.5.
    loss_sqrt, _ = run(make_algorithm("trpa", tr_sqrt=True), batch, logp)
    np.testing.assert_allclose(loss_sqrt, 0.673424 + 0.0005, atol=1e-6)
    # Linear trust region: row 0's logp - logp_old = 0.1 on both tokens: k3 = e^-0.1 + 0.1 - 1 = 0.004837,
    # token mean over 6 tokens -> + 0.001 * 0.004837 / 3 (u changes too: recompute the preference part).
    shift = jnp.array([[0.1, 0.1], [0, 0], [0, 0]])
    loss_tr, metrics = run(algo, batch, logp + shift)
    k3 = (math.exp(-0.1) + 0.1 - 1) / 3
    np.testing.assert_allclose(metrics["trust_kl"], k3, rtol=1e-4)
    pref = dl.trpa_loss(jnp.array([0.3, 0.1, -0.1]), jnp.array([1, 2, 4]), jnp.zeros(3, jnp.int32))
    np.testing.assert_allclose(loss_tr, pref + 0.001 * k3, rtol=1e-6)


# ---- Reg-GRPO (§31) -----------------------------------------------------------------------------


def test_reg_grpo_golden():
    adv, rho, g4 = (
        jnp.array([1.5, -0.5, -0.5, -0.5]),
        jnp.array([0.2, 0.0, -0.1, -0.1]),
        jnp.zeros(4, jnp.int32),
    )
    loss, implicit = dl.reg_grpo_loss(adv, rho, g4)
    np.testing.assert_allclose(implicit, [1.414214, 0.0, -0.707107, -0.707107], atol=1e-5)
    np.testing.assert_allclose(jnp.mean(loss), 0.085786, atol=1e-6)


def test_reg_grpo_factory_and_gradient_at_the_old_policy():
    # Rewards [1, 0, 0, 0] -> A = [1.5, -.5, -.5, -.5]; one-token log-ratios = rho (beta 1) -> the golden 0.085786.
    logp_old = jnp.full((4, 1), -1.0)
    batch = rollout([1.0, 0, 0, 0], np.ones((4, 1)), logp_old=logp_old)
    algo = make_algorithm("reg_grpo")
    loss, _ = run(algo, batch, logp_old + jnp.array([[0.2], [0.0], [-0.1], [-0.1]]))
    np.testing.assert_allclose(loss, 0.085786, atol=1e-6)
    # theta = theta_old: rho = 0, A^theta = 0, loss = mean A^2 = (2.25 + 3 * 0.25) / 4 = 0.75; gradient finite,
    # d loss / d rho_j = -2 A_j / (B eps) = -2 * 1.5 / 4e-6 = -750000 on row 0, +250000 on the others.
    loss0, _ = run(algo, batch, logp_old)
    np.testing.assert_allclose(loss0, 0.75, rtol=1e-5)  # A carries the GRPO eps 1e-6
    grad = objective_grad(algo, batch, logp_old)
    np.testing.assert_allclose(grad[:, 0], [-750000.0, 250000.0, 250000.0, 250000.0], rtol=1e-3)


# ---- every member: seams, the objective contract, finiteness -------------------------------------


def family_batch(rng, extreme=None, equal_rewards=False):
    """Two questions of 4 responses each, ragged masks, mixed rewards (or all equal)."""
    k = jax.random.split(jax.random.PRNGKey(rng), 4)
    mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]] * 2)
    rewards = np.ones(8) if equal_rewards else np.array([1.0, 0, 0, 1, 0, 0, 0, 1])
    logp_old = -jnp.abs(jax.random.normal(k[0], (8, 3)))
    logp_ref = -jnp.abs(jax.random.normal(k[1], (8, 3)))
    if extreme is None:
        logp = logp_old + 0.1 * jax.random.normal(k[2], (8, 3))
    else:
        logp = logp_old + extreme * jnp.sign(jax.random.normal(k[2], (8, 3)))
        logp_ref = logp_old - extreme
    finished = jnp.array([1.0, 1, 0, 1] * 2)
    batch = rollout(
        rewards,
        mask,
        [7, 7, 7, 7, 3, 3, 3, 3],
        logp_old=logp_old,
        logp_ref=logp_ref,
        extras={"finished": finished},
    )
    return batch, logp


@pytest.mark.parametrize("name", FAMILY)
def test_family_seams(name):
    algo = make_algorithm(name)
    assert algo.whole_groups
    assert (algo.statistics is not None) == (name in ("disco", "drpo", "trpa"))


@pytest.mark.parametrize("name,options", VARIANTS)
def test_family_objective_contract_over_whole_group_microbatches(name, options):
    # Two micro-batches of one whole question each, with the mini-batch normalisers and the statistics totals
    # (as the trainer gives them), sum to the whole mini-batch's loss, metrics and gradient.
    algo = make_algorithm(name, **options)
    batch, logp = family_batch(0)
    batch, state = prepare(algo, batch)
    batch = with_normalisers(batch)
    parts = [slice(0, 4), slice(4, 8)]

    def stats_of(b, lp):
        return None if algo.statistics is None else algo.statistics(outputs(sg(lp)), b, state)

    def whole(lp):
        loss, metrics = algo.objective(outputs(lp, stats=stats_of(batch, lp)), batch, state)
        return loss, metrics

    def split(lp):
        micro = [(rows(batch, s), lp[s]) for s in parts]
        totals = None
        if algo.statistics is not None:
            totals = jax.tree.map(jnp.add, *[stats_of(b, p) for b, p in micro])
        results = [algo.objective(outputs(p, stats=totals), b, state) for b, p in micro]
        return jax.tree.map(jnp.add, *results)

    (loss_1, m_1), g_1 = jax.jit(jax.value_and_grad(whole, has_aux=True))(logp)
    (loss_2, m_2), g_2 = jax.jit(jax.value_and_grad(split, has_aux=True))(logp)
    np.testing.assert_allclose(loss_2, loss_1, rtol=1e-5, atol=1e-6)
    assert set(m_1) == set(m_2)
    for key in m_1:
        np.testing.assert_allclose(m_2[key], m_1[key], rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(g_2, g_1, rtol=1e-4, atol=1e-6)
    assert float(jnp.max(jnp.abs(g_1))) > 0


@pytest.mark.parametrize("name,options", VARIANTS)
def test_family_finite_at_extreme_ratios_and_equal_rewards(name, options):
    # |logp - logp_old| = |logp - logp_ref| = 50 with mixed rewards, all-equal rewards (no valid question, no
    # cross-level pair), and both: loss, gradient and metrics stay finite.
    algo = make_algorithm(name, **options)
    loss_and_grad = jax.jit(jax.value_and_grad(lambda lp, b: run(algo, b, lp), has_aux=True))
    for extreme, equal in [(50.0, False), (None, True), (50.0, True)]:
        batch, logp = family_batch(1, extreme, equal)
        (loss, metrics), grad = loss_and_grad(logp, batch)
        assert bool(jnp.isfinite(loss)), (extreme, equal, loss)
        assert bool(jnp.all(jnp.isfinite(grad))), (extreme, equal)
        assert all(bool(jnp.all(jnp.isfinite(v))) for v in metrics.values()), (extreme, equal, metrics)


def test_disco_lagrange_multiplier_is_carried_and_updated_by_dual_ascent():
    # λ ← [λ + η (D_after − δ)]_+, η = 1e3, δ = 1e-4: D = 3e-4 -> 0.2 (the penalty's multiplier at
    # the same D); then D = 0 -> max(0.2 − 0.1, 0) = 0.1; then D = 0 -> 0.0 (clamped at 0).
    algo = make_algorithm("disco", constraint="multiplier")
    state = algo.transform.init()
    assert float(state["multiplier"]) == 0.0 and algo.statistics is not None
    state = algo.post_update(state, {"trust_kl": jnp.asarray(3e-4), "num_questions": jnp.asarray(1.0)})
    np.testing.assert_allclose(state["multiplier"], 0.2, rtol=1e-5)
    for expected in (0.1, 0.0):
        state = algo.post_update(state, {"trust_kl": jnp.asarray(0.0), "num_questions": jnp.asarray(1.0)})
        np.testing.assert_allclose(state["multiplier"], expected, atol=1e-7)
    with pytest.raises(ValueError, match="constraint"):
        make_algorithm("disco", constraint="lagrange")
