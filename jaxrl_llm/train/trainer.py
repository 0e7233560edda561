"""The algorithm-agnostic trainer: `train(config, workdir)`.

A run is a list of phases (an optional SFT warm-start, then the configured algorithm). Each step:
prompts -> rollout (jitted KV-cache sampler) -> scores (host reward functions) -> the passes the
algorithm asks for + its transform (`prepare`, jitted) -> epochs x mini-batches of `update`
(jitted, gradient accumulation over micro-batches). Preference and supervised phases skip the
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
import json
import os
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
from jaxrl_llm.data.sources import make_source
from jaxrl_llm.models.transformer import init_params
from jaxrl_llm.rewards import score_completions
from jaxrl_llm.rollout.sampler import SamplingConfig, make_sampler
from jaxrl_llm.train import builders
from jaxrl_llm.train.checkpoint import Checkpointer, save_on_sigterm
from jaxrl_llm.train.evaluation import Evaluator, decode_responses
from jaxrl_llm.train.metrics import MetricsWriter
from jaxrl_llm.train.plots import plot_curves
from jaxrl_llm.train.steps import TrainState, make_step_fns, reference_params, state_shardings
from jaxrl_llm.transforms.base import InjectState
from jaxrl_llm.types import Algorithm, PreferenceBatch, Rollout


class NonFiniteLossError(FloatingPointError):
    """A step produced a NaN/Inf loss or gradient and `train.nonfinite == 'stop'`."""


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint of the last completed step was written."""


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


def validate_config(config, algorithm: Algorithm) -> None:
    """Clear errors for option combinations that would otherwise fail deep inside JAX."""
    t = config.train
    if t.nonfinite not in ("stop", "skip"):
        raise ValueError(f"train.nonfinite={t.nonfinite!r}; use 'stop' or 'skip'")
    for field in ("steps", "batch_size", "epochs", "minibatches", "microbatches"):
        if t[field] < (0 if field == "steps" else 1):
            raise ValueError(f"train.{field}={t[field]} must be positive")
    samples = config.sampling.num_samples if algorithm.data == "rollout" else 1
    if (t.batch_size * samples) % (t.minibatches * t.microbatches):
        raise ValueError(
            f"train.batch_size x sampling.num_samples = {t.batch_size * samples} rows do not split into "
            f"train.minibatches={t.minibatches} x train.microbatches={t.microbatches} equal parts"
        )


class Trainer:
    """Holds the built pieces of a run; `fit()` runs every phase (resuming if possible)."""

    def __init__(self, config, workdir: str):
        self.config = config
        self.workdir = os.path.abspath(workdir)
        os.makedirs(workdir, exist_ok=True)
        algo_kwargs = {k: v for k, v in config.algo.items() if k != "name"}
        self.algorithm = make_algorithm(config.algo.name, **algo_kwargs)
        validate_config(config, self.algorithm)
        self.model_config, self.init_params, self.tokenizer = builders.build_model(config)
        self.is_primary = distributed.is_primary()  # the process that writes files
        if self.is_primary:
            self.tokenizer.save(os.path.join(workdir, "tokenizer"))
        self.reward_fns = builders.reward_functions(config.rewards)
        self.eval_reward = builders.reward_functions({config.eval.reward: 1.0})
        # One process at a time: concurrent first-use preparation of a TFDS dataset races.
        self.sources = distributed.primary_first(
            lambda: {split: make_source(config.data, split) for split in config.data.splits}
        )
        self._check_config_snapshot()
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
        self.partitioning = sharding.make_partitioning(config.mesh)  # None on one device: plain jit
        self.sampler = make_sampler(self.model_config, self.sampling, self.partitioning)
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
        self.summary: dict[str, Any] = {}
        self.step_fns: dict[str, tuple] = {}  # phase -> (prepare, update), for compile checks
        self._last_tagged: int | None = None
        self.final_state: TrainState | None = None

    # ------------------------------------------------------------------ setup helpers
    def _check_config_snapshot(self) -> None:
        path = os.path.join(self.workdir, "config.json")
        current = json.loads(self.config.to_json_best_effort(sort_keys=True))
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            flat_saved, flat_now = _flatten(saved), _flatten(current)
            changed = sorted(
                k for k in set(flat_saved) | set(flat_now) if flat_saved.get(k) != flat_now.get(k)
            )
            changed = [k for k in changed if k not in _RESUMABLE_CHANGES]
            if changed:
                raise ValueError(
                    f"workdir {self.workdir!r} holds a run with a different config (fields: "
                    f"{', '.join(changed[:10])}); use a new --workdir, or delete the old one to start over"
                )
        if self.is_primary:  # atomically: the other processes may be reading it
            with open(path + ".tmp", "w") as f:
                json.dump(current, f, indent=2, sort_keys=True)
            os.replace(path + ".tmp", path)

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
        pipeline.check_prompt_lengths(
            source,
            self.tokenizer,
            d.max_prompt_len,
            chat=d.chat,
            instruction=d.instruction,
            question_field=d.question_field,
            limit=d.check_records,
        )
        kind = phase.algorithm.data
        T = self.sampling.max_new_tokens
        if kind == "supervised":
            return pipeline.sft_dataset(
                source, self.tokenizer, max_target_len=T, target=d.sft_target, **common
            )
        if kind == "preference":
            return pipeline.preference_dataset(source, self.tokenizer, max_target_len=T, **common)
        return pipeline.prompt_dataset(source, self.tokenizer, **common)

    def _initial_state(self, phase: Phase, params, step: int) -> TrainState:
        algo = phase.algorithm
        use_lora = self.model_config.lora is not None
        if use_lora and phase is not self.phases[0]:
            # The previous phase's adapters join the frozen base, which is this phase's reference.
            params = lora.merge_adapters(self.model_config, params, keep_adapters=True)

        def optimizer_state(optimizer, params):  # for the trainable half only under LoRA
            return optimizer.init(lora.split_trainable(self.model_config, params)[0])

        critic_params = critic_opt = None
        if algo.value_objective is not None:
            critic_params = _critic_from_policy(self.model_config, params, self.config.seed)
            critic_opt = optimizer_state(phase.critic_optimizer, critic_params)
        state = TrainState(
            step=jnp.asarray(step, jnp.int32),
            params=params,
            opt_state=optimizer_state(phase.optimizer, params),
            algo_state=algo.transform.init(),
            rng=jax.random.PRNGKey(self.config.seed),
            # A copy: `update` donates the state's buffers, and params must not alias the reference.
            # Under LoRA the reference is the frozen base inside `params` (steps.reference_params).
            ref_params=jax.tree.map(jnp.copy, params)
            if "reference" in algo.passes and not use_lora
            else None,
            critic_params=critic_params,
            critic_opt_state=critic_opt,
        )
        if self.partitioning is None:
            return state
        # Placed once; also the template checkpoints are restored into (sharded the same way).
        return sharding.to_global(state, state_shardings(state, self.model_config, self.partitioning))

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Runs (or resumes) every phase; returns the summary also written to summary.json."""
        params = self.init_params
        global_step = 0
        if os.path.exists(self._summary_path):
            with open(self._summary_path) as f:
                self.summary = json.load(f)
        self.summary["model_params"] = self.model_config.num_params
        with save_on_sigterm() as signals:
            for phase in self.phases:
                params, global_step = self._run_phase(phase, params, global_step, signals)
        self._plot()
        self._save_summary()
        return self.summary

    @property
    def _summary_path(self) -> str:
        return os.path.join(self.workdir, "summary.json")

    def _save_summary(self) -> None:
        if not self.is_primary:
            return
        with open(self._summary_path, "w") as f:
            json.dump(self.summary, f, indent=2)

    def _run_phase(self, phase: Phase, params, global_step: int, signals):
        cfg = self.config
        ckpt = Checkpointer(
            os.path.join(self.workdir, "checkpoints", phase.name),
            max_to_keep=cfg.train.keep_checkpoints,
            save_every=cfg.train.checkpoint_every,
        )
        state = self._initial_state(phase, params, global_step)
        start = global_step
        latest = ckpt.latest_step()
        if latest is not None:
            state, meta = ckpt.restore(latest, abstract_state=state)
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
                return state.params, int(state.step)
            global_step = int(state.step)
            print(f"[{phase.name}] resuming from the checkpoint at step {global_step}")
        self.writer = MetricsWriter(self.workdir, resume_step=global_step, active=self.is_primary)
        if latest is None:
            self._evaluate(phase, state, global_step, tag="before")
        dataset = self._datasets(phase, cfg.seed + (1 if phase.name == "main" else 0))
        prepare, update = make_step_fns(
            phase.algorithm,
            self.model_config,
            phase.optimizer,
            phase.critic_optimizer,
            temperature=self.sampling.temperature,
            microbatches=cfg.train.microbatches,
            recompute_old_logp=phase.epochs * phase.minibatches > 1,
            partitioning=self.partitioning,
            # Rollout rows b * G + g share prompt b: the passes run each prompt once; the update
            # too when its one mini-batch is every row in order.
            group_size=self.sampling.num_samples if phase.algorithm.data == "rollout" else 1,
            grouped_update_rows=phase.minibatches == 1,
            donate_prepare=True,  # no copy of the state per step (the first one consumes init_params)
        )
        self.step_fns[phase.name] = (prepare, update)
        end = start + phase.steps
        meta = {"phase": phase.name, "phase_start": start}
        stop = False
        with tqdm(
            total=phase.steps,
            initial=global_step - start,
            desc=phase.name,
            disable=not (cfg.progress and self.is_primary),
        ) as bar:
            while global_step < end and not stop:
                t0 = time.perf_counter()
                state, metrics = self._step(phase, state, dataset[global_step - start], prepare, update)
                global_step = int(state.step)
                metrics["step_time"] = time.perf_counter() - t0
                self.writer.write(global_step, metrics, phase=phase.name)
                bar.update(1)
                bar.set_postfix({k: f"{metrics[k]:.3g}" for k in _BAR_KEYS if k in metrics})
                periodic = phase.eval_every and (global_step - start) % phase.eval_every == 0
                if periodic and global_step < end:  # the last step gets the 'after' evaluation
                    results = self._evaluate(phase, state, global_step)
                    if phase.stop_metric and results[phase.stop_metric[0]] >= phase.stop_metric[1]:
                        stop = True
                if distributed.any_process(signals.requested()):
                    ckpt.save(global_step, state, meta, force=True)
                    ckpt.wait()
                    self.writer.close()
                    raise Interrupted(
                        f"stopped by a signal; checkpoint at step {global_step} in {self.workdir}"
                    )
                if global_step < end and not stop:  # the phase's last step is saved as 'done' below
                    ckpt.save(global_step, state, meta)
        self._evaluate(phase, state, global_step, tag="after")
        ckpt.save(global_step, state, {**meta, "done": True}, force=True)
        ckpt.wait()
        ckpt.close()
        self.writer.close()
        self.final_state = state
        return state.params, global_step

    def _step(self, phase: Phase, state: TrainState, batch_np: dict, prepare, update):
        cfg = self.config.train
        kind = phase.algorithm.data
        metrics: dict[str, float] = {}
        if kind == "rollout":
            batch, metrics = self._rollout(state, batch_np)
        elif kind == "supervised":
            batch = Rollout(
                prompt_ids=batch_np["prompt_ids"],
                prompt_mask=batch_np["prompt_mask"],
                response_ids=batch_np["target_ids"],
                response_mask=batch_np["target_mask"],
            )
        else:
            batch = PreferenceBatch(
                **{k: batch_np[k] for k in ("prompt_ids", "prompt_mask", "chosen_ids", "chosen_mask")},
                rejected_ids=batch_np["rejected_ids"],
                rejected_mask=batch_np["rejected_mask"],
            )
        t0 = time.perf_counter()
        batch, state = prepare(state, batch)
        rows = batch.prompt_ids.shape[0]
        per_update = rows // phase.minibatches
        step_rng = jax.random.fold_in(state.rng, int(state.step))
        totals: dict[str, Any] = {}
        num_updates = 0
        for epoch in range(phase.epochs):
            order = (
                np.asarray(jax.random.permutation(jax.random.fold_in(step_rng, 1000 + epoch), rows))
                if phase.minibatches > 1
                else np.arange(rows)
            )
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

    def _rollout(self, state: TrainState, batch_np: dict) -> tuple[Rollout, dict]:
        """Samples G responses per prompt and scores them on the host."""
        t0 = time.perf_counter()
        g = self.sampling.num_samples
        rng = jax.random.fold_in(jax.random.fold_in(state.rng, int(state.step)), 0)
        out = self.sampler(state.params, batch_np["prompt_ids"], batch_np["prompt_mask"], rng)
        # Every process scores the whole rollout: the same rewards as one process would give.
        ids, mask = sharding.to_host((out.response_ids, out.response_mask))
        sample_time = time.perf_counter() - t0
        t1 = time.perf_counter()
        completions, finished = decode_responses(self.tokenizer, ids, mask, self.sampling.stop_ids)
        prompts = np.repeat(batch_np["prompts"], g)
        answers = np.repeat(batch_np["answers"], g)
        rewards, per_fn = score_completions(self.reward_fns, prompts, completions, answers, finished)
        score_time = time.perf_counter() - t1
        group_rewards = rewards.reshape(-1, g)
        lengths = mask.sum(1)
        metrics = {
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()),
            **{f"reward/{name}": float(v.mean()) for name, v in per_fn.items()},
            "zero_variance_groups": float(np.mean(group_rewards.max(1) == group_rewards.min(1))),
            "response_length": float(lengths.mean()),
            "finished_fraction": float(np.mean(finished)),
            "sample_time": sample_time,
            "score_time": score_time,
            "generation_tokens_per_s": float(lengths.sum() / max(sample_time, 1e-9)),
        }
        rollout = Rollout(
            prompt_ids=np.repeat(batch_np["prompt_ids"], g, axis=0),
            prompt_mask=np.repeat(batch_np["prompt_mask"], g, axis=0),
            response_ids=out.response_ids,
            response_mask=out.response_mask,
            group_ids=out.group_ids,
            logp_behav=out.logprobs,
            rewards=np.asarray(rewards, np.float32),
        )
        return rollout, metrics

    def _evaluate(self, phase: Phase, state: TrainState, step: int, tag: str | None = None) -> dict:
        """Periodic evaluation (tag None) on `phase.eval_split` (greedy only during SFT: the
        stopping rule), or the one before/after a phase (tag) on `eval.split` with pass@k, which
        is also printed and kept in summary.json. Every result is a metrics line (phase 'eval')."""
        # The same parameters as the last 'after' evaluation (pair metrics are new for preference).
        if tag == "before" and self._last_tagged == step and phase.algorithm.data != "preference":
            return {}
        split = phase.eval_split if tag is None else self.config.eval.split
        sampled = tag is not None or phase.name != "sft"
        ref_params = reference_params(state, self.model_config)
        results = self.evaluator(state.params, split, ref_params, phase.algorithm, sampled=sampled)
        self.writer.write(step, {f"{split}/{k}": v for k, v in results.items()}, phase="eval")
        if tag is not None:
            self._last_tagged = step
            self.summary[f"{phase.name}_{tag}"] = {"step": step, "split": split, **results}
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
                [("main", "reward_mean")] + [("main", f"reward/{n}") for n, _, _ in self.reward_fns],
            ),
            (
                "held-out accuracy",
                [
                    ("eval", f"{e.split}/greedy_accuracy"),
                    ("eval", f"{e.split}/pass_at_{e.pass_k}"),
                    ("eval", f"{self.config.sft.eval_split}/greedy_accuracy"),
                    ("eval", f"{e.split}/preference_accuracy"),
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


def _critic_from_policy(model_config, policy_params, seed: int):
    """Critic = the policy's trunk + a zero-initialised value head (V = 0 at the start)."""
    params = init_params(model_config, jax.random.PRNGKey(seed + 7), head="value")
    return {"trunk": jax.tree.map(jnp.copy, policy_params["trunk"]), "score": jnp.zeros_like(params["score"])}


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
