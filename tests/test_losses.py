"""Golden values (the papers and verl reference code cited in each docstring) for jaxrl_llm.losses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.losses import (
    AGGREGATION_MODES,
    KL_ESTIMATORS,
    aggregate,
    clipped_value_loss,
    dpo_loss,
    entropy_from_logits,
    kl_estimate,
    logprobs_and_entropy,
    ppo_clip_loss,
    preference_link,
    sequence_logps,
    token_logprobs_from_logits,
)

LOG_PI, LOG_PI_REF = math.log(0.5), math.log(0.4)


def _close(actual, expected, tol=1e-5):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected, np.float32), rtol=tol, atol=tol)


# ---------------------------------------------------------------- KL estimators


@pytest.mark.parametrize(
    "kind, expected",
    [("k1", 0.223144), ("k2", 0.024897), ("k3", 0.023144), ("k3+", 0.023144), ("abs", 0.223144)],
)
def test_kl_estimate_golden(kind, expected):
    _close(kl_estimate(jnp.array([LOG_PI]), jnp.array([LOG_PI_REF]), kind), [expected])


def test_kl_abs_is_abs_of_k1():
    logp, logp_ref = jnp.array([LOG_PI_REF, LOG_PI]), jnp.array([LOG_PI, LOG_PI_REF])
    _close(kl_estimate(logp, logp_ref, "abs"), [0.223144, 0.223144])
    _close(kl_estimate(logp, logp_ref, "k1"), [-0.223144, 0.223144])


def test_kl_k3_plus_has_k3_value_and_k2_gradient():
    grad = lambda kind: jax.grad(lambda lp: kl_estimate(lp, jnp.float32(LOG_PI_REF), kind))(
        jnp.float32(LOG_PI)
    )
    _close(grad("k3+"), grad("k2"))
    _close(grad("k2"), LOG_PI - LOG_PI_REF)  # d(½d²)/dd = d
    assert not np.isclose(grad("k3"), grad("k2"))


def test_kl_clamps_only_k3_as_verl():
    # verl kl_penalty_forward: k1/abs/k2 unclamped; low_var_kl clamps d to ±20 and k3 to ±10.
    logp, logp_ref = jnp.array([30.0, -30.0]), jnp.zeros(2)
    _close(kl_estimate(logp, logp_ref, "k1"), [30.0, -30.0])
    _close(kl_estimate(logp, logp_ref, "abs"), [30.0, 30.0])
    _close(kl_estimate(logp, logp_ref, "k2"), [450.0, 450.0])
    _close(kl_estimate(logp, logp_ref, "k3"), [10.0, 10.0])
    _close(kl_estimate(logp, logp_ref, "k3+"), [10.0, 10.0])
    # k3+ keeps the (unclamped) k2 gradient, d; the clamped k3 has zero gradient there.
    grad = lambda kind: jax.grad(lambda lp: kl_estimate(lp, logp_ref, kind).sum())(logp)
    _close(grad("k3+"), grad("k2"))
    _close(grad("k3+"), [30.0, -30.0])
    _close(grad("k3"), [0.0, 0.0])


def test_kl_k3_plus_gradient_matches_k2_on_random_tokens():
    rng = np.random.default_rng(0)
    logp, logp_ref = (jnp.asarray(rng.normal(size=(3, 5)), jnp.float32) for _ in range(2))
    grad = lambda kind: jax.grad(lambda lp: kl_estimate(lp, logp_ref, kind).sum())(logp)
    _close(grad("k3+"), grad("k2"))
    _close(kl_estimate(logp, logp_ref, "k3+"), kl_estimate(logp, logp_ref, "k3"))


def test_kl_k3_clamp_bounds_far_off_policy_tokens():
    logp, logp_ref = jnp.array([-50.0, 0.0]), jnp.array([0.0, -50.0])
    _close(kl_estimate(logp, logp_ref, "k1"), [-50.0, 50.0])
    _close(kl_estimate(logp, logp_ref, "k3"), [10.0, 10.0])
    unclamped = kl_estimate(logp, logp_ref, "k3", clamp=False)
    assert float(unclamped[0]) > 1e20 and np.isfinite(unclamped).all()
    _close(unclamped[1], 49.0)  # exp(−50) + 50 − 1


def test_kl_unknown_kind_lists_the_kinds():
    with pytest.raises(ValueError, match=r"k1.*k2.*k3"):
        kl_estimate(jnp.zeros(1), jnp.zeros(1), "k4")


# ---------------------------------------------------------------- PPO clip


def test_ppo_dual_clip_golden():
    loss, clipped = ppo_clip_loss(
        jnp.log(jnp.array([5.0])), jnp.zeros(1), jnp.array([-1.0]), 0.2, dual_clip=3.0
    )
    _close(loss, [3.0])
    _close(clipped, [1.0])
    plain, plain_clipped = ppo_clip_loss(jnp.log(jnp.array([5.0])), jnp.zeros(1), jnp.array([-1.0]), 0.2)
    _close(plain, [5.0])  # without dual clip the negative-advantage ratio is unbounded
    _close(plain_clipped, [0.0])


def test_grpo_token_golden():
    logp = jnp.array([LOG_PI])
    loss, _ = ppo_clip_loss(logp, logp, jnp.array([1.5]))
    _close(loss + 0.04 * kl_estimate(logp, jnp.array([LOG_PI_REF]), "k3"), [-1.499074])


@pytest.mark.parametrize(
    "ratio, adv, eps_high, expected_loss, expected_clipped",
    [
        (1.5, 1.0, None, -1.2, 1.0),  # A>0 above 1+ε: clipped
        (0.5, 1.0, None, -0.5, 0.0),  # A>0 below 1−ε: unclipped (pessimistic branch)
        (0.5, -1.0, None, 0.8, 1.0),  # A<0 below 1−ε: clipped
        (1.1, 1.0, None, -1.1, 0.0),  # inside the trust region
        (1.25, 1.0, 0.28, -1.25, 0.0),  # clip-higher lets r=1.25 through
        (1.25, 1.0, None, -1.2, 1.0),
    ],
)
def test_ppo_clip_branches_and_gradients(ratio, adv, eps_high, expected_loss, expected_clipped):
    f = lambda lp: ppo_clip_loss(lp, jnp.zeros(1), jnp.array([adv]), 0.2, eps_high)
    logp = jnp.log(jnp.array([ratio]))
    loss, clipped = f(logp)
    _close(loss, [expected_loss])
    _close(clipped, [expected_clipped])
    grad = jax.grad(lambda lp: f(lp)[0].sum())(logp)
    expected_grad = 0.0 if expected_clipped else -adv * ratio  # d(−A·r)/dlogp = −A·r
    _close(grad, [expected_grad])


@pytest.mark.parametrize(
    "adv, expected_loss", [(0.0, 0.0), (1.0, -1.2), (-1.0, float(np.exp(np.float32(20.0))))]
)
def test_ppo_log_ratio_clamp_keeps_loss_and_grad_finite(adv, expected_loss):
    # log-ratio 100 with A = 0 (a constant GRPO group) was 0·inf = NaN before the ±20 clamp.
    f = lambda lp: ppo_clip_loss(lp, jnp.zeros(1), jnp.array([adv]))
    logp = jnp.array([100.0])
    loss, clipped = f(logp)
    _close(loss, [expected_loss], tol=1e-4)
    _close(clipped, [1.0 if adv > 0 else 0.0])
    grad = jax.grad(lambda lp: f(lp)[0].sum())(logp)
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    _close(grad, [0.0])
    # Inside the clamp nothing changes: the gradient is still −A·r.
    _close(
        jax.grad(lambda lp: f(lp)[0].sum())(jnp.array([19.0])), [0.0 if adv >= 0 else np.exp(19.0)], tol=1e-4
    )


def test_ppo_dual_clip_validation_and_traced_value():
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_clip_loss(jnp.zeros(1), jnp.zeros(1), jnp.ones(1), dual_clip=1.0)
    # A traced (scheduled) dual_clip is not validated in Python and still works.
    f = jax.jit(
        lambda c: ppo_clip_loss(jnp.log(jnp.array([5.0])), jnp.zeros(1), -jnp.ones(1), dual_clip=c)[0]
    )
    _close(f(jnp.float32(3.0)), [3.0])


# ---------------------------------------------------------------- log-probs and entropy


def test_entropy_uniform_and_stable():
    _close(entropy_from_logits(jnp.zeros((2, 3, 4))), np.full((2, 3), math.log(4)))
    huge = jnp.array([1e4, 0.0, -1e4])
    _close(entropy_from_logits(huge), 0.0)


def test_token_logprobs_and_entropy_match_naive():
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7)) * 3
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 5), 0, 7)
    for temperature in (1.0, 0.7):
        naive = jax.nn.log_softmax(logits / temperature, axis=-1)
        naive_logp = jnp.take_along_axis(naive, tokens[..., None], axis=-1)[..., 0]
        _close(token_logprobs_from_logits(logits, tokens, temperature), naive_logp)
        logp, entropy = logprobs_and_entropy(logits, tokens, temperature)
        _close(logp, naive_logp)
        _close(entropy, -jnp.sum(jnp.exp(naive) * naive, axis=-1))
        _close(entropy, entropy_from_logits(logits / temperature))


# ---------------------------------------------------------------- value loss


def test_clipped_value_loss_golden():
    v, v_old, ret = jnp.array([1.0]), jnp.array([0.5]), jnp.array([1.2])
    _close(clipped_value_loss(v, v_old, ret, 0.2), [0.125])
    _close(clipped_value_loss(v, v_old, ret, None), [0.02])
    # The clipped branch is active: no gradient pulls V further from V_old.
    _close(jax.grad(lambda x: clipped_value_loss(x, v_old, ret, 0.2).sum())(v), [0.0])


# ---------------------------------------------------------------- aggregation

SPEC_LOSS = jnp.array([[2.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
SPEC_MASK = jnp.array([[1, 0, 0, 0], [1, 1, 1, 0]], jnp.int32)


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token_mean", 1.25),
        ("seq_mean_token_mean", 1.5),
        ("seq_mean_token_sum_norm", 0.625),
        ("seq_mean_token_sum", 2.5),
    ],
)
def test_aggregate_spec_golden(mode, expected):
    _close(aggregate(SPEC_LOSS, SPEC_MASK, mode, max_len=4), expected)


def test_aggregate_max_len_is_a_constant_and_defaults_to_T():
    _close(aggregate(SPEC_LOSS, SPEC_MASK, "seq_mean_token_sum_norm"), 0.625)  # T = 4
    _close(aggregate(SPEC_LOSS, SPEC_MASK, "seq_mean_token_sum_norm", max_len=10), 0.25)


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
@pytest.mark.parametrize("num_micro", [2, 4])
def test_aggregate_micro_batches_sum_to_full_batch(mode, num_micro):
    rng = np.random.default_rng(0)
    loss = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
    lengths = np.array([6, 1, 3, 0, 5, 2, 6, 4])  # one fully masked padding row
    mask = jnp.asarray(np.arange(6)[None, :] < lengths[:, None], jnp.float32)
    full = aggregate(loss, mask, mode)
    num_tokens, num_seqs = jnp.sum(mask), loss.shape[0]
    parts = [
        aggregate(lo, ma, mode, num_tokens=num_tokens, num_seqs=num_seqs)
        for lo, ma in zip(jnp.split(loss, num_micro), jnp.split(mask, num_micro), strict=True)
    ]
    _close(sum(parts), full)
    # Without the global normalisers the micro-batch values do not add up (the bug this prevents).
    local = sum(
        aggregate(lo, ma, mode)
        for lo, ma in zip(jnp.split(loss, num_micro), jnp.split(mask, num_micro), strict=True)
    )
    assert not np.isclose(local, full)


def test_aggregate_masked_rows_and_nan_do_not_leak():
    loss = jnp.array([[2.0, jnp.nan], [jnp.inf, jnp.inf]])
    mask = jnp.array([[1, 0], [0, 0]])
    for mode in AGGREGATION_MODES:
        assert np.isfinite(aggregate(loss, mask, mode))
    _close(aggregate(loss, mask, "token_mean"), 2.0)
    _close(aggregate(loss, mask, "seq_mean_token_mean"), 1.0)  # padding row counts in the default B
    _close(aggregate(loss, mask, "seq_mean_token_mean", num_seqs=1), 2.0)
    _close(aggregate(jnp.ones((2, 2)), jnp.zeros((2, 2)), "token_mean"), 0.0)  # empty mask: no 0/0


def test_aggregate_unknown_mode_lists_modes():
    with pytest.raises(ValueError, match="seq_mean_token_sum_norm"):
        aggregate(SPEC_LOSS, SPEC_MASK, "sum")


# ---------------------------------------------------------------- preference

TOY_PAIR = tuple(jnp.array([x]) for x in (-10.0, -12.0, -11.0, -11.5))


def test_sequence_logps_sum_and_average():
    logp = jnp.array([[-1.0, -2.0, -5.0], [-1.0, -1.0, -1.0], [-3.0, -3.0, -3.0]])
    mask = jnp.array([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    _close(sequence_logps(logp, mask), [-3.0, -3.0, 0.0])
    _close(sequence_logps(logp, mask, "mean"), [-1.5, -1.0, 0.0])


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, 0.620957),  # softplus(−0.15)
        ({"label_smoothing": 0.1}, 0.635957),  # cDPO (spec §3)
        ({"reference_free": True}, 0.598139),  # softplus(−0.2)
    ],
)
def test_dpo_golden(kwargs, expected):
    loss, _ = dpo_loss(*TOY_PAIR, beta=0.1, **kwargs)
    _close(loss, [expected])


def test_dpo_metrics_and_gradients():
    loss, metrics = dpo_loss(*TOY_PAIR, beta=0.1)
    _close(metrics["reward_chosen"], [0.1])
    _close(metrics["reward_rejected"], [-0.05])
    _close(metrics["reward_margin"], [0.15])
    _close(metrics["reward_accuracy"], [1.0])
    grads = jax.grad(lambda args: dpo_loss(*args, beta=0.1)[0].sum())(TOY_PAIR)
    assert grads[0][0] < 0 < grads[1][0]  # raise the chosen log-prob, lower the rejected one
    _close(grads[0], [-0.1 * jax.nn.sigmoid(-0.15)])
    _close(grads[2], [0.0])  # reference is frozen
    _close(grads[3], [0.0])
    _, free = dpo_loss(TOY_PAIR[0], TOY_PAIR[1], None, None, beta=0.1, reference_free=True)
    _close(free["reward_chosen"], [-1.0])


# ---------------------------------------------------------------- jit


def test_every_loss_jits():
    b, t, v = 2, 3, 5
    x = jnp.linspace(-1.0, 0.0, b * t).reshape(b, t)
    mask = jnp.ones((b, t), jnp.int32)
    logits = jnp.arange(b * t * v, dtype=jnp.float32).reshape(b, t, v) / 10
    tokens = jnp.zeros((b, t), jnp.int32)
    for kind in KL_ESTIMATORS:
        _close(
            jax.jit(kl_estimate, static_argnames="kind")(x, x * 0.5, kind=kind), kl_estimate(x, x * 0.5, kind)
        )
    _close(jax.jit(ppo_clip_loss)(x, x * 0.5, x)[0], ppo_clip_loss(x, x * 0.5, x)[0])
    _close(jax.jit(entropy_from_logits)(logits), entropy_from_logits(logits))
    _close(jax.jit(token_logprobs_from_logits)(logits, tokens), token_logprobs_from_logits(logits, tokens))
    _close(jax.jit(logprobs_and_entropy)(logits, tokens)[1], logprobs_and_entropy(logits, tokens)[1])
    _close(jax.jit(clipped_value_loss)(x, x * 0.5, x + 1), clipped_value_loss(x, x * 0.5, x + 1))
    agg = jax.jit(aggregate, static_argnames=("mode", "max_len"))
    for mode in AGGREGATION_MODES:
        _close(agg(x, mask, mode=mode, num_tokens=jnp.float32(6)), aggregate(x, mask, mode))
    _close(
        jax.jit(sequence_logps, static_argnames="reduction")(x, mask, reduction="mean"),
        sequence_logps(x, mask, "mean"),
    )
    _close(jax.jit(dpo_loss)(*TOY_PAIR)[0], [0.620957])


@pytest.mark.parametrize(
    "link, smoothing, expected",
    [("sigmoid", 0.0, 0.620957), ("sigmoid", 0.1, 0.635957), ("robust", 0.1, 0.602207), ("hinge", 0.0, 0.85), ("ipo", 0.0, 12.25)],
)  # fmt: skip
def test_preference_link_goldens_on_the_toy_pair(link, smoothing, expected):
    # DPO toy pair: S(y_w) = -10, S(y_l) = -12, S_ref(y_w) = -11, S_ref(y_l) = -11.5 -> h = 1.5, beta 0.1.
    loss, _ = dpo_loss(
        jnp.array([-10.0]),
        jnp.array([-12.0]),
        jnp.array([-11.0]),
        jnp.array([-11.5]),
        0.1,
        smoothing,
        link=link,
    )
    np.testing.assert_allclose(loss, [expected], atol=1e-6)


def test_ipo_length_averaged_and_simpo_goldens():
    # IPO with L(y_w) = 5, L(y_l) = 6: h = 1/5 + 0.5/6 = 0.283333 -> (h - 5)^2 = 22.246944.
    h = jnp.array([1.0 / 5 + 0.5 / 6])
    np.testing.assert_allclose(preference_link(h, 0.1, "ipo"), [22.246944], atol=1e-5)
    # SimPO: A(y_w) = -0.8, A(y_l) = -1.2, beta 2, gamma/beta 0.25 -> logit 0.15, L = 0.554355 (0.584355 smoothed).
    for smoothing, expected in ((0.0, 0.554355), (0.1, 0.584355)):
        loss, _ = dpo_loss(jnp.array([-0.8]), jnp.array([-1.2]), None, None, 2.0, smoothing, True, margin=0.5)
        np.testing.assert_allclose(loss, [expected], atol=1e-6)
    with pytest.raises(ValueError, match="robust DPO needs label_smoothing in"):
        preference_link(h, 0.1, "robust", 0.5)
