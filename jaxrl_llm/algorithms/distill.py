"""On-policy distillation: the student samples, a frozen teacher scores every sampled token,
and the per-token reverse KL is the (negative) advantage of a policy-gradient loss.

With y ~ π_student (the batch's own samples), m the loss mask and γ the discount:

    d_t = log π_student(y_t | y_<t) − log π_teacher(y_t | y_<t)       (one-sample reverse KL)
    A_t = −coef · Σ_{s ≥ t} γ^{s−t} m_s d_s                            (γ = 0: A_t = −coef · d_t)
    ℓ_t = −A_t · r_t,   r_t = exp(logp_t − logp_behav_t)                (importance-sampling PG)

aggregated over the loss mask (`token_mean`). At the sampling policy r_t = 1 and the gradient
is Σ_t coef · d_t ∇ log π(y_t): the per-token REINFORCE estimate of ∇ KL(π_student ‖ π_teacher)
(the future-token terms dropped at γ = 0). d_t = 0 where the teacher agrees with the student,
so a teacher equal to the student gives zero loss and zero gradient.

Source followed: Thinking Machines, "On-Policy Distillation" (K. Lu et al., 2025,
thinkingmachines.ai/blog/on-policy-distillation) and its code, thinking-machines-lab/tinker-cookbook
`tinker_cookbook/distillation/train_on_policy.py::incorporate_kl_penalty` (reverse_kl =
sampled_logprobs − teacher_logprobs; advantages += −kl_penalty_coef · reverse_kl, optionally
discounted by kl_discount_factor; loss_fn 'importance_sampling': −Σ_t exp(logp − logp_sampler) · A_t,
or 'ppo'). Related: GKD (Agarwal et al., arXiv 2306.13649) trains on student samples with a
divergence between the full next-token distributions (reverse KL one of its choices); the
Qwen3 report (arXiv 2505.09388) distils on-policy by aligning the student's logits with the
teacher's under a KL. Here only the sampled token's teacher log-prob is used (the estimate the
blog and tinker use: the teacher pass keeps [B, T], not [B, T, V]).

Choices where sources differ: the student log-probs in d are the sampler's (tinker's
`sampled_logprobs`; `student='old'` uses the trainer's recomputed ones); the ratio is taken
against the sampler's log-probs (tinker's importance-sampling loss; `ratio='old'`: against
logp_old, PPO-style epochs); tinker sums the per-token losses (scale in its learning rate),
here `token_mean`. The teacher must share the policy's tokenizer (same token ids): its
vocabulary size is checked when the trainer is built (`Pass.check`). Sample at
`sampling.temperature = 1` (the student's own distribution; the teacher is scored at
`teacher_temperature`).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.objectives import loss_mask, policy_surrogate
from jaxrl_llm.train.passes import aux_model_check, old_policy_pass, teacher_pass
from jaxrl_llm.transforms import estimators
from jaxrl_llm.transforms.base import chain, is_static_zero
from jaxrl_llm.transforms.correction import behaviour_as_old
from jaxrl_llm.transforms.rollout import _require, _require_extra
from jaxrl_llm.types import Algorithm, Pass, Rollout, RolloutTransform, add_metrics


def reverse_kl_advantages(logp_student, logp_teacher, mask, coef: float = 1.0, discount: float = 0.0):
    """A_t = −coef · Σ_{s≥t} γ^{s−t} m_s (logp_student_s − logp_teacher_s) over the mask-1
    tokens (0 elsewhere; `estimators.discounted_returns` of −coef·d). [B, T] x3 -> [B, T].

    Example: logp_student = log [0.5, 0.2], logp_teacher = log [0.25, 0.4], coef 1, γ = 0
    -> d = [log 2, −log 2], A = [−0.6931, 0.6931]; with γ = 1: A = [0, 0.6931].
    """
    mask = jnp.asarray(mask, jnp.float32)
    d = (jnp.asarray(logp_student, jnp.float32) - jnp.asarray(logp_teacher, jnp.float32)) * mask
    return estimators.discounted_returns(-coef * d, mask, discount)


def distill_advantages(
    teacher: str = "teacher",
    coef: float = 1.0,
    discount: float = 0.0,
    student: str = "behaviour",
    reward_coef: float = 0.0,
) -> RolloutTransform:
    """advantages = `reverse_kl_advantages` of the student's log-probs (logp_behav, or logp_old
    with student='old') against extras['teacher_logp/<teacher>'], plus reward_coef · (R − group
    mean R) on every loss token (tinker adds the environment's group-centred advantage; 0: pure
    distillation). Metric: distill/reverse_kl (token mean of d, tinker's teacher_kl)."""
    field = {"behaviour": "logp_behav", "old": "logp_old"}[student]
    key = f"teacher_logp/{teacher}"
    rewards_off = is_static_zero(reward_coef)

    def update(r: Rollout, state):
        _require(r, "distill_advantages", field, *(() if rewards_off else ("rewards", "group_ids")))
        _require_extra(r, "distill_advantages", key, f"teacher_pass({teacher!r})")
        mask, logp = loss_mask(r), getattr(r, field)
        adv = reverse_kl_advantages(logp, r.extras[key], mask, coef, discount)
        if not rewards_off:
            adv = (
                adv
                + reward_coef
                * estimators.group_advantages(r.rewards, r.group_ids, std="none")[:, None]
                * mask
            )
        kl = jnp.sum((logp - r.extras[key]) * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        return add_metrics(r._replace(advantages=adv), **{"distill/reverse_kl": kl}), state

    return RolloutTransform(init=lambda: (), update=update)


def checked_teacher_pass(name: str, temperature: float = 1.0) -> Pass:
    """`teacher_pass(name)` with a `Pass.check`: the teacher must be a causal LM over the
    policy's vocabulary, checked when the trainer is built; errors name config.aux_models.<name>."""

    check = aux_model_check(
        name,
        ("causal_lm",),
        "a distillation teacher",
        "on-policy distillation scores the student's token ids with the teacher",
    )
    return teacher_pass(name, temperature)._replace(check=check)


@register("on_policy_distill")
def on_policy_distill(
    teacher: str = "teacher",
    coef: float = 1.0,
    discount: float = 0.0,
    student: str = "behaviour",
    ratio: str = "behaviour",
    clip_eps: float | None = None,
    loss_agg: str = "token_mean",
    teacher_temperature: float = 1.0,
    reward_coef: float = 0.0,
) -> Algorithm:
    """On-policy distillation from the auxiliary causal LM `teacher` (config.aux_models.<teacher>
    = {checkpoint, head: 'causal_lm'}); formula and sources in the module docstring. Defaults:
    tinker-cookbook's (kl_penalty_coef 1, kl_discount_factor 0, the 'importance_sampling' loss:
    clip_eps=None, ratio against the sampler's log-probs). clip_eps: a PPO clip ('ppo' loss).
    ratio='old': the ratio against logp_old (the trainer's, for several epochs/mini-batches)."""
    if student not in ("behaviour", "old") or ratio not in ("behaviour", "old"):
        raise ValueError(
            f"on_policy_distill: student={student!r}, ratio={ratio!r}; each is 'behaviour' or 'old'"
        )
    passes = (checked_teacher_pass(teacher, teacher_temperature),)
    passes += (old_policy_pass(),) if student == "old" else ()
    steps = [distill_advantages(teacher, coef, discount, student, reward_coef)]
    steps += [behaviour_as_old()] if ratio == "behaviour" else []
    eps = math.inf if clip_eps is None else clip_eps  # no clip: the plain importance-sampling loss
    return Algorithm(
        data="rollout",
        transform=chain(*steps),
        objective=policy_surrogate(eps, None, None, loss_agg),
        passes=passes,
    )
