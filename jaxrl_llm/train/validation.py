"""Config validation: every error found before the first file is written or the first compile.

`validate_config(config, algorithm)` checks the fields alone; `validate_model(config,
model_config)` what needs the model (positions); `check_workdir(path)` that the run's directory
can be written. Each error is a `ConfigError` naming the config field, the bad value and the fix.
The data checks (prompt lengths, fields that are missing or null, characters the tokenizer
cannot encode) are in `jaxrl_llm.data.pipeline` and run at start-up too.
"""

from __future__ import annotations

import math
import os
import tempfile

from jaxrl_llm.types import Algorithm


class ConfigError(ValueError):
    """A config field has a value the run cannot use; the message names the field and the fix."""


def _number(config, path: str):
    node = config
    for part in path.split("."):
        node = node[part]
    return node


def _require(ok: bool, field: str, value, fix: str) -> None:
    if not ok:
        raise ConfigError(f"config field {field}={value!r} {fix}")


def _positive_int(config, field: str, allow_zero: bool = False) -> None:
    value = _number(config, field)
    good = (
        isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    )
    _require(
        good, field, value, f"must be an integer {'>= 0' if allow_zero else '> 0'}; set --config.{field}=..."
    )


def _finite_positive(config, field: str, allow_zero: bool = False) -> None:
    value = _number(config, field)
    good = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    good = good and (value >= 0 if allow_zero else value > 0)
    _require(
        good,
        field,
        value,
        f"must be a finite number {'>= 0' if allow_zero else '> 0'}; set --config.{field}=...",
    )


def _optimizer(config, prefix: str, overrides) -> None:
    """`config.optimizer` with `overrides` (the SFT / critic optimisers' own fields) applied."""
    for key in ("learning_rate", "eps", "weight_decay", "grad_clip", "b1", "b2"):
        field = f"{prefix}.{key}" if overrides is not None and key in overrides else f"optimizer.{key}"
        if key not in _number(config, field.rsplit(".", 1)[0]):
            continue
        if key == "learning_rate":
            _finite_positive(config, field)
        elif key in ("b1", "b2"):
            value = _number(config, field)
            _require(isinstance(value, int | float) and 0 <= value < 1, field, value, "must be in [0, 1)")
        else:
            _finite_positive(config, field, allow_zero=key != "eps")


def validate_config(config, algorithm: Algorithm) -> None:
    """Errors for fields (and combinations) that would otherwise fail deep inside JAX, train
    silently on nonsense, or fail only after a long phase. Writes nothing."""
    t = config.train
    _require(t.nonfinite in ("stop", "skip"), "train.nonfinite", t.nonfinite, "must be 'stop' or 'skip'")
    _positive_int(config, "train.steps", allow_zero=True)
    for field in (
        "train.batch_size",
        "train.epochs",
        "train.minibatches",
        "train.microbatches",
        "eval.batch_size",
    ):
        _positive_int(config, field)
    _positive_int(config, "train.checkpoint_every")
    _positive_int(config, "train.keep_checkpoints")
    _positive_int(config, "eval.num_prompts")
    _positive_int(config, "eval.pass_k", allow_zero=True)  # 0: greedy accuracy only
    _positive_int(config, "eval.every", allow_zero=True)
    _optimizer(config, "optimizer", None)
    if algorithm.data == "unpaired" and t.batch_size < 2:
        raise ConfigError(
            f"config field train.batch_size={t.batch_size!r} is too small for algorithm {config.algo.name!r} "
            "(unpaired data, KTO): its reference point pairs each prompt with another row's completion, "
            "so a batch needs >= 2 examples; set --config.train.batch_size=2 or more"
        )
    if algorithm.value_objective is not None:
        _optimizer(config, "critic.optimizer", config.critic.optimizer)
    if algorithm.rounds is not None:
        r = algorithm.rounds
        _require(
            isinstance(r.steps, int) and r.steps > 0,
            "algo.round_steps",
            r.steps,
            "must be a positive integer",
        )
        lora_rank = config.model.get("lora", {}).get("rank", 0)
        if r.extrapolation and lora_rank:
            raise ConfigError(
                f"config field algo.alpha={r.extrapolation!r} (APO's extrapolation of the parameters between "
                f"rounds) needs full fine-tuning, but model.lora.rank={lora_rank}: extrapolating the adapters "
                "alone is not the method; set --config.model.lora.rank=0 or --config.algo.alpha=0 "
                "(iterative DPO, which works under LoRA)"
            )
    if config.sft.steps:
        _positive_int(config, "sft.steps")
        _positive_int(config, "sft.batch_size")
        _positive_int(config, "sft.eval_every", allow_zero=True)
        _optimizer(config, "sft.optimizer", config.sft.optimizer)
        target = config.sft.target_accuracy
        _require(0 <= target <= 1, "sft.target_accuracy", target, "must be in [0, 1] (0: never stop early)")
    s = config.sampling
    _positive_int(config, "sampling.max_new_tokens")
    _positive_int(config, "sampling.num_samples")
    _positive_int(config, "sampling.top_k", allow_zero=True)
    _finite_positive(config, "sampling.temperature", allow_zero=True)
    _require(0 < s.top_p <= 1, "sampling.top_p", s.top_p, "must be in (0, 1] (1 disables nucleus sampling)")
    if algorithm.data == "rollout" and s.temperature == 0:
        raise ConfigError(
            "config field sampling.temperature=0 (greedy) cannot drive an RL phase: every sample of a "
            "prompt would be the same sequence (no group-relative signal) and the policy's log-probs "
            "are not those of the samples; set --config.sampling.temperature to a value > 0 (1.0: the "
            "policy's own distribution). Greedy rollouts inside a strategy are asked for per call "
            "(ctx.sample(..., temperature=0.0), as greedy_baseline does); evaluation is greedy anyway"
        )
    _finite_positive(config, "eval.temperature")
    for name, weight in config.rewards.items():
        ok = isinstance(weight, int | float) and not isinstance(weight, bool) and math.isfinite(weight)
        _require(ok, f"rewards.{name}", weight, "must be a finite number (the source's weight)")
    if algorithm.data == "rollout":
        _require(
            len(config.rewards) > 0,
            "rewards",
            dict(config.rewards),
            "is empty; add a source, e.g. --config.rewards=\"{'exact_match': 1.0}\"",
        )
    num_labels = config.model.get("num_labels", 1)
    if algorithm.head == "reward" and algorithm.data == "preference" and num_labels != 1:
        raise ConfigError(
            f"config field model.num_labels={num_labels!r} gives the reward head {num_labels} outputs, but "
            f"algorithm {config.algo.name!r} trains a reward model on preference pairs, one score per "
            "completion; set --config.model.num_labels=1 (K outputs: multi_label_rm on scored completions)"
        )
    for name in sorted(n[4:] for n in algorithm.needs() if n.startswith("aux:")):
        if name not in config.get("aux_models", {}):
            raise ConfigError(
                f"algorithm {config.algo.name!r} has passes that read the auxiliary model {name!r}, which "
                f"config field aux_models does not define (it has: {sorted(config.get('aux_models', {}))})"
            )


def validate_passes(algorithm: Algorithm, model_config, aux_models: dict) -> None:
    """Each pass's `check(model_config, aux_models)` (e.g. a teacher's vocabulary against the
    policy's), once the auxiliary models are loaded and before any file is written."""
    for p in algorithm.passes:
        if p.check is not None:
            p.check(model_config, aux_models)


def validate_model(config, model_config) -> None:
    """Checks that need the model: prompt + response positions within the model's context."""
    total = config.data.max_prompt_len + config.sampling.max_new_tokens
    if total > model_config.max_position_embeddings:
        raise ConfigError(
            f"config fields data.max_prompt_len={config.data.max_prompt_len} + sampling.max_new_tokens="
            f"{config.sampling.max_new_tokens} = {total} positions exceed the model's "
            f"max_position_embeddings={model_config.max_position_embeddings}; lower one of them"
            + ("" if config.model.checkpoint else " or raise --config.model.max_position_embeddings")
        )


def check_workdir(path: str) -> None:
    """The run's directory exists (created here) and accepts files; the error names the path."""
    try:  # owner-only: sandboxed code rewards run as other users and must not read the run
        os.makedirs(path, mode=0o700, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_check_"):
            pass
    except OSError as error:
        raise ConfigError(
            f"workdir {os.path.abspath(path)!r} is not writable ({error.strerror or error}); choose another "
            "with --workdir=... or fix its permissions"
        ) from error
