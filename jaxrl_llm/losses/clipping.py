"""Clipping and token-selection pieces: BAPO's bound search, DCPO's per-token bounds and smooth
advantages, CISPO, SAPO, Clip-Cov / KL-Cov token selection and the top-entropy token mask.

Pure `jax.numpy` functions of float32 arrays (jittable, no Python control flow on array values;
BAPO's candidate path is built in Python from hyper-parameters, at trace time). Shapes: B
sequences, T response tokens. Per-token losses are *minimised*; reduce them with
`jaxrl_llm.losses.aggregate` (or `only_token_mean`). Every ratio r = exp(logp − logp_old) is
computed from the log-ratio clamped to [−20, 20], as in `ppo_clip_loss`, so a wildly off-policy
token gives a finite loss and gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrl_llm.losses.aggregation import aggregate
from jaxrl_llm.losses.policy import kl_estimate
from jaxrl_llm.transforms.estimators import group_stats, masked_mean

Array = jax.Array

BAPO_RULES = ("paper", "code")


def _ratio(logp: Array, logp_old: Array) -> Array:
    log_ratio = jnp.asarray(logp, jnp.float32) - jnp.asarray(logp_old, jnp.float32)
    return jnp.exp(jnp.clip(log_ratio, -20.0, 20.0))


def only_token_mean(token_loss: Array, mask: Array) -> Array:
    """DCPO's "only-token-mean" (OTM) aggregation: Σ_i (Σ_t m ℓ) / L_i, each response's token
    mean summed over the responses, no batch averaging (DCPO README). [B, T] -> scalar.

    A sum over rows, so it sums correctly over micro-batches without any denominator.

    Example (losses seq1=[2], seq2=[1, 1, 1]):
      >>> only_token_mean(jnp.array([[2.0, 0, 0], [1, 1, 1]]), jnp.array([[1, 0, 0], [1, 1, 1]]))  # 3.0
    """
    return aggregate(token_loss, mask, "seq_mean_token_mean", num_seqs=1.0)


# ------------------------------------------------------------------------------------------ BAPO


class BapoSearch(NamedTuple):
    """BAPO's finite search over clip bounds (static Python values, built by `bapo_search_path`).

    c_lows, c_highs: the candidate lower / upper ratio bounds (absolute bounds, c_low < 1 < c_high).
    path: (index into c_lows, index into c_highs) of each candidate pair, in search order.
    """

    c_lows: tuple[float, ...]
    c_highs: tuple[float, ...]
    path: tuple[tuple[int, int], ...]


class BapoBounds(NamedTuple):
    """The bounds the search chose. All scalars."""

    c_low: Array
    c_high: Array
    target_met: Array  # 1.0 if the balance reached the target at the chosen bounds
    balance: Array  # the rule's measure (paper: ρ = P/(P+N); code: P/N, inf when N = 0)
    positive_share: Array  # P / (P + N) for either rule (1 when P + N = 0)


def _steps(start: float, stop: float, step: float, tol: float) -> list[float]:
    """start, start + step, ... while ≤ stop (+tol), rounded so repeated sums do not drift."""
    values = [start]
    while step > 0 and values[-1] + step <= stop + tol:
        values.append(round(start + len(values) * step, 12))
    return values


def _clamped_steps(start: float, stop: float, step: float, tol: float) -> list[float]:
    """The released code's walk: c <- min(c + step, stop) while c < stop."""
    values = [start]
    while step > 0 and values[-1] < stop - tol:
        values.append(min(round(start + len(values) * step, 12), stop))
    return values


def bapo_search_path(
    rule: str,
    c_low_range: tuple[float, float],
    c_high_range: tuple[float, float],
    c_low_step: float,
    c_high_step: float,
    tol: float = 1e-9,
) -> BapoSearch:
    """The candidate bound pairs BAPO's search visits, in order (static; Python floats).

    rule='paper' (Alg. 1, arXiv 2510.18927): start at (a⁻, a⁺); while c_low + δ2 ≤ b⁻: raise
      c_high by δ1 if c_high + δ1 ≤ b⁺, else raise c_low by δ2. (Comparisons with tolerance
      `tol`, so 1.2 + 36·0.05 still counts as ≤ 3.0.)
    rule='code' (github.com/WooooDyy/BAPO `recipe/bapo/policy_loss.py::compute_policy_loss_bapo`):
      raise c_low by its step (clamped at its max) until the max, then c_high likewise.

    The search stops at the first pair whose balance meets the target (`bapo_select`).

    Example: rule 'code', ranges (0.6, 0.8), (1.2, 2.0), steps 0.05: c_lows 0.6 .. 0.8 (5),
    c_highs 1.2 .. 2.0 (17), path (0,0), (1,0), .., (4,0), (4,1), .., (4,16).
    """
    if rule not in BAPO_RULES:
        raise ValueError(f"Unknown BAPO rule={rule!r}; expected one of {BAPO_RULES}.")
    (lo_start, lo_stop), (hi_start, hi_stop) = c_low_range, c_high_range
    if rule == "paper":
        lows = _steps(lo_start, lo_stop, c_low_step, tol)
        highs = _steps(hi_start, hi_stop, c_high_step, tol)
        path, i, j = [(0, 0)], 0, 0
        while i + 1 < len(lows):  # c_low + δ2 ≤ b⁻ guards every step, also the c_high ones
            i, j = (i, j + 1) if j + 1 < len(highs) else (i + 1, j)
            path.append((i, j))
    else:
        lows = _clamped_steps(lo_start, lo_stop, c_low_step, tol)
        highs = _clamped_steps(hi_start, hi_stop, c_high_step, tol)
        path = [(i, 0) for i in range(len(lows))] + [(len(lows) - 1, j) for j in range(1, len(highs))]
    return BapoSearch(tuple(lows), tuple(highs), tuple(path))


def bapo_contributions(
    logp: Array,
    logp_old: Array,
    advantages: Array,
    weights: Array,
    c_lows: tuple[float, ...],
    c_highs: tuple[float, ...],
) -> tuple[Array, Array]:
    """Positive and negative contributions of BAPO's balance, for every candidate bound.
    [B, T] x 4 -> (pos [len(c_highs)], neg [len(c_lows)]).

        P(c_high) = Σ_{A>0} w·A·min(r, c_high)          N(c_low) = Σ_{A<0} w·|A|·max(r, c_low)

    These are the magnitudes of the clipped PPO objective min(r·A, clip(r, c_low, c_high)·A) of
    each sign (for A > 0 it equals A·min(r, c_high), for A < 0 it equals A·max(r, c_low)), so
    the paper's ρ (Eq. 8, read as a ratio of magnitudes) is P/(P+N) and the code's balance P/N.
    P depends on c_high only and N on c_low only; both are sums over tokens, hence linear in the
    rows: `Algorithm.statistics` totals them over the mini-batch. `weights` [B, T] is 0 off the
    loss mask; the paper weighs by π_rollout(y_t) = exp(logp_behav), the code by 1.

    Example (weights 1, on-policy r = 1.5, 1, 1 with A = +1, −1, −1):
      >>> bapo_contributions(jnp.log(jnp.array([[1.5, 1, 1]])), jnp.zeros((1, 3)),
      ...                    jnp.array([[1.0, -1, -1]]), jnp.ones((1, 3)), (0.6,), (1.2, 1.25))
      >>> # (pos [1.2, 1.25], neg [2.0])
    """
    ratio = _ratio(logp, logp_old)[..., None]
    adv = jnp.asarray(advantages, jnp.float32)[..., None]
    w = jnp.asarray(weights, jnp.float32)[..., None]
    pos = jnp.where(adv > 0, w * adv * jnp.minimum(ratio, jnp.asarray(c_highs, jnp.float32)), 0.0)
    neg = jnp.where(adv < 0, -w * adv * jnp.maximum(ratio, jnp.asarray(c_lows, jnp.float32)), 0.0)
    return jnp.sum(pos, axis=(0, 1)), jnp.sum(neg, axis=(0, 1))


def bapo_select(
    pos: Array, neg: Array, search: BapoSearch, rule: str, target: float, eps: float = 1e-8
) -> BapoBounds:
    """The first pair on `search.path` whose balance meets `target`, else the path's last pair.

    rule 'paper': ρ = P/(P+N) ≥ ρ0 (ρ = 1 when P + N = 0: nothing to balance).
    rule 'code':  P/(N + eps) ≥ target (inf when N = 0), eps = 1e-8 as in the released config.

    Example (the spec's golden, weights 1, tokens (r, A) = (1.5, +1), (1, −1), (1, −1)): the
    paper rule from (0.6, 1.2) visits ρ = 1.2/3.2 = 0.375, 0.3846, 0.3939, 0.40299 and stops at
    (0.6, 1.35); the code rule walks c_low to 0.8, then c_high to 2.0, ending at P/N = 0.75 < 1.
    """
    lows = jnp.asarray(search.c_lows, jnp.float32)
    highs = jnp.asarray(search.c_highs, jnp.float32)
    li = jnp.asarray([i for i, _ in search.path])
    hj = jnp.asarray([j for _, j in search.path])
    p, n = pos[hj], neg[li]
    total = p + n
    share = jnp.where(total > 0, p / jnp.where(total > 0, total, 1.0), 1.0)
    balance = share if rule == "paper" else jnp.where(n > 0, p / (n + eps), jnp.inf)
    met = balance >= target
    k = jnp.where(jnp.any(met), jnp.argmax(met), len(search.path) - 1)
    return BapoBounds(lows[li[k]], highs[hj[k]], met[k].astype(jnp.float32), balance[k], share[k])


# ------------------------------------------------------------------------------------------ DCPO


def dcpo_bounds(
    logp_old: Array, clip_eps_low: float = 0.2, clip_eps_high: float = 0.28, clip_ratio_c: float = 10.0
) -> tuple[Array, Array]:
    """DCPO's dynamic-adaptive ratio bounds per token, from |(r − 1)·q| ≤ ε with q the old
    probability (arXiv 2509.02333; lime-RL/DCPO `core_algos.py::get_clip_low_high`). [B, T] -> 2 x [B, T].

        q = exp(logp_old)
        r_lo = ½ + ½·√max(1 − 4ε_lo/q, 0)
        r_hi = min(½ + ½·√(1 + 4ε_hi/q), C),   C = max(clip_ratio_c, 10)

    Rare tokens get wide bounds (r_lo → ½, r_hi → C), near-certain ones narrow bounds.

    Example (ε_lo, ε_hi) = (0.16, 0.2): q = 0.9 -> [0.76874, 1.18718]; q = 0.5 -> [0.5, 1.30623];
    q = 0.01 -> [0.5, 5.0].
    """
    inv_q = jnp.exp(jnp.minimum(-jnp.asarray(logp_old, jnp.float32), 80.0))  # 1/q, finite for q → 0
    low = 0.5 + 0.5 * jnp.sqrt(jnp.maximum(1.0 - 4.0 * clip_eps_low * inv_q, 0.0))
    high = 0.5 + 0.5 * jnp.sqrt(1.0 + 4.0 * clip_eps_high * inv_q)
    return low, jnp.minimum(high, jnp.maximum(clip_ratio_c, 10.0))


class SmoothAdvantages(NamedTuple):
    """`dcpo_smooth_advantages`' result, per row [B]."""

    advantages: Array
    mean: Array  # cumulative mean μ_tot (the prompt's new state)
    std: Array  # cumulative std σ_tot


def dcpo_smooth_advantages(
    rewards: Array,
    group_ids: Array,
    old_mean: Array,
    old_std: Array,
    times: Array,
    old_scale: float = 1.0,
    std_eps: float = 1e-6,
) -> SmoothAdvantages:
    """DCPO's smooth advantage standardisation (SAS). [B] x 5 -> `SmoothAdvantages` [B].

    For a prompt at its i-th appearance (i = times + 1; `old_mean`, `old_std`, `times` are the
    prompt's stored state, read per row): (μ_new, σ_new) are this step's group stats (unbiased
    std); the cumulative stats weigh each past step as one unit:

        i = 1:  μ_tot, σ_tot = μ_new, σ_new
        else:   μ_tot = ((i−1)·μ_old + μ_new) / i
                σ²_tot = [(i−1)·σ²_old + σ²_new + (i−1)/i·(μ_new − μ_old)²] / i
        A_new = (R − μ_new)/σ_new,  A_tot = (R − μ_tot)/σ_tot   (0 where σ ≤ std_eps)
        SA_new = (i−1)/i·A_new + A_tot/i,   SA_tot = A_new/i + (i−1)/i·A_tot
        A = the one of SA_new, SA_tot with the smaller |·|

    `old_scale` multiplies μ_old and σ_old (the code's `user_old_mean_ratio`, default 1). A
    group whose rewards are all equal has σ_new = 0 exactly, so it still gets A = A_tot/i.
    Source: arXiv 2509.02333 §SAS; lime-RL/DCPO `core_algos.py::compute_dcpo_outcome_advantage`,
    `get_mean_std`.

    Example: step 1 group [1, 0, 0, 0] (μ = .25, σ = .5); step 2, same prompt, [0, 0, 0, 0]:
    μ_tot = 0.125, σ_tot = 0.375, A_tot = −1/3, A_new = 0 -> A = −1/6 for every response.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    stats = group_stats(rewards, group_ids)
    mu_new = jnp.where(stats.constant, rewards, stats.mean)
    sd_new = jnp.where(stats.constant, 0.0, stats.std())
    i = jnp.asarray(times, jnp.float32) + 1.0
    mu_old = jnp.asarray(old_mean, jnp.float32) * old_scale
    sd_old = jnp.asarray(old_std, jnp.float32) * old_scale
    first = i == 1.0
    mu_tot = jnp.where(first, mu_new, ((i - 1.0) * mu_old + mu_new) / i)
    var_tot = ((i - 1.0) * sd_old**2 + sd_new**2 + (i - 1.0) / i * (mu_new - mu_old) ** 2) / i
    sd_tot = jnp.where(first, sd_new, jnp.sqrt(var_tot))

    def standardise(mu, sd):
        return jnp.where(sd > std_eps, (rewards - mu) / jnp.where(sd > std_eps, sd, 1.0), 0.0)

    a_new, a_tot = standardise(mu_new, sd_new), standardise(mu_tot, sd_tot)
    sa_new = (i - 1.0) / i * a_new + a_tot / i
    sa_tot = a_new / i + (i - 1.0) / i * a_tot
    return SmoothAdvantages(jnp.where(jnp.abs(sa_new) < jnp.abs(sa_tot), sa_new, sa_tot), mu_tot, sd_tot)


# ----------------------------------------------------------------------------------- CISPO, SAPO


def cispo_loss(
    logp: Array,
    logp_old: Array,
    advantages: Array,
    clip_eps_low: float | None = None,
    clip_eps_high: float = 4.0,
) -> tuple[Array, Array]:
    """CISPO per-token loss: REINFORCE weighted by a clipped, stop-gradient IS weight
    (MiniMax-M1, arXiv 2506.13585, Eq. 4). -> (loss, clipped), [B, T].

        ŵ = clip(r, 1 − ε_lo, 1 + ε_hi),   ℓ = −sg(ŵ)·A·logp,   ∂ℓ/∂logp = −ŵ·A

    Every token keeps a gradient (no token is dropped as in PPO's clip); `clipped` marks where
    ŵ ≠ r. `clip_eps_low=None` imposes no lower bound (the paper: "we did not impose a lower
    bound ... only tuned ε_high"). Code read: verl `compute_policy_loss_cispo` (bounds 1 ± ε),
    TRL `loss_type="cispo"` (upper bound ε_max = 5, i.e. ε_hi = 4 here, no lower bound).

    Example: logp = log 0.3, r = 1.5, A = 1, ε_hi = 0.28 -> ŵ = 1.28, ℓ = −1.28·log 0.3 = 1.541085,
    ∂ℓ/∂logp = −1.28.
    """
    ratio = jax.lax.stop_gradient(_ratio(logp, logp_old))
    low = 0.0 if clip_eps_low is None else 1.0 - clip_eps_low
    weight = jnp.clip(ratio, low, 1.0 + clip_eps_high)
    loss = -weight * jnp.asarray(advantages, jnp.float32) * jnp.asarray(logp, jnp.float32)
    return loss, (weight != ratio).astype(jnp.float32)


def sapo_loss(
    logp: Array, logp_old: Array, advantages: Array, tau_pos: float = 1.0, tau_neg: float = 1.05
) -> tuple[Array, Array]:
    """SAPO per-token loss: a soft, temperature-controlled gate instead of the hard clip
    (Soft Adaptive Policy Optimization, arXiv 2511.20347). -> (loss, gate), [B, T].

        τ = τ_pos if A > 0 else τ_neg,   f(r) = σ(τ·(r − 1))·4/τ,   ℓ = −f(r)·A

    ∂f/∂r = 4·σ(1 − σ) is 1 at r = 1 (the on-policy gradient equals the policy gradient's) and
    decays smoothly off-policy, faster for the larger τ_neg (negative tokens). Defaults
    τ_pos = 1.0, τ_neg = 1.05 (the paper's, also verl `compute_policy_loss_sapo` and TRL
    `sapo_temperature_pos/neg`).

    Example: r = 1.5, A = −1, τ_neg = 1.05 -> f = σ(0.525)·4/1.05 = 2.393585, ℓ = 2.393585,
    ∂ℓ/∂logp = −A·4·σ(1 − σ)·r = 1.401210.
    """
    advantages = jnp.asarray(advantages, jnp.float32)
    tau = jnp.where(advantages > 0, tau_pos, tau_neg)
    gate = jax.nn.sigmoid(tau * (_ratio(logp, logp_old) - 1.0)) * 4.0 / tau
    return -gate * advantages, gate


# --------------------------------------------------------------------------------- Clip/KL-Cov


def token_covariance(logp: Array, advantages: Array, mask: Array) -> Array:
    """Per-token centred cross product (A_t − Ā)·(logp_t − mean logp), means over the mask's
    tokens (arXiv 2505.22617, Eq. 11). [B, T] x 3 -> [B, T]."""
    adv = jnp.asarray(advantages, jnp.float32)
    logp = jnp.asarray(logp, jnp.float32)
    return (adv - masked_mean(adv, mask)) * (logp - masked_mean(logp, mask))


def _smallest(score: Array, count: Array) -> Array:
    """Mask of the `count` smallest entries of `score` (ties by position). [B, T] -> bool [B, T]."""
    flat = score.reshape(-1)
    rank = jnp.argsort(jnp.argsort(flat, stable=True), stable=True)
    return (rank < count).reshape(score.shape)


def clip_cov_selection(
    logp: Array,
    advantages: Array,
    mask: Array,
    uniform: Array,
    ratio: float = 2e-4,
    lower: float = 1.0,
    upper: float = 5.0,
) -> Array:
    """Clip-Cov's tokens (arXiv 2505.22617 §4; PRIME-RL/Entropy-Mechanism-of-RL and verl
    `compute_policy_loss_clip_cov`): k = max(⌊ratio · N⌋, 1) tokens drawn at random (by
    `uniform` [B, T] ∈ [0, 1)) among those whose covariance lies in (lower, upper); their
    gradient is detached. N = number of mask tokens. -> float mask [B, T].
    """
    cov = token_covariance(logp, advantages, mask)
    band = (jnp.asarray(mask) > 0) & (cov > lower) & (cov < upper)
    count = jnp.maximum(jnp.floor(ratio * jnp.sum(jnp.asarray(mask, jnp.float32))), 1.0)
    return (band & _smallest(jnp.where(band, uniform, jnp.inf), count)).astype(jnp.float32)


def kl_cov_selection(logp: Array, advantages: Array, mask: Array, ratio: float = 2e-3) -> Array:
    """KL-Cov's tokens (arXiv 2505.22617 §4; official `compute_policy_loss_kl_cov`): the
    k = max(⌊ratio · N⌋, 1) mask tokens with the largest covariance. -> float mask [B, T]."""
    valid = jnp.asarray(mask) > 0
    cov = token_covariance(logp, advantages, mask)
    count = jnp.maximum(jnp.floor(ratio * jnp.sum(valid)), 1.0)
    return (valid & _smallest(jnp.where(valid, -cov, jnp.inf), count)).astype(jnp.float32)


def kl_cov_loss(
    logp: Array,
    logp_old: Array,
    advantages: Array,
    selected: Array,
    coef: float = 1.0,
    estimator: str = "abs",
) -> Array:
    """KL-Cov per-token loss: the unclipped surrogate plus a KL penalty on the selected tokens.

        ℓ_t = −A_t·r_t + coef·sel_t·KL_t,   KL_t = `kl_estimate(logp, logp_old, estimator)`

    estimator 'abs' = |logp − logp_old| (the official code and verl), 'k2' = ½(logp − logp_old)²
    (the paper's KL written as a k2-style penalty). [B, T] x 4 -> [B, T].

    Example: on-policy token (r = 1) with A = 0.5, selected: ℓ = −0.5 (the penalty is 0 there,
    its gradient too); logp − logp_old = 0.1, A = 0, selected, coef 1, 'abs' -> ℓ = 0.1.
    """
    kl = kl_estimate(logp, logp_old, kind=estimator)
    return -jnp.asarray(advantages, jnp.float32) * _ratio(logp, logp_old) + coef * selected * kl


# ------------------------------------------------------------------------------- top entropy


def top_entropy_mask(entropy: Array, mask: Array, rho: float = 0.2) -> tuple[Array, Array]:
    """The "forking" tokens of arXiv 2506.01939: H_t ≥ τ, τ the (1 − ρ) quantile (linear
    interpolation) of H over the mask's tokens. -> (keep float mask [B, T], τ scalar).

    Example: H = [.1, .5, .9, .3, .7], ρ = 0.2 -> τ = 0.74, keep [0, 0, 1, 0, 0];
    ρ = 0.4 -> τ = 0.58, keep [0, 0, 1, 0, 1].
    """
    valid = jnp.asarray(mask) > 0
    tau = jnp.nanquantile(jnp.where(valid, jnp.asarray(entropy, jnp.float32), jnp.nan), 1.0 - rho)
    return (valid & (entropy >= tau)).astype(jnp.float32), tau
