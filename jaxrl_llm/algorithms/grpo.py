"""GRPO (DeepSeekMath, arXiv 2402.03300) and the group-relative family built on it: Dr.GRPO,
NGRPO, GRPO-λ, GPG and COPO (DAPO in `dapo.py`; GSPO, GSPO-token and GMPO in `gspo.py`).

A_i = (R_i - mean_G R) / (std_G R + eps) on every token of response i; per-token loss
l_t = PPO-clip(A_i, r_t) + beta * k3(pi || pi_ref); aggregated `seq_mean_token_mean`.
Reference implementation: verl `compute_grpo_outcome_advantage`, `compute_policy_loss_vanilla`.
"""

from __future__ import annotations

import math

import numpy as np

from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.algorithms.reinforce import reinforce_objective
from jaxrl_llm.losses.policy import ppo_clip_loss
from jaxrl_llm.objectives import old_logp, pg_terms, regularised, token_loss_objective, token_mean
from jaxrl_llm.rollout.strategies import dynamic_sampling
from jaxrl_llm.train.passes import reference_passes
from jaxrl_llm.transforms import rollout as rt
from jaxrl_llm.transforms.base import chain
from jaxrl_llm.transforms.rollout import group_advantages
from jaxrl_llm.types import Algorithm, Objective


@register("grpo")
def grpo(
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    beta: float = 0.04,
    kl_estimator: str = "k3",
    std: str = "unbiased",
    adv_eps: float = 1e-6,
    loss_agg: str = "seq_mean_token_mean",
    max_len: int | None = None,
    entropy_coef: float = 0.0,
) -> Algorithm:
    """GRPO. Defaults follow the paper / verl: eps=0.2, beta=0.04 with k3, unbiased group std
    (`std='population'` or `'none'` are the other conventions, `'none'` + loss_agg
    'seq_mean_token_sum_norm' is Dr.GRPO), `seq_mean_token_mean` aggregation.

    clip_eps_high: upper clip (DAPO's clip-higher); None = clip_eps.
    dual_clip: c > 1 bounds the loss of negative-advantage tokens at -c*A (None = off).
    max_len: constant L_max for 'seq_mean_token_sum_norm' (None = the response buffer length).
    beta=0 drops the KL term and the reference forward pass.
    """
    return Algorithm(
        data="rollout",
        transform=group_advantages(std=std, eps=adv_eps),
        objective=pg_terms(
            clip_eps, clip_eps_high, dual_clip, beta, kl_estimator, loss_agg, max_len, entropy_coef
        ),
        passes=reference_passes(beta),
    )


@register("dr_grpo")
def dr_grpo(
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    max_len: int | None = None,
    entropy_coef: float = 0.0,
) -> Algorithm:
    """Dr.GRPO ("Understanding R1-Zero-Like Training", arXiv 2503.20783): GRPO without its two
    biases. A_i = R_i − mean_G R (no std division) and the per-sequence loss
    Σ_t m·l_t / L_max with a constant L_max, then the mean over sequences
    (`seq_mean_token_sum_norm`; oat's `masked_sum(..., constant_normalizer=generate_max_length)`
    in sail-sg/understand-r1-zero `train_zero_math.py`). PPO clip eps=0.2, no KL (beta=0).

    max_len: L_max (None = the response buffer length T, the generation budget). verl's
    `seq-mean-token-sum-norm` divides by the constant without the 1/B; this keeps the paper's
    mean over sequences.
    """
    return grpo(
        clip_eps, clip_eps_high, dual_clip, beta, kl_estimator, std="none", loss_agg="seq_mean_token_sum_norm",
        max_len=max_len, entropy_coef=entropy_coef,
    )  # fmt: skip


def not_all_correct(threshold: float = 0.5, inclusive: bool = False):
    """Group keep-rule for `dynamic_sampling` (NGRPO's filter): not every reward is > threshold
    (≥ with inclusive)."""

    def keep(rewards) -> bool:
        rewards = np.asarray(rewards)
        return not bool(np.all(rewards >= threshold if inclusive else rewards > threshold))

    return keep


@register("ngrpo")
def ngrpo(
    clip_eps: float = 0.16,
    clip_eps_high: float = 0.24,
    max_reward: float = 1.0,
    virtual_count: int = 1,
    filter_strategy: str = "all_correct",
    correct_threshold: float | None = None,
    max_rounds: int = 3,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    adv_eps: float = 1e-6,
    loss_agg: str = "token_mean",
    entropy_coef: float = 0.0,
) -> Algorithm:
    """NGRPO (Negative-enhanced GRPO, arXiv 2509.18851; code nangongrui-ngr/NGRPO
    `core_algos.py::compute_ngrpo_outcome_advantage`, `train_qwen2.5-math-7b_ngrpo.sh`).

    Group statistics over R ∪ {R_max}×k (k = virtual_count virtual samples of reward
    max_reward): mu, sigma = mean, unbiased std of the augmented group, A_i = (R_i − mu)/(sigma +
    1e-6) for the real samples only (`estimators.group_advantages(virtual_count=k)`), so an
    all-wrong group of 8 gets A = −1/3. Loss: PPO-clip with eps_lo=0.16 < eps_hi=0.24,
    token-mean, no KL.

    filter_strategy='all_correct' (the script's default) drops the groups whose every response
    is correct: reward ≥ max_reward when correct_threshold is None (the code's `score == 1`
    with R_max = 1: exactly the groups whose augmented group is constant), reward >
    correct_threshold otherwise. Their advantages are already 0 (sigma = 0 for binary rewards); "filter" means they carry
    no loss and are not counted, as in the code, which removes them from the batch and
    samples more. Here the `dynamic_sampling` strategy keeps only the other groups (up to
    max_rounds collections), and the transform sets the loss mask of any all-correct group
    left in the batch (the strategy's fill when too few were kept) to 0, so it leaves the
    token-mean denominator. 'none' keeps every group.
    """
    if filter_strategy not in ("all_correct", "none"):
        raise ValueError(f"ngrpo: filter_strategy={filter_strategy!r}; expected 'all_correct' or 'none'")
    advantages = group_advantages("unbiased", adv_eps, virtual_reward=max_reward, virtual_count=virtual_count)
    base = grpo(clip_eps, clip_eps_high, beta=beta, kl_estimator=kl_estimator, loss_agg=loss_agg,
                entropy_coef=entropy_coef)  # fmt: skip
    if filter_strategy == "none":
        return base._replace(transform=advantages)
    label = (max_reward, True) if correct_threshold is None else (correct_threshold, False)
    keep = dynamic_sampling(keep=not_all_correct(*label), max_rounds=max_rounds)
    return base._replace(transform=chain(rt.filter_all_correct_groups(*label), advantages), strategy=keep)


@register("grpo_lambda")
def grpo_lambda(
    top_fraction: float = 0.5,
    correct_threshold: float = 0.5,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    std: str = "unbiased",
    adv_eps: float = 1e-6,
    loss_agg: str = "seq_mean_token_mean",
    entropy_coef: float = 0.0,
    penalise_unsolved: bool = False,
) -> Algorithm:
    """GRPO-λ ("Stable Reinforcement Learning for Efficient Reasoning", arXiv 2505.18086; no code
    found, reward form assumed as in the spec): the top_fraction (λ) of the batch's groups by
    correctness ratio (correct = reward > correct_threshold) get the Kimi-1.5 length reward
    len_i = 0.5 − (L_i − L_min)/(L_max − L_min) within the group (correct: R = 1 + len_i,
    incorrect: min(0, len_i)), every other group the 0/1 correctness
    (`estimators.grpo_lambda_rewards`); then GRPO on those rewards.

    top_fraction=0.5 is assumed (the paper's value was not available): length penalties for
    the better half of the groups. penalise_unsolved=False (assumed): a group with no correct
    answer never gets the length penalty, even when ties put it in the top half (True
    collapsed Countdown to empty responses). beta=0 (the reference is optional here).
    """
    base = grpo(clip_eps, clip_eps_high, beta=beta, kl_estimator=kl_estimator, loss_agg=loss_agg,
                entropy_coef=entropy_coef)  # fmt: skip
    lengths = rt.grpo_lambda_rewards(top_fraction, correct_threshold, penalise_unsolved)
    transform = chain(lengths, group_advantages(std, adv_eps))
    return base._replace(transform=transform)


@register("gpg")
def gpg(
    std: str = "none",
    alpha: str = "valid_groups",
    adv_eps: float = 1e-6,
    loss_agg: str = "token_mean",
    entropy_coef: float = 0.0,
) -> Algorithm:
    """GPG (Group Policy Gradient, arXiv 2504.02546; code AMAP-ML/GPG
    `open-r1/src/open_r1/gpg_trainer.py`; verl `compute_gpg_outcome_advantage` and
    `compute_policy_loss_gpg`): REINFORCE on group-relative advantages, no ratio, no clip,
    no critic, no reference.

        A_i = α (R_i − mean_G R) / F_norm,   α = B / B_valid,   l_t = −A_i log π(y_t), token mean
        (the REINFORCE loss `reinforce.reinforce_objective`)

    B_valid counts the rows of the groups whose rewards vary (`estimators.valid_group_scale`):
    zero-variance groups add no gradient, and α undoes their dilution of the batch mean.
    std: F_norm — 'none' (F_norm = 1, the paper's best ablation and verl's default f_norm=1)
    or 'unbiased' (F_norm = std; the official trainer's default `scale_rewards`, with eps 1e-4
    there: pass adv_eps=1e-4). alpha: 'valid_groups' (paper and official code),
    'nonzero_rewards' (verl: B / #rows with R ≠ 0) or 'none'. The official code's extra
    re-sampling until B_valid/B ≥ β_th (`min_inverse_alpha`) is not included.
    """
    return Algorithm(
        data="rollout",
        transform=chain(group_advantages(std, adv_eps), rt.valid_group_scale(alpha)),
        objective=regularised(reinforce_objective(loss_agg), 0.0, "k3", entropy_coef, loss_agg),
    )


def copo_surrogate(clip_eps: float, clip_eps_high: float | None, loss_agg: str) -> Objective:
    """COPO's blended PPO-clip loss per token, w·l(A^local) + (1 − w)·l(A^global), with w and
    A^global the per-row extras of `copo_advantages` (`token_loss_objective`: rollout-correction
    weights, aggregation). Metrics: pg_loss, clip_fraction (w-weighted), copo/global_pg_loss."""

    def per_token(outputs, batch, state, mask):
        old = old_logp(outputs, batch)
        weight = batch.extras["copo/local_weight"][:, None]
        global_adv = batch.extras["copo/global_advantages"][:, None]
        local, clip_l = ppo_clip_loss(outputs.logp, old, batch.advantages, clip_eps, clip_eps_high)
        glob, clip_g = ppo_clip_loss(outputs.logp, old, global_adv, clip_eps, clip_eps_high)
        return weight * local + (1.0 - weight) * glob, {
            "clip_fraction": token_mean(weight * clip_l + (1.0 - weight) * clip_g, mask, batch),
            "copo/global_pg_loss": token_mean((1.0 - weight) * glob, mask, batch),
        }

    return token_loss_objective(per_token, loss_agg)


@register("copo")
def copo(
    kappa: float = 10.0,
    h0: float = 0.5 * math.log(2.0),
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    std: str = "unbiased",
    adv_eps: float = 1e-6,
    loss_agg: str = "seq_mean_token_mean",
) -> Algorithm:
    """COPO (Consistency-Aware Policy Optimization, arXiv 2508.04138; code hijih/copo-code not
    read; the form is the spec's assumption). Per prompt q:

        A^l_i = GRPO advantage,   A^g_q = (g_q − mean_B g)/std_B g,  g_q = mean_{i∈q} R_i
        w_q = σ(κ (H_q − h0)),    H_q = entropy of q's outcome classes
        l_t = w_q · PPO-clip(A^l_i, r_t) + (1 − w_q) · PPO-clip(A^g_q, r_t)

    (`estimators.prompt_advantages`: unbiased std over the batch's prompts; `outcome_entropy`
    over distinct reward values, i.e. correctness classes for a binary verifier, as the
    extracted answers are not in the batch). Consistent groups (H_q = 0, zero local signal)
    train on the global term. kappa=10 and h0 = ½ log 2 (half the entropy of a 50/50 binary
    group) are assumed defaults; beta=0 (reference optional).
    """
    return Algorithm(
        data="rollout",
        transform=rt.copo_advantages(kappa, h0, std, adv_eps),
        objective=regularised(
            copo_surrogate(clip_eps, clip_eps_high, loss_agg), beta, kl_estimator, 0.0, loss_agg
        ),
        passes=reference_passes(beta),
    )
