"""GRPO (DeepSeekMath, arXiv 2402.03300) and its Dr.GRPO variant (arXiv 2503.20783).

A_i = (R_i - mean_G R) / (std_G R + eps) on every token of response i; per-token loss
l_t = PPO-clip(A_i, r_t) + beta * k3(pi || pi_ref); aggregated `seq_mean_token_mean`.
Reference implementation: verl `compute_grpo_outcome_advantage`, `compute_policy_loss_vanilla`.
"""

from __future__ import annotations

from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.objectives import pg_terms
from jaxrl_llm.train.passes import reference_pass
from jaxrl_llm.transforms.base import is_static_zero
from jaxrl_llm.transforms.rollout import group_advantages
from jaxrl_llm.types import Algorithm


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
        passes=() if is_static_zero(beta) else (reference_pass(),),
    )
