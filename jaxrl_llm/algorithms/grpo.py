"""GRPO (DeepSeekMath, arXiv 2402.03300) and its Dr.GRPO variant (arXiv 2503.20783).

A_i = (R_i - mean_G R) / (std_G R + eps) on every token of response i; per-token loss
l_t = PPO-clip(A_i, r_t) + beta * k3(pi || pi_ref); aggregated `seq_mean_token_mean`.
Reference implementation: verl `compute_grpo_outcome_advantage`, `compute_policy_loss_vanilla`.
"""

from __future__ import annotations

from jaxrl_llm.algorithms.common import normalisers, old_logp, response_mask, token_mean
from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.losses.aggregation import aggregate
from jaxrl_llm.losses.policy import kl_estimate, ppo_clip_loss
from jaxrl_llm.transforms.base import is_static_zero
from jaxrl_llm.transforms.rollout import group_relative_advantages
from jaxrl_llm.types import Algorithm


def clipped_pg_objective(
    clip_eps, clip_eps_high, dual_clip, beta, kl_estimator, loss_agg, max_len, entropy_coef
):
    """The GRPO-family objective: PPO-clip on `batch.advantages` + beta * KL-to-reference
    in the loss - entropy_coef * entropy, aggregated with `loss_agg` over the mini-batch."""
    use_kl = not is_static_zero(beta)
    use_entropy = not is_static_zero(entropy_coef)

    def objective(outputs, batch, state):
        mask = response_mask(batch)
        pg, clipped = ppo_clip_loss(
            outputs.logp, old_logp(outputs, batch), batch.advantages, clip_eps, clip_eps_high, dual_clip
        )
        token_loss = pg
        metrics = {"pg_loss": token_mean(pg, mask, batch), "clip_fraction": token_mean(clipped, mask, batch)}
        if use_kl:
            kl = kl_estimate(outputs.logp, batch.logp_ref, kind=kl_estimator)
            token_loss = token_loss + beta * kl
            metrics["kl"] = token_mean(kl, mask, batch)
        if use_entropy:
            token_loss = token_loss - entropy_coef * outputs.entropy
        loss = aggregate(token_loss, mask, loss_agg, **normalisers(batch), max_len=max_len)
        return loss, metrics

    return objective


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
    passes = frozenset() if is_static_zero(beta) else frozenset({"reference"})
    return Algorithm(
        data="rollout",
        transform=group_relative_advantages(std=std, eps=adv_eps),
        objective=clipped_pg_objective(
            clip_eps, clip_eps_high, dual_clip, beta, kl_estimator, loss_agg, max_len, entropy_coef
        ),
        passes=passes,
    )
