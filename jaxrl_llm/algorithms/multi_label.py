"""Multi-label reward regression: one reward model with K outputs, one score per aspect, trained
through the same trainer as the policies (`Algorithm.head = 'reward'`, data 'scored').

The model is `RewardModel` with `config.model.num_labels = K`: the previous phase's (or the
initial) trunk and a zero-initialised head [D, K] read at the last real token, the layout of
Hugging Face `*ForSequenceClassification` with num_labels = K. Its run's checkpoints hold the
reward model: as an auxiliary model (`config.aux_models = {'rm': {'checkpoint':
'<run>/checkpoints/main/<step>', 'head': 'reward', 'label_weights': (w_1, ..., w_K)}}`) it
rewards GRPO/PPO with R = Σ_k w_k r_k (`weighted_reward`; equal weights by default,
configs/mo_grpo_arithmetic.py), and `save_checkpoint(dir, config, params, head='reward')`
exports it for `transformers`. Held-out evaluation reports the MSE and the correlation of each
aspect (`Evaluator._scored_model`).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.losses.reward import multi_label_mse
from jaxrl_llm.objectives import sequence_mean
from jaxrl_llm.transforms.base import identity
from jaxrl_llm.types import Algorithm


def multi_label_objective():
    """Mean over rows of `multi_label_mse(r(x, y), labels)`, the squared error averaged over
    the K aspects. outputs.scores: [B, K] ([B] when K = 1); batch.extras['labels']: [B, K].
    Metrics (means over rows): mse/<k> and score/<k>, the squared error and the predicted score
    of aspect k (0-based, the order of the labels)."""

    def objective(outputs, batch, state):
        labels = batch.extras["labels"]
        scores = outputs.scores.reshape(outputs.scores.shape[0], -1)  # [B] -> [B, 1] when K = 1
        if scores.shape != labels.shape:
            raise ValueError(
                f"the reward head gives {scores.shape[1]} scores per row, but the batch has "
                f"{labels.shape[1]} labels per row: set config field model.num_labels={labels.shape[1]}"
            )
        loss = sequence_mean(multi_label_mse(scores, labels), batch)
        metrics = {}
        for k in range(labels.shape[1]):
            metrics[f"mse/{k}"] = sequence_mean(jnp.square(scores[:, k] - labels[:, k]), batch)
            metrics[f"score/{k}"] = sequence_mean(scores[:, k], batch)
        return loss, metrics

    return objective


@register("multi_label_rm")
def multi_label_rm() -> Algorithm:
    """A multi-label reward model (Li et al., multi-objective GRPO, arXiv 2503.21819; no code
    found, written from the paper): a K-output regression head on the policy's trunk predicting
    K aspect scores (the paper's politeness, meaningfulness, actionability, safety), trained by

        L = (1/K) Σ_k (r_k(x, y) − s_k)²    (mean over rows; `multi_label_mse`)

    on completions with annotated scores s ∈ [0, 1]^K (data 'scored': `pipeline.scored_dataset`,
    records {"prompt", "completion", "labels": [K numbers]} or the synthetic arithmetic
    aspects). Score scale [assumed]: the paper's scale is not confirmed; labels are mapped to
    [0, 1] from data.label_range (default (0, 1)). K = config.model.num_labels. The RL reward
    R = Σ_k w_k r_k belongs to the reward source (aux_models.<name>.label_weights, equal
    weights [assumed] by default). No hyper-parameters."""
    return Algorithm(data="scored", transform=identity(), objective=multi_label_objective(), head="reward")
