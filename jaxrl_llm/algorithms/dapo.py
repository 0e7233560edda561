"""DAPO (Decoupled Clip and Dynamic sAmpling Policy Optimization, Yu et al. 2025, arXiv 2503.14476).

GRPO advantages (unbiased group std) on the correctness reward plus the soft overlong
punishment, PPO-clip with clip-higher (eps_lo = 0.2, eps_hi = 0.28), the token-mean loss
over the mini-batch and no KL term; groups whose rewards are all equal are dropped and more
prompts sampled (dynamic sampling). Code read: BytedTsinghua-SIA/DAPO and the verl recipe
(`recipe/dapo/dapo_ray_trainer.py` group filter, `verl/workers/reward_manager/dapo.py`
overlong shaping, `recipe/dapo/run_dapo_qwen2.5_32b.sh` hyper-parameters).
"""

from __future__ import annotations

from jaxrl_llm.algorithms.grpo import grpo
from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.rollout import strategies
from jaxrl_llm.transforms import rollout as rt
from jaxrl_llm.transforms.base import chain, is_static_zero
from jaxrl_llm.types import Algorithm


@register("dapo")
def dapo(
    clip_eps: float = 0.2,
    clip_eps_high: float = 0.28,
    dual_clip: float | None = None,
    max_len: int | None = None,
    cache_len: int | None = None,
    overlong_factor: float = 1.0,
    hard_beyond_max: bool = False,
    dynamic_sampling: bool = True,
    max_rounds: int = 3,
    adv_eps: float = 1e-6,
    loss_agg: str = "token_mean",
    entropy_coef: float = 0.0,
) -> Algorithm:
    """DAPO.

        R' = R + R_len(|y|),   R_len = min(−(|y| − (L_max − L_cache)) / L_cache · factor, 0)
        A_i = (R'_i − mean_G R') / (std_G R' + eps),   l_t = PPO-clip(A_i, r_t; 0.2, 0.28), token mean

    max_len: L_max (None = the response buffer length, i.e. sampling.max_new_tokens, so the
      default works at any size); cache_len: L_cache (None = round(0.2 · L_max): the paper's
      4096 of 20480); overlong_factor: the penalty at L_max (0 disables the shaping);
      hard_beyond_max: the paper's −factor for |y| > L_max (verl's line otherwise; equal up to
      L_max, and the sampler never exceeds the buffer).
    dynamic_sampling: keep only groups whose rewards vary (std > 0, `rewards_vary`), judged on
      the verifier's reward before the overlong shaping as verl filters on `acc`, sampling
      up to max_rounds prompt batches (the recipe generates 3× the train batch per round;
      max_rounds=3 matches that budget), `strategies.dynamic_sampling`.
    dual_clip: off by default: the paper's objective (Eq. 8) has none; verl applies one always
      (clip_ratio_c, 10 in the DAPO recipe: pass dual_clip=10.0 to match it). It only bounds
      the loss of tokens with A < 0 and ratio > 10.
    """
    base = grpo(clip_eps, clip_eps_high, dual_clip, beta=0.0, loss_agg=loss_agg, entropy_coef=entropy_coef)
    steps = [rt.group_advantages("unbiased", adv_eps)]
    if not is_static_zero(overlong_factor):
        steps.insert(0, rt.overlong_penalty(max_len, cache_len, overlong_factor, hard_beyond_max))
    strategy = strategies.dynamic_sampling(max_rounds=max_rounds) if dynamic_sampling else None
    return base._replace(transform=chain(*steps), strategy=strategy)
