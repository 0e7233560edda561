"""The shared batch types and the algorithm interface (docs/architecture.md).

Every algorithm reads and writes one `Rollout` (RL) or `PreferenceBatch` (pairs); both are
NamedTuple pytrees with fixed shapes, so one compiled function serves every step. Fields an
algorithm does not need stay `None` (an empty pytree: no memory, no trace-time cost).

An `Algorithm` is the sum of small named pieces, each replaceable on its own:

  strategy   how a batch is collected (host side; `jaxrl_llm.rollout.strategies`)
  passes     extra jitted forward passes over the batch, each declaring what it writes
  transform  a `RolloutTransform` (`init() -> state`, `update(batch, state) -> (batch, state)`,
             like `optax.GradientTransformation`) writing rewards/advantages into the batch
  objective  `(outputs, batch, state) -> (loss, metrics)`, a pure function of arrays

The objective contract: the trainer splits a mini-batch into `train.microbatches` parts and
SUMS the objective's loss, gradients and metrics over them. An objective must therefore
normalise by the whole mini-batch's denominators, which the trainer puts in `batch.extras`
('num_tokens': loss-mask tokens, 'num_seqs': rows). The helpers in `jaxrl_llm.objectives`
(`token_mean`, `sequence_mean`, `aggregate(..., **normalisers(batch))`) do; a bare `jnp.mean`
does not (its loss and gradients come out multiplied by the number of micro-batches).
`jaxrl_llm.check_microbatch_invariance` tests an objective for exactly this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

Array = jax.Array


class _RolloutFields(NamedTuple):
    prompt_ids: Array
    prompt_mask: Array
    response_ids: Array
    response_mask: Array
    loss_mask: Array | None = None
    group_ids: Array | None = None
    logp_behav: Array | None = None
    logp_old: Array | None = None
    entropy_old: Array | None = None
    logp_ref: Array | None = None
    values: Array | None = None
    rewards: Array | None = None
    token_rewards: Array | None = None
    advantages: Array | None = None
    returns: Array | None = None
    extras: dict | None = None
    metrics: dict | None = None


class Rollout(_RolloutFields):
    """One RL batch: B rows of (prompt, response), fixed shapes.

    prompt_ids, prompt_mask: [B, P] left-padded prompts (repeated for each sample of a prompt).
    response_ids, response_mask: [B, T] right-padded responses; `response_mask` says which
      positions exist (1 on every real token: generated tokens incl. the stop token, and in a
      multi-turn episode the observation tokens between turns; 0 on padding). Attention uses it.
    loss_mask: [B, T] which positions carry loss (`None` = response_mask). Observation tokens,
      hint tokens and filtered tokens are attended (response_mask 1) but carry none (loss_mask
      0). Objectives, advantage transforms and the mini-batch token count use it
      (`jaxrl_llm.objectives.loss_mask(batch)` resolves the default).
    group_ids: [B] int32, rows sampled from the same prompt share an id; the default strategy
      writes rows b * G + g for prompt b.
    logp_behav: [B, T] log-probs at sampling time (0 where nothing was sampled).
    logp_old, entropy_old: [B, T] pre-update policy log-probs / entropies (the `old_policy_pass`;
      `logp_old=None` with one update per rollout: objectives then use stop_gradient(logp),
      exactly the pre-update value, see `objectives.old_logp`).
    logp_ref: [B, T] reference-policy log-probs (the `reference_pass`).
    values: [B, T] critic values at sampling time (the `critic_pass`).
    rewards: [B] sequence rewards (verifiers / reward models, combined as configured).
    token_rewards: [B, T] dense rewards, written by reward transforms.
    advantages, returns: [B, T], written by advantage transforms.
    extras: dict of per-row arrays [B, ...] written by strategies, passes and transforms (e.g.
      'reward/<source>', 'finished', 'baseline_rewards'), plus the trainer's scalar mini-batch
      denominators 'num_tokens' / 'num_seqs'. Scalars are kept whole when rows are selected.
    metrics: dict of scalars that strategies and transforms report (`add_metrics`); the trainer
      logs them once per step after `prepare`.
    A new instance never shares `extras` / `metrics` dicts with another (no mutable defaults).
    """

    __slots__ = ()

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls, *args, **kwargs)
        return _fresh_dicts(self)


class _PreferenceFields(NamedTuple):
    prompt_ids: Array
    prompt_mask: Array
    chosen_ids: Array
    chosen_mask: Array
    rejected_ids: Array
    rejected_mask: Array
    ref_chosen_logps: Array | None = None
    ref_rejected_logps: Array | None = None
    extras: dict | None = None
    metrics: dict | None = None


class PreferenceBatch(_PreferenceFields):
    """Preference pairs sharing one prompt each (DPO family), offline or built online from a
    `Rollout` by a transform (see `Algorithm`).

    prompt_ids, prompt_mask: [B, P] left-padded prompts.
    chosen_ids, chosen_mask, rejected_ids, rejected_mask: [B, T] right-padded completions;
      masks are 1 on completion tokens incl. EOS (attention and loss alike).
    ref_chosen_logps, ref_rejected_logps: [B, T] per-token reference log-probs.
    extras, metrics: as in `Rollout`.

    Unpaired batches (KTO, `Algorithm.data == 'unpaired'`, `data.pipeline.unpaired_dataset`)
    use the same fields with another meaning: row i is one example (x_i, y_i) with
    extras['label'] [B] float32 (1 desirable, 0 undesirable); chosen_* hold its completion y_i
    and rejected_* its mismatched KL completion y_{i−1}, the previous row's completion (cyclic,
    formed over the whole data batch) under prompt x_i, for KTO's reference point
    (`jaxrl_llm.algorithms.kto`).
    """

    __slots__ = ()

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls, *args, **kwargs)
        return _fresh_dicts(self)


def _fresh_dicts(batch):
    missing = {k: {} for k in ("extras", "metrics") if getattr(batch, k) is None}
    return batch._replace(**missing) if missing else batch


def add_metrics(batch, **metrics):
    """`batch` with scalar `metrics` added to `batch.metrics` (logged by the trainer once per
    step, after `prepare`). For transforms and strategies: `return add_metrics(r, kl=kl), state`."""
    return batch._replace(metrics={**batch.metrics, **metrics})


class ModelOutputs(NamedTuple):
    """What the trainer computes with gradient for an objective (all [B, T], response positions).

    logp: current-policy log-probs of the batch's response tokens (for a `PreferenceBatch`:
      the chosen rows, then the rejected rows, i.e. [2B, T]).
    entropy: per-token policy entropy (what entropy bonuses and metrics read).
    values: current critic values (value objectives only, else None).
    stats: the totals over the whole mini-batch of `Algorithm.statistics` (a dict of arrays,
      computed with the current parameters, no gradient), else None.
    scores: [N] one scalar per row from the trained model's reward head (algorithms with
      `head='reward'`: a reward model; for a `PreferenceBatch` the chosen rows, then the
      rejected rows, [2B]), or [N, K] for a multi-label reward model (model num_labels K > 1),
      else None. logp and entropy are then None.
    kl: [B, T] the exact KL between the full next-token distributions of the policy and the
      frozen reference at every response position (algorithms with `full_kl` set), else None.
    """

    logp: Array | None = None
    entropy: Array | None = None
    values: Array | None = None
    stats: dict | None = None
    scores: Array | None = None
    kl: Array | None = None


Batch = Rollout | PreferenceBatch


class RolloutTransform(NamedTuple):
    """Optax-style batch transformation: `init() -> state`, `update(batch, state) -> (batch, state)`.

    Pure and jittable; `state` is a pytree (running reward moments, per-prompt statistics, ...).
    Compose with `chain` / `named_chain`. A transform may report scalars with `add_metrics`,
    change the number of rows, or turn a `Rollout` into a `PreferenceBatch` (online DPO): the
    trainer validates the mini-batch split on the batch it returns and runs the objective on it.
    """

    init: Callable[[], Any]
    update: Callable[[Any, Any], tuple[Any, Any]]


# (outputs, batch, state) -> (scalar loss, dict of scalar metrics); see the contract above.
Objective = Callable[[ModelOutputs, Any, Any], tuple[Array, dict]]


class Pass(NamedTuple):
    """An extra jitted forward pass the trainer runs over each batch, before the transform.

    name: unique within an algorithm (the trainer adds 'old_logp' itself when several updates
      per rollout need it).
    writes: the batch fields it fills ('logp_ref', 'values', 'extras.teacher_logp', ...).
    run: `(ctx: PassContext, batch) -> batch`, traced inside the trainer's `prepare`.
    needs: what the trainer must provide: 'reference' (frozen reference params), 'critic', or
      'aux:<name>' (an auxiliary model of `config.aux_models`).
    check: optional `(model_config, aux: dict name -> AuxModel) -> None`, called when the
      trainer is built (the auxiliary models loaded, no file written yet); raises a ValueError
      naming the config field when the models cannot work together (e.g. a teacher over another
      vocabulary than the policy's).
    """

    name: str
    writes: tuple[str, ...]
    run: Callable[[Any, Any], Any]
    needs: frozenset = frozenset()
    check: Callable[[Any, dict], None] | None = None


class PassContext(NamedTuple):
    """What a pass can read (inside `prepare`, traced).

    params, ref_params, critic_params: the policy, reference (None without the 'reference'
      need) and critic (None without a critic).
    aux: dict name -> `AuxModel` (frozen auxiliary models; params are arrays, the rest static).
    policy_outputs: `(params, batch) -> ModelOutputs` with the trainer's forward (sampling
      temperature, shared-prompt grouping).
    critic_values: `(params, batch) -> [B, T]`.
    """

    params: Any
    ref_params: Any
    critic_params: Any
    aux: dict
    policy_outputs: Callable
    critic_values: Callable


class RolloutStrategy(NamedTuple):
    """How a batch is collected (host side): `collect(ctx, prompts, rng) -> Rollout`.

    `ctx` is a `jaxrl_llm.StrategyContext` (current params, step, sampler, scorer, extra
    prompts, tokenizer, auxiliary models), `prompts` a `PromptBatch`, `rng` a step-derived key.
    Strategies compose like optax wrappers: `dynamic_sampling(greedy_baseline(group_sampling()))`.
    They must be deterministic given (ctx.step, prompts, rng) so a resumed run repeats them.

    Host-side state across steps (a replay buffer of earlier rollouts, T-PPO's unfinished
    rollouts, XRPO's allocator statistics): give `init_state`, `() -> dict`; `collect` is then
    `collect(ctx, prompts, rng, state) -> (Rollout, new_state)`. The state is a flat dict
    str -> numpy array (numeric, bool or fixed-width str dtypes: it is saved without pickle);
    wrappers nest an inner strategy's state under a key prefix (e.g. 'inner/'). The trainer
    keeps it between steps, writes it into every checkpoint step directory as
    `host_state.npz` (covered by the step's checksums, see `jaxrl_llm.train.checkpoint`) and
    restores it on resume, so a resumed run continues bit-identically; each phase starts from
    `init_state()`. The step's result must depend only on (ctx.step, prompts, rng, params,
    state). Call a strategy through `run`, which handles both forms. A stateless wrapper
    (`dynamic_sampling`, ...) calls `inner.collect(...)` without a state, so a stateful
    strategy must be the outermost one (`replay(inner=dynamic_sampling())`).
    """

    collect: Callable[..., Any]
    init_state: Callable[[], dict] | None = None

    def run(self, ctx, prompts, rng, state: dict | None = None) -> tuple[Rollout, dict | None]:
        """(rollout, new state) for either form; `state=None` starts from `init_state()`
        (a stateless strategy returns None as its state)."""
        if self.init_state is None:
            return self.collect(ctx, prompts, rng), None
        return self.collect(ctx, prompts, rng, self.init_state() if state is None else state)


class Rounds(NamedTuple):
    """Training in rounds (iterative DPO, APO): every `steps` steps of the phase the reference
    becomes the policy as it is then, optionally after a Nesterov-style extrapolation,

        θ_{t+1} = θ̂_{t+1} + α (θ̂_{t+1} − θ̂_t),    reference ← θ_{t+1}

    with θ̂_t the policy at the end of round t (θ̂_0: the phase's initial policy) and
    α = `extrapolation` (0: plain iterative DPO, the previous iterate as reference). The
    trainer applies it between steps (`steps.next_round`), before the sampling of the round's
    first step, so a round's samples come from θ_{t+1}; with α > 0 it also carries θ̂_t in
    `TrainState.anchor_params`. Both are checkpointed: a resumed run crosses a boundary exactly
    as an uninterrupted one."""

    steps: int
    extrapolation: float = 0.0


class Algorithm(NamedTuple):
    """An RL or preference algorithm: its strategy, passes, transform and objective.

    data: 'rollout' (collected online by `strategy` and scored), 'preference' (offline pairs),
      'unpaired' (offline single completions labelled desirable / undesirable, KTO: a
      `PreferenceBatch` laid out as documented there), 'supervised' (targets from the
      dataset, SFT) or 'scored' (offline completions with K real-valued labels, for a
      multi-label reward model: a `Rollout` whose responses are the completions, with
      extras['labels'] [B, K] float32 in [0, 1]; `data.pipeline.scored_dataset`).
    transform: writes rewards/advantages/... into the batch, once per batch before updates; may
      change the batch's rows or type (documented on `RolloutTransform`).
    objective: policy loss, pure function of arrays (contract in the module docstring).
    value_objective: critic loss `(outputs with .values, batch, state)`, or None (no critic).
    passes: `Pass` objects the trainer runs, in order, before `transform` (see
      `jaxrl_llm.passes`).
    strategy: how rollouts are collected (None: `group_sampling()`, G samples per prompt).
    whole_groups: the objective couples the rows of a group (DisCO, PACS, pairwise losses):
      mini-batches then take whole groups (the trainer permutes groups, not rows) and
      micro-batches split only at group boundaries; the batch the transform returns must keep
      each group's rows consecutive (checked every step). Groups are a Rollout's group_ids,
      or a PreferenceBatch's extras['group_ids'] (rows a `pair_records` made together, SRPO).
    statistics: `(outputs, batch, state) -> dict of arrays`, or None. Each value is a SUM over
      the rows of `batch` (a micro-batch) of a quantity of the current policy (`outputs` are
      stop-gradient'ed); the trainer totals them over the whole mini-batch with the parameters
      of the update, before the gradient, and the objective reads the totals in
      `outputs.stats`. For losses that need a mini-batch-wide quantity of the current policy
      (BAPO's clip-bound search over the current ratios, DisCO's KL-penalty multiplier), which
      would otherwise differ between 1 and k micro-batches. With k > 1 micro-batches it costs
      one forward pass over the mini-batch per update.
    post_update: `(algo_state, stats) -> algo_state`, or None: state carried across updates by
      the objective (a Lagrange multiplier updated by dual ascent from the KL the update just
      produced, an adaptive coefficient). After each optimiser step the trainer measures
      `statistics` again at the updated parameters over the same mini-batch and passes the
      totals (one more forward per update; a non-finite step leaves the state unchanged).
      Needs `statistics`.
    head: the head of the model the algorithm trains: 'causal_lm' (a policy: `outputs.logp`,
      `outputs.entropy`) or 'reward' (a reward model, `RewardModel`: a scalar per sequence in
      `outputs.scores`, or K of them with model.num_labels = K; data 'preference' or
      'scored'). A 'reward' phase starts from the previous phase's (or the initial) trunk with
      a zero-initialised score head; its checkpoints hold the reward model, which
      `save_checkpoint(..., head='reward')` exports as `*ForSequenceClassification`
      (num_labels K) and `config.aux_models` loads from its step directory with head 'reward'.
    full_kl: None, 'forward' or 'reverse': the update's forward also runs the frozen reference
      (no gradient) at the same positions and gives the objective `outputs.kl` [B, T], the
      exact KL over the whole vocabulary, 'forward' KL(π_ref ‖ π_θ) (SuperHF) or 'reverse'
      KL(π_θ ‖ π_ref), instead of a sampled-token estimate. One reference forward per
      micro-batch update; the trainer holds the reference.
    rounds: a `Rounds` (the reference refreshed from the policy every `rounds.steps` steps,
      optionally extrapolated: iterative DPO, APO), or None (a fixed reference).
    pair_records: `(records: list[dict]) -> list[dict]`, or None (data='preference' only): host
      side, maps the records of one data batch (texts: 'prompt', 'chosen', 'rejected', plus
      'index' and 'answer') to the pairs the batch is tokenised from, before anything is
      encoded; it may change their number (PPO-M: each pair becomes two pairs of completions
      with a verbalised-confidence suffix, `jaxrl_llm.algorithms.calibration`). The records
      of held-out evaluation are left as they are.
    """

    data: str
    transform: RolloutTransform
    objective: Objective
    value_objective: Objective | None = None
    passes: tuple = ()
    strategy: RolloutStrategy | None = None
    whole_groups: bool = False
    statistics: Callable[[Any, Any, Any], dict] | None = None
    post_update: Callable[[Any, dict], Any] | None = None
    head: str = "causal_lm"
    full_kl: str | None = None
    rounds: Rounds | None = None
    pair_records: Callable[[list], list] | None = None

    def needs(self) -> frozenset:
        """Union of the passes' needs ('reference', 'critic', 'aux:<name>'), and 'reference'
        with `full_kl`."""
        needs = frozenset().union(*(p.needs for p in self.passes))
        return needs | {"reference"} if self.full_kl else needs
