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


class GroupStats(NamedTuple):
    """`group_stats`' result: each row's group statistics, [B] each."""

    count: Array  # [B] number of real samples in each sample's group
    mean: Array  # [B] group mean of each sample's group (virtual samples included)
    sq_dev: Array  # [B] Σ_group (R − mean)² of each sample's group (virtual samples included)
    constant: Array  # [B] bool, all rewards in the group are equal (incl. size-1 groups)
    segment: Array  # [B] dense group index in [0, num_groups), in ascending group-id order
    size: Array  # [B] count + the number of virtual samples

    def std(self, unbiased: bool = True) -> Array:
        """The group std, sqrt(sq_dev / (size − 1)) (unbiased) or sqrt(sq_dev / size). [B]."""
        dof = self.size - 1.0 if unbiased else self.size
        return jnp.sqrt(self.sq_dev / jnp.maximum(dof, 1.0))


def _dense_segments(group_ids: Array) -> Array:
    """Dense re-indexing (sort-based, O(B log B)) so segment ops with num_segments=B accept
    any ids: [B] -> [B] in [0, num_groups), ascending with the id."""
    n = group_ids.shape[0]
    _, segment = jnp.unique(group_ids, size=n, return_inverse=True, fill_value=0)
    return segment.reshape(n)


def _per_row(values: Array, segment: Array, op=jax.ops.segment_sum) -> Array:
    """The group reduction `op` of `values`, gathered back to every row of the group. [B] -> [B]."""
    n = segment.shape[0]
    return op(values, segment, num_segments=n)[segment]


def group_stats(
    rewards: Array, group_ids: Array, virtual_reward: float = 1.0, virtual_count: int = 0
) -> GroupStats:
    """Per-row statistics of each row's group of `rewards` (`GroupStats`), with `virtual_count`
    extra samples of reward `virtual_reward` in the mean and squared deviations (NGRPO). [B], [B] -> [B] each.

    Example:
      >>> s = group_stats(jnp.array([1.0, 0, 0, 0]), jnp.zeros(4, jnp.int32))
      >>> s.mean, s.std()  # [.25] * 4, [.5] * 4
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    segment = _dense_segments(group_ids)
    count = _per_row(jnp.ones_like(rewards), segment)
    size = count + virtual_count
    mean = (_per_row(rewards, segment) + virtual_count * virtual_reward) / size
    sq_dev = _per_row(jnp.square(rewards - mean), segment) + virtual_count * jnp.square(virtual_reward - mean)
    high, low = (
        _per_row(rewards, segment, jax.ops.segment_max),
        _per_row(rewards, segment, jax.ops.segment_min),
    )
    constant = high == low
    if virtual_count:
        constant = constant & (high == virtual_reward)
    return GroupStats(count, mean, sq_dev, constant, segment, size)


def group_advantages(
    rewards: Array,
    group_ids: Array,
    std: str = "unbiased",
    eps: float = 1e-6,
    virtual_reward: float = 1.0,
    virtual_count: int = 0,
) -> Array:
    """Group-relative advantages (GRPO). [B], [B] int -> [B].

        A_i = (R_i − mean_g) / (std_g + eps)      std = 'unbiased' (N − 1, verl/TRL) or 'population' (N)
        A_i =  R_i − mean_g                        std = 'none' (Dr.GRPO)

    Degenerate groups follow verl: a single-sample group has mean 0 and std 1, so A = R (for
    every ``std`` mode); a group whose rewards are all equal gets A = 0 exactly (rather than
    float32 round-off divided by eps).

    ``virtual_count`` = k > 0 adds k virtual samples of reward ``virtual_reward`` (R_max) to
    every group's statistics, not to its rows (NGRPO, arXiv 2509.18851,
    ``compute_ngrpo_outcome_advantage``): mean_g and std_g are taken over R ∪ {R_max}×k, so an
    all-wrong group gets negative advantages instead of 0; a group whose real rewards all
    equal R_max is constant and gets 0; single-sample groups keep A = R, as in that code.

    Papers: GRPO (DeepSeekMath), arXiv 2402.03300; Dr.GRPO, arXiv 2503.20783.

    Example:
      >>> group_advantages(jnp.array([1.0, 0, 0, 0]), jnp.zeros(4, jnp.int32))  # [1.5, −0.5, −0.5, −0.5]
      >>> group_advantages(jnp.array([1.0, 0, 0, 0]), jnp.zeros(4, jnp.int32), std="none")  # [.75, −.25, ...]
      >>> group_advantages(jnp.zeros(8), jnp.zeros(8, jnp.int32), virtual_count=1)  # −1/3 each (μ=1/9, σ=1/3)
    """
    if std not in GROUP_STD_MODES:
        raise ValueError(f"Unknown group std mode std={std!r}; expected one of {GROUP_STD_MODES}.")
    rewards = jnp.asarray(rewards, jnp.float32)
    stats = group_stats(rewards, group_ids, virtual_reward, virtual_count)
    centred = rewards - stats.mean
    if std == "none":
        advantages = centred
    else:
        advantages = centred / (stats.std(std == "unbiased") + eps)
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
    stats = group_stats(rewards, group_ids)
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
    stats = group_stats(rewards, group_ids)
    centred = jnp.where(stats.constant, 0.0, rewards - stats.mean)
    return jnp.where(stats.count == 1, rewards, centred)


def zero_variance_groups(rewards: Array, group_ids: Array) -> Array:
    """Fraction of groups whose rewards are all equal (each group counted once). [B], [B] -> scalar.

    These groups carry no group-relative learning signal (DAPO's dynamic sampling drops
    them, arXiv 2503.14476). Single-sample groups count as zero-variance.

    Example:
      >>> zero_variance_groups(jnp.array([1.0, 1, 0, 1]), jnp.array([0, 0, 1, 1]))  # 0.5
    """
    stats = group_stats(rewards, group_ids)
    n = stats.segment.shape[0]
    present = jax.ops.segment_max(jnp.ones(n, jnp.float32), stats.segment, num_segments=n) > 0
    constant = jax.ops.segment_min(stats.constant.astype(jnp.float32), stats.segment, num_segments=n) > 0
    return jnp.sum(present & constant) / jnp.maximum(jnp.sum(present), 1)


def all_correct_groups(
    rewards: Array, group_ids: Array, threshold: float = 0.5, inclusive: bool = False
) -> Array:
    """Rows whose whole group is correct: every reward > ``threshold`` (≥ with ``inclusive``).
    [B], [B] -> bool [B].

    NGRPO's ``filter_strategy=all_correct`` drops these groups (arXiv 2509.18851).

    Example:
      >>> all_correct_groups(jnp.array([1.0, 1, 1, 0]), jnp.array([0, 0, 1, 1]))  # [True, True, False, False]
    """
    lowest = _per_row(jnp.asarray(rewards, jnp.float32), _dense_segments(group_ids), jax.ops.segment_min)
    return lowest >= threshold if inclusive else lowest > threshold


def valid_group_scale(rewards: Array, group_ids: Array, mode: str = "valid_groups") -> Array:
    """GPG's batch-level gradient correction α (arXiv 2504.02546). [B], [B] -> scalar.

    * ``valid_groups`` (paper, α = B / (B − M); official AMAP-ML/GPG ``gpg_trainer.py``, which
      divides the loss by ``inverse_alpha`` = valid groups / groups): α = B / B_valid, with
      B_valid the rows of the groups whose rewards are not all equal (a zero-variance group
      has zero advantages, so it adds nothing to the gradient but dilutes the batch mean).
      Rows and groups give the same ratio when every group has the same size.
    * ``nonzero_rewards`` (verl ``compute_gpg_outcome_advantage``): α = B / #{i: R_i ≠ 0}.
    * ``none``: α = 1.

    The denominator is clamped to ≥ 1 (a batch with no valid group has zero advantages).

    Example:
      >>> valid_group_scale(jnp.array([1.0, 0, 1, 1]), jnp.array([0, 0, 1, 1]))  # 4 / 2 = 2.0
    """
    modes = ("valid_groups", "nonzero_rewards", "none")
    if mode not in modes:
        raise ValueError(f"valid_group_scale: unknown mode={mode!r}; expected one of {modes}")
    rewards = jnp.asarray(rewards, jnp.float32)
    if mode == "none":
        return jnp.ones((), jnp.float32)
    if mode == "nonzero_rewards":
        valid = rewards != 0
    else:
        valid = ~group_stats(rewards, group_ids).constant
    return rewards.shape[0] / jnp.maximum(jnp.sum(valid), 1.0)


def overlong_penalty(
    lengths: Array, max_len: int, cache_len: int, factor: float = 1.0, hard_beyond_max: bool = False
) -> Array:
    """DAPO's soft overlong punishment (arXiv 2503.14476), added to the reward. [B] -> [B].

        R_len = min(−(|y| − L_exp) / L_cache · factor, 0),   L_exp = L_max − L_cache

    0 up to L_exp, then linear down to −factor at L_max, as verl's DAPO reward manager
    (``verl/workers/reward_manager/dapo.py``), which keeps the line going beyond L_max (it never
    sees such lengths: L_max is its generation limit). ``hard_beyond_max`` is the paper's
    Eq. 13: −factor (−1) for every |y| > L_max.

    Example (the spec's goldens, L_max = 20480, L_cache = 4096):
      >>> overlong_penalty(jnp.array([16384, 18432, 20480]), 20480, 4096)  # [0, −0.5, −1]
    """
    lengths = jnp.asarray(lengths, jnp.float32)
    expected = max_len - cache_len
    penalty = jnp.minimum(-(lengths - expected) / cache_len * factor, 0.0)
    if hard_beyond_max:
        penalty = jnp.where(lengths > max_len, -factor, penalty)
    return penalty


def length_rewards(lengths: Array, group_ids: Array) -> Array:
    """Kimi-1.5 length reward within each group (arXiv 2501.12599 §2.3.3). [B], [B] -> [B].

        len_i = 0.5 − (L_i − L_min) / (L_max − L_min),   L_min, L_max over the row's group

    0 for every row of a group whose lengths are all equal.

    Example:
      >>> length_rewards(jnp.array([100, 200, 300]), jnp.zeros(3, jnp.int32))  # [0.5, 0, −0.5]
    """
    lengths = jnp.asarray(lengths, jnp.float32)
    segment = _dense_segments(group_ids)
    low = _per_row(lengths, segment, jax.ops.segment_min)
    high = _per_row(lengths, segment, jax.ops.segment_max)
    span = high - low
    return jnp.where(span > 0, 0.5 - (lengths - low) / jnp.where(span > 0, span, 1.0), 0.0)


def top_fraction_groups(scores: Array, group_ids: Array, fraction: float) -> Array:
    """Rows whose group is among the top ``fraction`` of the batch's groups by mean score.
    [B], [B] -> bool [B].

    round(fraction · num_groups) groups are selected (half rounds up); ties are broken by
    the smaller group id. Used by GRPO-λ (arXiv 2505.18086) with the correctness ratio.

    Example:
      >>> top_fraction_groups(jnp.array([1.0, 0, 0, 0, 1, 1]), jnp.array([0, 0, 1, 1, 2, 2]), 1 / 3)
      >>> # [False, False, False, False, True, True]  (group 2 has the highest mean)
    """
    scores = jnp.asarray(scores, jnp.float32)
    n = scores.shape[0]
    segment = _dense_segments(group_ids)
    count = jax.ops.segment_sum(jnp.ones(n, jnp.float32), segment, num_segments=n)
    present = count > 0
    mean = jax.ops.segment_sum(scores, segment, num_segments=n) / jnp.maximum(count, 1.0)
    index = jnp.arange(n)
    ahead = present[None, :] & (
        (mean[None, :] > mean[:, None])
        | ((mean[None, :] == mean[:, None]) & (index[None, :] < index[:, None]))
    )
    rank = jnp.sum(ahead, axis=1)  # [n] groups ranked before each group
    wanted = jnp.floor(fraction * jnp.sum(present) + 0.5)
    return (rank < wanted)[segment]


def grpo_lambda_rewards(
    rewards: Array,
    lengths: Array,
    group_ids: Array,
    fraction: float,
    correct_threshold: float = 0.5,
    penalise_unsolved: bool = False,
) -> tuple[Array, Array]:
    """GRPO-λ reward switch (arXiv 2505.18086; reward form assumed). [B] x3 -> (rewards, selected) [B].

    c_i = 1[R_i > threshold]. The top-``fraction`` groups by correctness ratio mean_g(c)
    (`top_fraction_groups`) get the Kimi-1.5 length-penalised reward with
    len_i = `length_rewards` (within the group):

        correct: 1 + len_i      incorrect: min(0, len_i)

    every other group the plain 0/1 reward c_i. penalise_unsolved=False (default, [assumed]):
    a group with no correct answer is never selected, even when it ranks in the top fraction
    by ties (more than half the groups unsolved): the length penalty is for questions the
    policy already solves, and on all-wrong groups it only rewards shorter wrong answers (on
    Countdown at 29% accuracy, True drove the policy to empty responses within 50 steps).

    Example:
      >>> r, sel = grpo_lambda_rewards(jnp.ones(3), jnp.array([100, 200, 300]), jnp.zeros(3, jnp.int32), 1.0)
      >>> r  # [1.5, 1.0, 0.5]
    """
    correct = (jnp.asarray(rewards, jnp.float32) > correct_threshold).astype(jnp.float32)
    selected = top_fraction_groups(correct, group_ids, fraction)
    if not penalise_unsolved:
        selected = selected & (group_stats(correct, group_ids).mean > 0)
    length = length_rewards(lengths, group_ids)
    shaped = jnp.where(correct > 0, 1.0 + length, jnp.minimum(0.0, length))
    return jnp.where(selected, shaped, correct), selected


def prompt_advantages(rewards: Array, group_ids: Array, eps: float = 1e-6) -> Array:
    """Prompt-level advantages standardised across the batch's groups (COPO's global term,
    arXiv 2508.04138; form assumed). [B], [B] -> [B].

        g_q = mean_{i∈q} R_i,   A^g_q = (g_q − mean_q g) / (std_q g + eps)

    each group counted once; std is unbiased over the groups (0 with fewer than 2 groups or
    when every g_q is equal, exactly). Every row of q gets A^g_q.

    Example (two prompts with accuracies 1 and 0):
      >>> prompt_advantages(jnp.array([1.0, 1, 0, 0]), jnp.array([0, 0, 1, 1]))  # [.7071, .7071, −.7071, −.7071]
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    n = rewards.shape[0]
    stats = group_stats(rewards, group_ids)
    count = jax.ops.segment_sum(jnp.ones(n, jnp.float32), stats.segment, num_segments=n)
    present = count > 0
    means = jax.ops.segment_sum(rewards, stats.segment, num_segments=n) / jnp.maximum(count, 1.0)
    groups = jnp.sum(present)
    centre = jnp.sum(jnp.where(present, means, 0.0)) / jnp.maximum(groups, 1.0)
    var = jnp.sum(jnp.where(present, jnp.square(means - centre), 0.0)) / jnp.maximum(groups - 1.0, 1.0)
    spread = jnp.max(jnp.where(present, means, -jnp.inf)) - jnp.min(jnp.where(present, means, jnp.inf))
    advantages = (stats.mean - centre) / (jnp.sqrt(var) + eps)
    return jnp.where((groups < 2) | (spread == 0), 0.0, advantages)


def outcome_entropy(rewards: Array, group_ids: Array) -> Array:
    """Entropy of the outcome classes (distinct reward values) within each group. [B], [B] -> [B].

        H_q = −Σ_k p_k log p_k,   p_k = share of q's rows whose reward is the k-th value

    computed as H_q = mean_{i∈q} −log p(R_i) with a pairwise [B, B] comparison. 0 for a group
    whose rewards are all equal; log 2 for a half-correct binary group. COPO's consistency
    measure (arXiv 2508.04138) over answers; here over reward values (correctness classes for
    a binary verifier).

    Example:
      >>> outcome_entropy(jnp.array([1.0, 0, 1, 1]), jnp.array([0, 0, 1, 1]))  # [0.6931, 0.6931, 0, 0]
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    group_ids = jnp.asarray(group_ids)
    same_group = (group_ids[:, None] == group_ids[None, :]).astype(jnp.float32)
    same_class = same_group * (rewards[:, None] == rewards[None, :])
    size = jnp.sum(same_group, axis=1)
    surprise = -jnp.log(jnp.sum(same_class, axis=1) / size)  # −log p(R_i), [B]
    return same_group @ surprise / size


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


GROUP_BASELINES = ("mean", "logavgexp")
PF_PPO_FILTERS = ("pow", "max_min", "max_random", "bon", "br", "bw")


def adaptive_kl_coef(coef: Array, kl: Array, target: float, horizon: float, n_steps: float) -> Array:
    """One step of the adaptive KL controller (Ziegler et al. 2019, arXiv 1909.08593,
    openai/lm-human-preferences `AdaptiveKLController`). Scalars -> scalar.

        e = clip(KL / KL_target − 1, −0.2, 0.2),   β ← β·(1 + e·n_steps / horizon)

    ``kl`` is the measured KL of the batch (the controller's unit: the mean over rows of the
    per-sequence summed KL), ``n_steps`` the number of samples it was measured on.

    Example:
      >>> adaptive_kl_coef(0.1, kl=9.0, target=6.0, horizon=10000, n_steps=256)  # 0.1 * 1.00512
    """
    error = jnp.clip(jnp.asarray(kl, jnp.float32) / target - 1.0, -0.2, 0.2)
    return jnp.asarray(coef, jnp.float32) * (1.0 + error * n_steps / horizon)


def group_baseline_advantages(
    rewards: Array, group_ids: Array, baseline: str = "mean", tau: float = 1.0, shift: float = 0.0
) -> Array:
    """Critic-free advantages against a group baseline without std scaling. [B], [B] -> [B].

        A_i = R_i − (b_g + shift),   b_g = mean_g R                         (baseline='mean')
                                     b_g = τ·log( (1/G) Σ_{j∈g} exp(R_j/τ) )   (baseline='logavgexp')

    As Trinity-RFT's OPMD advantage (``opmd_baseline``; arXiv 2509.24203) a single-sample group
    has b = 0 (so A = R − shift); a constant group gets R − b = 0 exactly. ``shift`` < 0 lowers
    the baseline: AsymRE's ``baseline_shift`` (−0.1), equivalent to a −τ·log π regulariser.

    Example:
      >>> group_baseline_advantages(jnp.array([1.0, 0, 0, 0]), jnp.zeros(4, jnp.int32), shift=-0.1)
      >>> # [0.85, −0.15, −0.15, −0.15] (AsymRE);  baseline='logavgexp', τ=1: b = ln((e + 3)/4) = 0.357374
    """
    if baseline not in GROUP_BASELINES:
        raise ValueError(f"Unknown group baseline={baseline!r}; expected one of {GROUP_BASELINES}.")
    rewards = jnp.asarray(rewards, jnp.float32)
    n = rewards.shape[0]
    seg = _dense_segments(group_ids)
    count = jax.ops.segment_sum(jnp.ones_like(rewards), seg, num_segments=n)[seg]
    if baseline == "mean":
        centred = group_advantages(rewards, group_ids, std="none")  # single groups: R
    else:
        z = rewards / tau
        top = jax.ops.segment_max(z, seg, num_segments=n)[seg]
        total = jax.ops.segment_sum(jnp.exp(z - top), seg, num_segments=n)[seg]
        b = tau * (top + jnp.log(total) - jnp.log(count))
        # Exactly 0 for constant groups (b equals R there up to round-off) and b = 0 for singletons.
        constant = jax.ops.segment_min(z, seg, num_segments=n)[seg] == top
        centred = jnp.where(constant, 0.0, rewards - b)
        centred = jnp.where(count == 1, rewards, centred)
    return centred - shift


def pf_ppo_weights(rewards: Array, method: str = "pow", weight_pow: float = 2.0) -> Array:
    """PF-PPO resampling weights over the whole batch (verl ``compute_pf_ppo_reweight_data``;
    arXiv 2409.06957). [B] -> [B], unnormalised, each + 1e-8.

        'pow':        |R|^k
        'max_min':    1 where R is the batch max or min, else 0
        'max_random': 0.4 where R is the batch max, else 0.1

    Example:
      >>> pf_ppo_weights(jnp.array([0.9, 0.2, 0.5, 0.1]))  # ∝ [0.81, 0.04, 0.25, 0.01]
    """
    r = jnp.asarray(rewards, jnp.float32)
    if method == "pow":
        w = jnp.power(jnp.abs(r), weight_pow)
    elif method == "max_min":
        w = jnp.where((r == jnp.max(r)) | (r == jnp.min(r)), 1.0, 0.0)
    elif method == "max_random":
        w = jnp.where(r == jnp.max(r), 0.4, 0.1)
    else:
        raise ValueError(
            f"Unknown PF-PPO reweight method={method!r}; expected 'pow', 'max_min' or 'max_random'."
        )
    return jnp.maximum(w + 1e-8, 1e-8)


def pf_ppo_subset(rewards: Array, group_ids: Array, rule: str, key: Array | None = None) -> Array:
    """The PF-PPO paper's per-prompt subsets (arXiv 2409.06957). [B], [B] -> [B] float keep mask.

        'bon': the best response of each group
        'bw':  the best and the worst (of the others)
        'br':  the best and one other chosen uniformly at random (needs ``key``)

    Ties: the earlier row is the best, the later row the worst. A single-row group keeps its
    row. Pairwise same-group comparisons ([B, B]).

    Example:
      >>> r, ids = jnp.array([0.9, 0.2, 0.5, 0.1]), jnp.zeros(4, jnp.int32)
      >>> pf_ppo_subset(r, ids, "bon"), pf_ppo_subset(r, ids, "bw")  # [1, 0, 0, 0], [1, 0, 0, 1]
    """
    if rule not in ("bon", "br", "bw"):
        raise ValueError(f"Unknown PF-PPO subset rule={rule!r}; expected 'bon', 'br' or 'bw'.")
    r = jnp.asarray(rewards, jnp.float32)
    idx = jnp.arange(r.shape[0])
    same = group_ids[:, None] == group_ids[None, :]
    earlier = idx[None, :] < idx[:, None]  # [i, j]: j before i
    beats = (r[None, :] > r[:, None]) | ((r[None, :] == r[:, None]) & earlier)
    best = ~jnp.any(same & beats, axis=1)
    if rule == "bon":
        return best.astype(jnp.float32)
    if rule == "bw":
        score = -r  # the lowest reward wins; ties: the later row
        later_wins = ~earlier & (idx[None, :] != idx[:, None])
    else:
        if key is None:
            raise ValueError("pf_ppo_subset(rule='br') needs a PRNG key")
        score = jax.random.uniform(key, r.shape)
        later_wins = earlier
    others = same & ~best[None, :]
    second_beats = (score[None, :] > score[:, None]) | ((score[None, :] == score[:, None]) & later_wins)
    second = ~best & ~jnp.any(others & second_beats, axis=1)
    return (best | second).astype(jnp.float32)
