"""Rewards from models: reward-model scoring, ensembles, and the combined reward sources.

`config.rewards` maps source names to weights. A source is a registered reward function
(a verifier, scored on the host per sample), an auxiliary reward model of `config.aux_models`
(head 'reward'; every row scored in one jitted forward over prompt + response tokens), or an
ensemble of `config.reward_ensembles`:

    config.aux_models = {"rm_a": {"checkpoint": ..., "head": "reward"}, "rm_b": {...}}
    config.reward_ensembles = {"rm": {"members": "rm_a,rm_b", "combine": "mean_minus_var", "coef": 0.5}}
    config.rewards = {"rm": 1.0}                 # no verifier: the ensemble is the reward

The reward is the weighted sum of the sources; each source's raw values are kept per row
(`extras['reward/<name>']`) and logged separately. A multi-label reward model (num_labels K >
1, `multi_label_rm`) is one source, R = Σ_k w_k r_k (`aux_models.<name>.label_weights`, equal
by default: MO-GRPO, configs/mo_grpo_arithmetic.py), its K scores kept as 'reward/<name>/<k>'.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm import sharding
from jaxrl_llm.models.auxiliary import AuxModel, combined_reward
from jaxrl_llm.rewards.math import get_reward, list_rewards, score_completions
from jaxrl_llm.rollout.strategies import Scores
from jaxrl_llm.train.forward import sequence_scores

ENSEMBLE_COMBINE = ("mean", "min", "mean_minus_var", "mean_minus_std")


def combine_ensemble(scores: np.ndarray, combine: str = "mean", coef: float = 0.0) -> np.ndarray:
    """Ensemble scores [K, N] -> [N] (Coste et al., "Reward model ensembles help mitigate
    overoptimization", arXiv 2310.02743; Eisenstein et al., arXiv 2312.09244):

    * 'mean'
    * 'min': worst-case optimisation (WCO), min_k r_k
    * 'mean_minus_var': uncertainty-weighted optimisation (UWO, Coste et al.'s form),
      mean − coef·Var_k r_k (population variance)
    * 'mean_minus_std': the same penalty on the scale of the scores, mean − coef·std_k r_k
      (population std)

    coef is λ (Coste et al. tune it per setting; no default value is implied).

    Example (members [1.0, 0.6, 1.4], λ 0.5): mean 1.0, min 0.6, mean_minus_var 0.946667.
      >>> combine_ensemble(np.array([[1.0, 2.0], [3.0, 2.0]]), "mean_minus_std", 1.0)  # [1., 2.]
    """
    scores = np.asarray(scores, np.float32)
    if combine == "mean":
        return scores.mean(0)
    if combine == "min":
        return scores.min(0)
    if combine == "mean_minus_var":
        return scores.mean(0) - coef * scores.var(0)
    if combine == "mean_minus_std":
        return scores.mean(0) - coef * scores.std(0)
    raise ValueError(f"reward ensemble combine={combine!r}; use one of {ENSEMBLE_COMBINE}")


def make_model_scorer(model: AuxModel, partitioning=None):
    """`score(prompt_ids, prompt_mask, response_ids, response_mask) -> np [N]` (or [N, K] for a
    multi-label model): the reward model's scores of every row in one jitted forward (sharded
    by its logical axes under a mesh)."""

    def run(params, prompt_ids, prompt_mask, response_ids, response_mask):
        return sequence_scores(model.config, params, prompt_ids, prompt_mask, response_ids, response_mask)

    if partitioning is None:
        jitted = jax.jit(run)
    else:
        p = partitioning
        jitted = sharding.ShardedJit(
            run,
            p,
            in_shardings=lambda params, *rows: (
                sharding.param_shardings(params, model.config, p, model.head),
                *sharding.batch_shardings(rows, p),
            ),
            out_shardings=lambda out: sharding.replicated(out, p),
        )

    def score(prompt_ids, prompt_mask, response_ids, response_mask) -> np.ndarray:
        out = jitted(
            model.params,
            *(jnp.asarray(x, jnp.int32) for x in (prompt_ids, prompt_mask, response_ids, response_mask)),
        )
        return np.asarray(sharding.to_host(out), np.float32)

    return score


class RewardSources:
    """`sources(prompts, response_ids, response_mask, completions, finished) -> Scores`.

    Built from `config.rewards`, `config.aux_models` (already loaded: name -> AuxModel) and
    `config.reward_ensembles`; errors name the config field and list what is known.
    """

    def __init__(self, rewards_config, aux_models: dict, ensembles_config=None, partitioning=None):
        self.weights = {name: float(w) for name, w in rewards_config.items()}
        if not self.weights:
            raise ValueError("config.rewards is empty; add a source, e.g. --config.rewards.exact_match=1.0")
        ensembles = dict(ensembles_config or {})
        self.functions, self.models, self.ensembles = [], {}, {}
        scorers = {}
        self.aux_models = aux_models

        def scorer(name, field):
            model = aux_models.get(name)
            if model is None or model.head != "reward":
                raise ValueError(
                    f"{field}: {name!r} is not an auxiliary reward model; config.aux_models has "
                    f"{sorted(n for n, m in aux_models.items() if m.head == 'reward')} with head 'reward'"
                )
            if name not in scorers:
                scorers[name] = make_model_scorer(model, partitioning)
            return scorers[name]

        for name, weight in self.weights.items():
            if name in ensembles:
                spec = ensembles[name]
                members = [m.strip() for m in str(spec["members"]).split(",") if m.strip()]
                if len(members) < 2:
                    raise ValueError(
                        f"reward_ensembles.{name}.members={spec['members']!r} needs at least two models"
                    )
                combine, coef = spec.get("combine", "mean"), float(spec.get("coef", 0.0))
                if combine not in ENSEMBLE_COMBINE:
                    raise ValueError(
                        f"reward_ensembles.{name}.combine={combine!r}; use one of {ENSEMBLE_COMBINE}"
                    )
                self.ensembles[name] = (
                    [(m, scorer(m, f"reward_ensembles.{name}.members")) for m in members],
                    combine,
                    coef,
                )
            elif name in aux_models:
                self.models[name] = scorer(name, f"rewards.{name}")
            else:
                if name not in list_rewards():
                    raise ValueError(
                        f"unknown reward source {name!r} in config field rewards: not a registered reward function "
                        f"({', '.join(list_rewards())}), nor a model of config.aux_models ({', '.join(aux_models) or 'none'}), "
                        f"nor an ensemble of config.reward_ensembles ({', '.join(ensembles) or 'none'})"
                    )
                self.functions.append((name, get_reward(name), weight))

    def __call__(self, prompts, response_ids, response_mask, completions, finished):
        total, per_source = np.zeros(len(completions), np.float32), {}
        if self.functions:
            fn_total, values = score_completions(
                self.functions, prompts.prompts, completions, prompts.answers, finished
            )
            total, per_source = total + fn_total, dict(values)
        rows = (prompts.prompt_ids, prompts.prompt_mask, response_ids, response_mask)
        for name, score in self.models.items():
            per_source.update(self._model_reward(name, score(*rows)))
            total = total + self.weights[name] * per_source[name]
        for name, (members, combine, coef) in self.ensembles.items():
            member_scores = np.stack([self._model_reward(m, score(*rows))[m] for m, score in members])
            for (member, _), s in zip(members, member_scores, strict=True):
                per_source[f"{name}/{member}"] = s
            per_source[f"{name}/std"] = member_scores.std(0)
            per_source[name] = combine_ensemble(member_scores, combine, coef)
            total = total + self.weights[name] * per_source[name]
        return Scores(total.astype(np.float32), per_source)

    def _model_reward(self, name: str, scores: np.ndarray) -> dict:
        """{name: the reward [N]} of the reward model `name` from its scores ([N], or [N, K]
        for a multi-label model: `combined_reward`, with each score kept as '<name>/<k>')."""
        model = self.aux_models[name]
        reward = {name: np.asarray(combined_reward(model, scores), np.float32)}
        if model.config.num_labels > 1:
            reward.update({f"{name}/{k}": scores[:, k] for k in range(scores.shape[1])})
        return reward
