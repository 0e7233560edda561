"""The critic-free REINFORCE family (issue 13): ReMax, RLOO, REINFORCE++ (and -baseline),
OPMD and AsymRE. Each is an advantage transform from `jaxrl_llm.transforms` plus either the
PPO clipped surrogate (`policy_surrogate`) or the plain REINFORCE loss below (no ratio, no
clipping: -A_t * logp_t).

Off-policy use (OPMD, AsymRE): their losses read `logp_old` (`objectives.old_logp`) as the
behaviour policy's log-probs. On-policy with several updates per rollout the trainer's
`old_policy_pass` writes it (the pre-update policy, which sampled the batch); under a replay
strategy (`jaxrl_llm.rollout.replay`) put `jaxrl_llm.transforms.correction.behaviour_as_old()`
in front of the transform (logp_old <- logp_behav, the stale sampler's log-probs).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.objectives import old_logp, pg_terms, policy_surrogate, token_loss_objective, token_mean
from jaxrl_llm.rollout.strategies import greedy_baseline
from jaxrl_llm.train.passes import old_policy_pass, reference_pass, reference_passes
from jaxrl_llm.transforms import rollout as rt
from jaxrl_llm.transforms.base import chain, is_static_zero
from jaxrl_llm.transforms.rollout import baseline_advantages, kl_penalty_in_sequence_reward
from jaxrl_llm.types import Algorithm, Objective

RLOO_LOSSES = ("ppo_clip", "reinforce")
OPMD_FORMS = ("rec", "trinity")


def reinforce_token_loss(logp, advantages):
    """REINFORCE per-token loss -A_t * log pi(y_t) (minimised; gradient -A_t * grad log pi).
    [B, T] x2 -> [B, T]. Example: A = 0.3, logp = log 0.5 -> 0.207944."""
    return -jnp.asarray(advantages, jnp.float32) * jnp.asarray(logp, jnp.float32)


def opmd_regulariser(logp, logp_old, tau: float = 0.1):
    """OPMD's k2 regulariser to the behaviour policy, tau * (logp - logp_old)^2 (the 1/2 of the
    Kimi k2 absorbed into tau, as Trinity-RFT's REC `regularizer='k2'`). [B, T] x2 -> [B, T].
    Example: logp - logp_old = 0.1, tau = 0.1 -> 0.001."""
    return tau * jnp.square(jnp.asarray(logp, jnp.float32) - jnp.asarray(logp_old, jnp.float32))


def reinforce_objective(
    loss_agg: str = "token_mean", scale: float = 1.0, reg_tau: float | None = None
) -> Objective:
    """scale * aggregate(-A_t logp_t [+ reg_tau * (logp - logp_old)^2]) over the loss mask, a
    `token_loss_objective` (rollout-correction weights multiply the per-token loss). Metrics:
    pg_loss (token mean of the weighted per-token loss), and opmd/reg (token mean) with a
    regulariser."""

    def per_token(outputs, batch, state, mask):
        loss, metrics = reinforce_token_loss(outputs.logp, batch.advantages), {}
        if reg_tau is not None:
            reg = opmd_regulariser(outputs.logp, old_logp(outputs, batch), reg_tau)
            loss, metrics = loss + reg, {"opmd/reg": token_mean(reg, mask, batch)}
        return scale * loss, metrics

    return token_loss_objective(per_token, loss_agg)


def _kl_passes(kl_coef) -> tuple:
    return () if is_static_zero(kl_coef) else (old_policy_pass(), reference_pass())


@register("remax")
def remax(
    kl_coef: float = 0.1, clip: float | None = 5.0, gamma: float = 1.0, kl_estimator: str = "k1"
) -> Algorithm:
    """ReMax (arXiv 2310.10505; liziniu/ReMax `remax_trainer.py`): the greedy response's reward
    as the baseline (`greedy_baseline` strategy), G_t = gamma^{n_t} clip(R - R_greedy, +-c) -
    beta (logp_old - logp_ref)_t (`remax_advantages`; the KL of the current token only, as the
    official code), loss -sum m G_t logp_t / sum m (token mean), no ratio or clipping.
    Defaults from the code: kl_ctl beta=0.1, clip_reward_value c=5, gamma=1.

    One sample per prompt: set sampling.num_samples=1 (with G > 1 every sample of a prompt
    gets the same greedy baseline: still unbiased REINFORCE, but not the paper's setup).
    """
    kl = [] if is_static_zero(kl_coef) else [rt.kl_penalty_in_reward(kl_coef, kl_estimator)]
    return Algorithm(
        data="rollout",
        transform=chain(*kl, rt.remax_advantages(clip=clip, gamma=gamma)),
        objective=reinforce_objective("token_mean"),
        passes=_kl_passes(kl_coef),
        strategy=greedy_baseline(),
    )


@register("rloo")
def rloo(
    loss: str = "ppo_clip",
    clip_eps: float = 0.2,
    kl_coef: float = 0.05,
    kl_estimator: str = "k1",
    loss_agg: str = "token_mean",
) -> Algorithm:
    """RLOO (arXiv 2402.14740): A_i = R_i - mean_{j != i} R_j (`rloo_advantages`; k >= 2 samples
    per prompt), with the KL in the reward at the sequence level, R_i - beta sum_t KL_t
    (`kl_penalty_in_sequence_reward`, before the leave-one-out, as the paper / TRL RLOOTrainer).

    loss: 'ppo_clip' (verl / OpenRLHF: A_i on every token into PPO-clip, aggregated with
      loss_agg) or 'reinforce' (the paper: -A_i sum_t logp_t, mean over sequences,
      'seq_mean_token_sum'; loss_agg is ignored).
    kl_coef: 0.05 is TRL's default, not confirmed against the paper; 0 drops the KL and passes.
    """
    if loss not in RLOO_LOSSES:
        raise ValueError(f"Unknown RLOO loss={loss!r}; expected one of {RLOO_LOSSES}.")
    kl = [] if is_static_zero(kl_coef) else [kl_penalty_in_sequence_reward(kl_coef, kl_estimator)]
    if loss == "ppo_clip":
        objective = policy_surrogate(clip_eps, loss_agg=loss_agg)
    else:
        objective = reinforce_objective("seq_mean_token_sum")
    return Algorithm(
        data="rollout",
        transform=chain(*kl, rt.rloo_advantages()),
        objective=objective,
        passes=_kl_passes(kl_coef),
    )


@register("reinforce_pp")
def reinforce_pp(
    kl_coef: float = 0.01,
    kl_estimator: str = "k1",
    clip_eps: float = 0.2,
    gamma: float = 1.0,
    unbiased: bool = False,
) -> Algorithm:
    """REINFORCE++ (arXiv 2501.03262; OpenRLHF `experience_maker.py`, estimator 'reinforce'):
    r_t = 1[t = T] R - beta KL_t(pi_old || pi_ref) (`kl_penalty_in_reward`), returns-to-go,
    whitened over every loss token of the batch (`reinforce_pp_advantages`: population variance
    as OpenRLHF; unbiased=True is verl's Bessel form); PPO-clip eps=0.2, token mean.
    kl_coef 0.01 is the commonly used value, not confirmed (the paper does not fix it).
    """
    kl = [] if is_static_zero(kl_coef) else [rt.kl_penalty_in_reward(kl_coef, kl_estimator)]
    return Algorithm(
        data="rollout",
        transform=chain(*kl, rt.reinforce_pp_advantages(gamma=gamma, unbiased=unbiased)),
        objective=policy_surrogate(clip_eps, loss_agg="token_mean"),
        passes=_kl_passes(kl_coef),
    )


@register("reinforce_pp_baseline")
def reinforce_pp_baseline(
    kl_coef: float = 1e-5,
    kl_estimator: str = "k2",
    clip_eps: float = 0.2,
    gamma: float = 1.0,
    unbiased: bool = False,
) -> Algorithm:
    """REINFORCE++-baseline (arXiv 2501.03262; OpenRLHF 'reinforce_baseline'): R minus its
    group mean, returns, batch whitening (`reinforce_pp_advantages(baseline=True)`), PPO-clip
    token mean, and the KL moved from the reward into the loss: kl_coef * k2(pi || pi_ref)
    token mean (OpenRLHF scripts: `--use_kl_loss --kl_estimator k2`, coef 1e-5)."""
    return Algorithm(
        data="rollout",
        transform=rt.reinforce_pp_advantages(gamma=gamma, baseline=True, unbiased=unbiased),
        objective=pg_terms(clip_eps, None, None, kl_coef, kl_estimator, "token_mean", None, 0.0),
        passes=reference_passes(kl_coef),
    )


@register("opmd")
def opmd(form: str = "rec", tau: float | None = None, baseline: str = "mean") -> Algorithm:
    """OPMD, group-relative REINFORCE made off-policy by a regulariser (arXiv 2509.24203;
    Trinity-RFT `rec_policy_loss.py`, `opmd_policy_loss.py`, `opmd_advantage.py`).

    A_i = R_i - b_g (no std; `group_baseline_advantages`), token loss -A logp, token mean,
    no ratio and no clipping. form:
      'rec' (default, REC framework): + tau (logp - logp_old)^2 per token, tau = 0.1;
      'trinity' (the older Trinity loss): token_mean(-A logp) / (1 + tau), tau = 1.0.
    baseline: 'mean' or 'logavgexp' (b = tau log mean_g exp(R / tau), with the same tau).
    logp_old is the behaviour policy (module docstring).
    """
    if form not in OPMD_FORMS:
        raise ValueError(f"Unknown OPMD form={form!r}; expected one of {OPMD_FORMS}.")
    tau = (0.1 if form == "rec" else 1.0) if tau is None else tau
    if form == "rec":
        objective = reinforce_objective("token_mean", reg_tau=tau)
    else:
        objective = reinforce_objective("token_mean", scale=1.0 / (1.0 + tau))
    return Algorithm(data="rollout", transform=baseline_advantages(baseline, tau=tau), objective=objective)


@register("asymre")
def asymre(baseline_shift: float = -0.1) -> Algorithm:
    """AsymRE (arXiv 2509.24203; Trinity-RFT `asymre_advantage.py`): REINFORCE with a group-mean
    baseline shifted down, A_i = R_i - (mean_g R + baseline_shift) (equivalent to a -tau logp
    regulariser with tau = -shift), token loss -A logp, token mean, no ratio or clipping.
    Default shift -0.1 (Trinity's examples). Off-policy like `opmd` (module docstring)."""
    return Algorithm(
        data="rollout",
        transform=baseline_advantages("mean", shift=baseline_shift),
        objective=reinforce_objective("token_mean"),
    )
