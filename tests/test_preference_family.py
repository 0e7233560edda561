"""The direct-alignment family on its one pairwise core (jaxrl_llm/algorithms/dpo.py): goldens of
ORPO, CPO and RPO (both forms) from the reference spec plus a hand-computed case each, the
sequence reductions, the chosen-token NLL's whole-mini-batch denominator, and every member
finite with finite gradients at preference logits of +-1e3. Pure arrays: no model."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.algorithms import make_algorithm
from jaxrl_llm.losses.preference import log_odds, sequence_logps
from jaxrl_llm.train.steps import with_normalisers
from jaxrl_llm.types import ModelOutputs, PreferenceBatch

L2, L3 = math.log(2.0), math.log(3.0)


def pairs(chosen, rejected, ref_chosen=None, ref_rejected=None):
    """A PreferenceBatch from per-token log-prob rows (NaN = padding: mask 0) and the matching
    ModelOutputs (policy log-probs: chosen rows, then rejected rows)."""
    chosen, rejected = np.asarray(chosen, np.float64), np.asarray(rejected, np.float64)
    t = max(chosen.shape[1], rejected.shape[1])
    pad = lambda x: np.pad(x, ((0, 0), (0, t - x.shape[1])), constant_values=np.nan)  # noqa: E731
    chosen, rejected = pad(chosen), pad(rejected)
    ref_c = chosen if ref_chosen is None else pad(np.asarray(ref_chosen, np.float64))
    ref_r = rejected if ref_rejected is None else pad(np.asarray(ref_rejected, np.float64))
    b = chosen.shape[0]
    batch = PreferenceBatch(
        prompt_ids=jnp.zeros((b, 2), jnp.int32),
        prompt_mask=jnp.ones((b, 2), jnp.int32),
        chosen_ids=jnp.zeros((b, t), jnp.int32),
        chosen_mask=jnp.asarray(~np.isnan(chosen), jnp.int32),
        rejected_ids=jnp.zeros((b, t), jnp.int32),
        rejected_mask=jnp.asarray(~np.isnan(rejected), jnp.int32),
        ref_chosen_logps=jnp.asarray(np.nan_to_num(ref_c), jnp.float32),
        ref_rejected_logps=jnp.asarray(np.nan_to_num(ref_r), jnp.float32),
    )
    logp = jnp.asarray(np.nan_to_num(np.concatenate([chosen, rejected])), jnp.float32)
    return batch, logp


def loss_of(name, batch, logp, **kwargs):
    algorithm = make_algorithm(name, **kwargs)
    return algorithm.objective(ModelOutputs(logp=logp, entropy=jnp.zeros_like(logp)), batch, ())


def test_log_odds_and_the_log_odds_reduction():
    np.testing.assert_allclose(log_odds(jnp.array([-L2, -0.5, -1.0])), [0.0, 0.432752, -0.541325], atol=1e-6)
    assert np.isfinite(log_odds(jnp.array([0.0]))).all()  # p = 1: clamped, not inf
    assert float(jax.grad(lambda a: log_odds(a).sum())(jnp.array([0.0]))[0]) == 0.0
    logp, mask = jnp.array([[-L2, -L2, -9.0]]), jnp.array([[1, 1, 0]])
    np.testing.assert_allclose(sequence_logps(logp, mask, "log_odds"), [0.0], atol=1e-6)
    with pytest.raises(ValueError, match="sequence reduction='max'"):
        sequence_logps(logp, mask, "max")


def test_orpo_golden():
    # Spec §5: A_w = −0.5, A_l = −1.0, NLL 0.5, λ 0.1: log-odds difference 0.974077, LOR 0.320300, L 0.532030.
    batch, logp = pairs([[-0.5, -0.5]], [[-1.0, -1.0]])
    loss, metrics = loss_of("orpo", batch, logp)
    np.testing.assert_allclose(loss, 0.532030, atol=1e-6)
    np.testing.assert_allclose(metrics["nll"], 0.5, atol=1e-6)
    # By hand: A_w = log 1/2 (odds 1), A_l = log 1/4 (odds 1/3): LOR = softplus(−log 3) = log 4/3
    # = 0.287682; NLL = log 2; L = 0.693147 + 0.1 * 0.287682 = 0.721915.
    batch, logp = pairs([[-L2, -L2, -L2]], [[-2 * L2, -2 * L2, np.nan]])
    loss, _ = loss_of("orpo", batch, logp)
    np.testing.assert_allclose(loss, L2 + 0.1 * math.log(4 / 3), atol=1e-6)


def test_cpo_golden():
    # Spec §6: the toy pair's policy part, S(y_w) = −10 (10 tokens of −1), S(y_l) = −12, β 0.1:
    # softplus(−0.2) = 0.598139; with NLL 1.0 (α 1) total 1.598139. The reference is not read.
    batch, logp = pairs([[-1.0] * 10 + [np.nan] * 2], [[-1.0] * 12], [[5.0] * 10], [[7.0] * 12])
    loss, metrics = loss_of("cpo", batch, logp)
    np.testing.assert_allclose(loss, 1.598139, atol=1e-6)
    np.testing.assert_allclose(metrics["nll"], 1.0, atol=1e-6)
    assert make_algorithm("cpo").passes == ()
    # By hand: equal scores (h = 0): log 2; α = 0.5 with NLL log 2 per token: 1.5 log 2.
    batch, logp = pairs([[-L2, -L2]], [[-L2, -L2]])
    np.testing.assert_allclose(loss_of("cpo", batch, logp, alpha=0.5)[0], 1.5 * L2, atol=1e-6)


def test_rpo_goldens_both_forms():
    # Spec §9 cumulative: the toy pair, β 0.01, η 0.005: DPO part softplus(−0.015) = 0.685675,
    # + η β (−S(y_w)) = 0.0005 -> 0.686175.
    batch, logp = pairs(
        [[-1.0] * 10 + [np.nan] * 2], [[-1.0] * 12], [[-1.1] * 10 + [np.nan] * 2], [[-11.5 / 12] * 12]
    )
    loss, _ = loss_of("rpo", batch, logp, form="cumulative")
    np.testing.assert_allclose(loss, 0.686175, atol=1e-6)
    # Average form, β 0.5, η 0.2, NLL 10/5 = 2 (5 chosen tokens of −2; h still 1.5): 0.386871 + 0.4.
    batch, logp = pairs(
        [[-2.0] * 5 + [np.nan] * 7], [[-1.0] * 12], [[-2.2] * 5 + [np.nan] * 7], [[-11.5 / 12] * 12]
    )
    loss, _ = loss_of("rpo", batch, logp)
    np.testing.assert_allclose(loss, 0.786871, atol=1e-6)
    with pytest.raises(ValueError, match="form='mean'"):
        make_algorithm("rpo", form="mean")


def test_rpo_nll_is_a_token_mean_over_every_chosen_token_of_the_mini_batch():
    # By hand: h = 0 in both pairs (policy = reference) -> DPO part log 2; chosen tokens [−1] and
    # [−2, −2, −2]: token mean 7/4 = 1.75 (a mean of per-pair means would give 1.5);
    # L = log 2 + 0.2 * 1.75 = 1.043147. The same with two micro-batches of one pair each.
    batch, logp = pairs(
        [[-1.0, np.nan, np.nan], [-2.0, -2.0, -2.0]], [[-1.0, -1.0, -1.0], [-3.0, np.nan, np.nan]]
    )
    whole = with_normalisers(batch)
    loss, metrics = loss_of("rpo", whole, logp)
    np.testing.assert_allclose(loss, L2 + 0.2 * 1.75, atol=1e-6)
    np.testing.assert_allclose(metrics["nll"], 1.75, atol=1e-6)
    part = lambda i: jax.tree.map(lambda x: x[i : i + 1] if getattr(x, "ndim", 0) else x, whole)  # noqa: E731
    rows = lambda i: jnp.stack([logp[i], logp[2 + i]])  # noqa: E731  (its chosen row, then its rejected row)
    total = sum(loss_of("rpo", part(i), rows(i))[0] for i in (0, 1))
    np.testing.assert_allclose(total, loss, atol=1e-6)


MEMBERS = [
    ("dpo", {}),
    ("dpo", {"loss_type": "robust", "label_smoothing": 0.1}),
    ("dpo", {"loss_type": "hinge"}),
    ("ipo", {}),
    ("ipo", {"reduction": "sum"}),
    ("simpo", {"sft_weight": 1.0}),
    ("cpo", {}),
    ("orpo", {}),
    ("rpo", {}),
    ("rpo", {"form": "cumulative"}),
    ("flex_dpo", {"beta_rejected": 0.05, "nll_coef": 1.0}),
]


@pytest.mark.parametrize("name, kwargs", MEMBERS, ids=[f"{n}{k or ''}" for n, k in MEMBERS])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_finite_loss_and_gradients_at_preference_logits_of_1e3(name, kwargs, sign):
    # h = ±1e3 for the summed score (one side's two tokens at −500, the other's and the
    # reference's at 0), and the length-averaged and log-odds scores at their extremes (a
    # completion of probability 1 against one of e^-1000).
    good, bad = [[0.0, 0.0]], [[-500.0, -500.0]]  # the reference at 0 on both sides
    batch, logp = pairs(good, bad, good, good) if sign > 0 else pairs(bad, good, good, good)
    batch = with_normalisers(batch)

    def loss(lp):
        return loss_of(name, batch, lp, **kwargs)[0]

    value, grad = jax.value_and_grad(loss)(logp)
    assert np.isfinite(value) and np.isfinite(grad).all(), (name, kwargs, value, grad)


def test_flex_dpo_and_sft_dpo_goldens():
    # Spec §14: ρ(y_w) = 1, ρ(y_l) = −0.5: β_w 0.1, β_l 0.05 -> softplus(−0.125) = 0.632599;
    # β_l = β_w -> DPO's 0.620957; SFT-DPO with λ 1 and NLL 2 -> 2.620957.
    batch, logp = pairs([[-2.0, -2.0]], [[-2.5, -2.0]], [[-2.5, -2.5]], [[-2.0, -2.0]])  # NLL 2
    np.testing.assert_allclose(loss_of("flex_dpo", batch, logp, beta_rejected=0.05)[0], 0.632599, atol=1e-6)
    np.testing.assert_allclose(loss_of("flex_dpo", batch, logp)[0], 0.620957, atol=1e-6)
    np.testing.assert_allclose(loss_of("flex_dpo", batch, logp, nll_coef=1.0)[0], 2.620957, atol=1e-6)
    # By hand: ρ(y_w) = 0, ρ(y_l) = −10, β_l = 0.05 -> softplus(−0.5) = 0.474077; the rejected
    # side's gradient scales with β_l: d/dS_θ(y_l) = β_l σ(−0.5) = 0.05 * 0.377541.
    batch, logp = pairs([[-1.0]], [[-11.0]], [[-1.0]], [[-1.0]])
    value, grad = jax.value_and_grad(lambda lp: loss_of("flex_dpo", batch, lp, beta_rejected=0.05)[0])(logp)
    np.testing.assert_allclose(value, 0.474077, atol=1e-6)
    np.testing.assert_allclose(grad[1, 0], 0.05 * 0.377541, atol=1e-6)
    with pytest.raises(ValueError, match="beta_rejected"):
        from jaxrl_llm.losses.preference import dpo_loss

        dpo_loss(*(jnp.zeros(1),) * 4, link="ipo", beta_rejected=0.05)


def test_kto_loss_goldens():
    from jaxrl_llm.losses.preference import kto_kl_anchor, kto_loss

    # Spec §4: β 0.1, z0 0.2: desirable r = 1 -> 1 − σ(0.08) = 0.480011; undesirable r = −0.5
    # -> 1 − σ(0.07) = 0.482507; their mean 0.481259.
    loss, metrics = kto_loss(jnp.array([-9.0, -10.5]), jnp.array([-10.0, -10.0]), jnp.array([1, 0]), 0.2)
    np.testing.assert_allclose(loss, [0.480011, 0.482507], atol=1e-6)
    np.testing.assert_allclose(jnp.mean(loss), 0.481259, atol=1e-6)
    np.testing.assert_allclose(metrics["reward"], [0.1, -0.05], atol=1e-6)
    # By hand: the anchor is clamped at 0 and carries no gradient: pairs with ρ' = [−1, 0.4]
    # -> max(0, −0.3) = 0; [1, 0.4] -> 0.7. With z0 = 0, r = 0 and λ_U = 2: 2 · (1 − σ(0)) = 1.
    np.testing.assert_allclose(kto_kl_anchor(jnp.array([-1.0, 0.4]), jnp.zeros(2)), 0.0)
    np.testing.assert_allclose(kto_kl_anchor(jnp.array([1.0, 0.4]), jnp.zeros(2)), 0.7, atol=1e-6)
    assert float(jax.grad(lambda x: kto_kl_anchor(x, jnp.zeros(2)))(jnp.array([1.0, 0.4])).sum()) == 0.0
    loss, _ = kto_loss(jnp.array([-3.0]), jnp.array([-3.0]), jnp.array([0]), 0.0, undesirable_weight=2.0)
    np.testing.assert_allclose(loss, [1.0], atol=1e-6)
    # d/dS_θ for a desirable example: −λ_D β σ'(β(r − z0)) = −0.1 · 0.25 at r = z0
    grad = jax.grad(lambda s: kto_loss(s, jnp.array([0.0]), jnp.array([1]), 0.0)[0].sum())(jnp.array([0.0]))
    np.testing.assert_allclose(grad, [-0.025], atol=1e-7)
    # finite at |r| = 1e3
    for s in (1e3, -1e3):
        value, g = jax.value_and_grad(lambda x: kto_loss(x, jnp.zeros(2), jnp.array([1, 0]), 0.5)[0].sum())(
            jnp.full(2, s)
        )
        assert np.isfinite(value) and np.isfinite(g).all()
