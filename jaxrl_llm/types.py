"""The shared batch types and the algorithm interface (DESIGN.md §2.1-2.2).

Every algorithm reads and writes one `Rollout` (RL) or `PreferenceBatch` (offline pairs); both
are NamedTuple pytrees with fixed shapes, so one compiled function serves every step. Fields an
algorithm does not need stay `None` (an empty pytree: no memory, no trace-time cost).

An `Algorithm` mirrors `optax.GradientTransformation`: `transform` is a `RolloutTransform`
(`init() -> state`, `update(batch, state) -> (batch, state)`) that writes rewards/advantages into
the batch, and `objective(outputs, batch, state) -> (loss, metrics)` is a pure function of arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

Array = jax.Array


class Rollout(NamedTuple):
    """One RL batch: B = prompts x G sampled responses (row b*G + g), fixed shapes.

    prompt_ids, prompt_mask: [B, P] left-padded prompts (each repeated for its G samples).
    response_ids, response_mask: [B, T] right-padded responses; mask 1 on generated tokens incl.
      the stop token, 0 on padding.
    group_ids: [B] int32, rows sampled from the same prompt share an id.
    logp_behav: [B, T] log-probs at sampling time.
    logp_old: [B, T] pre-update policy log-probs (`None` with one update per rollout: the
      trainer then uses stop_gradient(logp), which is exactly the pre-update value).
    logp_ref: [B, T] reference-policy log-probs (algorithms that ask for a reference pass).
    values: [B, T] critic values at sampling time (algorithms that ask for a critic).
    rewards: [B] sequence rewards (verifier / reward model).
    token_rewards: [B, T] dense rewards, written by reward transforms.
    advantages, returns: [B, T], written by advantage transforms.
    extras: dict of algorithm-specific arrays; the trainer adds 'num_tokens' and 'num_seqs'
      (scalars: response tokens and sequences in the whole mini-batch) so loss aggregation uses
      the mini-batch denominator under gradient accumulation.
    """

    prompt_ids: Array
    prompt_mask: Array
    response_ids: Array
    response_mask: Array
    group_ids: Array | None = None
    logp_behav: Array | None = None
    logp_old: Array | None = None
    logp_ref: Array | None = None
    values: Array | None = None
    rewards: Array | None = None
    token_rewards: Array | None = None
    advantages: Array | None = None
    returns: Array | None = None
    extras: dict = {}


class PreferenceBatch(NamedTuple):
    """Offline preference pairs sharing one prompt each (DPO family).

    prompt_ids, prompt_mask: [B, P] left-padded prompts.
    chosen_ids, chosen_mask, rejected_ids, rejected_mask: [B, T] right-padded completions;
      masks are 1 on completion tokens incl. EOS.
    ref_chosen_logps, ref_rejected_logps: [B, T] per-token reference log-probs, computed once
      per batch by the trainer when the algorithm asks for a reference pass.
    extras: dict of algorithm-specific arrays (e.g. soft labels, margins) plus the trainer's
      'num_tokens' / 'num_seqs' mini-batch denominators.
    """

    prompt_ids: Array
    prompt_mask: Array
    chosen_ids: Array
    chosen_mask: Array
    rejected_ids: Array
    rejected_mask: Array
    ref_chosen_logps: Array | None = None
    ref_rejected_logps: Array | None = None
    extras: dict = {}


class ModelOutputs(NamedTuple):
    """What the trainer computes with gradient for an objective (all [B, T], response positions).

    logp: current-policy log-probs of the batch's response tokens (for a `PreferenceBatch`:
      the chosen rows, then the rejected rows, i.e. [2B, T]).
    entropy: per-token policy entropy (what entropy bonuses and metrics read).
    values: current critic values (value objectives only, else None).
    """

    logp: Array | None = None
    entropy: Array | None = None
    values: Array | None = None


Batch = Rollout | PreferenceBatch


class RolloutTransform(NamedTuple):
    """Optax-style batch transformation: `init() -> state`, `update(batch, state) -> (batch, state)`.

    Pure and jittable; `state` is a pytree (running reward moments, per-prompt statistics, ...).
    Compose with `chain` / `named_chain`.
    """

    init: Callable[[], Any]
    update: Callable[[Any, Any], tuple[Any, Any]]


# (outputs, batch, state) -> (scalar loss, dict of scalar metrics)
Objective = Callable[[ModelOutputs, Any, Any], tuple[Array, dict]]

# Extra passes an algorithm may ask the trainer for.
PASSES = ("reference", "critic", "old_logp")


class Algorithm(NamedTuple):
    """An RL or preference algorithm: transforms + objective + the passes it needs.

    data: 'rollout' (sampled online and scored), 'preference' (offline pairs) or 'supervised'
      (targets from the dataset, for SFT warm-starts).
    transform: writes rewards/advantages/... into the batch, once per batch before updates.
    objective: policy loss, pure function of arrays.
    value_objective: critic loss `(outputs with .values, batch, state)`, or None (no critic).
    passes: subset of `PASSES` the trainer must run before `transform` ('reference': logp_ref /
      ref_*_logps; 'critic': values; 'old_logp': logp_old even with one update per rollout).
    """

    data: str
    transform: RolloutTransform
    objective: Objective
    value_objective: Objective | None = None
    passes: frozenset = frozenset()
