"""SRPO, self-improving robust preference optimisation (Choi et al., arXiv 2406.01660, ICLR
2025), offline: one policy is both the generator π(y | x) and the self-improver π(y' | x, y)
that revises a draft y, trained jointly by squared losses whose minimiser does not depend on
the behaviour policy of the data.

Each pair (x, y_w, y_l) becomes three rows of one group (`srpo_records`, an
`Algorithm.pair_records`, so every row gets its reference log-probs from the usual pass):

    row 0: prompt x                               chosen y_w, rejected y_l   -> r0(y_w), r0(y_l)
    row 1: prompt revise(x, y_l) (draft y_l)      chosen y_w, rejected y_l   -> r(y_w|y_l), r(y_l|y_l)
    row 2: prompt revise(x, y_w) (draft y_w)      chosen y_w, rejected y_l   -> r(y_w|y_w), r(y_l|y_w)

with r = S_θ − S_ref summed over the completion, and `srpo_loss` couples the six log-ratios.
The rows of a pair stay in one micro-batch (`whole_groups`, extras['group_ids']), so
`train.batch_size / (train.minibatches · train.microbatches)` pairs must be whole.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.losses.preference import sequence_logps, srpo_loss
from jaxrl_llm.objectives import sequence_mean
from jaxrl_llm.train.passes import reference_pass
from jaxrl_llm.transforms.base import identity
from jaxrl_llm.types import Algorithm, Objective

ROWS = 3  # rows per pair: x, revise(x, y_l), revise(x, y_w)
DEFAULT_TEMPLATE = "{prompt}{draft}\n\nImprove this answer:\n"


def srpo_records(template: str = DEFAULT_TEMPLATE):
    """`pair_records` of SRPO: each record {prompt, chosen, rejected, ...} -> its three rows (the
    module docstring), in that order, with 'group' = the pair's position in the batch. The
    revision prompt is `template.format(prompt=x, draft=y)` over the rendered prompt text."""
    if "{prompt}" not in template or "{draft}" not in template:
        raise ValueError(f"srpo: algo.template={template!r} must contain '{{prompt}}' and '{{draft}}'")

    def pair_records(records: list[dict]) -> list[dict]:
        rows = []
        for group, r in enumerate(records):
            for draft in (None, r["rejected"], r["chosen"]):
                prompt = r["prompt"] if draft is None else template.format(prompt=r["prompt"], draft=draft)
                rows.append({**r, "prompt": prompt, "group": group})
        return rows

    return pair_records


def srpo_objective(beta: float = 0.1, alpha: float = 0.8, reduction: str = "sum") -> Objective:
    """Mean over pairs of `srpo_loss` on the groups of three rows (each micro-batch holds whole
    groups, row 3g + k the k-th row of pair g). Each pair's loss is spread over its three rows,
    so the mini-batch row mean (`sequence_mean`) is the mean over pairs. Metrics (means over
    pairs): srpo_self_improvement, srpo_generative, and the generative reward_accuracy
    (r0(y_w) > r0(y_l))."""

    def objective(outputs, batch, state):
        b = batch.chosen_ids.shape[0]

        def ratios(logp, ref, mask):  # [B] -> [B / 3, 3]: rows of a pair side by side
            r = sequence_logps(logp, mask, reduction) - sequence_logps(ref, mask, reduction)
            return r.reshape(-1, ROWS)

        w = ratios(outputs.logp[:b], batch.ref_chosen_logps, batch.chosen_mask)
        l = ratios(outputs.logp[b:], batch.ref_rejected_logps, batch.rejected_mask)  # noqa: E741
        loss, metrics = srpo_loss(w[:, 0], l[:, 0], w[:, 1], l[:, 1], w[:, 2], l[:, 2], beta, alpha)
        metrics["reward_accuracy"] = (w[:, 0] > l[:, 0]).astype(jnp.float32)
        per_row = lambda x: jnp.repeat(x, ROWS)  # noqa: E731
        return sequence_mean(per_row(loss), batch), {
            k: sequence_mean(per_row(v), batch) for k, v in metrics.items()
        }

    return objective


@register("srpo")
def srpo(
    beta: float = 0.1, alpha: float = 0.8, template: str = DEFAULT_TEMPLATE, reduction: str = "sum"
) -> Algorithm:
    """SRPO (Choi et al., arXiv 2406.01660; no official code, the loss as in the community TRL PR
    huggingface/trl#1772, `srpo_loss`):

        ℓ = (1 − α)·(β[r0(y_w) + r(y_w|y_l) − r0(y_l) − r(y_l|y_w)] − (2p − 1))²
            + α·Σ_{d ∈ {y_l, y_w}} (β[r(y_w|d) − r(y_l|d)] − (p − ½))²

    with hard labels p = 1, three rows per pair (module docstring). Defaults β 0.1, α 0.8 (the
    PR's; the paper's are not confirmed, [assumed]); the revision template is [assumed] too
    (the paper's wording is not public in code): give the task's own. reduction 'mean' uses
    length-averaged log-ratios (the squared loss of sums grows with length). Inference can
    revise its own answers: sample y0 ~ π(·|x), then y_{n+1} ~ π(·|revise(x, y_n))."""
    srpo_records(template)  # the template's error at build time
    return Algorithm(
        data="preference",
        transform=identity(),
        objective=srpo_objective(beta, alpha, reduction),
        passes=(reference_pass(),),
        whole_groups=True,
        pair_records=srpo_records(template),
    )
