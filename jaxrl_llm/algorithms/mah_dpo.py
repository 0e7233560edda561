"""MAH-DPO, multi-action-head DPO (arXiv 2510.01167, the MAHALO framework; official code
pearls-lab/multiobj-align `mah_dpo/mahdpo_trainers.py::get_batch_metrics`,
`mah_dpo/multihead_model.py`): a policy with one LM head per objective on a shared trunk
(`model.lm_heads = H`, `CausalLM`); each preference pair belongs to one objective and trains
that head (and the trunk), and at inference the heads mix with a user's weights,

    logits = Σ_k w̄_k (W_k h),   w̄ = model.head_weights / Σ model.head_weights

(the sampler, the evaluation and the HF export use the mixture: exported, it is one ordinary
LM head). The reference is the multi-head copy of the starting policy; from a one-head
checkpoint every head starts as its head (`builders.with_lm_heads`).

Objectives: a pair record's int field 'objective' when the data has one (JSONL pairs);
otherwise (question/answer records) record i is objective i mod H, and the synthetic
arithmetic objectives are 0 correctness (the right answer over a nearby wrong one, the
dataset's pair) and 1 format (the right answer over the same answer followed by
`format_suffix`); objectives ≥ 2 take the dataset's pair.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxrl_llm.algorithms.dpo import preference_objective
from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.objectives import PAIR_WEIGHT
from jaxrl_llm.train.forward import HEAD_IDS
from jaxrl_llm.train.passes import reference_pass
from jaxrl_llm.train.validation import ConfigError
from jaxrl_llm.types import Algorithm, RolloutTransform, add_metrics


def objective_pairs(num_objectives: int, format_suffix: str = " =", field: str = "algo.num_objectives"):
    """`pair_records` of MAH-DPO: each record gets 'head' = its objective (module docstring)."""
    if not isinstance(num_objectives, int) or num_objectives < 1:
        raise ValueError(f"mah_dpo: {field}={num_objectives!r} must be a positive integer")

    def pair_records(records: list[dict]) -> list[dict]:
        rows = []
        for r in records:
            if "objective" in r:
                k = int(r["objective"])
                if not 0 <= k < num_objectives:
                    raise ValueError(
                        f"record {r['index']}: objective={k} is not one of the {num_objectives} heads "
                        f"(config field {field}, model.lm_heads)"
                    )
            else:
                k = r["index"] % num_objectives
                if k == 1:
                    r = {**r, "rejected": r["chosen"] + format_suffix}
            rows.append({**r, "head": k})
        return rows

    return pair_records


def objective_weights(num_objectives: int) -> RolloutTransform:
    """extras[PAIR_WEIGHT] [B] = B / (n_k · K_present) for a pair of objective k, n_k the pairs of
    objective k in the batch and K_present the objectives with at least one: the pair mean of
    w·ℓ (`preference_objective`) is then the official loss, the mean over the objectives present
    of each objective's mean pair loss (not the mean over pairs). Formed over the whole batch,
    before the updates (with train.minibatches > 1, over the step's batch rather than each
    mini-batch). Metrics: mah/objective_<k>_pairs (the fraction of pairs of each objective)."""

    def update(batch, state):
        heads = batch.extras[HEAD_IDS]
        b = heads.shape[0]
        counts = jnp.sum(heads[:, None] == jnp.arange(num_objectives)[None, :], axis=0)  # [K]
        present = jnp.sum(counts > 0)
        weights = b / (counts[heads] * present)
        batch = batch._replace(extras={**batch.extras, PAIR_WEIGHT: weights.astype(jnp.float32)})
        return add_metrics(
            batch, **{f"mah/objective_{k}_pairs": counts[k] / b for k in range(num_objectives)}
        ), state

    return RolloutTransform(init=lambda: (), update=update)


def _heads_check(num_objectives: int):
    def check(model_config, aux_models):
        if model_config.lm_heads != num_objectives:
            raise ConfigError(
                f"mah_dpo trains one LM head per objective: config field algo.num_objectives={num_objectives} "
                f"but model.lm_heads={model_config.lm_heads}; set --config.model.lm_heads={num_objectives}"
            )

    return check


@register("mah_dpo")
def mah_dpo(
    num_objectives: int = 2, beta: float = 0.1, reduction: str = "sum", format_suffix: str = " ="
) -> Algorithm:
    """MAH-DPO (arXiv 2510.01167): for a pair of objective k, DPO on head k's summed log-probs,

        ℓ = −log σ(β[(S^k_θ(y_w) − S^k_θ(y_l)) − (S^k_ref(y_w) − S^k_ref(y_l))])

    and L = the mean over the objectives present in the batch of each one's mean ℓ
    (`objective_weights`). Needs `model.lm_heads = num_objectives`. Defaults β 0.1 and
    H = 2 objectives (the paper's math setting: accuracy and engagement). Not reproduced: the
    N(0, 1e-3²) perturbation of each policy head at the start (`equal_init`; here the heads
    start equal and diverge through their own pairs) and PRM-guided decoding."""
    return Algorithm(
        data="preference",
        transform=objective_weights(num_objectives),
        objective=preference_objective(beta, reduction=reduction),
        passes=(reference_pass()._replace(check=_heads_check(num_objectives)),),
        pair_records=objective_pairs(num_objectives, format_suffix),
    )
