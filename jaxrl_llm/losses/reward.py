"""Reward-modelling losses: pure functions of reward-model scores."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def bradley_terry_loss(r_chosen: Array, r_rejected: Array, margin=0.0, center_coef: float = 0.0) -> Array:
    """Bradley–Terry pairwise loss with a margin and reward centring, per pair. [B], [B] -> [B].

        ℓ = softplus(−(r_w − r_l − m)) + c · (r_w + r_l)²   (= −log σ(r_w − r_l − m) + c · (r_w + r_l)²)

    m (`margin`, scalar or [B]): Llama 2's preference-strength margin (arXiv 2307.09288);
    c (`center_coef`): reward centring (Eisenstein et al., arXiv 2312.09244), so that the mean
    over pairs is TRL's `loss + center_rewards_coefficient · mean((r_w + r_l)²)`
    (`trl/trainer/reward_trainer.py`).

    Example: r_w = 1.2, r_l = 0.4 -> 0.371101; m = 0.5 -> 0.554355; c = 0.01 -> 0.396701.
    """
    r_chosen = jnp.asarray(r_chosen, jnp.float32)
    r_rejected = jnp.asarray(r_rejected, jnp.float32)
    loss = jax.nn.softplus(-(r_chosen - r_rejected - margin))
    return loss + center_coef * jnp.square(r_chosen + r_rejected)


def ppo_m_loss(
    r_chosen_high: Array, r_chosen_low: Array, r_rejected_high: Array, r_rejected_low: Array, margin=0.0
) -> Array:
    """PPO-M's calibrated reward-model loss (Leng et al., "Taming overconfidence in LLMs: reward
    calibration in RLHF", arXiv 2410.09724; official SeanLeng1/Reward-Calibration
    `OpenRLHF/openrlhf/trainer/crm_trainer.py` with `--loss sigmoid`, `models/loss.py::
    PairWiseLoss`). Each pair's two completions get a verbalised-confidence suffix, high and
    low; the RM must score the chosen completion higher with high confidence and the rejected
    one higher with low confidence. Scores [B] x4 -> [B]:

        ℓ = −log σ(r(cwh) − r(cwl) − m) − log σ(r(rwl) − r(rwh) − m)    (two `bradley_terry_loss` terms)

    margin m (scalar or [B]) default 0. The trained RM then rewards ordinary PPO.

    Example (spec §20.3): r(cwh) 2, r(cwl) 1, r(rwh) −0.5, r(rwl) 0.5 -> 2·softplus(−1) = 0.626523.
    """
    return bradley_terry_loss(r_chosen_high, r_chosen_low, margin) + bradley_terry_loss(
        r_rejected_low, r_rejected_high, margin
    )


PPO_C_ADJUSTMENTS = ("threshold", "difference")


def ppo_c_rewards(
    reward_avg: Array,
    rewards: Array,
    confidence: Array,
    alpha: float = 0.1,
    weight: float = 0.5,
    clip: float = 10.0,
    adjustment: str = "threshold",
) -> tuple[Array, Array]:
    """PPO-C's calibrated reward (Leng et al., arXiv 2410.09724; official
    `OpenRLHF/openrlhf/trainer/ppo_utils/calibrated_experience_maker.py`, avg_type 'mean';
    defaults α 0.1, w 0.5, adjustment 'threshold' from `cli/train_cppo.py`): a pure
    (state, inputs) -> (rewards, state) step with the state r̄, the EMA of the batch's mean reward
    (initialise it with the reward model's stored mean).

        r  ← clip(r, −clip, clip)                        (the RM's score without the confidence suffix)
        r̄' = α·mean(r) + (1 − α)·r̄                       (updated first, as the official code)
        'threshold':   r' = r + w·|r|·(c − 0.5)   if r ≥ r̄'   else   r − w·|r|·(c − 0.5)
        'difference':  r' = r + w·(r − r̄')·(c − 0.5)

    c ∈ [0, 1] is the sample's verbalised confidence / 10 (0.5, no change, when it states none).
    reward_avg scalar, rewards [N], confidence [N] or scalar -> (r' [N], r̄' scalar).

    Example (spec §20.3): r [2, −1], c 0.9, r̄ 0.5 -> r̄' 0.5, r' [2.4, −1.2].
    """
    if adjustment not in PPO_C_ADJUSTMENTS:
        raise ValueError(f"ppo_c_rewards: adjustment={adjustment!r}; expected one of {PPO_C_ADJUSTMENTS}")
    rewards = jnp.clip(jnp.asarray(rewards, jnp.float32), -clip, clip)
    new_avg = alpha * jnp.mean(rewards) + (1.0 - alpha) * jnp.asarray(reward_avg, jnp.float32)
    centred = jnp.asarray(confidence, jnp.float32) - 0.5
    if adjustment == "difference":
        return rewards + weight * (rewards - new_avg) * centred, new_avg
    shift = weight * jnp.abs(rewards) * centred
    return jnp.where(rewards >= new_avg, rewards + shift, rewards - shift), new_avg


def multi_label_mse(predicted: Array, target: Array) -> Array:
    """Multi-label reward regression (Li et al., multi-objective GRPO, arXiv 2503.21819; no code
    found): one RM with a K-dim regression head predicting aspect scores (politeness,
    meaningfulness, actionability, safety, ...), the squared error averaged over the aspects.
    [B, K] x2 -> [B]. Example (spec §20.4): predicted [0.8, 0.6, 0.4, 0.9], target [1, 0.5, 0.5, 1]
    -> 0.0175."""
    diff = jnp.asarray(predicted, jnp.float32) - jnp.asarray(target, jnp.float32)
    return jnp.mean(jnp.square(diff), axis=-1)


def weighted_reward(scores: Array, weights=None) -> Array:
    """The RL reward of a multi-label RM, R = Σ_k w_k·r_k (arXiv 2503.21819; its weights are not
    confirmed: None = equal weights 1/K). [B, K] -> [B].
    Example (spec §20.4): scores [0.8, 0.6, 0.4, 0.9], equal weights -> 0.675."""
    scores = jnp.asarray(scores, jnp.float32)
    if weights is None:
        return jnp.mean(scores, axis=-1)
    return scores @ jnp.asarray(weights, jnp.float32)
