"""The algorithm-agnostic trainer: `train(config, workdir)`.

A run is a list of phases (an optional SFT warm-start, then the configured algorithm). Each step:
prompts -> the algorithm's rollout strategy (host side: the jitted KV-cache sampler, reward
sources, any re-sampling) -> its passes + transform (`prepare`, jitted) -> epochs x mini-batches
of `update` (jitted, gradient accumulation over micro-batches). Preference and supervised phases skip the
sampling. Metrics go to `workdir/metrics.jsonl` and TensorBoard; orbax checkpoints to
`workdir/checkpoints/<phase>` every `train.checkpoint_every` steps and on SIGTERM; rerunning the
same command resumes the same trajectory (data position and RNG are functions of the step).

Multi-process runs (`jaxrl_llm.distributed`) execute this same loop in every process: each builds
the whole batch of the step and places its devices' rows, gathers the whole rollout to score it
(identical rewards everywhere), saves and restores checkpoints together with the others, and
stops at the same step when any process got a signal; only process 0 writes files.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from jaxrl_llm import distributed, lora, sharding
from jaxrl_llm.algorithms import make_algorithm
from jaxrl_llm.data import pipeline
from jaxrl_llm.data.aspects import check_num_labels
from jaxrl_llm.data.sources import make_source, record_format
from jaxrl_llm.models.auxiliary import aux_record, check_aux_record, load_aux_models
from jaxrl_llm.models.transformer import init_params
from jaxrl_llm.rewards.models import RewardSources
from jaxrl_llm.rollout.sampler import SamplingConfig, make_sampler
from jaxrl_llm.rollout.strategies import PromptBatch, StrategyContext, group_sampling, make_strategy
from jaxrl_llm.train import builders
from jaxrl_llm.train.checkpoint import COMMIT_FILE, HOST_STATE_KEY, Checkpointer
from jaxrl_llm.train.config import base_config
from jaxrl_llm.train.evaluation import EvaluationInterrupted, Evaluator
from jaxrl_llm.train.metrics import MetricsWriter, read_metrics, summary_from_metrics
from jaxrl_llm.train.plots import plot_curves
from jaxrl_llm.train.steps import TrainState, make_step_fns, next_round, reference_params, state_shardings
from jaxrl_llm.train.validation import check_workdir, validate_config, validate_model, validate_passes
from jaxrl_llm.train.workdir import (
    atomic_write_json,
    committed_checkpoints,
    exit_status,
    handle_preemption,
    lock_workdir,
    read_json,
    save_tokenizer,
)
from jaxrl_llm.transforms.base import InjectState
from jaxrl_llm.transforms.correction import correction_from_config
from jaxrl_llm.types import Algorithm, PreferenceBatch, Rollout, RolloutStrategy


class NonFiniteLossError(FloatingPointError):
    """A step produced a NaN/Inf loss or gradient and `train.nonfinite == 'stop'`."""


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint of the last completed step was written (`signum`:
    the signal; `python -m jaxrl_llm.main` exits with 128 + signum, see train/workdir.py)."""

    def __init__(self, message: str, signum: int | None = None):
        super().__init__(message)
        self.signum = signum or signal.SIGTERM


@dataclasses.dataclass
class Phase:
    name: str  # 'sft' or 'main'
    algorithm: Algorithm
    steps: int  # maximum number of steps in this phase
    batch_size: int  # prompts (or pairs / examples) per step
    optimizer: Any
    critic_optimizer: Any
    stop_metric: tuple[str, float] | None = None  # (eval key, threshold) ends the phase early
    eval_every: int = 0
    eval_split: str = "test"
    epochs: int = 1  # passes over each batch
    minibatches: int = 1  # optimiser steps per pass


def _optimizer_config(config, overrides) -> ml_collections.ConfigDict:
    """`config.optimizer` with the fields of `overrides` replaced (SFT and critic optimisers)."""
    merged = ml_collections.ConfigDict(config.optimizer.to_dict())
    merged.update(overrides.to_dict())
    return merged


def _phase_list(config, algorithm: Algorithm) -> list[Phase]:
    t = config.train
    phases = []
    if config.sft.steps > 0:
        sft_opt = _optimizer_config(config, config.sft.optimizer)
        phases.append(
            Phase(
                name="sft",
                algorithm=make_algorithm("sft"),
                steps=config.sft.steps,
                batch_size=config.sft.batch_size,
                optimizer=builders.make_optimizer(sft_opt, config.sft.steps),
                critic_optimizer=None,
                stop_metric=("greedy_accuracy", config.sft.target_accuracy)
                if config.sft.target_accuracy
                else None,
                eval_every=config.sft.eval_every,
                eval_split=config.sft.eval_split,
            )
        )
    updates = t.steps * t.epochs * t.minibatches
    critic_opt = None
    if algorithm.value_objective is not None:
        critic_opt = builders.make_optimizer(_optimizer_config(config, config.critic.optimizer), updates)
    phases.append(
        Phase(
            name="main",
            algorithm=algorithm,
            steps=t.steps,
            batch_size=t.batch_size,
            optimizer=builders.make_optimizer(config.optimizer, updates),
            critic_optimizer=critic_opt,
            eval_every=config.eval.every,
            eval_split=config.eval.split,
            epochs=t.epochs,
            minibatches=t.minibatches,
        )
    )
    return phases


def check_batch_split(batch, phase: Phase, microbatches: int) -> None:
    """The rows of the batch the updates train on (after the strategy and the transform) must
    split into phase.minibatches x train.microbatches equal parts. Checked on every step's
    prepared batch (a shape check: free), before its first update."""
    rows = batch.prompt_ids.shape[0]
    parts = phase.minibatches * microbatches
    if rows % parts:
        kind = type(batch).__name__
        raise ValueError(
            f"the {phase.name} phase trains on {kind}s of {rows} rows (after the rollout strategy and the "
            f"transform), which do not split into train.minibatches={phase.minibatches} x "
            f"train.microbatches={microbatches} equal parts; change train.batch_size, "
            "sampling.num_samples, train.minibatches or train.microbatches"
        )


def whole_group_size(batch, phase: Phase, microbatches: int) -> int:
    """For an algorithm with `whole_groups`: the size g of the batch's groups, checked to be
    consecutive blocks of equal `group_ids` (each id one block) that every mini- and
    micro-batch holds whole (rows per micro-batch a multiple of g). A shape-and-ids check on
    the host, every step, before the first update."""
    name = phase.name
    ids = batch.group_ids if isinstance(batch, Rollout) else batch.extras.get("group_ids")
    if ids is None:
        raise ValueError(
            f"the {name} phase's algorithm sets whole_groups=True, but its transform returns a "
            f"{type(batch).__name__} without group ids; whole groups need a Rollout with group_ids "
            "or a PreferenceBatch with extras['group_ids'] (from an Algorithm.pair_records)"
        )
    ids = np.asarray(sharding.to_host(ids))
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    sizes = np.diff(np.r_[starts, len(ids)])
    if len(np.unique(ids)) != len(starts) or len(set(sizes.tolist())) != 1:
        raise ValueError(
            f"the {name} phase's algorithm sets whole_groups=True, but the batch's group_ids do not "
            f"form consecutive blocks of one size (block sizes {sorted(set(sizes.tolist()))}); the "
            "strategy and transform must keep each group's rows together and groups equally large"
        )
    g = int(sizes[0])
    per_micro = len(ids) // (phase.minibatches * microbatches)
    if per_micro % g:
        raise ValueError(
            f"the {name} phase's algorithm keeps whole groups of {g} rows in every micro-batch, but "
            f"a micro-batch has {per_micro} rows ({len(ids)} rows / train.minibatches="
            f"{phase.minibatches} / train.microbatches={microbatches}); choose train.batch_size, "
            "train.minibatches and train.microbatches so that each micro-batch holds whole groups"
        )
    return g


def update_order(key, rows: int, minibatches: int, whole: int = 1) -> np.ndarray:
    """The order in which an epoch's mini-batches take the rows: arange with one mini-batch,
    else a random permutation (`key`) of blocks of `whole` consecutive rows (1: of rows; a
    group size: of whole groups, for `Algorithm.whole_groups`)."""
    if minibatches == 1:
        return np.arange(rows)
    perm = np.asarray(jax.random.permutation(key, rows // whole))
    return (perm[:, None] * whole + np.arange(whole)).reshape(-1)


def grouped_layout(batch, group_size: int) -> int:
    """`group_size` when the rows of `batch` (a host or device Rollout) come in consecutive
    blocks of `group_size` that share one prompt (the passes then run each prompt once),
    else 1. Checked on the actual arrays, so strategies and transforms may reorder rows freely."""
    if not isinstance(batch, Rollout) or group_size <= 1 or batch.prompt_ids.shape[0] % group_size:
        return 1
    ids, mask = (np.asarray(x) for x in sharding.to_host((batch.prompt_ids, batch.prompt_mask)))
    n, p = ids.shape
    blocks_ids, blocks_mask = (
        ids.reshape(n // group_size, group_size, p),
        mask.reshape(n // group_size, group_size, p),
    )
    same = (blocks_ids == blocks_ids[:, :1]).all() and (blocks_mask == blocks_mask[:, :1]).all()
    return group_size if same else 1


def rollout_metrics(rollout: Rollout) -> dict:
    """Reward and length metrics of the batch the algorithm trains on (host numpy arrays)."""
    rewards = np.asarray(rollout.rewards)
    lengths = np.asarray(rollout.response_mask).sum(1)
    metrics = {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "response_length": float(lengths.mean()),
        **{k: float(np.mean(v)) for k, v in rollout.extras.items() if k.startswith("reward/")},
    }
    correct = rewards > 0.5  # as evaluation counts a verifier's reward; absent when no row is
    for name, rows in (("correct", correct), ("incorrect", ~correct)):
        if rows.any():
            metrics[f"response_length_{name}"] = float(lengths[rows].mean())
    if rollout.group_ids is not None:  # fraction of groups whose rewards are all equal
        _, group = np.unique(np.asarray(rollout.group_ids), return_inverse=True)
        high, low = np.full(group.max() + 1, -np.inf), np.full(group.max() + 1, np.inf)
        np.maximum.at(high, group, rewards)
        np.minimum.at(low, group, rewards)
        metrics["zero_variance_groups"] = float(np.mean(high == low))
    if "finished" in rollout.extras:
        metrics["finished_fraction"] = float(np.mean(rollout.extras["finished"]))
    if rollout.loss_mask is not None:
        metrics["loss_tokens_fraction"] = float(np.asarray(rollout.loss_mask).sum() / max(lengths.sum(), 1))
    return metrics


def data_batch(kind: str, batch_np: dict):
    """The batch an offline phase trains on, from its dataset's batch (`Algorithm.data` =
    `kind`): 'supervised' a Rollout of (prompt, target); 'scored' a Rollout of (prompt,
    completion) with extras['labels'] [B, K]; 'preference' a PreferenceBatch; 'unpaired' (KTO)
    a PreferenceBatch whose chosen rows are the completions, rejected rows their KL
    completions, with extras['label']."""
    if kind in ("supervised", "scored"):
        response = "target" if kind == "supervised" else "completion"
        return Rollout(
            prompt_ids=batch_np["prompt_ids"],
            prompt_mask=batch_np["prompt_mask"],
            response_ids=batch_np[f"{response}_ids"],
            response_mask=batch_np[f"{response}_mask"],
            extras={"labels": batch_np["labels"]} if kind == "scored" else None,
        )
    return PreferenceBatch(
        **{k: batch_np[k] for k in ("prompt_ids", "prompt_mask", "chosen_ids", "chosen_mask")},
        rejected_ids=batch_np["rejected_ids"],
        rejected_mask=batch_np["rejected_mask"],
        extras={"label": batch_np["label"]}
        if kind == "unpaired"
        else {k: batch_np[k] for k in ("group_ids", "head_ids") if k in batch_np},
    )


def resolve_strategy(config, algorithm: Algorithm) -> RolloutStrategy:
    """`config.rollout.name` (its other fields the factory's arguments) when set, else the
    algorithm's own strategy, else `group_sampling()`."""
    rollout = config.get("rollout")
    if rollout is not None and rollout.get("name"):
        kwargs = {k: v for k, v in rollout.items() if k != "name" and v is not None}
        return make_strategy(rollout.name, **kwargs)
    return algorithm.strategy or group_sampling()


class Trainer:
    """Holds the built pieces of a run; `fit()` runs every phase (resuming if possible)."""

    def __init__(self, config, workdir: str):
        # Everything that can be checked is checked before the first file is written (validation.py).
        self.config = config
        self.workdir = os.path.abspath(workdir)
        algo_kwargs = {k: v for k, v in config.algo.items() if k != "name"}
        self.algorithm = correction_from_config(
            make_algorithm(config.algo.name, **algo_kwargs), config.get("correction")
        )
        validate_config(config, self.algorithm)
        self.strategy = resolve_strategy(config, self.algorithm)
        self.model_config, self.init_params, self.tokenizer = builders.build_model(config)
        validate_model(config, self.model_config)
        self.partitioning = sharding.make_partitioning(config.mesh)  # None on one device: plain jit
        self.aux_models = load_aux_models(config.get("aux_models"), config.model.dtype)
        if self.partitioning is not None:  # sharded by their heads' logical axes, like the reference
            self.aux_models = {
                n: m._replace(
                    params=sharding.to_global(
                        m.params, sharding.param_shardings(m.params, m.config, self.partitioning, m.head)
                    )
                )
                for n, m in self.aux_models.items()
            }
        validate_passes(self.algorithm, self.model_config, self.aux_models)
        self.reward_sources = None
        if self.algorithm.data == "rollout":
            self.reward_sources = RewardSources(
                config.rewards, self.aux_models, config.get("reward_ensembles"), self.partitioning
            )
        self.eval_reward = builders.reward_functions({config.eval.reward: 1.0})
        # One process at a time: concurrent first-use preparation of a TFDS dataset races.
        self.sources = distributed.primary_first(
            lambda: {split: make_source(config.data, split) for split in config.data.splits}
        )
        self._check_data()
        self.is_primary = distributed.is_primary()  # the process that writes files
        self.lock = None
        if self.is_primary:
            check_workdir(self.workdir)
            # Before config.json is read: a second process on this workdir stops here
            # (WorkdirLockedError naming the holder's pid), so the check below cannot race.
            self.lock = lock_workdir(self.workdir)
        try:
            self.summary: dict[str, Any] = self._read_summary()  # a damaged summary.json refuses here
            self._check_config_snapshot()
            if self.is_primary:  # after the snapshot check: a refused run leaves the workdir as it was
                save_tokenizer(self.tokenizer, os.path.join(self.workdir, "tokenizer"))
        except BaseException:
            if self.lock is not None:  # refused: the workdir is free again
                self.lock.release()
            raise
        s = config.sampling
        self.sampling = SamplingConfig(
            max_new_tokens=s.max_new_tokens,
            num_samples=s.num_samples,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            stop_ids=() if s.ignore_eos else self.tokenizer.eos_ids,
            pad_id=self.tokenizer.pad_id,
        )
        self._samplers: dict[SamplingConfig, Any] = {}
        self.phases = _phase_list(config, self.algorithm)
        self.evaluator = Evaluator(
            self.model_config,
            self.tokenizer,
            self.sources,
            self.eval_reward,
            config,
            self.sampling,
            self.partitioning,
        )
        self.writer: MetricsWriter | None = None
        # Lines of metrics.jsonl when the current phase started (from the previous phase's last
        # checkpoint): a phase resumed before its first checkpoint keeps only those.
        self._metrics_rows: int | None = 0
        self.step_fns: dict[str, tuple] = {}  # phase -> (prepare, update) last used, for compile checks
        self._step_fn_cache: dict[tuple, tuple] = {}
        self._last_tagged: int | None = None
        self.final_state: TrainState | None = None
        # The rollout strategy's host state (`RolloutStrategy.init_state`; None: stateless or not
        # started), advanced by `collect`, saved with every checkpoint and restored on resume.
        self.strategy_state: dict | None = None

    # ------------------------------------------------------------------ setup helpers
    def _read_summary(self) -> dict:
        """summary.json (damaged: refused, naming it); missing: rebuilt from metrics.jsonl."""
        summary = read_json(
            self.workdir,
            "summary.json",
            "restore it, or delete it to rebuild it from metrics.jsonl (its before/after evaluations)",
        )
        if summary is None:
            summary = summary_from_metrics(read_metrics(self.workdir))
        return summary

    def _check_config_snapshot(self) -> None:
        """Refuses a config that differs from the run's `config.json` (but for
        `_RESUMABLE_CHANGES`), then writes it. Unreadable, or missing while checkpoints exist (so
        the checkpoints' config cannot be checked): refused, with the fix; this command's config
        is then left in `config.proposed.json` for an operator who knows it is the run's."""
        path = os.path.join(self.workdir, "config.json")
        current = json.loads(self.config.to_json_best_effort(sort_keys=True))
        checkpoints = committed_checkpoints(self.workdir)
        proposed = os.path.join(self.workdir, "config.proposed.json")
        fix = (
            f"restore it (the config the run started with), or, if this command is the one that started "
            f"the run, `mv {proposed} {path}` and rerun; or use a new --workdir to start over"
        )
        try:
            saved = read_json(
                self.workdir,
                "config.json",
                fix
                if checkpoints
                else "delete it (the workdir has no checkpoints: the run starts over with this command's config) or restore it",
            )
        except ValueError:
            if checkpoints and self.is_primary:
                atomic_write_json(proposed, current, sort_keys=True)
            raise
        if saved is None and checkpoints:
            if self.is_primary:
                atomic_write_json(proposed, current, sort_keys=True)
            shown = ", ".join(checkpoints[-3:])
            raise ValueError(
                f"workdir {self.workdir!r} holds checkpoints ({shown}) but no config.json, so this "
                f"command's config cannot be checked against the one they were trained with: {fix}"
            )
        if saved is not None:
            flat_saved, flat_now = _flatten(saved), _flatten(current)
            changed = sorted(
                k for k in set(flat_saved) | set(flat_now) if flat_saved.get(k) != flat_now.get(k)
            )
            # A field the library added after the run started, at its default, is no change.
            defaults = _flatten(json.loads(base_config().to_json_best_effort(sort_keys=True)))
            changed = [
                k
                for k in changed
                if k not in _RESUMABLE_CHANGES
                and not (k not in flat_saved and k in defaults and flat_now.get(k) == defaults[k])
            ]
            if changed:
                raise ValueError(
                    f"workdir {self.workdir!r} holds a run with a different config (fields: "
                    f"{', '.join(changed[:10])}); use a new --workdir, or delete the old one to start over"
                )
        if self.is_primary:  # atomically: the other processes may be reading it
            atomic_write_json(path, current, sort_keys=True)

    def _check_data(self) -> None:
        """Prompts of the training split (up to data.check_records): length, fields, encodability
        (records in a preference format, `record_format`: their completions and labels too)."""
        d = self.config.data
        if record_format(self.sources["train"][0]) != "question":  # prompt/chosen/rejected or .../label
            kinds = [self.algorithm.data] + (["supervised"] if self.config.sft.steps else [])
            pipeline.check_preference_records(
                self.sources["train"],
                self.tokenizer,
                kinds,
                max_prompt_len=d.max_prompt_len,
                max_target_len=self.config.sampling.max_new_tokens,
                chat=d.chat,
                instruction=d.instruction,
                limit=d.check_records,
                num_labels=self.model_config.num_labels,
                label_range=d.label_range,
            )
            return
        if self.algorithm.data == "scored":  # synthetic aspect scores: K of them
            check_num_labels(self.model_config.num_labels)
        pipeline.check_prompt_lengths(
            self.sources["train"],
            self.tokenizer,
            d.max_prompt_len,
            chat=d.chat,
            instruction=d.instruction,
            question_field=d.question_field,
            answer_field=d.answer_field,
            limit=d.check_records,
        )

    def _datasets(self, phase: Phase, seed: int):
        d = self.config.data
        common = dict(
            batch_size=phase.batch_size,
            max_prompt_len=d.max_prompt_len,
            seed=seed,
            chat=d.chat,
            instruction=d.instruction,
            question_field=d.question_field,
            answer_field=d.answer_field,
        )
        source = self.sources["train"]
        kind = phase.algorithm.data
        T = self.sampling.max_new_tokens
        if kind == "supervised":
            return pipeline.sft_dataset(
                source, self.tokenizer, max_target_len=T, target=d.sft_target, **common
            )
        if kind == "preference":
            return pipeline.preference_dataset(
                source,
                self.tokenizer,
                max_target_len=T,
                pair_records=phase.algorithm.pair_records,
                **common,
            )
        if kind == "scored":  # (prompt, completion, K labels): a multi-label reward model
            return pipeline.scored_dataset(
                source,
                self.tokenizer,
                max_target_len=T,
                num_labels=self.model_config.num_labels,
                label_range=d.label_range,
                **common,
            )
        if kind == "unpaired":  # KTO: (prompt, completion, label) + each row's mismatched KL completion
            a = self.config.algo
            return pipeline.unpaired_dataset(
                source,
                self.tokenizer,
                max_target_len=T,
                desirable_fraction=d.desirable_fraction,
                class_weights=(a.get("desirable_weight", 1.0), a.get("undesirable_weight", 1.0)),
                **common,
            )
        return pipeline.prompt_dataset(source, self.tokenizer, **common)

    def _initial_state(self, phase: Phase, params, step: int) -> TrainState:
        algo = phase.algorithm
        use_lora = self.model_config.lora is not None
        if use_lora and phase is not self.phases[0]:
            # The previous phase's adapters join the frozen base, which is this phase's reference.
            params = lora.merge_adapters(self.model_config, params, keep_adapters=True)

        def optimizer_state(optimizer, params):  # for the trainable half only under LoRA
            return optimizer.init(lora.split_trainable(self.model_config, params)[0])

        if algo.head == "reward" and "score" not in params:  # a reward model from the policy
            params = _scalar_head_from_policy(self.model_config, params, "reward")
        critic_params = critic_opt = None
        if algo.value_objective is not None:
            critic_params = _scalar_head_from_policy(self.model_config, params, "value")
            critic_opt = optimizer_state(phase.critic_optimizer, critic_params)
        state = TrainState(
            step=jnp.asarray(step, jnp.int32),
            params=params,
            opt_state=optimizer_state(phase.optimizer, params),
            # Copied: `update` donates every leaf, and an `init` may put one array in two places.
            algo_state=jax.tree.map(jnp.copy, algo.transform.init()),
            rng=jax.random.PRNGKey(self.config.seed),
            # A copy: `update` donates the state's buffers, and params must not alias the reference.
            # Under LoRA the reference is the frozen base inside `params` (steps.reference_params).
            ref_params=jax.tree.map(jnp.copy, params)
            if "reference" in algo.needs() and not use_lora
            else None,
            critic_params=critic_params,
            critic_opt_state=critic_opt,
            # θ̂_0 for APO's first extrapolation (Rounds with α > 0)
            anchor_params=jax.tree.map(jnp.copy, params)
            if algo.rounds and algo.rounds.extrapolation
            else None,
        )
        if self.partitioning is None:
            return state
        # Placed once; also the template checkpoints are restored into (sharded the same way).
        shardings = state_shardings(state, self.model_config, self.partitioning, algo.head)
        return sharding.to_global(state, shardings)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Runs (or resumes) every phase; returns the summary also written to summary.json.
        Releases the workdir's lock (taken in `__init__`) when it returns or raises."""
        if self.is_primary and self.lock is None:  # a second fit(): taken again
            self.lock = lock_workdir(self.workdir)
        try:
            return self._fit()
        finally:  # the workdir is free for the next run (another process, or a rerun)
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def _fit(self) -> dict:
        params = self.init_params
        global_step = 0
        self._metrics_rows = 0
        self.summary["model_params"] = self.model_config.num_params
        # SIGTERM/SIGINT: a checkpoint, then Interrupted (exit 128 + signum). The watchdog ends a
        # run stuck in a long compile when it holds nothing unsaved (one process only: in a
        # multi-process run the processes must stop together, at the same step).
        with handle_preemption(watchdog=jax.process_count() == 1) as signals:
            self.evaluator.should_stop = lambda: distributed.any_process(signals.requested())
            try:
                for i, phase in enumerate(self.phases):
                    if self._later_phase_started(i):  # finished, whatever its own checkpoints say
                        print(f"[{phase.name}] finished earlier: a later phase has checkpoints; skipped")
                        continue
                    params, global_step = self._run_phase(phase, params, global_step, signals)
            finally:
                self.evaluator.should_stop = lambda: False
            self._plot()
            self._save_summary()
        return self.summary

    def _later_phase_started(self, index: int) -> bool:
        """A phase after `index` has a committed checkpoint, so phase `index` ran to its end
        (its state is in that checkpoint): it is not resumed even if its own last step is
        damaged and falls back."""
        for phase in self.phases[index + 1 :]:
            directory = os.path.join(self.workdir, "checkpoints", phase.name)
            if os.path.isdir(directory) and any(
                os.path.exists(os.path.join(directory, step, COMMIT_FILE)) for step in os.listdir(directory)
            ):
                return True
        return False

    @property
    def _summary_path(self) -> str:
        return os.path.join(self.workdir, "summary.json")

    def _save_summary(self) -> None:
        if not self.is_primary:
            return
        atomic_write_json(self._summary_path, self.summary)

    def _run_phase(self, phase: Phase, params, global_step: int, signals):
        cfg = self.config
        ckpt = Checkpointer(
            os.path.join(self.workdir, "checkpoints", phase.name),
            max_to_keep=cfg.train.keep_checkpoints,
            save_every=cfg.train.checkpoint_every,
        )
        state = self._initial_state(phase, params, global_step)
        start = global_step
        # Verified; a damaged latest step is reported, moved aside, and the previous one used.
        restored = ckpt.restore_latest_good(abstract_state=state)
        latest = None if restored is None else restored[0]
        self.strategy_state = None  # each phase starts from the strategy's init_state()
        if restored is not None:
            _, state, meta = restored
            self.strategy_state = _strategy_state(meta.get(HOST_STATE_KEY))
            check_aux_record(meta.get("aux_models"), self.aux_models, f"{ckpt.directory}/{latest}")
            start = meta["phase_start"]
            if meta.get("done"):
                print(f"[{phase.name}] already finished at step {int(state.step)} in this workdir; skipped")
                if int(state.step) < start + phase.steps:
                    print(
                        f"[{phase.name}] raising the number of steps does not extend a finished "
                        "phase (train.steps may change only while a run is interrupted); use a new "
                        "--workdir for a longer run"
                    )
                ckpt.close()
                self.final_state = state
                self._last_tagged = int(state.step)  # its 'after' evaluation is in the metrics
                self._metrics_rows = meta.get("metrics_rows")  # where the next phase's lines start
                return state.params, int(state.step)
            global_step = int(state.step)
            pending = meta.get("pending")  # what a signal interrupted at this step
            keep_rows = meta.get("metrics_rows")  # None: a checkpoint older than the count
            print(f"[{phase.name}] resuming from the checkpoint at step {global_step}")
        else:
            pending, keep_rows = None, self._metrics_rows
        # Exactly once: the lines written after the checkpoint resumed from (before the phase's
        # first checkpoint: after the phase's start, its 'before' evaluation included) are dropped.
        self.writer = MetricsWriter(
            self.workdir, resume_step=global_step, keep_rows=keep_rows, active=self.is_primary
        )
        signals.clean = True  # the last checkpoint (or the phase's start) holds everything so far
        if latest is None and self.config.eval.before:
            try:
                self._evaluate(phase, state, global_step, tag="before")
            except EvaluationInterrupted:  # nothing to save: a rerun starts the phase again
                self._stop(signals, ckpt, global_step)
        seed = cfg.seed + (1 if phase.name == "main" else 0)
        dataset = self._datasets(phase, seed)
        # Extra prompts for strategies that draw more (dynamic sampling): another order of the
        # same split, indexed by (step, round), so a resumed run draws the same ones.
        extra = self._datasets(phase, seed + 7919) if phase.algorithm.data == "rollout" else None
        end = start + phase.steps
        meta = {"phase": phase.name, "phase_start": start, "aux_models": aux_record(self.aux_models)}
        stop = pending == "after"  # only the 'after' evaluation was left
        with tqdm(
            total=phase.steps,
            initial=global_step - start,
            desc=phase.name,
            disable=not (cfg.progress and self.is_primary),
        ) as bar:
            if pending == "eval":  # stopped during this step's periodic evaluation: done first
                stop = self._periodic_evaluation(phase, ckpt, state, global_step, meta, signals)
            while global_step < end and not stop:
                t0 = time.perf_counter()
                rounds = phase.algorithm.rounds
                if rounds and global_step > start and (global_step - start) % rounds.steps == 0:
                    state = self._next_round(phase, state)  # a boundary: the reference moves on
                state, metrics = self._step(phase, state, dataset, extra, global_step - start)
                if rounds:
                    metrics["round"] = (global_step - start) // rounds.steps
                global_step = int(state.step)
                signals.clean = False  # a step the last checkpoint lacks
                metrics["step_time"] = time.perf_counter() - t0
                self.writer.write(global_step, metrics, phase=phase.name)
                bar.update(1)
                bar.set_postfix({k: f"{metrics[k]:.3g}" for k in _BAR_KEYS if k in metrics})
                periodic = phase.eval_every and (global_step - start) % phase.eval_every == 0
                if periodic and global_step < end:  # the last step gets the 'after' evaluation
                    stop = self._periodic_evaluation(phase, ckpt, state, global_step, meta, signals)
                if distributed.any_process(signals.requested()):
                    left = "after" if stop or global_step >= end else None
                    self._stop(signals, ckpt, global_step, state, meta, pending=left)
                if global_step < end and not stop:  # the phase's last step is saved as 'done' below
                    self._save(ckpt, global_step, state, meta, signals)
        try:
            self._evaluate(phase, state, global_step, tag="after")
        except EvaluationInterrupted:
            self._stop(signals, ckpt, global_step, state, meta, pending="after")
        self._save(ckpt, global_step, state, {**meta, "done": True}, signals, force=True, replace=True)
        ckpt.wait()
        ckpt.close()
        self.writer.close()
        self._metrics_rows = self.writer.rows
        self.final_state = state
        return state.params, global_step

    def _periodic_evaluation(self, phase: Phase, ckpt, state, step: int, meta: dict, signals) -> bool:
        """The evaluation every `phase.eval_every` steps; True when it meets the phase's stop
        metric. A signal during it saves the step with the evaluation pending (done on resume)."""
        try:
            results = self._evaluate(phase, state, step)
        except EvaluationInterrupted:
            self._stop(signals, ckpt, step, state, meta, pending="eval")
        return bool(phase.stop_metric and results[phase.stop_metric[0]] >= phase.stop_metric[1])

    def _save(self, ckpt, step: int, state, meta: dict, signals, force=False, replace=False) -> None:
        """A checkpoint recording how many metrics lines it covers. `replace`: the step may hold
        the checkpoint a signal saved before the phase's 'after' evaluation; it becomes 'done'."""
        if replace and step in ckpt.all_steps():
            # orbax never overwrites a step. Deleted first: a kill in between resumes from the
            # previous checkpoint (recomputed, the same trajectory).
            ckpt.delete(step)
        # The strategy's host state only when it has one (a plain save's signature otherwise).
        host = {} if self.strategy_state is None else {"host_state": _host_state(self.strategy_state)}
        if ckpt.save(step, state, {**meta, "metrics_rows": self.writer.rows}, force=force, **host):
            self.writer.flush()  # TensorBoard events up to this checkpoint reach the disk
            signals.clean = True

    def _stop(self, signals, ckpt, step: int, state=None, meta=None, pending: str | None = None):
        """Saves `state` (if given; `pending`: the evaluation a resumed run does first) and raises
        `Interrupted`."""
        signals.acknowledge()
        where = f"nothing to save (a rerun starts the {ckpt.directory.name} phase again at step {step})"
        if state is not None:
            self._save(
                ckpt, step, state, {**meta, **({"pending": pending} if pending else {})}, signals, force=True
            )
            where = f"checkpoint at step {step}"
        ckpt.close()
        self.writer.close()
        got = signal.Signals(signals.signum).name if signals.signum else "in another process"
        raise Interrupted(
            f"stopped by a signal; {where} in {self.workdir} ({got}; exit status "
            f"{exit_status(signals.signum)}: rerun the same command to resume)",
            signals.signum,
        )

    def _step_fns(self, phase: Phase, group_size: int, grouped_update_rows: bool):
        """(prepare, update) of `phase` for a batch layout, built once per layout."""
        key = (phase.name, group_size, grouped_update_rows)
        if key not in self._step_fn_cache:
            self._step_fn_cache[key] = make_step_fns(
                phase.algorithm,
                self.model_config,
                phase.optimizer,
                phase.critic_optimizer,
                temperature=self.sampling.temperature,
                microbatches=self.config.train.microbatches,
                recompute_old_logp=phase.epochs * phase.minibatches > 1,
                partitioning=self.partitioning,
                aux_models=self.aux_models,
                group_size=group_size,
                grouped_update_rows=grouped_update_rows,
                donate_prepare=True,  # no copy of the state per step (the first one consumes init_params)
            )
        return self._step_fn_cache[key]

    def _next_round(self, phase: Phase, state: TrainState) -> TrainState:
        """`steps.next_round` (jitted once per phase, the state donated; sharded like the state)."""
        key = ("next_round", phase.name)
        if key not in self._step_fn_cache:
            fn = functools.partial(next_round, rounds=phase.algorithm.rounds, model_config=self.model_config)
            out = None
            if self.partitioning is not None:
                out = state_shardings(state, self.model_config, self.partitioning, phase.algorithm.head)
            self._step_fn_cache[key] = (jax.jit(fn, donate_argnums=0, out_shardings=out),)
        return self._step_fn_cache[key][0](state)

    def _step(self, phase: Phase, state: TrainState, dataset, extra, index: int):
        cfg = self.config.train
        kind = phase.algorithm.data
        batch_np = dataset[index]
        metrics: dict[str, float] = {}
        if kind == "rollout":
            t0 = time.perf_counter()
            batch, ctx = self.collect(state, PromptBatch.from_dict(batch_np), extra, index)
            metrics = {**rollout_metrics(batch), **batch.metrics, **ctx.times}
            metrics["rollout_time"] = time.perf_counter() - t0
            metrics["generation_tokens_per_s"] = ctx.generated_tokens / max(ctx.times["sample_time"], 1e-9)
            batch = batch._replace(metrics={})
        else:
            batch = data_batch(kind, batch_np)
        t0 = time.perf_counter()
        g = grouped_layout(batch, self.sampling.num_samples)
        prepare, _ = self._step_fns(phase, g, False)
        aux = {n: m.params for n, m in self.aux_models.items()}
        batch, state = prepare(state, batch, aux)
        check_batch_split(batch, phase, cfg.microbatches)  # before any update: on the rows trained on
        whole = whole_group_size(batch, phase, cfg.microbatches) if phase.algorithm.whole_groups else 1
        metrics.update({k: float(v) for k, v in jax.device_get(batch.metrics).items()})
        batch = batch._replace(metrics={})
        # The update runs each prompt once too when its one mini-batch is every row in order
        # and those rows still come in groups (a transform may have changed them).
        grouped = phase.minibatches == 1 and g > 1 and grouped_layout(batch, g) == g
        update = self._step_fns(phase, g, grouped)[1]
        self.step_fns[phase.name] = (prepare, update)
        rows = batch.prompt_ids.shape[0]
        per_update = rows // phase.minibatches
        step_rng = jax.random.fold_in(state.rng, int(state.step))
        totals: dict[str, Any] = {}
        num_updates = 0
        for epoch in range(phase.epochs):
            order = update_order(jax.random.fold_in(step_rng, 1000 + epoch), rows, phase.minibatches, whole)
            for mb in range(phase.minibatches):
                new_state, m, finite = update(state, batch, order[mb * per_update : (mb + 1) * per_update])
                if not bool(finite):
                    if cfg.nonfinite == "stop":
                        raise NonFiniteLossError(
                            f"non-finite loss or gradient at step {int(new_state.step) + 1} "
                            f"(phase {phase.name}, epoch {epoch}, mini-batch {mb}); parameters were not "
                            f"updated and the last good checkpoint is in {self.workdir}/checkpoints. "
                            "Set --config.train.nonfinite=skip to skip such steps instead."
                        )
                    metrics["skipped_updates"] = metrics.get("skipped_updates", 0) + 1
                state = new_state
                totals = m if not totals else jax.tree.map(jnp.add, totals, m)
                num_updates += 1
        state = state._replace(step=state.step + 1)
        for k, v in jax.device_get(totals).items():
            metrics[k] = float(v) / num_updates
        metrics["update_time"] = time.perf_counter() - t0
        if isinstance(state.algo_state, InjectState):  # scheduled hyper-parameters
            for k, v in state.algo_state.hyperparams.items():
                metrics[f"hparam/{k}"] = float(v)
        return state, metrics

    def sampler(self, **overrides):
        """The jitted sampler of `SamplingConfig` = config.sampling with `overrides` (built once each)."""
        config = dataclasses.replace(self.sampling, **overrides)
        if config not in self._samplers:
            self._samplers[config] = make_sampler(self.model_config, config, self.partitioning)
        return self._samplers[config]

    def _sample(self, params, prompt_ids, prompt_mask, rng, **overrides):
        out = self.sampler(**overrides)(params, prompt_ids, prompt_mask, rng)
        # Every process gets the whole rollout: the same rewards and strategy decisions everywhere.
        return type(out)(*sharding.to_host(tuple(out)))

    def collect(
        self, state: TrainState, prompts: PromptBatch, extra=None, index: int = 0
    ) -> tuple[Rollout, StrategyContext]:
        """The strategy's Rollout for the step `state.step` (host arrays) and its context; a
        stateful strategy advances `self.strategy_state`."""
        step = int(state.step)
        rounds_per_step = 64  # extra prompt batches addressable per step

        def extra_prompts(round_index: int) -> PromptBatch:
            if extra is None or not 1 <= round_index < rounds_per_step:
                raise ValueError(f"extra_prompts(round={round_index}): rounds are 1..{rounds_per_step - 1}")
            return PromptBatch.from_dict(extra[index * rounds_per_step + round_index])

        ctx = StrategyContext(
            params=state.params,
            step=step,
            num_samples=self.sampling.num_samples,
            sampling=self.sampling,
            tokenizer=self.tokenizer,
            aux=self.aux_models,
            sample_fn=self._sample,
            score_fn=self.reward_sources,
            extra_prompts=extra_prompts,
        )
        rng = jax.random.fold_in(jax.random.fold_in(state.rng, step), 0)
        rollout, self.strategy_state = self.strategy.run(ctx, prompts, rng, self.strategy_state)
        return rollout, ctx

    def _evaluate(self, phase: Phase, state: TrainState, step: int, tag: str | None = None) -> dict:
        """Periodic evaluation (tag None) on `phase.eval_split` (greedy only during SFT: the
        stopping rule), or the one before/after a phase (tag) on `eval.split` with pass@k, which
        is also printed and kept in summary.json. Every result is a metrics line (phase 'eval')."""
        # The same parameters as the last 'after' evaluation (pair metrics are new for preference).
        pairs = phase.algorithm.data in ("preference", "unpaired", "scored")
        if tag == "before" and self._last_tagged == step and not pairs:
            return {}
        split = phase.eval_split if tag is None else self.config.eval.split
        sampled = tag is not None or (phase.name != "sft" and self.config.eval.periodic_pass_k)
        ref_params = reference_params(state, self.model_config)
        results = self.evaluator(state.params, split, ref_params, phase.algorithm, sampled=sampled)
        summary_key = f"{phase.name}_{tag}" if tag is not None else None
        self.writer.write(
            step, {f"{split}/{k}": v for k, v in results.items()}, phase="eval", tag=summary_key
        )
        if tag is not None:
            self._last_tagged = step
            self.summary[summary_key] = {"step": step, "split": split, **results}
            self._save_summary()
            shown = ", ".join(f"{k} {v:.3f}" for k, v in results.items())
            print(f"[{phase.name}] {tag}: {split} {shown}")
        return results

    def _plot(self) -> None:
        if not self.is_primary:
            return
        e = self.config.eval
        panels = [
            ("SFT warm-start loss", [("sft", "nll")]),
            (
                "training reward",
                [("main", "reward_mean")] + [("main", f"reward/{n}") for n in self.config.rewards],
            ),
            (
                "held-out accuracy",
                [
                    ("eval", f"{e.split}/greedy_accuracy"),
                    ("eval", f"{e.split}/pass_at_{e.pass_k}"),
                    ("eval", f"{self.config.sft.eval_split}/greedy_accuracy"),
                    ("eval", f"{e.split}/preference_accuracy"),
                    ("eval", f"{e.split}/pair_accuracy"),
                ],
            ),
        ]
        path = plot_curves(
            os.path.join(self.workdir, "metrics.jsonl"), os.path.join(self.workdir, "curves.png"), panels
        )
        self.summary["plot"] = path


_BAR_KEYS = ("reward_mean", "nll", "kl", "entropy")
# Config fields a resumed run may change (lengthen or shorten an interrupted run, silence the
# progress bar, another mesh or number of processes, another remat policy, which changes memory and time but neither the
# parameters nor the values computed; process ids differ between the processes of one run).
_RESUMABLE_CHANGES = (
    "train.steps",
    "progress",
    "model.remat",
    "mesh.data",
    "mesh.fsdp",
    "mesh.tensor",
    "mesh.rules",
    *(f"distributed.{field}" for field in distributed.ENV_VARS),
)


_STRATEGY = "strategy/"  # key prefix of the strategy's state in a checkpoint's host state


def _host_state(strategy_state: dict) -> dict:
    """What a checkpoint saves as its host state: the strategy's state, under a key prefix."""
    return {f"{_STRATEGY}{k}": v for k, v in strategy_state.items()}


def _strategy_state(host_state: dict | None) -> dict | None:
    """The strategy's state in a checkpoint's host state (None: the step has none)."""
    if host_state is None:
        return None
    return {k[len(_STRATEGY) :]: v for k, v in host_state.items() if k.startswith(_STRATEGY)}


def _scalar_head_from_policy(model_config, policy_params, head: str):
    """A critic (head 'value') or a reward model (head 'reward') started from the policy: its
    trunk (copied) + a zero-initialised head (scalar, or K = model_config.num_labels outputs for
    a reward model), so V = 0 / r = 0 at the start."""
    score = jax.eval_shape(lambda: init_params(model_config, jax.random.PRNGKey(0), head))["score"]
    trunk = jax.tree.map(jnp.copy, policy_params["trunk"])
    return {"trunk": trunk, "score": jnp.zeros(score.shape, score.dtype)}


def _flatten(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def train(config, workdir: str) -> dict:
    """Trains as configured, writing everything under `workdir`; resumes if it holds checkpoints."""
    trainer = Trainer(config, workdir)
    return trainer.fit()
