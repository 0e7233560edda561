"""Online preference optimisation: pairs from the policy's own samples, ranked by the run's
reward sources (`config.rewards`: a verifier, or an auxiliary reward model), trained with the
DPO family's pairwise core (`preference_objective`).
"""

from __future__ import annotations

from jaxrl_llm.algorithms.dpo import preference_objective
from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.rollout.strategies import group_sampling
from jaxrl_llm.train.passes import reference_pass
from jaxrl_llm.transforms.rollout import preference_pairs
from jaxrl_llm.types import Algorithm


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
