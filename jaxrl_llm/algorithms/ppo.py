"""PPO for RLHF with a critic, GAE and the KL penalty in the reward (Ouyang et al. 2022;
"Secrets of RLHF Part I", arXiv 2307.04964, MOSS-RLHF `ppo_trainer.py`).

Rewards: r_t = -kl_coef * (logp_old - logp_ref)_t, plus R (optionally running-normalised and
clipped) on the last token; advantages by GAE(gamma, lam) on the critic's values, whitened over
the batch; policy loss PPO-clip token-mean; critic loss clipped value loss against the returns.
"""

from __future__ import annotations

from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.objectives import pg_terms, value_loss
from jaxrl_llm.train.passes import critic_pass, old_policy_pass, reference_pass
from jaxrl_llm.transforms import rollout as rt
from jaxrl_llm.transforms.base import chain, is_static_zero
from jaxrl_llm.types import Algorithm


@register("ppo")
def ppo(
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    value_clip: float | None = 0.2,
    kl_coef: float = 0.02,
    kl_estimator: str = "k1",
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten: bool = True,
    reward_norm: bool = False,
    reward_clip: float | None = None,
    loss_agg: str = "token_mean",
    entropy_coef: float = 0.0,
) -> Algorithm:
    """PPO. Defaults from MOSS-RLHF: eps=0.2, value clip 0.2, kl_coef (eta) 0.02 with k1,
    gamma=1, lam=0.95, token-mean aggregation, advantage whitening.

    reward_norm: running (R - mu) / sigma normalisation of sequence rewards across steps
      (PPO-max), then clipped to +-reward_clip when given.
    kl_coef=0 drops the KL penalty and the reference pass.
    """
    use_kl = not is_static_zero(kl_coef)
    steps = []
    if reward_norm:
        steps.append(rt.normalize_rewards(shift_mean=True, clip=reward_clip))
    steps.append(rt.reward_to_tokens())
    if use_kl:
        steps.append(rt.kl_penalty_in_reward(kl_coef, kl_estimator))
    steps.append(rt.gae(gamma, lam))
    if whiten:
        steps.append(rt.whiten_advantages())
    return Algorithm(
        data="rollout",
        transform=chain(*steps),
        objective=pg_terms(clip_eps, clip_eps_high, dual_clip, 0.0, "k1", loss_agg, None, entropy_coef),
        value_objective=value_loss(value_clip),
        passes=(critic_pass(), reference_pass(), old_policy_pass()) if use_kl else (critic_pass(),),
    )
