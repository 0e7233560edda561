"""Policy-gradient surrogates, KL estimators and log-prob/entropy helpers.

Every function is a pure `jax.numpy` function of float32 arrays (jittable, no Python control
flow on array values). Shapes: B sequences, T response tokens, V vocabulary entries. The
per-token losses here are *minimised*; reduce them with `jaxrl_llm.losses.aggregate`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

KL_ESTIMATORS = ("k1", "k2", "k3", "k3+", "abs")


def kl_estimate(logp: Array, logp_ref: Array, kind: str = "k3", clamp: bool = True) -> Array:
    """Per-token estimate of KL(π‖π_ref) from samples of π. [B, T], [B, T] -> [B, T].

    With d = logp − logp_ref = log(π/π_ref) (names in brackets: verl's ``kl_penalty`` kinds):

    * ``k1 = d`` ("kl"; unbiased, high variance; the KL-in-reward form of PPO-RLHF);
    * ``abs = |d|`` ("abs");
    * ``k2 = ½·d²`` ("mse"; low variance, biased);
    * ``k3 = exp(−d) + d − 1 = π_ref/π − log(π_ref/π) − 1`` ("low_var_kl"; unbiased,
      non-negative; GRPO's KL term);
    * ``k3+``: the value of k3 with the gradient of k2 (straight-through,
      ``k3 + (k2 − stop_gradient(k2))``; verl's "k3+").

    ``clamp=True`` clamps exactly where verl's ``kl_penalty_forward`` does, which is only for
    k3 (and so the value of k3+): d is clamped to [−20, 20] before the exp and the k3 value to
    [−10, 10], so one wildly off-policy token cannot produce an inf (the gradient is zero
    beyond either bound). k1, abs and k2 are never clamped, and the k2 gradient of k3+ uses
    the unclamped d (as verl's straight-through does). ``clamp=False`` disables the k3 clamps.

    Estimators: J. Schulman, "Approximating KL divergence" (2020); k3 in the loss:
    DeepSeekMath, arXiv 2402.03300.

    Example:
      >>> logp, logp_ref = jnp.log(jnp.array([0.5])), jnp.log(jnp.array([0.4]))
      >>> kl_estimate(logp, logp_ref, "k3")  # ≈ [0.023144]; k1 = abs ≈ 0.223144, k2 ≈ 0.024897
      >>> kl_estimate(jnp.array([30.0]), jnp.zeros(1), "k3")  # [10.] (k1: [30.], k2: [450.])
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"Unknown KL estimator kind={kind!r}; expected one of {KL_ESTIMATORS}.")
    d = jnp.asarray(logp, jnp.float32) - jnp.asarray(logp_ref, jnp.float32)
    if kind == "k1":
        return d
    if kind == "abs":
        return jnp.abs(d)
    k2 = 0.5 * jnp.square(d)
    if kind == "k2":
        return k2
    d3 = jnp.clip(d, -20.0, 20.0) if clamp else d
    # expm1 keeps precision for small |d|, where exp(−d) − 1 + d cancels badly in float32.
    k3 = jnp.expm1(-d3) + d3
    if clamp:
        k3 = jnp.clip(k3, -10.0, 10.0)
    if kind == "k3":
        return k3
    # k2 − stop_gradient(k2) is exactly 0, so the value is exactly k3 even where k2 is huge.
    return jax.lax.stop_gradient(k3) + (k2 - jax.lax.stop_gradient(k2))


def ppo_clip_loss(
    logp: Array,
    logp_old: Array,
    advantages: Array,
    clip_eps_low: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
) -> tuple[Array, Array]:
    """PPO clipped surrogate per token, with asymmetric and dual clipping. -> (loss, clipped), [B, T].

    With r = exp(clip(logp − logp_old, −20, 20)) and A the advantage (broadcastable to [B, T]):

        ℓ = max(−A·r, −A·clip(r, 1 − ε_lo, 1 + ε_hi))
        dual clip (c > 1, only where A < 0):  ℓ = min(ℓ, −c·A)

    The log-ratio is clamped to [−20, 20] before the exp, as verl's
    ``compute_policy_loss_vanilla`` clamps ``negative_approx_kl``: a token with a huge
    log-ratio then gives a finite loss and gradient (otherwise A = 0, e.g. every token of a
    constant GRPO group, times r = inf is NaN). Beyond the clamp the gradient w.r.t. logp is 0.

    ``clip_eps_high=None`` means ε_hi = ε_lo (symmetric PPO); ε_hi > ε_lo is DAPO's clip-higher.
    ``clipped`` is 1.0 where a clipping branch is the active one (ℓ does not depend on logp
    there, its gradient is zero): the PPO clip or, when enabled, the dual clip. The ±20
    log-ratio safety clamp is not a clipping branch and is not counted (as in verl's
    ``pg_clipfrac``). Its masked mean is the clip-fraction metric.

    Papers: PPO, arXiv 1707.06347; dual clip, arXiv 1912.09729; clip-higher (DAPO),
    arXiv 2503.14476.

    Example:
      >>> loss, clipped = ppo_clip_loss(jnp.log(jnp.array([5.0])), jnp.zeros(1), -jnp.ones(1), dual_clip=3.0)
      >>> loss, clipped  # [3.], [1.]  (A = −1, r = 5: the dual clip caps the loss at c·|A|)
    """
    if isinstance(dual_clip, int | float) and dual_clip <= 1:
        raise ValueError(f"ppo_clip_loss: dual_clip={dual_clip} must be > 1 (or None to disable).")
    if clip_eps_high is None:
        clip_eps_high = clip_eps_low
    advantages = jnp.asarray(advantages, jnp.float32)
    log_ratio = jnp.asarray(logp, jnp.float32) - jnp.asarray(logp_old, jnp.float32)
    ratio = jnp.exp(jnp.clip(log_ratio, -20.0, 20.0))
    unclipped = -advantages * ratio
    clipped_branch = -advantages * jnp.clip(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    is_clipped = clipped_branch > unclipped
    loss = jnp.where(is_clipped, clipped_branch, unclipped)
    if dual_clip is not None:
        cap = -dual_clip * advantages
        is_dual = (advantages < 0) & (loss > cap)
        loss = jnp.where(is_dual, cap, loss)
        is_clipped = is_clipped | is_dual
    return loss, is_clipped.astype(jnp.float32)


def entropy_from_logits(logits: Array) -> Array:
    """Entropy H = −Σ_v p_v log p_v of softmax(logits) along the last axis. [..., V] -> [...].

    Computed from ``log_softmax`` so large logits do not overflow.

    Example:
      >>> entropy_from_logits(jnp.zeros((2, 3, 4)))  # uniform over 4: log 4 ≈ 1.386294 everywhere
    """
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def _scaled_logits_and_lse(logits: Array, temperature: float) -> tuple[Array, Array]:
    scaled = jnp.asarray(logits, jnp.float32) / temperature
    return scaled, jax.nn.logsumexp(scaled, axis=-1)


def token_logprobs_from_logits(logits: Array, tokens: Array, temperature: float = 1.0) -> Array:
    """log softmax(logits/τ)[token] per position. [B, T, V], [B, T] -> [B, T].

    Computed as ``logits_y/τ − logsumexp(logits/τ)``: only the chosen logit is gathered, the
    [B, T, V] log-softmax is never materialised. τ must match the sampling temperature so the
    PPO ratio compares the same distribution that generated the tokens.

    Example:
      >>> token_logprobs_from_logits(jnp.zeros((1, 2, 4)), jnp.array([[0, 3]]))  # [[log 1/4] * 2]
    """
    scaled, lse = _scaled_logits_and_lse(logits, temperature)
    chosen = jnp.take_along_axis(scaled, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return chosen - lse


def full_kl(logits_p: Array, logits_q: Array, temperature: float = 1.0) -> Array:
    """KL(p ‖ q) between the full next-token distributions p = softmax(logits_p/τ) and
    q = softmax(logits_q/τ) at every position. [..., V] x2 -> [...].

        KL_t = Σ_v p_v (log p_v − log q_v)

    Exact over the vocabulary (no sampled estimate); log-probs are valid logits.
    Example: p = [0.5, 0.5], q = [0.7, 0.3] -> 0.5 log(0.5/0.7) + 0.5 log(0.5/0.3) = 0.087176.
    """
    log_p = jax.nn.log_softmax(jnp.asarray(logits_p, jnp.float32) / temperature, axis=-1)
    log_q = jax.nn.log_softmax(jnp.asarray(logits_q, jnp.float32) / temperature, axis=-1)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def logprobs_and_entropy(logits: Array, tokens: Array, temperature: float = 1.0) -> tuple[Array, Array]:
    """Token log-probs and entropies of softmax(logits/τ), sharing one logsumexp. -> ([B, T], [B, T]).

    With z = logits/τ, lse = logsumexp(z) and p = exp(z − lse):
    ``logp = z_y − lse`` and ``H = lse − Σ_v p_v z_v`` (= −Σ p log p).

    Example:
      >>> logp, ent = logprobs_and_entropy(jnp.zeros((1, 2, 4)), jnp.array([[0, 3]]))
      >>> ent  # [[1.386294, 1.386294]] (log 4)
    """
    scaled, lse = _scaled_logits_and_lse(logits, temperature)
    chosen = jnp.take_along_axis(scaled, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    probs = jnp.exp(scaled - lse[..., None])
    entropy = lse - jnp.sum(probs * scaled, axis=-1)
    return chosen - lse, entropy
