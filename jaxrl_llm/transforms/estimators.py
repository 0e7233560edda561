"""Advantage and normalisation math: pure functions of arrays used by the advantage transforms.

Shapes: B sequences, T response tokens; ``mask`` [B, T] is 1 on response tokens (incl. EOS),
0 on padding and tool-observation tokens. ``group_ids`` [B] are arbitrary integers: samples
of the same prompt share one (ids need not be contiguous, sorted or < B). Everything is
float32, jittable and free of Python control flow on array values.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

GROUP_STD_MODES = ("unbiased", "population", "none")


def masked_mean(x: Array, mask: Array, axis: int | tuple[int, ...] | None = None) -> Array:
    """Σ m·x / Σ m over ``axis`` (all axes by default); 0 where the mask is empty.

    Example:
      >>> masked_mean(jnp.array([[1.0, 3.0, 100.0]]), jnp.array([[1, 1, 0]]))  # 2.0
    """
    mask = jnp.asarray(mask, jnp.float32)
    total = jnp.sum(jnp.where(mask > 0, jnp.asarray(x, jnp.float32), 0.0), axis=axis)
    return total / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


class _GroupStats(NamedTuple):
    count: Array  # [B] size of each sample's group
    mean: Array  # [B] group mean of each sample's group
    sq_dev: Array  # [B] Σ_group (R − mean)² of each sample's group
    constant: Array  # [B] bool, all rewards in the group are equal (incl. size-1 groups)
    segment: Array  # [B] dense group index in [0, num_groups)


def _group_stats(rewards: Array, group_ids: Array) -> _GroupStats:
    rewards = jnp.asarray(rewards, jnp.float32)
    n = rewards.shape[0]
    # Dense re-indexing (sort-based, O(B log B)) so segment ops with num_segments=B accept any ids.
    _, segment = jnp.unique(group_ids, size=n, return_inverse=True, fill_value=0)
    segment = segment.reshape(n)

    def per_sample(values, op=jax.ops.segment_sum):
        return op(values, segment, num_segments=n)[segment]

    count = per_sample(jnp.ones_like(rewards))
    mean = per_sample(rewards) / count
    sq_dev = per_sample(jnp.square(rewards - mean))
    constant = per_sample(rewards, jax.ops.segment_max) == per_sample(rewards, jax.ops.segment_min)
    return _GroupStats(count, mean, sq_dev, constant, segment)


def group_advantages(rewards: Array, group_ids: Array, std: str = "unbiased", eps: float = 1e-6) -> Array:
    """Group-relative advantages (GRPO). [B], [B] int -> [B].

        A_i = (R_i − mean_g) / (std_g + eps)      std = 'unbiased' (N − 1, verl/TRL) or 'population' (N)
        A_i =  R_i − mean_g                        std = 'none' (Dr.GRPO)

    Degenerate groups follow verl: a single-sample group has mean 0 and std 1, so A = R (for
    every ``std`` mode); a group whose rewards are all equal gets A = 0 exactly (rather than
    float32 round-off divided by eps).

    Papers: GRPO (DeepSeekMath), arXiv 2402.03300; Dr.GRPO, arXiv 2503.20783.

    Example:
      >>> group_advantages(jnp.array([1.0, 0, 0, 0]), jnp.zeros(4, jnp.int32))  # [1.5, −0.5, −0.5, −0.5]
      >>> group_advantages(jnp.array([1.0, 0, 0, 0]), jnp.zeros(4, jnp.int32), std="none")  # [.75, −.25, ...]
    """
    if std not in GROUP_STD_MODES:
        raise ValueError(f"Unknown group std mode std={std!r}; expected one of {GROUP_STD_MODES}.")
    rewards = jnp.asarray(rewards, jnp.float32)
    stats = _group_stats(rewards, group_ids)
    centred = rewards - stats.mean
    if std == "none":
        advantages = centred
    else:
        dof = stats.count - 1.0 if std == "unbiased" else stats.count
        group_std = jnp.sqrt(stats.sq_dev / jnp.maximum(dof, 1.0))
        advantages = centred / (group_std + eps)
    advantages = jnp.where(stats.constant, 0.0, advantages)
    return jnp.where(stats.count == 1, rewards, advantages)


def rloo_advantages(rewards: Array, group_ids: Array) -> Array:
    """REINFORCE leave-one-out advantages. [B], [B] int -> [B].

        A_i = R_i − mean_{j≠i} R_j = k/(k − 1)·(R_i − mean_g),   k = group size

    Single-sample groups keep A = R (verl); constant groups get exactly 0.
    Paper: "Back to Basics: Revisiting REINFORCE Style Optimization", arXiv 2402.14740.

    Example:
      >>> rloo_advantages(jnp.array([1.0, 0, 0, 0]), jnp.zeros(4, jnp.int32))  # [1, −1/3, −1/3, −1/3]
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    stats = _group_stats(rewards, group_ids)
    scale = stats.count / jnp.maximum(stats.count - 1.0, 1.0)
    advantages = jnp.where(stats.constant, 0.0, scale * (rewards - stats.mean))
    return jnp.where(stats.count == 1, rewards, advantages)


def reinforce_pp_baseline_rewards(rewards: Array, group_ids: Array) -> Array:
    """Group-mean-centred sequence rewards of REINFORCE++-baseline. [B], [B] int -> [B].

        R'_i = R_i − mean_g(R)

    As verl's ``compute_reinforce_plus_plus_baseline_outcome_advantage``, a single-sample
    group uses a baseline of 0, so R' = R; a group whose rewards are all equal gets exactly 0.
    To build the REINFORCE++-baseline advantage compose
    ``masked_whiten(reinforce_pp_returns(reinforce_pp_baseline_rewards(R, ids), mask), mask)``:
    with γ = 1 and no token rewards this equals verl's advantage (which broadcasts R' to every
    valid token and then applies its Bessel-corrected ``masked_whiten``: pass
    ``unbiased=True`` to match it exactly; OpenRLHF's "reinforce_baseline" uses the
    population variance, the default).

    Paper: REINFORCE++, arXiv 2501.03262.

    Example:
      >>> reinforce_pp_baseline_rewards(jnp.array([1.0, 0, 0, 0]), jnp.zeros(4, jnp.int32))  # [.75, −.25, −.25, −.25]
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    stats = _group_stats(rewards, group_ids)
    centred = jnp.where(stats.constant, 0.0, rewards - stats.mean)
    return jnp.where(stats.count == 1, rewards, centred)


def zero_variance_groups(rewards: Array, group_ids: Array) -> Array:
    """Fraction of groups whose rewards are all equal (each group counted once). [B], [B] -> scalar.

    These groups carry no group-relative learning signal (DAPO's dynamic sampling drops
    them, arXiv 2503.14476). Single-sample groups count as zero-variance.

    Example:
      >>> zero_variance_groups(jnp.array([1.0, 1, 0, 1]), jnp.array([0, 0, 1, 1]))  # 0.5
    """
    stats = _group_stats(rewards, group_ids)
    n = stats.segment.shape[0]
    present = jax.ops.segment_max(jnp.ones(n, jnp.float32), stats.segment, num_segments=n) > 0
    constant = jax.ops.segment_min(stats.constant.astype(jnp.float32), stats.segment, num_segments=n) > 0
    return jnp.sum(present & constant) / jnp.maximum(jnp.sum(present), 1)


def last_token_rewards(rewards: Array, mask: Array) -> Array:
    """Place each sequence reward on its last mask-1 token. [B], [B, T] -> [B, T].

    Zeros elsewhere; a row with an all-zero mask receives nothing.

    Example:
      >>> last_token_rewards(jnp.array([2.0]), jnp.array([[1, 1, 0]]))  # [[0, 2, 0]]
    """
    mask = jnp.asarray(mask)
    positions = jnp.arange(mask.shape[-1])
    last = jnp.max(jnp.where(mask > 0, positions, -1), axis=-1)  # [B]
    is_last = positions[None, :] == last[:, None]
    return jnp.where(is_last, jnp.asarray(rewards, jnp.float32)[:, None], 0.0)


def gae(
    token_rewards: Array, values: Array, mask: Array, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Array, Array]:
    """Generalised advantage estimation over response tokens. [B, T] x3 -> (advantages, returns) [B, T].

        δ_t = r_t + γ·V_{t+1} − V_t,   A_t = δ_t + γλ·A_{t+1},   returns_t = A_t + V_t

    t runs over mask-1 tokens only: masked positions (right padding, tool-observation tokens
    inside a multi-turn response) are skipped, so V_{t+1} and A_{t+1} come from the next
    mask-1 token, and the value after the last one is 0. Rewards and values at masked
    positions are ignored; outputs there are 0. Reverse `lax.scan` over T.

    Paper: Schulman et al., arXiv 1506.02438; used by PPO-RLHF, arXiv 2307.04964.

    Example:
      >>> a, r = gae(jnp.array([[0.0, 0, 1]]), jnp.array([[0.5, 0.6, 0.7]]), jnp.ones((1, 3)), 1.0, 0.95)
      >>> a, r  # [[0.46575, 0.385, 0.3]], [[0.96575, 0.985, 1.0]]
    """
    mask = jnp.asarray(mask, jnp.float32) > 0
    token_rewards = jnp.asarray(token_rewards, jnp.float32)
    values = jnp.asarray(values, jnp.float32)

    def step(carry, inputs):
        next_value, next_advantage = carry
        reward, value, valid = inputs
        delta = reward + gamma * next_value - value
        advantage = delta + gamma * lam * next_advantage
        carry = (jnp.where(valid, value, next_value), jnp.where(valid, advantage, next_advantage))
        return carry, jnp.where(valid, advantage, 0.0)

    zeros = jnp.zeros(values.shape[0], jnp.float32)
    _, advantages = jax.lax.scan(step, (zeros, zeros), (token_rewards.T, values.T, mask.T), reverse=True)
    advantages = advantages.T
    returns = jnp.where(mask, advantages + values, 0.0)
    return advantages, returns


def discounted_returns(token_rewards: Array, mask: Array, gamma: float = 1.0) -> Array:
    """Discounted reward-to-go over the mask-1 tokens. [B, T], [B, T] -> [B, T].

        G_t = r_t + γ·G_{t'},   t' = the next mask-1 token after t (G = 0 after the last one)

    Masked positions (right padding and masked gaps inside a response, e.g. tool-observation
    tokens of a multi-turn response) are skipped: they neither receive nor pass on a discount
    step, so the discount counts valid tokens only; rewards there are ignored and the output
    there is 0. Computed as ``gae`` with V ≡ 0 and λ = 1 (one reverse `lax.scan` over T).

    On right-padded masks this equals OpenRLHF's ``get_cumulative_returns`` and verl's
    REINFORCE++ return loop (``compute_reinforce_plus_plus_outcome_advantage``). They differ
    on masked gaps: OpenRLHF zeroes the gap rewards but still discounts across the gap, verl
    restarts the return at a masked position.

    Paper: REINFORCE, Williams (1992); REINFORCE++, arXiv 2501.03262.

    Example (a masked gap in the middle):
      >>> discounted_returns(jnp.array([[0.0, 5, 1]]), jnp.array([[1, 0, 1]]), gamma=0.5)  # [[0.5, 0, 1]]
    """
    return gae(token_rewards, jnp.zeros_like(jnp.asarray(token_rewards, jnp.float32)), mask, gamma, 1.0)[0]


def reinforce_pp_returns(
    rewards: Array, mask: Array, gamma: float = 1.0, token_rewards: Array | None = None
) -> Array:
    """REINFORCE++ token returns. [B], [B, T] (, [B, T]) -> [B, T].

        r_t = 1[t = last mask-1 token]·R + token_rewards_t,   G_t = discounted_returns(r, mask, γ)

    ``token_rewards`` are optional dense rewards, typically the KL-in-reward term
    −β·KL_t(π_old‖π_ref) (see ``kl_estimate``); with None only R is placed. The REINFORCE++
    advantage is then the global batch whitening ``masked_whiten(G, mask)`` (population
    variance as OpenRLHF; ``unbiased=True`` as verl), applied separately. For
    REINFORCE++-baseline pass ``reinforce_pp_baseline_rewards(R, group_ids)`` as ``rewards``.

    Paper: REINFORCE++, arXiv 2501.03262; reference implementations: OpenRLHF
    ``get_cumulative_returns`` (estimator "reinforce"), verl
    ``compute_reinforce_plus_plus_outcome_advantage`` (see ``discounted_returns`` for how
    masked gaps are treated).

    Example (two responses, lengths 1 and 3):
      >>> mask = jnp.array([[1, 0, 0], [1, 1, 1]])
      >>> g = reinforce_pp_returns(jnp.array([1.0, 0.0]), mask)  # [[1, 0, 0], [0, 0, 0]]
      >>> masked_whiten(g, mask)  # [[1.7321, 0, 0], [−0.5774, −0.5774, −0.5774]]
    """
    dense = last_token_rewards(rewards, mask)
    if token_rewards is not None:
        dense = dense + jnp.asarray(token_rewards, jnp.float32)
    return discounted_returns(dense, mask, gamma)


def remax_advantages(
    rewards: Array,
    baseline_rewards: Array,
    mask: Array,
    clip: float | None = 5.0,
    gamma: float = 1.0,
    token_rewards: Array | None = None,
) -> Array:
    """ReMax per-token advantages (greedy-response baseline). [B], [B], [B, T] (, [B, T]) -> [B, T].

        Â   = clip(R − R_greedy, −c, c)                   (``clip=None``: no clipping)
        G_t = γ^{n_t}·Â + token_rewards_t,   n_t = number of mask-1 tokens from t to the end, t included

    ``baseline_rewards`` is the reward of the greedy response to the same prompt. The discount
    follows the official code (liziniu/ReMax ``step3_rlhf_finetuning/remax_trainer.py``,
    ``compute_returns``), which multiplies the clipped reward by γ once per response token
    including the last, so the last token gets γ·Â; masked tokens are not counted. As there,
    ``token_rewards`` (typically −β·(logp_old − logp_ref), the KL-in-reward term) enter
    per token, **not** accumulated over later tokens. Output is 0 at masked positions.
    Defaults c = 5, γ = 1 are the official code's. verl's ``compute_remax_outcome_advantage``
    does not clip or discount and accumulates token rewards (reverse cumsum); with
    ``clip=None``, γ = 1 and no token rewards the two agree.

    Paper: ReMax, arXiv 2310.10505.

    Example:
      >>> remax_advantages(jnp.array([0.8]), jnp.array([0.5]), jnp.array([[1, 1, 0]]))  # [[0.3, 0.3, 0]]
    """
    valid = jnp.asarray(mask, jnp.float32) > 0
    advantage = jnp.asarray(rewards, jnp.float32) - jnp.asarray(baseline_rewards, jnp.float32)
    if clip is not None:
        advantage = jnp.clip(advantage, -clip, clip)
    steps = jnp.cumsum(valid[:, ::-1].astype(jnp.float32), axis=-1)[:, ::-1]  # n_t
    returns = jnp.power(jnp.asarray(gamma, jnp.float32), steps) * advantage[:, None]
    if token_rewards is not None:
        returns = returns + jnp.asarray(token_rewards, jnp.float32)
    return jnp.where(valid, returns, 0.0)


def masked_whiten(
    x: Array, mask: Array, shift_mean: bool = True, eps: float = 1e-8, unbiased: bool = False
) -> Array:
    """Normalise x over all mask-1 entries of the batch. [B, T], [B, T] -> [B, T].

        x̂ = (x − μ) / sqrt(σ² + eps)        μ, σ² = masked mean / variance over the batch

    σ² is the population variance (OpenRLHF REINFORCE++) unless ``unbiased`` (Bessel, verl's
    ``masked_whiten``). ``shift_mean=False`` adds μ back (scale only). Masked positions are 0.
    Paper: REINFORCE++, arXiv 2501.03262 (global batch advantage normalisation).

    Example (token returns of two responses, lengths 1 and 3):
      >>> masked_whiten(jnp.array([[1.0, 0, 0], [0, 0, 0]]), jnp.array([[1, 0, 0], [1, 1, 1]]))
      >>> # [[1.7321, 0, 0], [−0.5774, −0.5774, −0.5774]]
    """
    mask = jnp.asarray(mask, jnp.float32)
    x = jnp.asarray(x, jnp.float32)
    mean = masked_mean(x, mask)
    var = masked_mean(jnp.square(x - mean), mask)
    if unbiased:
        count = jnp.sum(mask)
        var = var * count / jnp.maximum(count - 1.0, 1.0)
    whitened = (x - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return jnp.where(mask > 0, whitened, 0.0)


class RunningMoments(NamedTuple):
    """Running mean / population variance / count of a stream of scalars (float32 scalars)."""

    mean: Array
    var: Array
    count: Array


def running_moments_init() -> RunningMoments:
    """Empty running moments (count 0)."""
    zero = jnp.zeros((), jnp.float32)
    return RunningMoments(mean=zero, var=zero, count=zero)


def running_moments_update(state: RunningMoments, x: Array, mask: Array | None = None) -> RunningMoments:
    """Merge a batch into running moments (parallel-variance / Chan et al. merge). -> RunningMoments.

    With the batch's n entries (mask-1 entries of ``x``, any shape), mean μ_b, population
    variance σ_b², Δ = μ_b − μ and the running state (μ, σ², N):

        μ'  = μ + Δ·n/(N + n)
        M2  = σ²·N + σ_b²·n + Δ²·N·n/(N + n),   σ'² = M2/(N + n),   N' = N + n

    An empty batch (n = 0) leaves the state unchanged. Used for reward scaling/normalisation
    in PPO-max ("Secrets of RLHF Part I", arXiv 2307.04964).

    Example:
      >>> s = running_moments_update(running_moments_init(), jnp.array([1.0, 2.0, 3.0]))
      >>> s.mean, s.var, running_std(s)  # 2.0, 0.6667, 1.0
    """
    x = jnp.ravel(jnp.asarray(x, jnp.float32))
    mask = jnp.ones_like(x) if mask is None else jnp.ravel(jnp.asarray(mask, jnp.float32))
    n = jnp.sum(mask)
    batch_mean = masked_mean(x, mask)
    batch_var = masked_mean(jnp.square(x - batch_mean), mask)
    total = state.count + n
    safe_total = jnp.maximum(total, 1e-12)
    delta = batch_mean - state.mean
    mean = state.mean + delta * n / safe_total
    m2 = state.var * state.count + batch_var * n + jnp.square(delta) * state.count * n / safe_total
    updated = RunningMoments(mean=mean, var=m2 / safe_total, count=total)
    return jax.tree.map(lambda new, old: jnp.where(n > 0, new, old), updated, state)


def running_std(state: RunningMoments) -> Array:
    """Bessel-corrected running std sqrt(σ²·N/(N − 1)); 1.0 while N ≤ 1.

    Example:
      >>> running_std(running_moments_update(running_moments_init(), jnp.array([1.0, 2.0, 3.0])))  # 1.0
    """
    count = state.count
    corrected = state.var * count / jnp.maximum(count - 1.0, 1e-12)
    return jnp.where(count > 1, jnp.sqrt(corrected), 1.0)
