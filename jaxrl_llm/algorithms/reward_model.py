"""Reward modelling: a Bradley–Terry reward model trained on preference pairs, through the same
trainer as the policies (`Algorithm.head = 'reward'`).

The model is `RewardModel`: the policy's trunk (from the previous phase, e.g. the SFT
warm-start, or the initial checkpoint) and a zero-initialised scalar head read at the last real
token, the layout of Hugging Face `*ForSequenceClassification` (num_labels = 1). Its run's
checkpoints hold the reward model: `config.aux_models = {'rm': {'checkpoint':
'<run>/checkpoints/main/<step>', 'head': 'reward'}}` hands it to PPO/GRPO as a reward source,
and `save_checkpoint(dir, config, params, head='reward')` exports it for `transformers`.
Held-out evaluation reports pair accuracy, calibration (ECE) and the score distributions
(`Evaluator._reward_model`).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.losses.reward import bradley_terry_loss
from jaxrl_llm.objectives import sequence_mean
from jaxrl_llm.transforms.base import identity
from jaxrl_llm.types import Algorithm


def reward_model_objective(margin: float = 0.0, center_coef: float = 0.0):
    """Mean over pairs of `bradley_terry_loss(r_w, r_l, m, center_coef)`; m is the batch's
    per-pair `extras['margin']` when the data has one, else the constant `margin`.
    outputs.scores: [2B] (chosen rows, then rejected rows).
    Metrics (means over pairs): accuracy (r_w > r_l), margin (r_w − r_l), reward_chosen,
    reward_rejected, reward_centre ((r_w + r_l) / 2: what centring pulls to 0)."""

    def objective(outputs, batch, state):
        b = batch.chosen_ids.shape[0]
        chosen, rejected = outputs.scores[:b], outputs.scores[b:]
        m = batch.extras.get("margin", margin)
        loss = sequence_mean(bradley_terry_loss(chosen, rejected, m, center_coef), batch)
        metrics = {
            "accuracy": (chosen > rejected).astype(jnp.float32),
            "margin": chosen - rejected,
            "reward_chosen": chosen,
            "reward_rejected": rejected,
            "reward_centre": (chosen + rejected) / 2,
        }
        return loss, {k: sequence_mean(v, batch) for k, v in metrics.items()}

    return objective


@register("reward_model")
def reward_model(margin: float = 0.0, center_coef: float = 0.0) -> Algorithm:
    """A Bradley–Terry reward model (Ouyang et al., arXiv 2203.02155; TRL `reward_trainer.py`):

        L = −log σ(r(x, y_w) − r(x, y_l) − m) + c · (r(x, y_w) + r(x, y_l))²

    m: a margin (Llama 2, arXiv 2307.09288, maps the preference strength to a margin; a
    per-pair `extras['margin']` overrides the constant), c: reward centring (Eisenstein et al.,
    arXiv 2312.09244; TRL's `center_rewards_coefficient`, 0.01 suggested). Defaults m = 0,
    c = 0 (TRL). Trains `RewardModel` (head 'reward') on `PreferenceBatch`es."""
    return Algorithm(
        data="preference",
        transform=identity(),
        objective=reward_model_objective(margin, center_coef),
        head="reward",
    )
