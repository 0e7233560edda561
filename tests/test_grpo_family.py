"""GRPO-family algorithms of issue 13: Dr.GRPO, DAPO, GSPO, GSPO-token, GMPO, NGRPO, GRPO-λ, GPG,
COPO. Spec goldens (rl_algorithms.md §3, 4, 5, 11, 20, 25) plus hand-computed cases (the hand
computation in a comment); pure functions on small arrays and the factories' transform/objective
on hand-built Rollouts (no model, no trainer)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from batch_helpers import loss_and_grad, prepare, rollout, rows

from jaxrl_llm.algorithms import make_algorithm
from jaxrl_llm.algorithms.grpo import not_all_correct
from jaxrl_llm.algorithms.gspo import gmpo_loss, gspo_loss
from jaxrl_llm.rollout.strategies import rewards_vary
from jaxrl_llm.train.steps import with_normalisers
from jaxrl_llm.transforms import estimators as est

NEW = ("dr_grpo", "dapo", "gspo", "gspo_token", "gmpo", "ngrpo", "grpo_lambda", "gpg", "copo")


def prepared(name, batch, **hyper):
    algo = make_algorithm(name, **hyper)
    return (algo, *prepare(algo, batch))


# ---------------------------------------------------------------- Dr.GRPO (§3)


def test_dr_grpo_advantages_and_constant_length_normaliser():
    # A = R − mean = [.75, −.25, −.25, −.25]. On-policy tokens: l = −A. Row lengths 1..4, so
    # the token sums are [−.75, .5, .75, 1.0]; / L_max (= T = 4) and mean over 4 rows:
    # (−.1875 + .125 + .1875 + .25) / 4 = 0.09375; with max_len = 8 half of it.
    mask = np.tril(np.ones((4, 4)))
    algo, batch, state = prepared("dr_grpo", rollout([1.0, 0, 0, 0], mask))
    np.testing.assert_allclose(batch.advantages[:, 0], [0.75, -0.25, -0.25, -0.25], atol=1e-6)
    logp = jnp.log(jnp.full((4, 4), 0.5))
    assert loss_and_grad(algo, batch, state, logp)[0] == pytest.approx(0.09375, abs=1e-6)
    algo8, batch8, state8 = prepared("dr_grpo", rollout([1.0, 0, 0, 0], mask), max_len=8)
    assert loss_and_grad(algo8, batch8, state8, logp)[0] == pytest.approx(0.046875, abs=1e-6)
    assert algo.passes == () and make_algorithm("dr_grpo", beta=0.04).passes[0].name == "reference"


# ---------------------------------------------------------------- DAPO (§4)


def test_dapo_overlong_goldens_and_paper_floor():
    lengths = jnp.array([16384.0, 18432.0, 20480.0, 20481.0])
    np.testing.assert_allclose(
        est.overlong_penalty(lengths, 20480, 4096), [0.0, -0.5, -1.0, -4097 / 4096], atol=1e-6
    )
    # the paper's Eq. 13: −1 beyond L_max; factor scales the line.
    np.testing.assert_allclose(est.overlong_penalty(lengths, 20480, 4096, hard_beyond_max=True)[3], -1.0)
    np.testing.assert_allclose(est.overlong_penalty(lengths, 20480, 4096, factor=0.5)[1], -0.25)


def test_dapo_transform_defaults_to_the_buffer_length_and_keep_rule():
    # T = 10, L_cache = round(0.2 * 10) = 2, L_exp = 8: lengths 8, 9, 10 -> 0, −0.5, −1 added to R = 1.
    mask = np.zeros((3, 10))
    for i, n in enumerate((8, 9, 10)):
        mask[i, :n] = 1
    algo, batch, _ = prepared("dapo", rollout([1.0, 1.0, 1.0], mask))
    np.testing.assert_allclose(batch.rewards, [1.0, 0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(batch.metrics["overlong/fraction"], 2 / 3, atol=1e-6)
    # GRPO advantages of the shaped rewards (unbiased std 0.5): [1, 0, −1].
    np.testing.assert_allclose(batch.advantages[:, 0], [1.0, 0.0, -1.0], atol=1e-5)
    # dynamic sampling (spec test): [1,1,1,1] and [0,0,0,0] dropped, [1,0,1,0] kept.
    assert not rewards_vary(np.ones(4)) and not rewards_vary(np.zeros(4))
    assert rewards_vary(np.array([1.0, 0, 1, 0]))
    assert algo.strategy is not None and algo.passes == ()
    assert make_algorithm("dapo", dynamic_sampling=False).strategy is None


def test_dapo_clip_higher_token_mean_and_optional_dual_clip():
    # row 0: A = 1, r = 1.3 -> max(−1.3, −1.28) = −1.28 (clipped at 1 + 0.28);
    # row 1: A = −1, r = [0.7, 1.0] -> max(0.7, 0.8) = 0.8 (clipped at 1 − 0.2), 1.0.
    # token mean (−1.28 + 0.8 + 1.0) / 3 = 0.173333; clip fraction 2/3.
    algo = make_algorithm("dapo")
    logp_old = jnp.zeros((2, 2))
    batch = rollout([0.0, 0.0], [[1, 0], [1, 1]], logp_old=logp_old)._replace(
        advantages=jnp.array([[1.0, 0.0], [-1.0, -1.0]])
    )
    logp = jnp.log(jnp.array([[1.3, 1.0], [0.7, 1.0]]))
    loss, metrics, _ = loss_and_grad(algo, batch, (), logp)
    assert loss == pytest.approx(0.52 / 3, abs=1e-6)
    assert float(metrics["clip_fraction"]) == pytest.approx(2 / 3, abs=1e-6)
    # dual clip c = 10 (verl's DAPO recipe): A = −1, r = 12 -> min(max(12, 0.8), 10) = 10.
    dual = make_algorithm("dapo", dual_clip=10.0)
    b1 = rollout([0.0], [[1]], logp_old=jnp.zeros((1, 1)))._replace(advantages=-jnp.ones((1, 1)))
    assert loss_and_grad(dual, b1, (), jnp.log(jnp.full((1, 1), 12.0)))[0] == pytest.approx(10.0, rel=1e-6)
    assert loss_and_grad(algo, b1, (), jnp.log(jnp.full((1, 1), 12.0)))[0] == pytest.approx(12.0, rel=1e-5)


# ---------------------------------------------------------------- GSPO (§5)


def test_gspo_golden_clipped_sequence_ratio_has_zero_gradient():
    # token log-ratios [0.1, −0.1, 0.3] -> s = e^0.1 = 1.105171 > 1 + 4e-4; A > 0: clipped
    # branch −A · 1.0004 active -> zero gradient.
    algo = make_algorithm("gspo")
    batch = rollout([0.0], np.ones((1, 3)), logp_old=jnp.zeros((1, 3)))._replace(advantages=jnp.ones((1, 3)))
    lr = jnp.array([[0.1, -0.1, 0.3]])
    _, c = gspo_loss(lr, jnp.zeros((1, 3)), jnp.ones((1, 3)), jnp.ones((1, 3)))
    assert np.all(np.asarray(c) == 1.0)
    loss, metrics, grad = loss_and_grad(algo, batch, (), lr)
    assert loss == pytest.approx(-1.0004, abs=1e-6)
    np.testing.assert_array_equal(grad, 0.0)
    assert float(metrics["seq_log_ratio"]) == pytest.approx(0.1, abs=1e-6)
    assert float(metrics["clip_fraction"]) == 1.0


def test_gspo_unclipped_gradient_flows_through_every_token():
    # A = −1, same ratios: l = max(s, clip(s)) = s = 1.105171 (unclipped);
    # d l / d logp_t = s · (1/L) = 0.368390 for each of the 3 tokens.
    algo = make_algorithm("gspo")
    batch = rollout([0.0], np.ones((1, 3)), logp_old=jnp.zeros((1, 3)))._replace(advantages=-jnp.ones((1, 3)))
    loss, metrics, grad = loss_and_grad(algo, batch, (), jnp.array([[0.1, -0.1, 0.3]]))
    assert loss == pytest.approx(math.exp(0.1), abs=1e-6)
    np.testing.assert_allclose(grad, [[math.exp(0.1) / 3] * 3], atol=1e-6)
    assert float(metrics["clip_fraction"]) == 0.0
    # rollout-correction weights (extras['is_weight']) scale the per-token loss, as in verl.
    weighted = batch._replace(extras={**batch.extras, "is_weight": jnp.full((1, 3), 0.5)})
    assert loss_and_grad(algo, weighted, (), jnp.array([[0.1, -0.1, 0.3]]))[0] == pytest.approx(
        math.exp(0.1) / 2
    )


def test_gspo_token_equals_gspo_for_constant_advantages_and_takes_per_token_ones():
    mask = jnp.array([[1, 1, 1], [1, 1, 0]])
    logp = jnp.array([[0.02, -0.01, 0.0], [1e-4, -3e-4, 0.5]])
    adv = jnp.array([[1.0, 1.0, 1.0], [-2.0, -2.0, 0.0]])
    batch = rollout([0.0, 0.0], mask, logp_old=jnp.zeros((2, 3)))._replace(advantages=adv)
    seq = loss_and_grad(make_algorithm("gspo"), batch, (), logp)
    tok = loss_and_grad(make_algorithm("gspo_token"), batch, (), logp)
    assert seq[0] == pytest.approx(tok[0], abs=1e-6)
    np.testing.assert_allclose(seq[2], tok[2], atol=1e-6)
    # per-token A = [1, −1, 2], log-ratios 0 (s = 1, unclipped): l = (1/3) Σ −A_t = −2/3,
    # d l / d logp_t = −A_t s / L = [−1/3, 1/3, −2/3].
    b1 = rollout([0.0], np.ones((1, 3)), logp_old=jnp.zeros((1, 3)))._replace(
        advantages=jnp.array([[1.0, -1, 2]])
    )
    loss, _, grad = loss_and_grad(make_algorithm("gspo_token"), b1, (), jnp.zeros((1, 3)))
    assert loss == pytest.approx(-2 / 3, abs=1e-6)
    np.testing.assert_allclose(grad, [[-1 / 3, 1 / 3, -2 / 3]], atol=1e-6)


# ---------------------------------------------------------------- GMPO


def test_gmpo_hand_golden_token_clip_in_log_space():
    # d = [0.5, 0.1, −0.6], eps = 0.4 (log space).
    # A = +1: d̂ = min(d, 0.4) = [0.4, 0.1, −0.6], mean −0.1/3, l = −e^{−1/30} = −0.967216;
    #         grad = −A e^{..}/3 on unclipped tokens = [0, −0.322405, −0.322405].
    # A = −1: d̂ = max(d, −0.4) = [0.5, 0.1, −0.4], mean 0.2/3, l = +e^{1/15} = 1.068939;
    #         grad = [0.356313, 0.356313, 0].
    d = jnp.array([[0.5, 0.1, -0.6], [0.5, 0.1, -0.6]])
    adv = jnp.array([[1.0] * 3, [-1.0] * 3])
    loss, clipped = gmpo_loss(d, jnp.zeros_like(d), adv, jnp.ones_like(d))
    np.testing.assert_allclose(loss, [-0.967216, 1.068939], atol=1e-6)
    np.testing.assert_array_equal(clipped, [[1, 0, 0], [0, 0, 1]])
    algo = make_algorithm("gmpo")
    batch = rollout([0.0, 0.0], np.ones((2, 3)), logp_old=jnp.zeros((2, 3)))._replace(advantages=adv)
    total, metrics, grad = loss_and_grad(algo, batch, (), d)
    assert total == pytest.approx((-0.967216 + 1.068939) / 2, abs=1e-6)  # mean over 2 sequences
    np.testing.assert_allclose(grad * 2, [[0, -0.322405, -0.322405], [0.356313, 0.356313, 0]], atol=1e-6)
    assert float(metrics["clip_fraction"]) == pytest.approx(2 / 6, abs=1e-6)


def test_gmpo_equals_grpo_gradient_on_policy_for_a_one_token_response():
    # One token, r = 1: GMPO's loss −A r equals PPO's, so the gradient is −A / B.
    algo = make_algorithm("gmpo")
    batch = rollout([0.0, 0.0], np.ones((2, 1)))._replace(advantages=jnp.array([[1.5], [-0.5]]))
    _, _, grad = loss_and_grad(algo, batch, (), jnp.log(jnp.full((2, 1), 0.3)))
    np.testing.assert_allclose(grad, [[-0.75], [0.25]], atol=1e-6)


# ---------------------------------------------------------------- NGRPO (§11)


def test_ngrpo_virtual_max_reward_goldens():
    # all-zero group of 8 + one virtual 1: mu = 1/9, sigma = 1/3 -> A = −1/3.
    a = est.group_advantages(jnp.zeros(8), jnp.zeros(8, jnp.int32), virtual_count=1)
    np.testing.assert_allclose(a, [-1 / 3] * 8, atol=1e-5)
    # [1, 0, 0, 0] + 1: mu = 0.4, sigma = sqrt(1.2 / 4) = 0.547723 -> [1.095445, −0.730297 x3].
    a = est.group_advantages(jnp.array([1.0, 0, 0, 0]), jnp.zeros(4, jnp.int32), virtual_count=1)
    np.testing.assert_allclose(a, [1.095445, -0.730297, -0.730297, -0.730297], atol=1e-5)
    # all-correct group: constant incl. the virtual sample -> exactly 0; size-1 group keeps A = R
    # (the NGRPO code's mean 0 / std 1 rule); virtual_count = 0 is plain GRPO.
    a = est.group_advantages(jnp.array([1.0, 1.0, 0.0]), jnp.array([0, 0, 1]), virtual_count=1)
    np.testing.assert_array_equal(a, [0.0, 0.0, 0.0])
    r, ids = jnp.array([1.0, 0, 0, 1, 0.5]), jnp.array([3, 3, 7, 7, 9])
    np.testing.assert_array_equal(est.group_advantages(r, ids, virtual_count=0), est.group_advantages(r, ids))


def test_ngrpo_filter_masks_all_correct_groups_and_keeps_the_rest():
    # groups [1, 1] (all correct, filtered) and [0, 0]: [0, 0] + virtual 1 -> mu = 1/3,
    # sigma = sqrt((1/9 + 1/9 + 4/9) / 2) = 0.57735 -> A = −0.57735. On-policy l = −A per token;
    # token mean over the 2 unfiltered tokens = 0.57735 (the filtered rows leave the denominator).
    algo, batch, state = prepared("ngrpo", rollout([1.0, 1.0, 0.0, 0.0], np.ones((4, 1)), [0, 0, 1, 1]))
    np.testing.assert_array_equal(np.asarray(batch.loss_mask)[:, 0], [0, 0, 1, 1])
    np.testing.assert_allclose(batch.advantages[:, 0], [0, 0, -0.57735, -0.57735], atol=1e-5)
    assert float(batch.metrics["filtered_rows"]) == 0.5
    loss, _, _ = loss_and_grad(algo, batch, state, jnp.log(jnp.full((4, 1), 0.5)))
    assert loss == pytest.approx(0.57735, abs=1e-5)
    # the strategy's keep rule drops only all-correct groups: by default reward >= max_reward
    # (the code's score == 1), with correct_threshold reward > threshold.
    assert make_algorithm("ngrpo").strategy is not None
    rule, label = not_all_correct(1.0, inclusive=True), not_all_correct(0.5)
    assert (
        not rule(np.ones(4)) and rule(np.zeros(4)) and rule(np.array([1.0, 0, 1])) and rule(np.full(2, 0.9))
    )
    assert not label(np.full(2, 0.9)) and label(np.array([1.0, 0.2]))
    _, b09, _ = prepared("ngrpo", rollout([0.9, 0.9], np.ones((2, 1))))
    assert b09.loss_mask[:, 0].tolist() == [1, 1]  # [0.9, 0.9] + virtual 1: A = −0.57735, kept
    _, b09, _ = prepared("ngrpo", rollout([0.9, 0.9], np.ones((2, 1))), correct_threshold=0.5)
    assert b09.loss_mask[:, 0].tolist() == [0, 0]
    none = make_algorithm("ngrpo", filter_strategy="none")
    assert none.strategy is None
    b2, _ = prepare(none, rollout([1.0, 1.0], np.ones((2, 1))))
    assert b2.loss_mask is None


def test_ngrpo_asymmetric_clip():
    # eps_lo = 0.16, eps_hi = 0.24: A = 1, r = 1.3 -> −1.24; A = −1, r = 0.7 -> 0.84; mean 0.
    # A = 1, r = 0.7 -> −0.7 (unclipped: the lower clip only binds for A < 0).
    algo = make_algorithm("ngrpo", filter_strategy="none")
    batch = rollout([0.0] * 3, np.ones((3, 1)), logp_old=jnp.zeros((3, 1)))._replace(
        advantages=jnp.array([[1.0], [-1.0], [1.0]])
    )
    loss, metrics, _ = loss_and_grad(algo, batch, (), jnp.log(jnp.array([[1.3], [0.7], [0.7]])))
    assert loss == pytest.approx((-1.24 + 0.84 - 0.7) / 3, abs=1e-6)
    assert float(metrics["clip_fraction"]) == pytest.approx(2 / 3, abs=1e-6)


# ---------------------------------------------------------------- GRPO-λ (§25)


def test_grpo_lambda_length_reward_golden():
    # correct responses of lengths 100/200/300 -> len = [0.5, 0, −0.5] -> R = [1.5, 1.0, 0.5].
    np.testing.assert_allclose(
        est.length_rewards(jnp.array([100, 200, 300]), jnp.zeros(3, jnp.int32)), [0.5, 0, -0.5]
    )
    r, sel = est.grpo_lambda_rewards(jnp.ones(3), jnp.array([100, 200, 300]), jnp.zeros(3, jnp.int32), 1.0)
    np.testing.assert_allclose(r, [1.5, 1.0, 0.5], atol=1e-6)
    assert bool(jnp.all(sel))
    # equal lengths: no length term.
    np.testing.assert_array_equal(est.length_rewards(jnp.array([5, 5]), jnp.zeros(2, jnp.int32)), [0.0, 0.0])


def test_grpo_lambda_switches_only_the_top_groups():
    # group 0: R = [1, 1, 0], lengths [2, 3, 4] (acc 2/3); group 1: R = [1, 0, 0] (acc 1/3).
    # top_fraction 0.5 of 2 groups = 1 group: group 0 -> len = [0.5, 0, −0.5] ->
    # [1 + .5, 1 + 0, min(0, −.5)] = [1.5, 1.0, −0.5]; group 1 keeps 0/1 = [1, 0, 0].
    mask = np.zeros((6, 4))
    for i, n in enumerate((2, 3, 4, 4, 2, 3)):
        mask[i, :n] = 1
    algo, batch, _ = prepared("grpo_lambda", rollout([1.0, 1, 0, 1, 0, 0], mask, [0, 0, 0, 1, 1, 1]))
    np.testing.assert_allclose(batch.rewards, [1.5, 1.0, -0.5, 1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(batch.metrics["grpo_lambda/selected"], 0.5)
    expect = est.group_advantages(batch.rewards, batch.group_ids)
    np.testing.assert_allclose(batch.advantages[:, 0], expect, atol=1e-6)
    assert algo.passes == ()


def test_grpo_lambda_never_length_penalises_unsolved_groups_by_default():
    # Three groups, two unsolved (acc 1, 0, 0), top_fraction 2/3 -> groups 0 and (by the tie)
    # 1. Group 1 is unsolved: by default it keeps 0/1 rewards; with penalise_unsolved its wrong
    # answers of lengths 1 and 3 get min(0, len) = [0, −0.5].
    lengths = jnp.array([2, 4, 1, 3, 2, 2])
    ids = jnp.array([0, 0, 1, 1, 2, 2])
    rewards = jnp.array([1.0, 1, 0, 0, 0, 0])
    r, sel = est.grpo_lambda_rewards(rewards, lengths, ids, 2 / 3)
    np.testing.assert_allclose(r, [1.5, 0.5, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_array_equal(sel, [1, 1, 0, 0, 0, 0])
    r, sel = est.grpo_lambda_rewards(rewards, lengths, ids, 2 / 3, penalise_unsolved=True)
    np.testing.assert_allclose(r, [1.5, 0.5, 0, -0.5, 0, 0], atol=1e-6)
    np.testing.assert_array_equal(sel, [1, 1, 1, 1, 0, 0])


def test_top_fraction_groups_rounding_and_ties():
    ids = jnp.array([5, 5, 2, 2, 9, 9])
    scores = jnp.array([1.0, 0, 1, 0, 1, 0])  # three tied groups: the smallest id (2) first
    np.testing.assert_array_equal(est.top_fraction_groups(scores, ids, 1 / 3), [0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(est.top_fraction_groups(scores, ids, 0.5), [1, 1, 1, 1, 0, 0])  # 1.5 -> 2
    np.testing.assert_array_equal(est.top_fraction_groups(scores, ids, 0.0), [0] * 6)


# ---------------------------------------------------------------- GPG


def test_gpg_valid_group_correction_golden():
    # groups [1, 0] (valid) and [1, 1] (zero variance): B = 4, B_valid = 2 -> alpha = 2.
    # F_norm = 1: A = 2 (R − mean) = [1, −1, 0, 0]. l = −A log pi, logp = log[.5, .25, .5, .5]:
    # [0.693147, −1.386294, 0, 0], token mean = −0.693147 / 4 = −0.173287; d l / d logp = −A / 4.
    algo, batch, state = prepared("gpg", rollout([1.0, 0, 1, 1], np.ones((4, 1)), [0, 0, 1, 1]))
    np.testing.assert_allclose(batch.advantages[:, 0], [1.0, -1.0, 0.0, 0.0], atol=1e-6)
    assert float(batch.metrics["gpg/alpha"]) == 2.0
    logp = jnp.log(jnp.array([[0.5], [0.25], [0.5], [0.5]]))
    loss, _, grad = loss_and_grad(algo, batch, state, logp)
    assert loss == pytest.approx(-math.log(2) / 4, abs=1e-6)
    np.testing.assert_allclose(grad[:, 0], [-0.25, 0.25, 0.0, 0.0], atol=1e-6)
    # std normalisation (unbiased std of [1, 0] = 0.7071): A = 2 * ±0.7071; verl's alpha: B / #(R != 0) = 4/3.
    _, b_std, _ = prepared("gpg", rollout([1.0, 0, 1, 1], np.ones((4, 1)), [0, 0, 1, 1]), std="unbiased")
    np.testing.assert_allclose(b_std.advantages[:2, 0], [1.414212, -1.414212], atol=1e-5)
    assert float(
        est.valid_group_scale(jnp.array([1.0, 0, 1, 1]), jnp.array([0, 0, 1, 1]), "nonzero_rewards")
    ) == (pytest.approx(4 / 3))
    assert (
        float(est.valid_group_scale(jnp.ones(4), jnp.zeros(4, jnp.int32))) == 4.0
    )  # no valid group: A = 0 anyway
    assert make_algorithm("gpg").passes == ()


# ---------------------------------------------------------------- COPO (§20)


def test_copo_global_advantage_golden_and_only_the_global_term_trains():
    # accuracies 1 and 0 -> g = [1, 0], A^g = ±0.5 / 0.7071 = ±0.7071 (unbiased std over 2 prompts);
    # local GRPO advantages 0. H = 0 -> w = sigmoid(10 (0 − ½ log 2)) = 1 / (1 + 2^5) = 1/33.
    # One token per row, on-policy: l = (1 − w)(−A^g); d loss / d logp = −(32/33) A^g / 4 = ∓0.171420.
    np.testing.assert_allclose(
        est.prompt_advantages(jnp.array([1.0, 1, 0, 0]), jnp.array([0, 0, 1, 1])), [0.707107] * 2 + [-0.707107] * 2,
        atol=1e-5,
    )  # fmt: skip
    algo, batch, state = prepared("copo", rollout([1.0, 1, 0, 0], np.ones((4, 1)), [0, 0, 1, 1]))
    np.testing.assert_array_equal(batch.advantages[:, 0], [0.0] * 4)
    np.testing.assert_allclose(batch.extras["copo/local_weight"], [1 / 33] * 4, atol=1e-6)
    _, metrics, grad = loss_and_grad(algo, batch, state, jnp.log(jnp.full((4, 1), 0.5)))
    np.testing.assert_allclose(grad[:, 0], [-0.171420] * 2 + [0.171420] * 2, atol=1e-5)
    assert float(metrics["clip_fraction"]) == 0.0


def test_copo_mixed_batch_entropy_gate():
    # group 0: R = [1, 0] -> H = log 2, w = sigmoid(10 · ½ log 2) = 32/33, A^l = ±0.7071;
    # group 1: R = [1, 1] -> H = 0, w = 1/33, A^l = 0. g = [0.5, 1]: mean .75, std 0.353553 ->
    # A^g = [−0.7071, +0.7071]. Row 0 gradient: −(w A^l + (1 − w) A^g) / 4
    # = −(32/33 · 0.7071 − 1/33 · 0.7071) / 4 = −0.166063.
    np.testing.assert_allclose(
        est.outcome_entropy(jnp.array([1.0, 0, 1, 1]), jnp.array([0, 0, 1, 1])),
        [math.log(2)] * 2 + [0, 0],
        atol=1e-6,
    )
    algo, batch, state = prepared("copo", rollout([1.0, 0, 1, 1], np.ones((4, 1)), [0, 0, 1, 1]))
    np.testing.assert_allclose(batch.extras["copo/local_weight"], [32 / 33] * 2 + [1 / 33] * 2, atol=1e-6)
    np.testing.assert_allclose(
        batch.extras["copo/global_advantages"], [-0.707107] * 2 + [0.707107] * 2, atol=1e-5
    )
    _, _, grad = loss_and_grad(algo, batch, state, jnp.log(jnp.full((4, 1), 0.5)))
    assert grad[0, 0] == pytest.approx(-(31 / 33) * 0.707107 / 4, abs=1e-5)
    # three-class group: H = −3 · (1/3) log(1/3) = log 3.
    np.testing.assert_allclose(
        est.outcome_entropy(jnp.array([0.0, 0.5, 1]), jnp.zeros(3, jnp.int32)), [math.log(3)] * 3
    )


# ---------------------------------------------------------------- every new objective


def _batch_for(name):
    mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    batch = rollout([1.0, 0.0, 1.0, 1.0], mask, [0, 0, 1, 1], logp_old=jnp.zeros((4, 3)))
    return prepared(name, batch, **({"dynamic_sampling": False} if name == "dapo" else {}))


@pytest.mark.parametrize("name", NEW)
def test_objectives_finite_at_extreme_log_ratios(name):
    algo, batch, state = _batch_for(name)
    for shift in (50.0, -50.0):
        loss, metrics, grad = loss_and_grad(algo, batch, state, jnp.full((4, 3), shift))
        assert math.isfinite(loss) and np.all(np.isfinite(grad)), (name, shift)
        assert all(np.isfinite(float(v)) for v in metrics.values())


@pytest.mark.parametrize("name", NEW)
def test_objectives_sum_over_row_splits(name):
    # The objective contract: with the whole mini-batch's denominators in extras, the loss, its
    # gradient and every metric of the two halves sum to the whole batch's.
    algo, batch, state = _batch_for(name)
    batch = with_normalisers(batch)
    logp = jnp.array([[0.1, -0.2, 0.05], [0.3, 0.0, 0.0], [-0.1, 0.0, 0.0], [0.02, 0.01, -0.4]])
    whole = loss_and_grad(algo, batch, state, logp)
    parts = [loss_and_grad(algo, rows(batch, s), state, logp[s]) for s in (slice(0, 2), slice(2, 4))]
    assert parts[0][0] + parts[1][0] == pytest.approx(whole[0], abs=1e-6)
    np.testing.assert_allclose(np.concatenate([parts[0][2], parts[1][2]]), whole[2], atol=1e-6)
    for key, value in whole[1].items():
        assert float(parts[0][1][key] + parts[1][1][key]) == pytest.approx(float(value), abs=1e-6), key
