"""The clipping and token-selection family (BAPO, DCPO, CISPO, SAPO, Clip-Cov, KL-Cov, top-entropy
tokens): golden values of the pure functions (hand computations in the comments) and the
factories' transforms / objectives on small hand-built rollouts."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from batch_helpers import outputs, prepare, rollout, rows

from jaxrl_llm.algorithms import make_algorithm
from jaxrl_llm.algorithms.clipping import clip_cov_tokens, kl_cov_tokens, top_entropy_tokens
from jaxrl_llm.losses.clipping import (
    bapo_contributions,
    bapo_search_path,
    bapo_select,
    cispo_loss,
    clip_cov_selection,
    dcpo_bounds,
    dcpo_smooth_advantages,
    kl_cov_loss,
    kl_cov_selection,
    only_token_mean,
    sapo_loss,
    token_covariance,
    top_entropy_mask,
)
from jaxrl_llm.train.steps import with_normalisers
from jaxrl_llm.transforms.base import chain
from jaxrl_llm.transforms.rollout import group_advantages

# ------------------------------------------------------------------------------------------ BAPO

# The spec's tokens (r, A) = (1.5, +1), (1.0, −1), (1.0, −1), one token per row, weights 1.
BAPO_LOGP = jnp.log(jnp.array([[1.5], [1.0], [1.0]]))
BAPO_ADV = jnp.array([[1.0], [-1.0], [-1.0]])


def bapo_bounds(rule, weights=None, **ranges):
    defaults = {
        "paper": dict(c_low_range=(0.6, 0.9), c_high_range=(1.2, 3.0), c_low_step=0.02, c_high_step=0.05),
        "code": dict(c_low_range=(0.6, 0.8), c_high_range=(1.2, 2.0), c_low_step=0.05, c_high_step=0.05),
    }[rule]
    search = bapo_search_path(rule, **{**defaults, **ranges})
    w = jnp.ones((3, 1)) if weights is None else weights
    pos, neg = bapo_contributions(BAPO_LOGP, jnp.zeros((3, 1)), BAPO_ADV, w, search.c_lows, search.c_highs)
    return search, pos, neg, bapo_select(pos, neg, search, rule, 0.4 if rule == "paper" else 1.0)


def test_bapo_paper_rule_golden():
    # P(c_high) = min(1.5, c_high), N = 2: ρ = 1.2/3.2 = .375, 1.25/3.25 = .3846, 1.3/3.3 = .3939,
    # 1.35/3.35 = .40299 ≥ 0.4: stop at (0.6, 1.35) (Alg. 1 raises c_high first).
    search, pos, neg, b = bapo_bounds("paper")
    assert len(search.c_lows) == 16 and len(search.c_highs) == 37 and len(search.path) == 1 + 36 + 15
    np.testing.assert_allclose(pos[:4] / (pos[:4] + neg[0]), [0.375, 0.384615, 0.393939, 0.402985], atol=1e-6)
    np.testing.assert_allclose([b.c_low, b.c_high, b.target_met], [0.6, 1.35, 1.0], atol=1e-6)
    np.testing.assert_allclose(b.balance, 1.35 / 3.35, atol=1e-6)


def test_bapo_paper_rule_walks_c_low_when_c_high_is_exhausted():
    # π_rollout = 0.5 on the positive token: P ≤ 0.5·1.5 = 0.75, N = 2·max(1, c_low) = 2, so
    # ρ ≤ 0.75/2.75 = 0.2727 < 0.4 everywhere: c_high climbs to 3.0, then c_low to 0.9, unmet.
    _, _, _, b = bapo_bounds("paper", weights=jnp.array([[0.5], [1.0], [1.0]]))
    np.testing.assert_allclose([b.c_low, b.c_high, b.target_met], [0.9, 3.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(b.balance, 0.75 / 2.75, atol=1e-6)


def test_bapo_code_rule_golden():
    # pos/neg at the start = 1.2/2 = 0.6; c_low 0.6 -> 0.8 changes nothing (max(1, c_low) = 1),
    # then c_high -> 2.0: 1.5/2 = 0.75 < 1 (target unmet).
    search, _, _, b = bapo_bounds("code")
    assert search.c_lows == (0.6, 0.65, 0.7, 0.75, 0.8) and search.c_highs[-1] == 2.0
    assert search.path[4] == (4, 0) and search.path[-1] == (4, 16)
    np.testing.assert_allclose([b.c_low, b.c_high, b.balance, b.target_met], [0.8, 2.0, 0.75, 0.0], atol=1e-6)


def bapo_batch():
    return rollout(
        None, np.ones((3, 1)), advantages=BAPO_ADV, logp_old=jnp.zeros((3, 1)), logp_behav=jnp.zeros((3, 1))
    )


def test_bapo_objective_uses_mini_batch_statistics_across_micro_batches():
    # Bounds (0.6, 1.35); PPO-clip: −min(1.5, 1.35) = −1.35 on token 1, +1 on tokens 2, 3:
    # token mean (−1.35 + 2)/3 = 0.216667; clip fraction 1/3.
    algo = make_algorithm("bapo")
    batch = bapo_batch()
    loss, metrics = algo.objective(outputs(BAPO_LOGP), batch, ())  # no stats: its own batch
    np.testing.assert_allclose(loss, 0.65 / 3, atol=1e-6)
    np.testing.assert_allclose([metrics["bapo/c_low"], metrics["bapo/c_high"]], [0.6, 1.35], atol=1e-6)
    np.testing.assert_allclose(metrics["clip_fraction"], 1 / 3, atol=1e-6)
    # Micro-batches [token 1] and [tokens 2, 3]: the statistics are summed first, so each part
    # uses the mini-batch's bounds; losses and metrics add up to the whole's.
    parts = [rows(with_normalisers(batch), s) for s in (slice(0, 1), slice(1, 3))]
    outs = [outputs(BAPO_LOGP[:1]), outputs(BAPO_LOGP[1:])]
    stats = [algo.statistics(o, p, ()) for o, p in zip(outs, parts, strict=True)]
    total = jax.tree.map(jnp.add, *stats)
    results = [algo.objective(o._replace(stats=total), p, ()) for o, p in zip(outs, parts, strict=True)]
    np.testing.assert_allclose(sum(r[0] for r in results), loss, atol=1e-6)
    for name in ("bapo/c_low", "bapo/c_high", "bapo/target_met", "pg_loss", "clip_fraction"):
        np.testing.assert_allclose(sum(r[1][name] for r in results), metrics[name], atol=1e-6)
    # Without the totals the second micro-batch alone (negatives only: ρ = 0) would walk the whole
    # path to (0.9, 3.0): its c_high metric would be 3.0·2/3 = 2.0 instead of 1.35·2/3 = 0.9.
    _, alone = algo.objective(outs[1], parts[1], ())
    np.testing.assert_allclose([alone["bapo/c_high"], results[1][1]["bapo/c_high"]], [2.0, 0.9], atol=1e-6)


def test_bapo_code_rule_factory_and_dual_clip():
    algo = make_algorithm("bapo", rule="code")
    _, metrics = algo.objective(outputs(BAPO_LOGP), bapo_batch(), ())
    np.testing.assert_allclose(
        [metrics["bapo/c_low"], metrics["bapo/c_high"], metrics["bapo/target_met"]], [0.8, 2.0, 0.0]
    )
    # Dual clip c = 3 (code rule): A = −1, r = 5 -> loss capped at 3 (rather than 5).
    batch = rollout(None, np.ones((1, 1)), advantages=-jnp.ones((1, 1)), logp_old=jnp.zeros((1, 1)))
    loss, _ = algo.objective(outputs(jnp.log(jnp.full((1, 1), 5.0))), batch, ())
    np.testing.assert_allclose(loss, 3.0, atol=1e-5)
    with pytest.raises(ValueError, match="logp_behav"):
        make_algorithm("bapo").objective(outputs(jnp.zeros((1, 1))), batch, ())


# ------------------------------------------------------------------------------------------ DCPO


def test_dcpo_bounds_golden():
    # (ε_lo, ε_hi) = (0.16, 0.2): q = 0.9: ½ + ½√(1 − .64/.9) = 0.76874, ½ + ½√(1 + .8/.9) = 1.18718;
    # q = 0.5: 1 − 1.28 < 0 -> 0.5, ½ + ½√2.6 = 1.30623; q = 0.01: ½ + ½√81 = 5.0.
    low, high = dcpo_bounds(jnp.log(jnp.array([0.9, 0.5, 0.01])), 0.16, 0.2)
    np.testing.assert_allclose(low, [0.76874, 0.5, 0.5], atol=1e-5)
    np.testing.assert_allclose(high, [1.18718, 1.30623, 5.0], atol=1e-5)
    # Defaults (0.2, 0.28): q = 0.4 -> [0.5, ½ + ½√3.8 = 1.474679]; q = 1e-6 -> upper capped at C = 10.
    low, high = dcpo_bounds(jnp.log(jnp.array([0.4, 1e-6])))
    np.testing.assert_allclose([low[0], high[0], high[1]], [0.5, 1.474679, 10.0], atol=1e-5)
    assert np.isfinite(dcpo_bounds(jnp.array([-200.0]))[1]).all()


def test_dcpo_smooth_advantages_golden_across_steps():
    algo = make_algorithm("dcpo")
    state = algo.transform.init()
    extras = {"record_index": jnp.array([7, 7, 7, 7, 3, 3])}
    ids = [0, 0, 0, 0, 1, 1]

    def step(rewards, state):
        batch, state = prepare(algo, rollout(rewards, np.ones((6, 1)), ids, extras=dict(extras)), state)
        return batch.advantages[:, 0], state

    # Step 1: [1, 0, 0, 0] (μ .25, σ .5) -> A = [1.5, −.5, −.5, −.5]; record 3: [1, 0] -> ±0.7071.
    adv, state = step([1.0, 0, 0, 0, 1, 0], state)
    np.testing.assert_allclose(adv, [1.5, -0.5, -0.5, -0.5, 0.707107, -0.707107], atol=1e-5)
    # Step 2, record 7: [0, 0, 0, 0]: μ_tot = .125, σ²_tot = (.25 + 0 + ½·.0625)/2 -> σ_tot = .375,
    # A_tot = −1/3, A_new = 0 -> SA_new = SA_tot = −1/6. Record 3 again [1, 0]: stats unchanged, ±0.7071.
    adv, state = step([0.0, 0, 0, 0, 1, 0], state)
    np.testing.assert_allclose(adv, [-1 / 6] * 4 + [0.707107, -0.707107], atol=1e-5)
    np.testing.assert_allclose([state.mean[7], state.std[7], state.times[7]], [0.125, 0.375, 2], atol=1e-6)
    # Step 3, record 7: [1, 1, 0, 0] (μ .5, σ √(1/3)): μ_tot = (2·.125 + .5)/3 = .25,
    # σ²_tot = (2·.140625 + 1/3 + ⅔·.375²)/3 = .236111 (σ .485913). R = 1: A_new .866025, A_tot
    # 1.543487, SA_new = ⅔·.866025 + ⅓·1.543487 = 1.091846 < SA_tot 1.317667. R = 0: SA_new
    # −.748849, SA_tot = ⅓·(−.866025) + ⅔·(−.514496) = −.631672 (smaller |·|).
    adv, state = step([1.0, 1, 0, 0, 1, 0], state)
    np.testing.assert_allclose(adv[:4], [1.091846, 1.091846, -0.631672, -0.631672], atol=1e-5)
    assert int(state.times[7]) == 3 and int(state.times[3]) == 3
    with pytest.raises(ValueError, match="record_index"):
        prepare(algo, rollout([1.0, 0.0], np.ones((2, 1))))


def test_dcpo_pure_sas_matches_transform_and_old_scale():
    # Direct call, second appearance with stored (μ, σ) = (.25, .5), scale 1 -> −1/6 (as above).
    out = dcpo_smooth_advantages(
        jnp.zeros(4), jnp.zeros(4, jnp.int32), jnp.full(4, 0.25), jnp.full(4, 0.5), jnp.ones(4)
    )
    np.testing.assert_allclose(out.advantages, -1 / 6, atol=1e-6)
    np.testing.assert_allclose([out.mean[0], out.std[0]], [0.125, 0.375], atol=1e-6)


def test_dcpo_objective_dynamic_bounds_dual_clip_and_otm():
    algo = make_algorithm("dcpo")
    # Row 0: q = 0.01, A = +1, r = 3 < r_hi = ½ + ½√(1 + 112) = 5.815 -> unclipped: ℓ = −3.
    # Row 1: q = 0.9, A = −1, r = 20: r_lo = ½ + ½√(1 − .8/.9) = 0.6667 (clip branch −A·r_lo
    # smaller), the PPO loss is r = 20 > dual clip C = 10 -> ℓ = 10; second token on-policy A = −1: ℓ = 1.
    # OTM: row 0: −3 (one token); row 1: (10 + 1)/2 = 5.5 -> −3 + 5.5 = 2.5.
    logp_old = jnp.log(jnp.array([[0.01, 1.0], [0.9, 0.5]]))
    logp = logp_old + jnp.log(jnp.array([[3.0, 1.0], [20.0, 1.0]]))
    batch = rollout(
        None, [[1, 0], [1, 1]], logp_old=logp_old, advantages=jnp.array([[1.0, 0.0], [-1.0, -1.0]])
    )
    loss, metrics = algo.objective(outputs(logp), batch, algo.transform.init())
    np.testing.assert_allclose(loss, 2.5, atol=1e-4)
    np.testing.assert_allclose(metrics["clip_fraction"], 1 / 3, atol=1e-6)
    # only_token_mean: seq1 = [2], seq2 = [1, 1, 1] -> 2 + 1 = 3 (no batch averaging).
    np.testing.assert_allclose(
        only_token_mean(jnp.array([[2.0, 0, 0], [1, 1, 1]]), jnp.array([[1, 0, 0], [1, 1, 1]])), 3.0
    )
    with pytest.raises(ValueError, match="loss_agg"):
        make_algorithm("dcpo", loss_agg="otm")


# ---------------------------------------------------------------------------------- CISPO, SAPO


def test_cispo_loss_and_gradient_golden():
    # π = 0.3, π_old = 0.2 (r = 1.5), A = 1, ε_hi = 0.28: ŵ = 1.28, ℓ = −1.28·log 0.3 = 1.541085,
    # ∂ℓ/∂logp = −ŵ·A = −1.28 (the weight is a constant).
    logp, old = jnp.log(jnp.array([0.3])), jnp.log(jnp.array([0.2]))
    loss, clipped = cispo_loss(logp, old, jnp.ones(1), clip_eps_high=0.28)
    np.testing.assert_allclose([loss[0], clipped[0]], [1.541085, 1.0], atol=1e-5)
    grad = jax.grad(lambda lp: cispo_loss(lp, old, jnp.ones(1), clip_eps_high=0.28)[0].sum())(logp)
    np.testing.assert_allclose(grad, [-1.28], atol=1e-5)
    # Defaults (no lower bound, upper 5): r = 0.1, A = −2 -> ŵ = 0.1, gradient +0.2; r = 6 -> ŵ = 5.
    ratios = jnp.array([0.1, 6.0])
    grad = jax.grad(lambda lp: cispo_loss(lp, jnp.zeros(2), jnp.array([-2.0, 1.0]))[0].sum())(jnp.log(ratios))
    np.testing.assert_allclose(grad, [0.2, -5.0], atol=1e-5)


def test_cispo_factory_token_mean():
    # Two rows, 3 tokens: on-policy (ŵ = 1), logp = log 0.5, A = [+1, −1]: ℓ = −A·log .5 =
    # [.693147, −.693147]; rows of 2 and 1 tokens: (2·.693147 − .693147)/3 = 0.231049.
    algo = make_algorithm("cispo")
    batch, state = prepare(algo, rollout([1.0, 0.0], [[1, 1], [1, 0]]))  # A = ±0.7071 (unbiased std)
    batch = batch._replace(advantages=jnp.array([[1.0, 1.0], [-1.0, 0.0]]))
    loss, metrics = algo.objective(outputs(jnp.full((2, 2), math.log(0.5))), batch, state)
    np.testing.assert_allclose(loss, math.log(2) / 3, atol=1e-6)
    assert metrics["clip_fraction"] == 0.0


def test_sapo_gate_and_gradient_golden():
    # r = 1, A = +1, τ_pos = 1: f = σ(0)·4 = 2, ℓ = −2, ∂ℓ/∂logp = −A·4·σ(1 − σ)·r = −1 (the PG gradient).
    # r = 1.5, A = −1, τ_neg = 1.05: f = σ(.525)·4/1.05 = 2.393585, ℓ = 2.393585, gradient
    # 4·σ(.525)·(1 − σ(.525))·1.5 = 1.401210. r = 0.8, A = 2, τ 1: ℓ = −2·σ(−.2)·4 = −3.601328.
    logp = jnp.log(jnp.array([1.0, 1.5, 0.8]))
    adv = jnp.array([1.0, -1.0, 2.0])
    loss, gate = sapo_loss(logp, jnp.zeros(3), adv)
    np.testing.assert_allclose(loss, [-2.0, 2.393585, -3.601328], atol=1e-5)
    np.testing.assert_allclose(gate[:2], [2.0, 2.393585], atol=1e-5)
    grad = jax.grad(lambda lp: sapo_loss(lp, jnp.zeros(3), adv)[0].sum())(logp)
    np.testing.assert_allclose(grad, [-1.0, 1.401210, -1.584106], atol=1e-5)


def test_sapo_factory_seq_mean_token_mean():
    # Row 0 (2 tokens, A = +1, on-policy): ℓ = −2 each -> −2; row 1 (1 token, A = −1): ℓ = 2/1.05 = 1.904762.
    # seq_mean_token_mean: (−2 + 1.904762)/2 = −0.047619.
    algo = make_algorithm("sapo")
    batch = rollout(None, [[1, 1], [1, 0]], advantages=jnp.array([[1.0, 1.0], [-1.0, 0.0]]))
    loss, metrics = algo.objective(outputs(jnp.zeros((2, 2))), batch, ())
    np.testing.assert_allclose(loss, (-2 + 2 / 1.05) / 2, atol=1e-6)
    np.testing.assert_allclose(metrics["sapo/gate"], (2 + 2 + 2 / 1.05) / 3, atol=1e-6)


# --------------------------------------------------------------------------------- Clip/KL-Cov

# One row of 4 tokens: A = [3, 3, −3, −3] (mean 0), logp = [0, −1, −3, −4] (mean −2):
# cov = (A − 0)·(logp + 2) = [6, 3, 3, 6].
COV_LOGP = jnp.array([[0.0, -1.0, -3.0, -4.0]])
COV_ADV = jnp.array([[3.0, 3.0, -3.0, -3.0]])
COV_MASK = jnp.ones((1, 4))


def test_token_covariance_and_clip_cov_selection():
    np.testing.assert_allclose(token_covariance(COV_LOGP, COV_ADV, COV_MASK), [[6.0, 3.0, 3.0, 6.0]])
    # Band (1, 5) holds tokens 1 and 2; k = max(⌊2e-4·4⌋, 1) = 1: the smaller uniform draw (token 2).
    uniform = jnp.array([[0.9, 0.7, 0.2, 0.5]])
    np.testing.assert_array_equal(clip_cov_selection(COV_LOGP, COV_ADV, COV_MASK, uniform), [[0, 0, 1, 0]])
    # ratio 0.75 -> k = 3, but only the 2 band tokens qualify.
    np.testing.assert_array_equal(
        clip_cov_selection(COV_LOGP, COV_ADV, COV_MASK, uniform, 0.75), [[0, 1, 1, 0]]
    )


def test_clip_cov_transform_detaches_one_band_token_and_advances_its_key():
    t = clip_cov_tokens()
    key = t.init()
    batch = rollout(None, np.ones((1, 4)), logp_old=COV_LOGP, advantages=COV_ADV)
    out, key2 = t.update(batch, key)
    zeroed = np.flatnonzero(np.asarray(out.advantages[0]) == 0)
    assert len(zeroed) == 1 and zeroed[0] in (1, 2)
    np.testing.assert_allclose(out.metrics["clip_cov/fraction"], 0.25)
    assert not np.array_equal(key, key2)
    algo = make_algorithm("clip_cov")
    assert [p.name for p in algo.passes] == ["old_logp"]
    with pytest.raises(ValueError, match="logp_old"):
        t.update(batch._replace(logp_old=None), key)


def test_kl_cov_selection_loss_and_gradient():
    # Top ⌊0.25·4⌋ = 1 by covariance: tokens 0 and 3 tie at 6, the first wins; ratio 0.5 -> both.
    np.testing.assert_array_equal(kl_cov_selection(COV_LOGP, COV_ADV, COV_MASK, 0.25), [[1, 0, 0, 0]])
    np.testing.assert_array_equal(kl_cov_selection(COV_LOGP, COV_ADV, COV_MASK, 0.5), [[1, 0, 0, 1]])
    # d = logp − logp_old = 0.1, A = 0.5, selected, coef 1, |d|: ℓ = −0.5·e^0.1 + 0.1 = −0.452585,
    # ∂ℓ/∂logp = −0.5·e^0.1 + 1 = 0.447415; unselected: −0.552585, gradient −0.552585.
    logp = jnp.array([0.1, 0.1])
    f = lambda lp: kl_cov_loss(lp, jnp.zeros(2), jnp.full(2, 0.5), jnp.array([1.0, 0.0]))  # noqa: E731
    np.testing.assert_allclose(f(logp), [-0.452585, -0.552585], atol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda lp: f(lp).sum())(logp), [0.447415, -0.552585], atol=1e-6)
    # k2 form: ½·0.01 = 0.005 -> −0.552585 + 0.005.
    np.testing.assert_allclose(
        kl_cov_loss(logp[:1], jnp.zeros(1), 0.5, 1.0, estimator="k2"), [-0.547585], atol=1e-6
    )


def test_kl_cov_factory_penalises_only_selected_tokens():
    algo = make_algorithm("kl_cov", ratio=0.25)
    batch = rollout(None, np.ones((1, 4)), logp_old=COV_LOGP, advantages=COV_ADV)
    batch, _ = kl_cov_tokens(0.25).update(batch, ())
    np.testing.assert_array_equal(batch.extras["kl_cov_selected"], [[1, 0, 0, 0]])
    # logp = logp_old + 0.1 everywhere: ℓ = −A·e^0.1 (+0.1 on token 0); token mean
    # = (−e^0.1·(3 + 3 − 3 − 3) + 0.1)/4 = 0.025; kl_cov/kl = 0.1/4.
    loss, metrics = algo.objective(outputs(COV_LOGP + 0.1), batch, ())
    np.testing.assert_allclose([loss, metrics["kl_cov/kl"]], [0.025, 0.025], atol=1e-6)


# ------------------------------------------------------------------------------- top entropy


def test_top_entropy_mask_golden():
    # Sorted H = [.1, .3, .5, .7, .9]: the 0.8 quantile at position 3.2 = .7 + .2·.2 = .74 -> only .9;
    # the 0.6 quantile at 2.4 = .5 + .4·.2 = .58 -> .7 and .9. Masked tokens never count.
    entropy = jnp.array([[0.1, 0.5, 0.9, 0.3, 0.7, 5.0]])
    mask = jnp.array([[1, 1, 1, 1, 1, 0]])
    keep, tau = top_entropy_mask(entropy, mask)
    np.testing.assert_allclose(tau, 0.74, atol=1e-6)
    np.testing.assert_array_equal(keep, [[0, 0, 1, 0, 0, 0]])
    np.testing.assert_array_equal(top_entropy_mask(entropy, mask, 0.4)[0], [[0, 0, 1, 0, 1, 0]])


def test_top_entropy_tokens_chain_onto_any_advantages():
    entropy = jnp.array([[0.1, 0.5, 0.9, 0.3, 0.7], [0.2, 0.2, 0.2, 0.2, 0.2]])
    batch = rollout([1.0, 0.0], np.ones((2, 5)), entropy_old=entropy)
    t = chain(group_advantages(), top_entropy_tokens(0.2))
    out, _ = t.update(batch, t.init())
    a = 1 / math.sqrt(2)  # group [1, 0]: A = ±0.7071
    # 10 tokens, sorted [.1 .2 .2 .2 .2 .2 .3 .5 .7 .9]: the 0.8 quantile at 7.2 = .5 + .2·.2 = .54,
    # so only the .9 and .7 tokens of row 0 keep their advantage.
    np.testing.assert_allclose(out.advantages, [[0, 0, a, 0, a], [0] * 5], atol=1e-6)
    assert out.loss_mask is None  # 'advantages' mode keeps every token in the denominators
    np.testing.assert_allclose(
        [out.metrics["top_entropy/threshold"], out.metrics["top_entropy/kept_fraction"]],
        [0.54, 0.2],
        atol=1e-6,
    )
    t = chain(group_advantages(), top_entropy_tokens(0.2, mode="loss_mask"))
    out, _ = t.update(batch, t.init())
    np.testing.assert_array_equal(out.loss_mask, [[0, 0, 1, 0, 1], [0] * 5])


def test_high_entropy_golden_loss():
    # Top 20% of 10 tokens (τ = .54): the .9 and .7 tokens of row 0 (A = +0.7071, on-policy):
    # loss = −2·0.7071/10 = −0.141421 (DAPO token mean over all 10 tokens, no KL).
    algo = make_algorithm("high_entropy")
    entropy = jnp.array([[0.1, 0.5, 0.9, 0.3, 0.7], [0.2, 0.2, 0.2, 0.2, 0.2]])
    batch, state = prepare(
        algo, rollout([1.0, 0.0], np.ones((2, 5)), entropy_old=entropy, logp_old=jnp.zeros((2, 5)))
    )
    loss, _ = algo.objective(outputs(jnp.zeros((2, 5)), entropy), batch, state)
    np.testing.assert_allclose(loss, -2 / math.sqrt(2) / 10, atol=1e-6)
    assert [p.name for p in algo.passes] == ["old_logp"]


# ------------------------------------------------------------------------------- every factory


@pytest.mark.parametrize("name", ["bapo", "dcpo", "cispo", "sapo", "clip_cov", "kl_cov", "high_entropy"])
@pytest.mark.parametrize("shift", [50.0, -50.0])
def test_objectives_stay_finite_far_off_policy(name, shift):
    algo = make_algorithm(name, **({"ratio": 0.5} if name in ("clip_cov", "kl_cov") else {}))
    logp_old = jnp.log(jnp.array([[0.5, 0.2, 1e-3], [0.9, 0.1, 0.3]]))
    batch = rollout(
        [1.0, 0.0], np.ones((2, 3)),
        logp_old=logp_old, entropy_old=jnp.ones((2, 3)), logp_behav=logp_old,
        extras={"record_index": jnp.array([0, 0])},
    )  # fmt: skip
    batch, state = prepare(algo, batch)

    def loss(logp):
        out = outputs(logp, jnp.ones((2, 3)))
        if algo.statistics is not None:
            out = out._replace(stats=algo.statistics(jax.lax.stop_gradient(out), batch, state))
        return algo.objective(out, batch, state)[0]

    value, grad = jax.value_and_grad(loss)(logp_old + shift)
    assert np.isfinite(value) and np.isfinite(grad).all()
