"""Online preference optimisation from the policy's own samples, ranked by the run's reward
sources (`config.rewards`: a verifier, or an auxiliary reward model): online DPO, iterative DPO
in rounds and APO (pairs, the DPO family's pairwise core `preference_objective`), SuperHF (the best samples,
supervised, with a full-vocabulary KL prior) and BRAIn (all samples, self-normalised
importance weights towards the reward-conditioned posterior).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxrl_llm.algorithms.dpo import preference_objective
from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.losses.preference import brain_surrogate, superhf_kl
from jaxrl_llm.objectives import loss_mask, nll, sequence_mean
from jaxrl_llm.rollout.strategies import group_sampling
from jaxrl_llm.train.passes import reference_pass
from jaxrl_llm.transforms.rollout import (
    BRAIN_WEIGHT,
    brain_weights_transform,
    preference_pairs,
    top_k_completions,
)
from jaxrl_llm.types import Algorithm, Objective, Rounds


@register("online_dpo")
def online_dpo(
    beta: float = 0.1,
    num_samples: int = 2,
    choose: str = "max_min",
    missing_eos_penalty: float = 0.0,
    loss_type: str = "sigmoid",
    reduction: str = "sum",
) -> Algorithm:
    """Online DPO (Guo et al., "Direct language model alignment from online AI feedback", arXiv
    2402.04792; TRL `OnlineDPOTrainer`) and the per-step form of iterative DPO (Xiong et al.,
    arXiv 2312.11456; Dong et al., arXiv 2405.07863; RLHFlow/Online-RLHF):

        each step: G = num_samples responses per prompt from the current policy, scored by
        `config.rewards`; y_w / y_l = the best / worst (`preference_pairs`, ties get no
        gradient); L = mean over pairs of −log σ(β h), h the DPO logit against the frozen
        initial policy (summed log-probs).

    Defaults: β 0.1 (TRL), G = 2 (TRL; RLHFlow uses G = 8 with 'max_min'), no EOS penalty
    (TRL's `missing_eos_penalty`, subtracted from the score of responses without EOS).
    loss_type / reduction as in `dpo` ('ipo' with 'mean' is TRL's IPO branch). The algorithm
    samples its own G per prompt (its strategy), whatever `sampling.num_samples` says.
    """
    return Algorithm(
        data="rollout",
        strategy=group_sampling(num_samples),
        transform=preference_pairs(num_samples, choose, missing_eos_penalty),
        objective=preference_objective(beta, loss_type, reduction=reduction),
        passes=(reference_pass(),),
    )


@register("iterative_dpo")
def iterative_dpo(
    beta: float = 0.1,
    num_samples: int = 2,
    choose: str = "max_min",
    round_steps: int = 20,
    missing_eos_penalty: float = 0.0,
    loss_type: str = "sigmoid",
    reduction: str = "sum",
) -> Algorithm:
    """Iterative DPO in rounds (Xu et al., "Some things are more CRINGE than others", arXiv
    2312.16682; Xiong et al., arXiv 2312.11456; Dong et al., "RLHF workflow", arXiv 2405.07863):
    `online_dpo` whose reference is the policy at the start of each round of `round_steps`
    steps (`Rounds`, α = 0), instead of the initial policy for the whole run:

        round t: reference π_t = the policy after round t − 1; every step of the round, pairs
        from the current policy's samples ranked by `config.rewards`; L = −log σ(β h_t), h_t the
        DPO logit against π_t.

    The published recipes generate a round's whole dataset from π_t, then train on it; here the
    samples of each step come from the current policy (fresher within a round) and only the
    reference is per round. Default round_steps 20 ([assumed]: the papers run 3 rounds over
    their prompt set; set it to `train.steps / rounds`)."""
    return online_dpo(beta, num_samples, choose, missing_eos_penalty, loss_type, reduction)._replace(
        rounds=Rounds(round_steps)
    )


@register("apo")
def apo(
    beta: float = 0.1,
    alpha: float = 0.3,
    num_samples: int = 2,
    choose: str = "max_min",
    round_steps: int = 20,
    missing_eos_penalty: float = 0.0,
    loss_type: str = "sigmoid",
    reduction: str = "sum",
) -> Algorithm:
    """APO, accelerated preference optimisation (He, Yuan, Gu, arXiv 2410.06293): iterative DPO
    as a proximal-point method with a Nesterov extrapolation between rounds,

        θ̂_{t+1} = argmin_θ L_DPO(θ; reference θ_t, pairs from θ_t's samples)
        θ_{t+1} = θ̂_{t+1} + α (θ̂_{t+1} − θ̂_t)

    (α = 0 is `iterative_dpo`). The extrapolation is in parameter space, exact for log-linear
    policies; the exact pairwise form of the next round's reference log-ratio,
    (1 + α)(S_{θ̂_{t+1}}(y_w) − S_{θ̂_{t+1}}(y_l)) − α(S_{θ̂_t}(y_w) − S_{θ̂_t}(y_l)), is
    `losses.preference.apo_reference_logratio`. No official code was found; α 0.3 and the
    round length are [assumed] (the paper runs 3 rounds); β 0.1. Full fine-tuning only."""
    return online_dpo(beta, num_samples, choose, missing_eos_penalty, loss_type, reduction)._replace(
        rounds=Rounds(round_steps, alpha)
    )


def superhf_objective(kl_coef: float = 0.35) -> Objective:
    """CE of the kept completions (token mean over the mini-batch's kept tokens) + kl_coef ·
    the mean over kept completions of `superhf_kl(outputs.kl, loss mask)`, the clamped
    token-mean forward KL(π_ref ‖ π_θ) over the full vocabulary. Metrics: nll, kl."""
    ce = nll()

    def objective(outputs, batch, state):
        loss, metrics = ce(outputs, batch, state)
        kl = sequence_mean(superhf_kl(outputs.kl, loss_mask(batch)), batch)
        return loss + kl_coef * kl, {**metrics, "kl": kl}

    return objective


@register("superhf")
def superhf(num_samples: int = 16, top_k: int = 1, kl_coef: float = 0.35) -> Algorithm:
    """SuperHF (Mukobi et al., "SuperHF: supervised iterative learning from human feedback",
    arXiv 2310.16763; official openfeedback/superhf `training.py`, `filtering.py`): expert
    iteration with a KL prior instead of PPO,

        each step: n = num_samples completions per prompt from the current policy, scored by
        `config.rewards` (a reward model or a verifier); keep the top_k of each prompt, never an
        empty one (`top_k_completions`); L = CE(kept) + c_KL · mean_kept max(0, mean_t KL_t),
        KL_t = Σ_v π_ref(v) (log π_ref(v) − log π_θ(v))   (full vocabulary, `Algorithm.full_kl`)

    with π_ref the frozen initial policy. Defaults from the official `default.yaml`: n 16
    (superbatch_size), top_k 1, c_KL 0.35. Not reproduced: the official runs fine-tune LoRA
    adapters (r = 4; here `model.lora` is the user's choice, the reference is then the base
    model as there), accumulate 2 prompts' superbatches per update and sample with top-p 0.95
    (`sampling.top_p`)."""
    return Algorithm(
        data="rollout",
        strategy=group_sampling(num_samples),
        transform=top_k_completions(num_samples, top_k),
        objective=superhf_objective(kl_coef),
        full_kl="forward",
    )


def brain_objective(group_size: int) -> Objective:
    """Mean over prompts of `brain_surrogate`: Σ_rows −w_i·S_θ(y_i) / (rows / n), with the
    weights w_i = α̂_i − β̂_i of `brain_weights_transform` (extras['brain_weight']). Metric:
    weighted_logp (the surrogate without its sign)."""

    def objective(outputs, batch, state):
        mask = loss_mask(batch)
        policy = jnp.sum(outputs.logp * mask, axis=1)
        surrogate = brain_surrogate(
            policy[:, None], batch.extras[BRAIN_WEIGHT][:, None]
        )  # −w_i S_θ(y_i) per row
        loss = group_size * sequence_mean(surrogate, batch)
        return loss, {"weighted_logp": -loss}

    return objective


@register("brain")
def brain(num_samples: int = 8, beta: float = 1.0) -> Algorithm:
    """BRAIn (Pandey et al., "BRAIn: Bayesian reward-conditioned amortized inference for natural
    language generation from feedback", arXiv 2402.02479, ICML 2024; the estimator of the
    authors' `gradient_estimators.py::estimator_brain`): distil the reward-conditioned posterior
    p(y | x, G=1) ∝ π_ref(y|x)·exp(r(x, y)/β) into π_θ with self-normalised importance weights,

        α̂_i = softmax_i(S_ref(y_i) + r_i/β − S_q(y_i)),  β̂_i = softmax_i(S_θ(y_i) − S_q(y_i)) = 1/n
        L = −(1/B) Σ_prompts Σ_i (α̂_i − β̂_i)·S_θ(y_i)

    over n = num_samples samples per prompt from the current policy (the proposal q; rewards
    from `config.rewards`), π_ref the frozen initial policy. β = 1.0 and n = 8 are assumptions:
    the paper's LLM values are not confirmed."""
    return Algorithm(
        data="rollout",
        strategy=group_sampling(num_samples),
        transform=brain_weights_transform(num_samples, beta),
        objective=brain_objective(num_samples),
        passes=(reference_pass(),),
    )
