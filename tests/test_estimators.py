"""Golden values (the papers and verl/OpenRLHF/ReMax reference code cited in each docstring) for jaxrl_llm.transforms.estimators."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.transforms.estimators import (
    RunningMoments,
    discounted_returns,
    gae,
    group_advantages,
    last_token_rewards,
    masked_mean,
    masked_whiten,
    reinforce_pp_baseline_rewards,
    reinforce_pp_returns,
    remax_advantages,
    rloo_advantages,
    running_moments_init,
    running_moments_update,
    running_std,
    zero_variance_groups,
)

ONE_GROUP = (jnp.array([1.0, 0.0, 0.0, 0.0]), jnp.zeros(4, jnp.int32))


def _close(actual, expected, tol=1e-5):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected, np.float32), rtol=tol, atol=tol)


# ---------------------------------------------------------------- group advantages


@pytest.mark.parametrize(
    "std, expected",
    [
        ("unbiased", [1.5, -0.5, -0.5, -0.5]),  # GRPO (verl torch.std)
        ("population", [1.7320508, -0.5773503, -0.5773503, -0.5773503]),
        ("none", [0.75, -0.25, -0.25, -0.25]),  # Dr.GRPO
    ],
)
def test_group_advantages_golden(std, expected):
    _close(group_advantages(*ONE_GROUP, std=std), expected, tol=2e-5)


def test_group_advantages_interleaved_non_contiguous_ids():
    rewards = jnp.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    ids = jnp.array([907, -3, 907, -3, 907, -3, 907, -3])  # group 907 = [1,0,0,0], group −3 = [0,1,1,1]
    _close(group_advantages(rewards, ids), [1.5, -1.5, -0.5, 0.5, -0.5, 0.5, -0.5, 0.5])
    _close(rloo_advantages(rewards, ids), [1.0, -1.0, -1 / 3, 1 / 3, -1 / 3, 1 / 3, -1 / 3, 1 / 3])


@pytest.mark.parametrize("std", ["unbiased", "population", "none"])
def test_group_advantages_degenerate_groups(std):
    rewards = jnp.array([0.7, 0.1, 0.1, 0.1, 2.0, 0.0])
    ids = jnp.array([5, 1, 1, 1, 2, 2])  # singleton, constant (0.1 is inexact in float32), normal pair
    adv = group_advantages(rewards, ids, std=std)
    assert float(adv[0]) == pytest.approx(0.7)  # single sample: mean 0, std 1 -> A = R
    assert (np.asarray(adv[1:4]) == 0.0).all()  # exactly 0, not round-off / eps
    expected_pair = {"unbiased": 1.0 / (2**0.5 + 1e-6), "population": 1.0 / (1.0 + 1e-6), "none": 1.0}[std]
    _close(adv[4:], [expected_pair, -expected_pair])
    rloo = rloo_advantages(rewards, ids)
    _close(rloo, [0.7, 0.0, 0.0, 0.0, 2.0, -2.0])


def test_group_advantages_unknown_std():
    with pytest.raises(ValueError, match="unbiased.*population.*none"):
        group_advantages(*ONE_GROUP, std="bessel")


def test_rloo_golden():
    _close(rloo_advantages(*ONE_GROUP), [1.0, -1 / 3, -1 / 3, -1 / 3])


def test_zero_variance_groups_counts_each_group_once():
    # DAPO dynamic-sampling example: [1,1,1,1] and [0,0,0,0] carry no signal, [1,0,1,0] does.
    rewards = jnp.array([1.0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 0])
    ids = jnp.repeat(jnp.array([3, 11, 4]), 4)
    _close(zero_variance_groups(rewards, ids), 2 / 3)
    # Unequal group sizes: 1 of 2 groups, regardless of how many samples it holds.
    _close(zero_variance_groups(jnp.array([1.0, 1, 1, 1, 1, 0]), jnp.array([0, 0, 0, 0, 9, 9])), 0.5)


# ---------------------------------------------------------------- token placement and GAE


def test_last_token_rewards():
    mask = jnp.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    out = last_token_rewards(jnp.array([2.0, 3.0, 4.0, 5.0]), mask)
    _close(out, [[0, 2, 0, 0], [0, 0, 3, 0], [0, 0, 0, 0], [0, 0, 0, 5]])


GAE_ADV, GAE_RET = [0.46575, 0.385, 0.3], [0.96575, 0.985, 1.0]


def test_gae_golden_and_right_padding():
    rewards = jnp.array([[0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 9.0, 9.0]])
    values = jnp.array([[0.5, 0.6, 0.7, 0.0, 0.0], [0.5, 0.6, 0.7, 3.0, -4.0]])  # junk behind the mask
    mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    adv, ret = gae(rewards[:1, :3], values[:1, :3], mask[:1, :3], gamma=1.0, lam=0.95)
    _close(adv, [GAE_ADV])
    _close(ret, [GAE_RET])
    adv, ret = gae(rewards, values, mask, 1.0, 0.95)
    _close(adv[1], GAE_ADV + [0, 0])
    _close(ret[1], GAE_RET + [0, 0])


def _reference_gae(rewards, values, gamma, lam):
    adv, next_value, next_adv = np.zeros(len(rewards)), 0.0, 0.0
    for t in reversed(range(len(rewards))):
        next_adv = rewards[t] + gamma * next_value - values[t] + gamma * lam * next_adv
        adv[t], next_value = next_adv, values[t]
    return adv


def test_gae_matches_loop_and_skips_masked_holes():
    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=6).astype(np.float32), rng.normal(size=6).astype(np.float32)
    expected = _reference_gae(rewards, values, 0.9, 0.8)
    adv, ret = gae(rewards[None], values[None], jnp.ones((1, 6)), 0.9, 0.8)
    _close(adv[0], expected)
    _close(ret[0], expected + values)
    # A tool-observation hole (mask 0) between response tokens is skipped, not treated as an end.
    holed = lambda x: np.insert(x, [2, 2, 4], 7.0)
    mask = np.insert(np.ones(6), [2, 2, 4], 0.0)
    adv, _ = gae(holed(rewards)[None], holed(values)[None], mask[None], 0.9, 0.8)
    _close(adv[0][mask > 0], expected)
    _close(adv[0][mask == 0], [0.0, 0.0, 0.0])


# ---------------------------------------------------------------- REINFORCE-style returns


def _reference_discounted_returns(rewards, mask, gamma):
    """Loop over the valid tokens only (the documented semantics)."""
    out, running = np.zeros(len(rewards)), 0.0
    for t in reversed(range(len(rewards))):
        if mask[t]:
            running = rewards[t] + gamma * running
            out[t] = running
    return out


def test_discounted_returns_skips_masked_gap():
    out = discounted_returns(jnp.array([[0.0, 5.0, 1.0]]), jnp.array([[1, 0, 1]]), 0.5)
    _close(out, [[0.5, 0.0, 1.0]])


def test_discounted_returns_matches_loop_padding_and_gamma_one():
    rng = np.random.default_rng(2)
    rewards = rng.normal(size=(3, 7)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0]], np.float32)
    out = discounted_returns(rewards, mask, 0.9)
    _close(out, [_reference_discounted_returns(r, m, 0.9) for r, m in zip(rewards, mask, strict=True)])
    assert float(jnp.abs(jnp.where(mask == 0, out, 0.0)).max()) == 0.0
    # γ = 1: reverse cumulative sum of the valid rewards.
    full = discounted_returns(rewards, mask, 1.0)
    _close(full, np.flip(np.cumsum(np.flip(rewards * mask, -1), -1), -1) * mask, tol=1e-4)


def test_reinforce_pp_returns_whitened_golden():
    mask = jnp.array([[1, 0, 0], [1, 1, 1]])  # two responses, lengths 1 and 3
    returns = reinforce_pp_returns(jnp.array([1.0, 0.0]), mask)
    _close(returns, [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    _close(masked_whiten(returns, mask), [[1.7320508, 0, 0], [-0.5773503] * 3], tol=1e-4)


def test_reinforce_pp_returns_token_rewards_gamma_and_gap():
    mask = jnp.array([[1, 1, 1, 0], [1, 0, 1, 0]])
    kl = jnp.full((2, 4), -0.1)  # −β·KL_t; junk behind the mask is ignored
    _close(reinforce_pp_returns(jnp.array([1.0, 1.0]), mask, 1.0, kl), [[0.7, 0.8, 0.9, 0], [0.8, 0, 0.9, 0]])
    # γ = 0.5 over valid tokens only, R on the last valid token: [0.5, 0, 1].
    _close(reinforce_pp_returns(jnp.array([1.0, 1.0]), mask, 0.5)[1], [0.5, 0.0, 1.0, 0.0])


def _verl_reinforce_pp_loop(token_rewards, mask, gamma):
    """The verl return loop (restarts after each masked position); equal to ours on right padding."""
    returns, running = np.zeros_like(token_rewards), np.zeros(token_rewards.shape[0])
    for t in reversed(range(token_rewards.shape[1])):
        running = token_rewards[:, t] + gamma * running
        returns[:, t] = running
        running = running * mask[:, t]
    return returns * mask


def test_reinforce_pp_returns_match_verl_loop_on_right_padding():
    rng = np.random.default_rng(3)
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], np.float32)
    rewards = rng.normal(size=3).astype(np.float32)
    kl = (rng.normal(size=(3, 5)) * 0.1).astype(np.float32) * mask
    dense = np.asarray(last_token_rewards(rewards, mask)) + kl
    ours = reinforce_pp_returns(rewards, mask, 0.95, kl)
    _close(ours, _verl_reinforce_pp_loop(dense, mask, 0.95))


def test_reinforce_pp_baseline_rewards_golden_and_single_sample_group():
    _close(reinforce_pp_baseline_rewards(*ONE_GROUP), [0.75, -0.25, -0.25, -0.25])
    # ids 7 (single sample: baseline 0 as verl), 3 (constant: exactly 0), 9 (mixed).
    rewards = jnp.array([2.0, 0.1, 0.1, 0.1, 1.0, 0.0])
    out = reinforce_pp_baseline_rewards(rewards, jnp.array([7, 3, 3, 3, 9, 9]))
    _close(out, [2.0, 0.0, 0.0, 0.0, 0.5, -0.5])
    assert float(jnp.abs(out[1:4]).max()) == 0.0


def test_reinforce_pp_baseline_composition_matches_verl():
    # verl: (R − mean_g) broadcast over the valid tokens, then Bessel masked_whiten.
    rewards, ids = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.5]), jnp.array([0, 0, 0, 1, 1, 2])
    mask = jnp.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
    centred = np.array([1 - 1 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.5], np.float32)
    tiled = centred[:, None] * np.asarray(mask, np.float32)
    valid = tiled[np.asarray(mask) > 0]
    expected = (tiled - valid.mean()) / np.sqrt(valid.var(ddof=1) + 1e-8) * np.asarray(mask)
    returns = reinforce_pp_returns(reinforce_pp_baseline_rewards(rewards, ids), mask)
    _close(masked_whiten(returns, mask, unbiased=True), expected, tol=1e-4)


def test_remax_golden():
    out = remax_advantages(jnp.array([0.8]), jnp.array([0.5]), jnp.array([[1, 1, 1, 0, 0]]))
    _close(out, [[0.3, 0.3, 0.3, 0.0, 0.0]])


def test_remax_clip_gamma_and_current_token_rewards():
    mask = jnp.array([[1, 1, 1, 0], [1, 0, 1, 0]])
    rewards, greedy = jnp.array([10.0, -10.0]), jnp.zeros(2)
    _close(remax_advantages(rewards, greedy, mask), [[5, 5, 5, 0], [-5, 0, -5, 0]])
    _close(remax_advantages(rewards, greedy, mask, clip=None), [[10, 10, 10, 0], [-10, 0, -10, 0]])
    # γ once per valid token including the last (ReMax compute_returns): γ^{n_t}·Â.
    adv = remax_advantages(jnp.array([1.0, 1.0]), greedy, mask, gamma=0.5)
    _close(adv, [[0.125, 0.25, 0.5, 0], [0.25, 0, 0.5, 0]])
    # Token rewards (e.g. −β·KL_t) enter per token, not accumulated.
    kl = jnp.array([[0.1, 0.2, 0.3, 9.0], [0.1, 9.0, 0.3, 9.0]])
    adv = remax_advantages(jnp.array([0.8, 0.8]), jnp.array([0.5, 0.5]), mask, token_rewards=kl)
    _close(adv, [[0.4, 0.5, 0.6, 0], [0.4, 0, 0.6, 0]])


def test_remax_without_clip_and_token_rewards_matches_verl():
    # verl compute_remax_outcome_advantage: reverse cumsum of token rewards − baseline, on valid tokens.
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
    rewards, greedy = np.array([7.0, -0.3], np.float32), np.array([0.5, 0.2], np.float32)
    tok = np.asarray(last_token_rewards(rewards, mask))
    verl = (np.flip(np.cumsum(np.flip(tok * mask, -1), -1), -1) - greedy[:, None]) * mask
    _close(remax_advantages(rewards, greedy, mask, clip=None), verl)


# ---------------------------------------------------------------- whitening and running moments


def test_masked_whiten_reinforce_pp_golden():
    returns = jnp.array([[1.0, 5.0, 5.0], [0.0, 0.0, 0.0]])  # lengths 1 and 3, junk behind the mask
    mask = jnp.array([[1, 0, 0], [1, 1, 1]])
    _close(masked_whiten(returns, mask), [[1.7320508, 0, 0], [-0.5773503] * 3], tol=1e-4)
    # Bessel variant: var 0.25 instead of 0.1875.
    _close(masked_whiten(returns, mask, unbiased=True), [[1.5, 0, 0], [-0.5] * 3], tol=1e-4)
    _close(masked_whiten(returns, mask, shift_mean=False), [[1.9820508, 0, 0], [-0.3273503] * 3], tol=1e-4)


def test_masked_mean():
    x = jnp.array([[1.0, 3.0, jnp.nan], [4.0, 4.0, 4.0]])
    mask = jnp.array([[1, 1, 0], [0, 0, 0]])
    _close(masked_mean(x, mask), 2.0)
    _close(masked_mean(x, mask, axis=1), [2.0, 0.0])  # empty row: 0, not NaN


def test_running_moments_spec_golden():
    scores = jnp.array([1.0, 2.0, 3.0])
    state = running_moments_update(running_moments_init(), scores)
    assert isinstance(state, RunningMoments)
    _close([state.mean, state.var, state.count], [2.0, 2 / 3, 3.0])
    _close(running_std(state), 1.0)
    _close((scores - state.mean) / running_std(state), [-1.0, 0.0, 1.0])


def test_running_moments_merge_equals_one_batch():
    rng = np.random.default_rng(1)
    data = rng.normal(2.0, 3.0, size=50).astype(np.float32)
    state = running_moments_init()
    for chunk in np.split(data, [7, 20, 21]):
        state = running_moments_update(state, chunk)
    _close([state.mean, state.var, state.count], [data.mean(), data.var(), 50.0], tol=1e-4)
    _close(running_std(state), data.std(ddof=1), tol=1e-4)


def test_running_moments_mask_empty_batch_and_small_count():
    x = jnp.array([[1.0, 100.0], [3.0, -100.0]])
    state = running_moments_update(running_moments_init(), x, jnp.array([[1, 0], [1, 0]]))
    _close([state.mean, state.var, state.count], [2.0, 1.0, 2.0])
    unchanged = running_moments_update(state, x, jnp.zeros((2, 2)))
    _close(list(unchanged), list(state))
    assert float(running_std(running_moments_init())) == 1.0
    assert float(running_std(running_moments_update(running_moments_init(), jnp.array([4.0])))) == 1.0


# ---------------------------------------------------------------- jit


def test_every_estimator_jits():
    rewards, ids = ONE_GROUP
    for std in ("unbiased", "none"):
        f = jax.jit(group_advantages, static_argnames="std")
        _close(f(rewards, ids, std=std), group_advantages(rewards, ids, std=std))
    _close(jax.jit(rloo_advantages)(rewards, ids), rloo_advantages(rewards, ids))
    _close(jax.jit(zero_variance_groups)(rewards, ids), 0.0)
    mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    tok = jax.jit(last_token_rewards)(rewards, mask)
    _close(tok, last_token_rewards(rewards, mask))
    values = jnp.full((4, 4), 0.5)
    _close(jax.jit(gae)(tok, values, mask)[0], gae(tok, values, mask)[0])
    _close(jax.jit(masked_whiten)(tok, mask), masked_whiten(tok, mask))
    _close(jax.jit(masked_mean, static_argnames="axis")(tok, mask, axis=1), masked_mean(tok, mask, axis=1))
    _close(jax.jit(discounted_returns)(tok, mask, 0.9), discounted_returns(tok, mask, 0.9))
    _close(
        jax.jit(reinforce_pp_returns)(rewards, mask, 0.9, tok), reinforce_pp_returns(rewards, mask, 0.9, tok)
    )
    _close(jax.jit(reinforce_pp_baseline_rewards)(rewards, ids), reinforce_pp_baseline_rewards(rewards, ids))
    remax = lambda *a: remax_advantages(*a, gamma=0.9, token_rewards=tok)
    _close(jax.jit(remax)(rewards, rewards * 0.5, mask, 5.0), remax(rewards, rewards * 0.5, mask, 5.0))
    state = jax.jit(running_moments_update)(running_moments_init(), rewards, None)
    _close(jax.jit(running_std)(state), running_std(running_moments_update(running_moments_init(), rewards)))
