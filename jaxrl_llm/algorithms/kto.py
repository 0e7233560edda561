"""KTO, Kahneman–Tversky optimisation (Ethayarajh et al., arXiv 2402.01306), on unpaired data:
each example is one completion with a thumbs-up (desirable) or thumbs-down (undesirable) label.

    r(x, y) = S_θ(y|x) − S_ref(y|x)                     (summed completion log-probs)
    z0      = max(0, Σ_j [S_θ(y'_j|x_j) − S_ref(y'_j|x_j)] / n)   (stop-gradient)
    desirable:    λ_D · (1 − σ(β (r − z0)))
    undesirable:  λ_U · (1 − σ(β (z0 − r)))
    loss    = mean over the n examples of the mini-batch

z0, the reference point, estimates KL(π_θ‖π_ref) from *mismatched* pairs: prompt x_j with the
completion y'_j = y_{j−1} of the previous example of the batch (cyclic), TRL's `_get_kl_dataset`
"+1 offset". Reference code followed: TRL `trl/trainer/kto_trainer.py::_compute_loss` (loss,
the clamp of the KL estimate at 0, its gathering over processes); the official HALOs code was
not read. The per-example loss and z0 are `losses.kto_loss` / `losses.kto_kl_anchor`.

The batch (`Algorithm.data == 'unpaired'`, `data.pipeline.unpaired_dataset`) is a
`PreferenceBatch` whose rows are the examples:

    chosen_ids / chosen_mask      [B, T]  the completion y_i of example i
    rejected_ids / rejected_mask  [B, T]  its KL completion y_{i−1} (the previous row's
                                          completion, under row i's prompt)
    extras['label']               [B]     1.0 desirable, 0.0 undesirable

so the trainer's forward over [2B] rows and its `reference_pass` serve KTO unchanged: outputs.logp
[:B] are the completions, [B:] the mismatched pairs, ref_chosen_logps / ref_rejected_logps
their reference log-probs. The mismatched pairs are formed by the data pipeline over the whole
data batch, so micro-batching never changes which completion goes with which prompt; with
`train.minibatches > 1` the trainer permutes rows, and each row's KL completion travels with
it (z0 is then the mean over the mini-batch's pairs, still mismatched).

Data: question/answer records give their correct final answer (desirable) or a wrong one
(undesirable), `config.data.desirable_fraction` of them desirable (default 0.5); JSON-lines records in TRL's unpaired
format {"prompt", "completion", "label"} (texts or chat messages) give their own; prompt/chosen/rejected
pairs give two examples each, the chosen desirable and the rejected not (TRL's
`unpair_preference_dataset`, `pipeline.unpair_records`).

z0 is a mini-batch-wide quantity of the current policy: it comes through `Algorithm.statistics`
(Σ of the pairs' log-ratios and the number of desirable examples, summed by the trainer over
the micro-batches of the mini-batch, before the gradient), divided by the mini-batch's pair
count (`extras['num_seqs']`), so 1 and k micro-batches give the same z0, loss and gradient.
TRL's z0 is likewise the mean over the whole (gathered) batch.

Defaults (the paper, TRL `KTOConfig`): β = 0.1, λ_D = λ_U = 1; keep λ_D·n_D / (λ_U·n_U) in
[1, 4/3] (`data.pipeline.check_class_balance` warns when the training data does not). KTO needs
batches of >= 2 examples (one example's KL completion would be its own).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.losses.preference import kto_kl_anchor, kto_loss, sequence_logps
from jaxrl_llm.objectives import normalisers, sequence_mean
from jaxrl_llm.train.passes import reference_pass
from jaxrl_llm.transforms.base import identity
from jaxrl_llm.types import Algorithm

sg = jax.lax.stop_gradient
LABEL = "label"  # PreferenceBatch.extras key of an unpaired batch's labels [B] (1 desirable, 0 not)
KL_SUM = "kto/kl_sum"  # statistics: Σ over the rows' mismatched pairs of S_θ(y') − S_ref(y')
NUM_DESIRABLE = "kto/num_desirable"  # statistics: Σ of the labels


def _labels(batch) -> jax.Array:
    if LABEL not in (batch.extras or {}):
        raise ValueError(
            "kto trains on unpaired batches: a PreferenceBatch with extras['label'] [B] (1 desirable, 0 "
            "undesirable) and each row's mismatched KL completion as its rejected row, as "
            "jaxrl_llm.data.pipeline.unpaired_dataset makes them (Algorithm.data='unpaired')"
        )
    return jnp.asarray(batch.extras[LABEL], jnp.float32)


def kto_statistics(outputs, batch, state) -> dict:
    """`Algorithm.statistics` of KTO, sums over the rows of `batch`: the mismatched pairs'
    log-ratios Σ_i [S_θ(y_{i−1}|x_i) − S_ref(y_{i−1}|x_i)] (outputs.logp[B:] over rejected_mask)
    and the number of desirable examples Σ_i label_i. -> {KL_SUM: scalar, NUM_DESIRABLE: scalar}."""
    b = batch.chosen_ids.shape[0]
    kl_policy = sequence_logps(outputs.logp[b:], batch.rejected_mask)
    kl_ref = sequence_logps(batch.ref_rejected_logps, batch.rejected_mask)
    return {KL_SUM: jnp.sum(sg(kl_policy) - kl_ref), NUM_DESIRABLE: jnp.sum(_labels(batch))}


def kto_objective(beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
    """KTO's objective on an unpaired `PreferenceBatch` (module docstring): mean over examples of
    `kto_loss` with z0 = `kto_kl_anchor` of the mini-batch totals in `outputs.stats` (this
    batch's own outside the trainer).

    Metrics (means over the mini-batch's examples, micro-batch sums):
      kl                  z0, the clamped KL estimate (TRL's logged 'kl')
      reward_desirable    mean β·r over the desirable examples (0 when there are none)
      reward_undesirable  mean β·r over the undesirable examples (0 when there are none)
      reward_accuracy     share of examples on their label's side of the reference point:
                          r > z0 for desirable, r < z0 for undesirable (ties count as wrong)
      desirable_fraction  n_D / n
    """

    def objective(outputs, batch, state):
        b = batch.chosen_ids.shape[0]
        totals = outputs.stats if outputs.stats is not None else kto_statistics(sg(outputs), batch, state)
        num_seqs = normalisers(batch)["num_seqs"]
        n = jnp.asarray(b if num_seqs is None else num_seqs, jnp.float32)
        z0 = kto_kl_anchor(jnp.reshape(totals[KL_SUM], (1,)), jnp.zeros(1), num_pairs=n)
        good = _labels(batch)
        policy = sequence_logps(outputs.logp[:b], batch.chosen_mask)
        ref = sequence_logps(batch.ref_chosen_logps, batch.chosen_mask)
        losses, m = kto_loss(policy, ref, good, z0, beta, desirable_weight, undesirable_weight)
        n_desirable = totals[NUM_DESIRABLE]
        margin = m["reward"] - beta * z0  # β (r − z0)
        correct = jnp.where(good > 0, margin > 0, margin < 0).astype(jnp.float32)
        metrics = {
            "kl": sequence_mean(jnp.full(b, z0), batch),  # sums to z0 over the micro-batches
            "reward_desirable": jnp.sum(good * m["reward"]) / jnp.maximum(n_desirable, 1.0),
            "reward_undesirable": jnp.sum((1.0 - good) * m["reward"]) / jnp.maximum(n - n_desirable, 1.0),
            "reward_accuracy": sequence_mean(correct, batch),
            "desirable_fraction": sequence_mean(good, batch),
        }
        return sequence_mean(losses, batch), metrics

    return objective


@register("kto")
def kto(beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> Algorithm:
    """KTO on unpaired examples (module docstring): per example λ_D (1 − σ(β (r − z0))) if
    desirable, λ_U (1 − σ(β (z0 − r))) if not, r = S_θ(y) − S_ref(y), z0 the clamped KL estimate
    from mismatched pairs (stop-gradient, through `statistics`), mean over examples. The
    reference log-probs are computed once per batch by the trainer (frozen reference = the
    initial policy). Defaults (TRL `KTOConfig`, the paper): β 0.1, λ_D = λ_U = 1."""
    return Algorithm(
        data="unpaired",
        transform=identity(),
        objective=kto_objective(beta, desirable_weight, undesirable_weight),
        passes=(reference_pass(),),
        statistics=kto_statistics,
    )
