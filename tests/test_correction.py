"""Rollout correction (jaxrl_llm/transforms/correction.py): truncated IS at token and sequence
level, ratio-band rejection (token, sequence, geometric, veto), the mismatch metrics, and the
transforms on hand-built Rollouts (pure arrays, no model)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.algorithms import make_algorithm
from jaxrl_llm.objectives import normalisers, policy_surrogate
from jaxrl_llm.transforms.correction import (
    behaviour_as_old,
    mismatch_metrics,
    mismatch_stats,
    ratio_keep_mask,
    rejection_mask,
    truncated_importance_weights,
    truncated_is,
    with_correction,
)
from jaxrl_llm.transforms.estimators import running_moments_init
from jaxrl_llm.types import ModelOutputs, Rollout, RolloutTransform

L2, L3 = math.log(2.0), math.log(3.0)


def rollout(delta, mask, advantages=None, rewards=None):
    """Rows with logp_behav = 0 and logp_old = delta (so Δ = delta)."""
    delta = jnp.asarray(delta, jnp.float32)
    b, t = delta.shape
    return Rollout(
        prompt_ids=jnp.zeros((b, 2), jnp.int32),
        prompt_mask=jnp.ones((b, 2), jnp.int32),
        response_ids=jnp.zeros((b, t), jnp.int32),
        response_mask=jnp.asarray(mask, jnp.int32),
        group_ids=jnp.zeros(b, jnp.int32),
        logp_behav=jnp.zeros((b, t)),
        logp_old=delta,
        rewards=None if rewards is None else jnp.asarray(rewards, jnp.float32),
        advantages=None if advantages is None else jnp.asarray(advantages, jnp.float32),
    )


def test_truncated_importance_weights_token_and_sequence():
    # Row 0: ratios [3, 0.5] (+ a padded slot); row 1: [2, 2, 2]. C = 2.
    # token:    row 0 -> [min(3, 2) = 2, 0.5, 0] (first truncated); row 1 -> [2, 2, 2] (2 is not > 2)
    # sequence: row 0 -> 3 * 0.5 = 1.5 on both loss tokens; row 1 -> min(8, 2) = 2 (truncated)
    delta = [[L3, -L2, 9.0], [L2, L2, L2]]
    mask = [[1, 1, 0], [1, 1, 1]]
    w, cut = truncated_importance_weights(delta, jnp.zeros((2, 3)), mask, "token", 2.0)
    np.testing.assert_allclose(w, [[2, 0.5, 0], [2, 2, 2]], atol=1e-5)
    np.testing.assert_array_equal(cut[0], [1, 0, 0])
    w, cut = truncated_importance_weights(delta, jnp.zeros((2, 3)), mask, "sequence", 2.0)
    np.testing.assert_allclose(w, [[1.5, 1.5, 0], [2, 2, 2]], atol=1e-5)
    np.testing.assert_array_equal(cut, [[0, 0, 0], [1, 1, 1]])
    # |Δ| = 50: the log is clamped before the exp, the weight is just C (finite, no gradient blow-up)
    w, _ = truncated_importance_weights(
        jnp.full((1, 2), 50.0), jnp.zeros((1, 2)), jnp.ones((1, 2)), "sequence"
    )
    np.testing.assert_allclose(w, [[2.0, 2.0]])
    with pytest.raises(ValueError, match="level='geometric'"):
        truncated_importance_weights(delta, delta, mask, "geometric")


def test_ratio_keep_mask_levels_and_veto():
    # Δ = [log 3, 0, log 0.6], band [0.5, 2]: token keep [0, 1, 1]; sequence ρ = 1.8 -> kept;
    # geometric ρ = 1.8^(1/3) = 1.2164 -> kept. Band [1/1.5, 1.5]: the sequence (1.8) is rejected,
    # the geometric mean is not. veto 0.7: the token of ratio 0.6 rejects its whole row.
    delta = jnp.asarray([[L3, 0.0, math.log(0.6)]])
    behav, mask = jnp.zeros((1, 3)), jnp.ones((1, 3))
    np.testing.assert_array_equal(ratio_keep_mask(delta, behav, mask, "token"), [[0, 1, 1]])
    np.testing.assert_array_equal(ratio_keep_mask(delta, behav, mask, "sequence"), [[1, 1, 1]])
    np.testing.assert_array_equal(ratio_keep_mask(delta, behav, mask, "sequence", high=1.5), [[0, 0, 0]])
    np.testing.assert_array_equal(ratio_keep_mask(delta, behav, mask, "geometric", high=1.5), [[1, 1, 1]])
    np.testing.assert_array_equal(ratio_keep_mask(delta, behav, mask, "geometric", high=1.2), [[0, 0, 0]])
    np.testing.assert_array_equal(ratio_keep_mask(delta, behav, mask, "sequence", veto=0.7), [[0, 0, 0]])
    # padding never counts: a huge Δ on a masked slot changes nothing, and the output is 0 there
    padded = jnp.asarray([[0.1, 80.0]])
    np.testing.assert_array_equal(
        ratio_keep_mask(padded, jnp.zeros((1, 2)), [[1, 0]], "sequence", veto=1e-4), [[1, 0]]
    )
    with pytest.raises(ValueError, match="low <= high"):
        ratio_keep_mask(delta, behav, mask, low=3.0, high=2.0)


def test_mismatch_stats_golden():
    # Δ = [log 2, 0, log 0.5] (a padded slot with Δ = 40 is ignored): max |Δ| = 0.693147,
    # mean |Δ| = 2 log 2 / 3 = 0.462098; ratios sorted [0.5, 1, 2]: p5 = 0.5 + 0.1 * 0.5 = 0.55,
    # p50 = 1, p95 = 1 + 0.9 * 1 = 1.9; kl_k1 = mean(−Δ) = 0;
    # kl_k3 = ((2 − log 2 − 1) + 0 + (0.5 + log 2 − 1)) / 3 = 0.5 / 3 = 0.166667.
    stats = mismatch_stats([[L2, 0.0, -L2, 40.0]], jnp.zeros((1, 4)), [[1, 1, 1, 0]])
    want = dict(
        max_abs_logp_diff=L2,
        mean_abs_logp_diff=2 * L2 / 3,
        ratio_p5=0.55,
        ratio_p50=1.0,
        ratio_p95=1.9,
        kl_k1=0.0,
        kl_k3=0.5 / 3,
    )
    assert set(stats) == set(want)
    for k, v in want.items():
        np.testing.assert_allclose(stats[k], v, atol=1e-5, err_msg=k)
    empty = mismatch_stats(jnp.ones((1, 2)), jnp.zeros((1, 2)), jnp.zeros((1, 2)))
    assert float(empty["ratio_p50"]) == 1.0 and float(empty["max_abs_logp_diff"]) == 0.0


def test_transforms_write_weights_mask_and_metrics():
    batch = rollout([[L3, -L2, 0.0], [math.log(1.5), 0.0, 0.0]], [[1, 1, 0], [1, 1, 1]])
    out, _ = truncated_is().update(batch, ())
    np.testing.assert_allclose(out.extras["is_weight"], [[2, 0.5, 0], [1.5, 1, 1]], atol=1e-5)
    # mean weight (2 + .5 + 1.5 + 1 + 1) / 5 = 1.2; truncated: 1 of 5 loss tokens (ratio 3)
    np.testing.assert_allclose(out.metrics["tis/mean_weight"], 1.2, atol=1e-6)
    np.testing.assert_allclose(out.metrics["tis/truncated_fraction"], 0.2, atol=1e-6)
    # chained at sequence level: the weights multiply (both rows' sequence ratio is 1.5)
    twice, _ = truncated_is("sequence").update(out, ())
    np.testing.assert_allclose(twice.extras["is_weight"], [[3, 0.75, 0], [2.25, 1.5, 1.5]], atol=1e-5)
    # rejection: ratio 3 is outside [0.5, 2] -> 1 of 5 tokens, 1 of 2 rows lose loss
    masked, _ = rejection_mask().update(batch, ())
    np.testing.assert_array_equal(masked.loss_mask, [[0, 1, 0], [1, 1, 1]])
    np.testing.assert_allclose(masked.metrics["rs/masked_fraction"], 0.2, atol=1e-6)
    np.testing.assert_allclose(masked.metrics["rs/masked_seq_fraction"], 0.5, atol=1e-6)
    seq, _ = rejection_mask("sequence").update(batch, ())  # both rows' ratio 1.5: kept
    np.testing.assert_array_equal(seq.loss_mask, [[1, 1, 0], [1, 1, 1]])
    metrics, _ = mismatch_metrics().update(batch, ())
    np.testing.assert_allclose(metrics.metrics["mismatch/max_abs_logp_diff"], L3, atol=1e-6)
    old, _ = behaviour_as_old().update(batch, ())
    np.testing.assert_array_equal(old.logp_old, batch.logp_behav)
    with pytest.raises(ValueError, match="logp_old.*old_policy_pass"):
        truncated_is().update(batch._replace(logp_old=None), ())


def test_policy_surrogate_multiplies_the_is_weight():
    # On-policy (logp = logp_old): l_t = −A_t · w_t. A = [1, −1], w = [2, 0.5] -> l = [−2, 0.5],
    # token mean −0.75; d loss / d logp_t = −A_t · w_t / 2 = [−1, 0.25].
    batch = rollout([[0.0, 0.0]], [[1, 1]], advantages=[[1.0, -1.0]])
    objective = policy_surrogate(loss_agg="token_mean")
    logp = jnp.zeros((1, 2))
    plain, _ = objective(ModelOutputs(logp=logp), batch, ())
    np.testing.assert_allclose(plain, 0.0, atol=1e-7)  # without weights: unchanged behaviour
    weighted = batch._replace(extras={"is_weight": jnp.asarray([[2.0, 0.5]])})
    loss, metrics = objective(ModelOutputs(logp=logp), weighted, ())
    np.testing.assert_allclose(loss, -0.75, atol=1e-6)
    np.testing.assert_allclose(metrics["pg_loss"], -0.75, atol=1e-6)
    grad = jax.grad(lambda lp: objective(ModelOutputs(logp=lp), weighted, ())[0])(logp)
    np.testing.assert_allclose(grad, [[-1.0, 0.25]], atol=1e-6)
    # the contract: two micro-batches with the whole mini-batch's denominators sum to the whole
    rows = rollout([[0.3, -0.2], [0.1, 0.0]], [[1, 1], [1, 0]], advantages=[[1.0, -1.0], [0.5, 0.0]])
    rows, _ = truncated_is().update(rows, ())
    lp = jnp.asarray([[0.1, 0.2], [-0.3, 0.0]])
    whole = rows._replace(extras={**rows.extras, "num_tokens": 3.0, "num_seqs": 2.0})
    parts = [jax.tree.map(lambda x, i=i: x[i : i + 1] if getattr(x, "ndim", 0) else x, whole) for i in (0, 1)]
    total = sum(objective(ModelOutputs(logp=lp[i : i + 1]), p, ())[0] for i, p in enumerate(parts))
    np.testing.assert_allclose(total, objective(ModelOutputs(logp=lp), whole, ())[0], atol=1e-6)
    assert normalisers(parts[0])["num_tokens"] == 3.0


def test_with_correction_runs_before_the_algorithm_and_keeps_its_state():
    base = make_algorithm("grpo", beta=0.0)
    algo = with_correction(base, truncated_is(), rejection_mask())
    assert [p.name for p in algo.passes] == ["old_logp"]  # what the corrections compare with logp_behav
    assert algo.transform.init() == base.transform.init()
    batch = rollout([[L3, 0.0], [0.0, 0.0]], [[1, 1], [1, 1]], rewards=[1.0, 0.0])
    out, _ = algo.transform.update(batch, algo.transform.init())
    assert {"mismatch/ratio_p95", "tis/mean_weight", "rs/masked_fraction"} <= set(out.metrics)
    np.testing.assert_array_equal(out.loss_mask, [[0, 1], [1, 1]])
    # GRPO's advantages (unbiased std of [1, 0]: A = ±0.7071) on the remaining loss tokens only
    np.testing.assert_allclose(out.advantages, [[0, 0.707107], [-0.707107, -0.707107]], atol=1e-5)
    off = with_correction(base, behaviour_as_old(), metrics=False, old_pass=False)
    assert off.passes == () and off.transform.update(batch, ())[0].logp_old is batch.logp_behav
    stateful = RolloutTransform(running_moments_init, lambda b, s: (b, s))
    with pytest.raises(ValueError, match="stateless"):
        with_correction(base, stateful)


def test_correction_from_config_composes_by_name_with_clear_errors():
    from jaxrl_llm.algorithms import make_algorithm
    from jaxrl_llm.transforms.correction import correction_from_config

    grpo = make_algorithm("grpo", beta=0.0)
    assert correction_from_config(grpo, {}) is grpo
    corrected = correction_from_config(grpo, {"truncated_is": {"level": "sequence", "cap": 3.0}})
    assert [p.name for p in corrected.passes] == ["old_logp"] and corrected.objective is grpo.objective
    with pytest.raises(
        ValueError,
        match=r"unknown rollout correction 'tis' in config field correction; known: behaviour_as_old",
    ):
        correction_from_config(grpo, {"tis": {}})
    with pytest.raises(
        ValueError, match=r"config field correction\.truncated_is: .*unexpected keyword argument 'clip'"
    ):
        correction_from_config(grpo, {"truncated_is": {"clip": 2.0}})


def test_reinforce_loss_multiplies_the_is_weight():
    # GPG / RLOO-reinforce / OPMD / AsymRE's loss l_t = −A_t · logp_t · w_t. logp = log 0.5,
    # A = [1, −1], w = [2, 0.5] -> l = [2 ln 2, −0.5 ln 2], token mean 0.75 ln 2 = 0.519860;
    # d loss / d logp_t = −A_t · w_t / 2 = [−1, 0.25].
    from jaxrl_llm.algorithms.reinforce import reinforce_objective

    batch = rollout([[0.0, 0.0]], [[1, 1]], advantages=[[1.0, -1.0]])
    batch = batch._replace(extras={"is_weight": jnp.asarray([[2.0, 0.5]])})
    objective = reinforce_objective("token_mean")
    logp = jnp.full((1, 2), -L2)
    loss, metrics = objective(ModelOutputs(logp=logp), batch, ())
    np.testing.assert_allclose(loss, 0.75 * L2, atol=1e-6)
    np.testing.assert_allclose(metrics["pg_loss"], 0.75 * L2, atol=1e-6)
    grad = jax.grad(lambda lp: objective(ModelOutputs(logp=lp), batch, ())[0])(logp)
    np.testing.assert_allclose(grad, [[-1.0, 0.25]], atol=1e-6)
