"""Pure preference and reward-modelling losses (jaxrl_llm/losses/preference.py, losses/reward.py,
rewards/models.py::combine_ensemble): the reference spec's sanity numbers, one hand-computed
case each, and finite values and gradients at |logit| = 1e3. Then TGDPO and MODPO as registered
algorithms: their objectives on hand-built PreferenceBatches (the spec's goldens through the
objective), the generic passes on a PreferenceBatch against independent forwards, and the
Pass.check refusing an auxiliary model over another vocabulary (the config field named)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ext_algorithms.ppo_reward_model import write_reward_model
from test_distill import ALPHABET, write_teacher
from test_preference_family import loss_of, pairs

import jaxrl_llm as jrl
from jaxrl_llm.algorithms import make_algorithm
from jaxrl_llm.algorithms.srpo import srpo_records
from jaxrl_llm.losses.policy import full_kl
from jaxrl_llm.losses.preference import (
    apo_reference_logratio,
    brain_surrogate,
    brain_weights,
    dpo_loss,
    gao_fit,
    idealised_ranking_accuracy,
    kl_budget,
    modpo_loss,
    ranking_accuracy,
    srpo_loss,
    superhf_kl,
    superhf_top_k,
    tgdpo_loss,
)
from jaxrl_llm.losses.reward import (
    bradley_terry_loss,
    multi_label_mse,
    ppo_c_rewards,
    ppo_m_loss,
    weighted_reward,
)
from jaxrl_llm.models.auxiliary import load_aux_model
from jaxrl_llm.rewards.models import combine_ensemble
from jaxrl_llm.train.forward import batch_policy_outputs
from jaxrl_llm.train.steps import with_normalisers
from jaxrl_llm.train.validation import validate_passes
from jaxrl_llm.types import ModelOutputs, PassContext, PreferenceBatch, Rollout

L2 = math.log(2.0)
EXTREMES = (1e3, -1e3)


def softplus(x):
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def assert_finite_with_gradients(fn, *args):
    """fn(*args) -> scalar: finite, with finite gradients with respect to every argument."""
    value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(args))))(*args)
    assert np.isfinite(value), value
    for g in grads:
        assert np.isfinite(np.asarray(g)).all(), grads


# ---- Bradley–Terry (§20.1), PPO-M / PPO-C (§20.3), multi-label (§20.4), ensembles (§20.2) ------
def test_bradley_terry_goldens():
    # r_w = 1.2, r_l = 0.4: softplus(−0.8) = 0.371101; margin 0.5: softplus(−0.3) = 0.554355;
    # centring 0.01: + 0.01 · 1.6² = 0.396701.
    np.testing.assert_allclose(bradley_terry_loss(jnp.array([1.2]), jnp.array([0.4])), [0.371101], atol=1e-6)
    np.testing.assert_allclose(bradley_terry_loss(1.2, 0.4, margin=0.5), 0.554355, atol=1e-6)
    np.testing.assert_allclose(bradley_terry_loss(1.2, 0.4, center_coef=0.01), 0.396701, atol=1e-6)
    # By hand: equal scores -> log 2; a per-pair margin [0, log 3 − 0] on scores gap log 3 -> [softplus(−log 3), log 2]
    # = [log 4/3, log 2]; the centring term is per pair, so the mean over pairs is TRL's c·mean((r_w + r_l)²).
    gap = math.log(3.0)
    got = bradley_terry_loss(jnp.array([gap, gap]), jnp.zeros(2), margin=jnp.array([0.0, gap]))
    np.testing.assert_allclose(got, [math.log(4 / 3), L2], atol=1e-6)
    got = bradley_terry_loss(jnp.array([1.0, 0.0]), jnp.array([0.0, -1.0]), center_coef=0.5)
    np.testing.assert_allclose(jnp.mean(got), softplus(-1.0) + 0.5 * 1.0, atol=1e-6)
    for s in EXTREMES:
        assert_finite_with_gradients(
            lambda a, b: bradley_terry_loss(a, b).sum(), jnp.array([s]), jnp.array([-s])
        )


def test_ppo_m_loss_golden():
    # Spec §20.3: r(cwh) 2, r(cwl) 1, r(rwh) −0.5, r(rwl) 0.5 -> 2 softplus(−1) = 0.626523.
    np.testing.assert_allclose(ppo_m_loss(2.0, 1.0, -0.5, 0.5), 0.626523, atol=1e-6)
    # By hand: all four equal -> 2 log 2; with margin 1, both terms softplus(1).
    np.testing.assert_allclose(ppo_m_loss(0.3, 0.3, 0.3, 0.3), 2 * L2, atol=1e-6)
    np.testing.assert_allclose(ppo_m_loss(0.3, 0.3, 0.3, 0.3, margin=1.0), 2 * softplus(1.0), atol=1e-6)
    for s in EXTREMES:
        args = (jnp.array([s]), jnp.array([-s]), jnp.array([s]), jnp.array([-s]))
        assert_finite_with_gradients(lambda a, b, c, d: ppo_m_loss(a, b, c, d).sum(), *args)


def test_ppo_c_calibrated_rewards_and_state():
    # Spec §20.3: r [2, −1], c 0.9, r̄ 0.5 -> EMA 0.1·0.5 + 0.9·0.5 = 0.5; [2 + 0.5·2·0.4, −1 − 0.5·1·0.4].
    rewards, avg = ppo_c_rewards(jnp.asarray(0.5), jnp.array([2.0, -1.0]), 0.9)
    np.testing.assert_allclose(rewards, [2.4, -1.2], atol=1e-6)
    np.testing.assert_allclose(avg, 0.5, atol=1e-6)
    # By hand: the EMA is updated before the threshold (the official order): r [4, 0.1], r̄ 0 ->
    # r̄' = 0.1 · 2.05 = 0.205, so 0.1 < r̄' is pushed down: 0.1 − 0.5·0.1·0.4 = 0.08 (0.12
    # against the old r̄); 4 -> 4.8. A score of 20 is clipped to 10 first; c = 0.5 changes nothing.
    rewards, avg = ppo_c_rewards(jnp.asarray(0.0), jnp.array([4.0, 0.1]), jnp.array([0.9, 0.9]))
    np.testing.assert_allclose(rewards, [4.8, 0.08], atol=1e-6)
    np.testing.assert_allclose(avg, 0.205, atol=1e-6)
    rewards, avg = ppo_c_rewards(jnp.asarray(0.0), jnp.array([20.0, -3.0]), 0.5)
    np.testing.assert_allclose(rewards, [10.0, -3.0], atol=1e-6)
    np.testing.assert_allclose(avg, 0.35, atol=1e-6)
    # a pure state step: jittable, state in and out
    step = jax.jit(ppo_c_rewards)
    _, avg = step(avg, jnp.array([1.0, 1.0]), jnp.array([0.5, 0.5]))
    np.testing.assert_allclose(avg, 0.1 + 0.9 * 0.35, atol=1e-6)


def test_multi_label_regression_and_weighted_reward():
    # Spec §20.4: MSE (0.04 + 0.01 + 0.01 + 0.01) / 4 = 0.0175; equal-weight R = 0.675.
    pred, target = jnp.array([[0.8, 0.6, 0.4, 0.9]]), jnp.array([[1.0, 0.5, 0.5, 1.0]])
    np.testing.assert_allclose(multi_label_mse(pred, target), [0.0175], atol=1e-7)
    np.testing.assert_allclose(weighted_reward(pred), [0.675], atol=1e-6)
    # By hand: weights (1, 0, 0, 1) -> 1.7; a perfect prediction -> 0.
    np.testing.assert_allclose(weighted_reward(pred, (1.0, 0.0, 0.0, 1.0)), [1.7], atol=1e-6)
    np.testing.assert_allclose(multi_label_mse(target, target), [0.0])


def test_ensemble_combinations_mean_min_and_variance_penalty():
    # Spec §20.2: members [1.0, 0.6, 1.4], λ 0.5: mean 1.0, WCO 0.6, UWO mean − λ·Var = 1 − 0.5·0.32/3.
    members = np.array([[1.0], [0.6], [1.4]])
    np.testing.assert_allclose(combine_ensemble(members, "mean"), [1.0], atol=1e-6)
    np.testing.assert_allclose(combine_ensemble(members, "min"), [0.6], atol=1e-6)
    np.testing.assert_allclose(combine_ensemble(members, "mean_minus_var", 0.5), [0.946667], atol=1e-6)
    # By hand, λ 2: members 0 and 2 -> mean 1, Var 1, std 1: both 1 − 2 = −1; members 0 and 4 ->
    # mean 2, Var 4: 2 − 8 = −6, against std 2: 2 − 4 = −2.
    np.testing.assert_allclose(
        combine_ensemble(np.array([[0.0, 0.0], [2.0, 4.0]]), "mean_minus_var", 2.0), [-1, -6]
    )
    np.testing.assert_allclose(
        combine_ensemble(np.array([[0.0, 0.0], [2.0, 4.0]]), "mean_minus_std", 2.0), [-1, -2]
    )
    with pytest.raises(ValueError, match="mean_minus_var"):
        combine_ensemble(members, "median")


# ---- TGDPO (§11) and MODPO (§12), pure --------------------------------------------------------
TG_CHOSEN = dict(policy=[[-1.0, -2.0, -0.5]], ref=[[-1.2, -1.8, -0.9]], guide=[[-0.8, -1.9, -0.4]])
TG_REJECTED = dict(policy=[[-2.0, -3.0, 0.0]], ref=[[-1.5, -2.5, 0.0]], guide=[[-2.5, -2.7, 0.0]])
TG_MASKS = (jnp.array([[1, 1, 1]]), jnp.array([[1, 1, 0]]))


def _tgdpo(**kwargs):
    c, r = ({k: jnp.asarray(v) for k, v in d.items()} for d in (TG_CHOSEN, TG_REJECTED))
    return tgdpo_loss(
        c["policy"], r["policy"], c["ref"], r["ref"], c["guide"], r["guide"], *TG_MASKS, **kwargs
    )


def test_srpo_objective_on_three_rows_per_pair():
    """The spec's pair (ℓ 0.072) and an all-zero pair (ℓ 0.6) as the algorithm's six rows, rows
    3g, 3g + 1, 3g + 2 = x, revise(x, y_l), revise(x, y_w): the objective is their mean."""
    chosen = [[0.5], [2.0], [1.0], [0.0], [0.0], [0.0]]
    rejected = [[-0.5], [-1.0], [-3.0], [0.0], [0.0], [0.0]]
    batch, logp = pairs(chosen, rejected, np.zeros((6, 1)), np.zeros((6, 1)))
    loss, metrics = loss_of("srpo", with_normalisers(batch), logp)
    np.testing.assert_allclose(loss, (0.072 + 0.6) / 2, atol=1e-6)
    np.testing.assert_allclose(metrics["srpo_generative"], (0.16 + 1.0) / 2, atol=1e-6)
    np.testing.assert_allclose(metrics["reward_accuracy"], 0.5, atol=1e-6)


def test_srpo_records_make_three_rows_per_pair():
    records = [{"prompt": "1+1=", "chosen": "2", "rejected": "3", "index": 7}]
    rows = srpo_records("{prompt}{draft}\n{prompt}")(records)
    assert [r["prompt"] for r in rows] == ["1+1=", "1+1=3\n1+1=", "1+1=2\n1+1="]
    assert all(r["chosen"] == "2" and r["rejected"] == "3" and r["group"] == 0 for r in rows)
    with pytest.raises(ValueError, match=r"algo\.template='\{prompt\}: '.*\{draft\}"):
        make_algorithm("srpo", template="{prompt}: ")


def test_tgdpo_loss_goldens():
    # Spec §11: z = 0.0415 + 0.103 = 0.1445 -> softplus(−0.1445) = 0.623505; α = 0: DPO 0.625595.
    loss, metrics = _tgdpo()
    np.testing.assert_allclose(loss, [0.623505], atol=1e-6)
    np.testing.assert_allclose(_tgdpo(alpha=0.0)[0], [0.625595], atol=1e-6)
    # The logged rewards are DPO's β·ρ: ρ_w = 0.4, ρ_l = −1.0; weights 1 + 0.5 r̂^w = [1.02, 0.995, 1.025],
    # 1 − 0.5 r̂^l = [1.05, 1.01].
    np.testing.assert_allclose(metrics["reward_chosen"], [0.04], atol=1e-6)
    np.testing.assert_allclose(metrics["reward_rejected"], [-0.1], atol=1e-6)
    np.testing.assert_allclose(metrics["token_weight_chosen"], [(1.02 + 0.995 + 1.025) / 3], atol=1e-6)
    np.testing.assert_allclose(metrics["token_weight_rejected"], [1.03], atol=1e-6)


def test_tgdpo_loss_by_hand_gradient_and_clamp():
    # One chosen token, q = 1 and lp_rm − lp_ref = 10 -> r̂ = 1, weight 1.5: z = 0.15; the
    # rejected token has q = 0. dℓ/dlp_θ = −σ(−z)·β·w = −0.462570 · 0.15.
    def loss(lp, guide, clamp=False):
        return tgdpo_loss(
            lp[:, :1],
            lp[:, 1:],
            jnp.zeros((1, 1)),
            jnp.zeros((1, 1)),
            guide,
            jnp.zeros((1, 1)),
            jnp.ones((1, 1)),
            jnp.ones((1, 1)),
            clamp_weights=clamp,
        )[0].sum()

    value, grad = jax.value_and_grad(loss)(jnp.array([[1.0, 0.0]]), jnp.array([[10.0]]))
    np.testing.assert_allclose(value, softplus(-0.15), atol=1e-6)
    np.testing.assert_allclose(grad[0, 0], -(1 / (1 + math.exp(0.15))) * 0.15, atol=1e-6)
    # lp_rm − lp_ref = −30: weight 1 − 1.5 = −0.5 (official: unclamped, z = −0.05); clamped: 0, z = 0.
    np.testing.assert_allclose(loss(jnp.array([[1.0, 0.0]]), jnp.array([[-30.0]])), softplus(0.05), atol=1e-6)
    np.testing.assert_allclose(loss(jnp.array([[1.0, 0.0]]), jnp.array([[-30.0]]), True), L2, atol=1e-6)
    # the reward model carries no gradient (constant guidance)
    assert float(jax.grad(loss, argnums=1)(jnp.array([[1.0, 0.0]]), jnp.array([[10.0]]))[0, 0]) == 0.0
    for s in EXTREMES:
        assert_finite_with_gradients(loss, jnp.array([[s, -s]]), jnp.array([[s]]))


def test_modpo_loss_goldens():
    # Spec §12: β 0.1, w (0.5, 0.5), ρ(y_w) 1.0, ρ(y_l) −0.5, r 1.0 / 0.2 -> R_w −0.8, R_l −0.3, 0.974077.
    args = (
        jnp.array([1.0]),
        jnp.array([-0.5]),
        jnp.zeros(1),
        jnp.zeros(1),
        jnp.array([[1.0]]),
        jnp.array([[0.2]]),
    )
    loss, metrics = modpo_loss(*args, (0.5, 0.5))
    np.testing.assert_allclose(loss, [0.974077], atol=1e-6)
    np.testing.assert_allclose(metrics["reward_chosen"], [-0.8], atol=1e-6)
    np.testing.assert_allclose(metrics["reward_rejected"], [-0.3], atol=1e-6)
    assert float(metrics["reward_accuracy"][0]) == 0.0
    # By hand: hinge max(0, 1 − (−0.5)) = 1.5; w = (1, 0) is DPO on ρ (h = 1.5): softplus(−0.15).
    np.testing.assert_allclose(modpo_loss(*args, (0.5, 0.5), link="hinge")[0], [1.5], atol=1e-6)
    np.testing.assert_allclose(modpo_loss(*args, (1.0, 0.0))[0], dpo_loss(*args[:4])[0], atol=1e-7)
    # Two margin models, w (0.5, 0.25, 0.25), margin gaps (0.8, −0.4): R_w − R_l = 2·[0.15 − 0.25·0.4] = 0.1.
    two = args[:4] + (jnp.array([[1.0, 0.0]]), jnp.array([[0.2, 0.4]]))
    np.testing.assert_allclose(modpo_loss(*two, (0.5, 0.25, 0.25))[0], [softplus(-0.1)], atol=1e-6)
    with pytest.raises(ValueError, match="need 3 weights"):
        modpo_loss(*two, (0.5, 0.5))
    with pytest.raises(ValueError, match="link='ipo'"):
        modpo_loss(*args, (0.5, 0.5), link="ipo")
    # margins carry no gradient; finite at preference logits of ±1e3
    grad = jax.grad(lambda m: modpo_loss(*args[:4], m, args[5], (0.5, 0.5))[0].sum())(args[4])
    assert float(grad[0, 0]) == 0.0
    for s in EXTREMES:
        fn = lambda pc, pr: modpo_loss(pc, pr, *args[2:], (0.5, 0.5))[0].sum()  # noqa: E731
        assert_finite_with_gradients(fn, jnp.array([s]), jnp.array([-s]))


# ---- SRPO (§13), BRAIn (§16), SuperHF (§15), APO (§10) -----------------------------------------
def test_srpo_loss_goldens():
    # Spec §13: self-improvement (0.3 − 0.5)² + (0.4 − 0.5)² = 0.05, generative (0.6 − 1)² = 0.16,
    # L = 0.2·0.16 + 0.8·0.05 = 0.072.
    loss, metrics = srpo_loss(0.5, -0.5, 2.0, -1.0, 1.0, -3.0)
    np.testing.assert_allclose(loss, 0.072, atol=1e-6)
    np.testing.assert_allclose(metrics["srpo_self_improvement"], 0.05, atol=1e-6)
    np.testing.assert_allclose(metrics["srpo_generative"], 0.16, atol=1e-6)
    # By hand: every log-ratio 0, p = 1: self-improvement 2·0.25, generative 1 -> 0.2 + 0.4 = 0.6;
    # p = ½ (no preference): every target 0 -> 0.
    zeros = (jnp.zeros(2),) * 6
    np.testing.assert_allclose(srpo_loss(*zeros)[0], [0.6, 0.6], atol=1e-6)
    np.testing.assert_allclose(srpo_loss(*zeros, pref_prob=0.5)[0], [0.0, 0.0], atol=1e-7)
    for s in EXTREMES:
        args = tuple(jnp.array([s * (-1) ** i]) for i in range(6))
        assert_finite_with_gradients(lambda *a: srpo_loss(*a)[0].sum(), *args)


def test_brain_weights_and_surrogate_goldens():
    # Spec §16: α̂ = softmax([0.5, 0.5, −2]) = [0.480288, 0.480288, 0.039424], β̂ = 1/3.
    s_q = jnp.array([-4.5, -4.5, -5])  # the proposal is the policy
    w = brain_weights(jnp.array([1.0, 0, -1]), jnp.array([-5.0, -4, -6]), s_q, s_q)
    np.testing.assert_allclose(w, [0.146954, 0.146954, -0.293909], atol=1e-6)
    np.testing.assert_allclose(jnp.sum(w), 0.0, atol=1e-6)
    # By hand (two prompts, [2, 2]): ref = q = θ and r = [log 3, 0] -> α̂ [3/4, 1/4], β̂ ½: [¼, −¼];
    # equal rewards -> 0. The surrogate's gradient is −w; the weights carry none.
    rewards = jnp.array([[math.log(3.0), 0.0], [1.0, 1.0]])
    w = brain_weights(rewards, jnp.zeros((2, 2)), jnp.zeros((2, 2)), jnp.zeros((2, 2)))
    np.testing.assert_allclose(w, [[0.25, -0.25], [0.0, 0.0]], atol=1e-6)
    s = jnp.array([[-3.0, -5.0], [-1.0, -2.0]])
    np.testing.assert_allclose(brain_surrogate(s, w), [-(0.25 * -3 - 0.25 * -5), 0.0], atol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda x: brain_surrogate(x, w).sum())(s), -w, atol=1e-7)

    def total(s, r):
        return brain_surrogate(s, brain_weights(r, jnp.zeros(3), jnp.zeros(3), s)).sum()

    assert float(jnp.abs(jax.grad(total, argnums=1)(jnp.zeros(3), jnp.ones(3))).sum()) == 0.0
    for e in EXTREMES:
        assert_finite_with_gradients(total, jnp.array([e, -e, 0.0]), jnp.array([e, 0.0, -e]))


def test_superhf_filter_and_kl_goldens():
    # Spec §15: scores [0.1, 0.9, 0.5], top_k 1 keeps index 1.
    np.testing.assert_array_equal(superhf_top_k(jnp.array([0.1, 0.9, 0.5])), [False, True, False])
    # By hand: per prompt (last axis), top_k 2; an invalid (empty) completion is never kept.
    keep = superhf_top_k(
        jnp.array([[0.1, 0.9, 0.5], [3.0, 2.0, 1.0]]), 2, valid=jnp.array([[1, 1, 1], [0, 1, 1]])
    )
    np.testing.assert_array_equal(keep, [[False, True, True], [False, True, True]])
    # Spec §15: π_θ [[0.7, 0.3], [0.5, 0.5]], π_ref uniform -> mean KL 0.043588; CE 1 + 0.35·KL = 1.015256.
    policy, ref = jnp.log(jnp.array([[0.7, 0.3], [0.5, 0.5]])), jnp.log(jnp.full((2, 2), 0.5))
    kl = superhf_kl(full_kl(ref, policy), jnp.ones(2))
    np.testing.assert_allclose(kl, 0.043588, atol=1e-6)
    np.testing.assert_allclose(1.0 + 0.35 * kl, 1.015256, atol=1e-6)
    # By hand: the masked token does not count: [[0.7, 0.3], pad] -> 0.5 log(0.5/0.7) + 0.5 log(0.5/0.3).
    by_hand = 0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3)
    np.testing.assert_allclose(superhf_kl(full_kl(ref, policy), jnp.array([1, 0])), by_hand, atol=1e-6)
    np.testing.assert_allclose(superhf_kl(full_kl(ref, ref), jnp.ones(2)), 0.0, atol=1e-7)
    np.testing.assert_allclose(full_kl(ref[0], policy[0]), by_hand, atol=1e-6)  # full_kl's example
    for s in EXTREMES:  # log-softmax of logits ±1e3 on both sides
        logits = jnp.array([[s, -s], [0.0, s]])
        fn = lambda a, b: superhf_kl(full_kl(b, a), jnp.ones(2))  # noqa: E731
        assert_finite_with_gradients(fn, logits, -logits)


def test_apo_reference_logratio_goldens():
    # Spec §10: α 0.3, S_{t+1} (−10, −12), S_t (−11, −11.5) -> 1.3·2 − 0.3·0.5 = 2.45.
    np.testing.assert_allclose(apo_reference_logratio(-10.0, -12.0, -11.0, -11.5), 2.45, atol=1e-6)
    # α = 0 is DPO with the previous iterate as the reference; by hand with α 1: 2·2 − 0.5 = 3.5.
    pc, pr = jnp.array([-9.0]), jnp.array([-13.0])
    ratio = apo_reference_logratio(
        jnp.array([-10.0]), jnp.array([-12.0]), jnp.array([-11.0]), jnp.array([-11.5]), 0.0
    )
    np.testing.assert_allclose(
        dpo_loss(pc, pr, ratio, jnp.zeros(1))[0], dpo_loss(pc, pr, jnp.array([-10.0]), jnp.array([-12.0]))[0]
    )
    np.testing.assert_allclose(apo_reference_logratio(-10.0, -12.0, -11.0, -11.5, 1.0), 3.5, atol=1e-6)


# ---- Evaluation: ranking accuracy (§18), KL budget and Gao fits (§19) --------------------------
def test_ranking_accuracy_goldens():
    # Spec §18: R = 0.5 (the tie counts as wrong); R* = 1.0 at β 0.1 and 0.666667 at β 1.
    got = ranking_accuracy(jnp.array([-10.0, -20, -5, -7]), jnp.array([-12.0, -15, -6, -7]))
    np.testing.assert_array_equal(got, [1, 0, 1, 0])
    assert float(jnp.mean(got)) == 0.5
    gaps, alpha = jnp.array([2.0, -5.0, 1.0]), jnp.array([0.6, 0.9, 0.5])
    np.testing.assert_allclose(jnp.mean(idealised_ranking_accuracy(gaps, jnp.zeros(3), alpha, 0.1)), 1.0)
    np.testing.assert_allclose(
        jnp.mean(idealised_ranking_accuracy(gaps, jnp.zeros(3), alpha, 1.0)), 2 / 3, atol=1e-6
    )
    # By hand: a unanimous rater fraction is clipped to 0.999 (log-odds 6.906755): a reference gap
    # of −6.9 is overturned at β 1, −6.91 is not; α = 0 is clipped too (finite, never ranked first).
    got = idealised_ranking_accuracy(
        jnp.array([-6.9, -6.91, 5.0]), jnp.zeros(3), jnp.array([1.0, 1.0, 0.0]), 1.0
    )
    np.testing.assert_array_equal(got, [1, 0, 0])


def test_kl_budget_and_gao_fits():
    # Spec §19: two samples with Σ_t (lp_θ − lp_ref) = 1.2 and 0.8 -> KL̂ = 1.0, d = 1.0.
    kl, d = kl_budget(
        jnp.array([[1.0, 0.2, 9.0], [0.5, 0.3, 9.0]]), jnp.zeros((2, 3)), jnp.array([[1, 1, 0], [1, 1, 0]])
    )
    np.testing.assert_allclose([kl, d], [1.0, 1.0], atol=1e-6)
    # By hand: a negative estimate keeps its sign, d = 0.
    kl, d = kl_budget(jnp.array([[-0.5]]), jnp.zeros((1, 1)), jnp.ones((1, 1)))
    np.testing.assert_allclose([kl, d], [-0.5, 0.0], atol=1e-7)
    # Exact points of each form are recovered with R² = 1; R(1) = a for both forms.
    d = jnp.array([0.0, 0.5, 1.0, 2.0, 3.0])
    a, b, r2 = gao_fit(d, d * (2.0 - 0.5 * d), "bon")
    np.testing.assert_allclose([a, b, r2], [2.0, 0.5, 1.0], atol=1e-4)
    rl = jnp.where(d > 0, d * (2.0 - 0.5 * jnp.log(jnp.where(d > 0, d, 1.0))), 0.0)
    a, b, r2 = gao_fit(d, rl, "rl")
    np.testing.assert_allclose([a, b, r2], [2.0, 0.5, 1.0], atol=1e-4)
    # By hand: two points d = (1, 2), R = (1, 0) in the BoN form: a − b = 1, 2a − 4b = 0 -> a 2, b 1.
    a, b, _ = gao_fit(jnp.array([1.0, 2.0]), jnp.array([1.0, 0.0]), "bon")
    np.testing.assert_allclose([a, b], [2.0, 1.0], atol=1e-4)
    # A curve of the other form fits with R² < 1.
    _, _, r2 = gao_fit(d, rl, "bon")
    assert 0.0 < float(r2) < 1.0
    with pytest.raises(ValueError, match="form='log'"):
        gao_fit(d, rl, "log")


# ---- TGDPO and MODPO as algorithms -------------------------------------------------------------
def test_tgdpo_objective_golden_and_defaults():
    batch, logp = pairs(
        [[-1.0, -2.0, -0.5]], [[-2.0, -3.0]], TG_CHOSEN["ref"], [[-1.5, -2.5]]
    )  # the rejected row padded to 3
    extras = {
        "teacher_logp/token_rm/chosen": jnp.asarray(TG_CHOSEN["guide"], jnp.float32),
        "teacher_logp/token_rm/rejected": jnp.asarray(TG_REJECTED["guide"], jnp.float32),
    }
    batch = with_normalisers(batch._replace(extras=extras))
    algorithm = make_algorithm("tgdpo")
    loss, metrics = algorithm.objective(ModelOutputs(logp=logp), batch, ())
    np.testing.assert_allclose(loss, 0.623505, atol=1e-6)
    np.testing.assert_allclose(metrics["reward_accuracy"], 1.0)
    assert [p.name for p in algorithm.passes] == ["reference", "teacher/token_rm"]
    assert algorithm.needs() == {"reference", "aux:token_rm"}
    with pytest.raises(ValueError, match="teacher_logp/token_rm/chosen"):
        algorithm.objective(ModelOutputs(logp=logp), batch._replace(extras={}), ())


def test_modpo_objective_golden_with_a_reward_head_and_a_causal_margin_model():
    # ρ(y_w) = 1.0, ρ(y_l) = −0.5 (β·ρ of the spec's pair), reward-head margins 1.0 / 0.2 -> 0.974077.
    batch, logp = pairs([[-1.0, -1.0]], [[-2.0, -1.5]], [[-1.5, -1.5]], [[-1.5, -1.5]])
    extras = {"rm/harmless/chosen": jnp.array([1.0]), "rm/harmless/rejected": jnp.array([0.2])}
    loss, metrics = make_algorithm("modpo", margin_models="harmless").objective(
        ModelOutputs(logp=logp), with_normalisers(batch._replace(extras=extras)), ()
    )
    np.testing.assert_allclose(loss, 0.974077, atol=1e-6)
    np.testing.assert_allclose(metrics["margin_reward_harmless"], 0.8, atol=1e-6)
    # By hand, a causal LM as the margin model: its implicit reward 0.1·(S_k − S_ref) with S_k (−5, −9)
    # against S_ref (−3, −3): r = (−0.2, −0.6); with w (0.5, 0.25, 0.25) and the reward head:
    # R_w − R_l = 2·[0.15 − 0.25·0.8 − 0.25·0.4] = −0.3.
    extras["teacher_logp/lm/chosen"] = jnp.array([[-2.0, -3.0]])
    extras["teacher_logp/lm/rejected"] = jnp.array([[-4.0, -5.0]])
    algorithm = make_algorithm("modpo", margin_models="harmless, lm", weights=(0.5, 0.25, 0.25))
    loss, metrics = algorithm.objective(
        ModelOutputs(logp=logp), with_normalisers(batch._replace(extras=extras)), ()
    )
    np.testing.assert_allclose(loss, softplus(0.3), atol=1e-6)
    np.testing.assert_allclose(metrics["margin_reward_lm"], 0.4, atol=1e-6)
    assert [p.name for p in algorithm.passes] == ["reference", "margin/harmless", "margin/lm"]
    with pytest.raises(ValueError, match="algo.weights=.*needs 3"):
        make_algorithm("modpo", margin_models="a,b")
    with pytest.raises(ValueError, match="w_0 must be > 0"):
        make_algorithm("modpo", weights="0,1")
    with pytest.raises(ValueError, match="algo.loss_type='ipo'"):
        make_algorithm("modpo", loss_type="ipo")


def _pairs_batch(vocab, b=2, p=3, t=4, seed=0):
    rng = np.random.default_rng(seed)
    prompt_mask = (np.arange(p)[None] >= rng.integers(0, p - 1, b)[:, None]).astype(np.int32)
    masks = [(np.arange(t)[None] < rng.integers(1, t + 1, b)[:, None]).astype(np.int32) for _ in range(2)]
    ids = [rng.integers(3, vocab, (b, t)).astype(np.int32) * m for m in masks]
    return PreferenceBatch(
        prompt_ids=jnp.asarray(rng.integers(3, vocab, (b, p)) * prompt_mask, jnp.int32),
        prompt_mask=jnp.asarray(prompt_mask),
        chosen_ids=jnp.asarray(ids[0]),
        chosen_mask=jnp.asarray(masks[0]),
        rejected_ids=jnp.asarray(ids[1]),
        rejected_mask=jnp.asarray(masks[1]),
    )


def test_generic_passes_on_a_preference_batch(tmp_path):
    lm = load_aux_model(
        "lm", {"checkpoint": write_teacher(str(tmp_path / "lm"), ALPHABET), "head": "causal_lm"}
    )
    rm = load_aux_model(
        "rm", {"checkpoint": write_reward_model(str(tmp_path / "rm"), ALPHABET), "head": "reward"}
    )
    batch = _pairs_batch(lm.config.vocab_size)
    ctx = PassContext(None, None, None, {"lm": lm, "rm": rm}, None, None)
    out = jrl.teacher_pass("lm").run(ctx, batch)
    out = jrl.reward_model_pass("rm").run(ctx, out)
    for side in ("chosen", "rejected"):  # each side as its own Rollout: the same values
        rows = Rollout(
            batch.prompt_ids, batch.prompt_mask, getattr(batch, f"{side}_ids"), getattr(batch, f"{side}_mask")
        )
        want = batch_policy_outputs(lm.config, lm.params, rows, 1.0).logp
        np.testing.assert_allclose(out.extras[f"teacher_logp/lm/{side}"], want, atol=1e-5)
        want = jrl.reward_model_pass("rm").run(ctx, rows).extras["rm/rm"]
        np.testing.assert_allclose(out.extras[f"rm/rm/{side}"], want, atol=1e-5)
    # MODPO's margin pass dispatches on the model's head
    out = make_algorithm("modpo", margin_models="rm,lm", weights=(0.5, 0.25, 0.25)).passes[1].run(ctx, batch)
    assert set(out.extras) == {"rm/rm/chosen", "rm/rm/rejected"}


def test_auxiliary_models_over_another_vocabulary_are_refused(tmp_path):
    cfg, _ = jrl.load_checkpoint(write_teacher(str(tmp_path / "policy"), ALPHABET, seed=0))
    other = load_aux_model(
        "token_rm",
        {"checkpoint": write_teacher(str(tmp_path / "other"), ALPHABET + "abc"), "head": "causal_lm"},
    )
    with pytest.raises(
        ValueError, match=r"config field aux_models\.token_rm\.checkpoint=.*vocabulary of 18 tokens.*has 15"
    ):
        validate_passes(make_algorithm("tgdpo"), cfg, {"token_rm": other})
    rm = load_aux_model(
        "token_rm", {"checkpoint": write_reward_model(str(tmp_path / "rm"), ALPHABET), "head": "reward"}
    )
    with pytest.raises(ValueError, match=r"config field aux_models\.token_rm\.head='reward'.*'causal_lm'"):
        validate_passes(make_algorithm("tgdpo"), cfg, {"token_rm": rm})
    validate_passes(
        make_algorithm("modpo", margin_models="token_rm"), cfg, {"token_rm": rm}
    )  # a reward head is fine
    with pytest.raises(
        ValueError, match=r"config field aux_models\.margin_rm\.checkpoint=.*vocabulary of 18"
    ):
        validate_passes(make_algorithm("modpo"), cfg, {"margin_rm": other._replace(name="margin_rm")})
