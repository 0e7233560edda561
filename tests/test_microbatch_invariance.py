"""The micro-batch invariance contract, held for every registered algorithm.

`jrl.check_microbatch_invariance` runs the trainer's update with 1 and with 4 micro-batches on a
batch built the way `Trainer._step` builds it (a smoke Trainer, one collected rollout or one
dataset batch, the algorithm's `prepare`) and compares loss, metrics and gradients.

Which algorithms: every name in the registry whose factory is defined in the library
(`jaxrl_llm.*`) or in a module of `tests/ext_algorithms/` (each imported here, so the set grows
with that folder). Algorithms registered by other test files (throwaway registrations such as
`test_trainer`'s NaN objective or `test_extension`'s rank_grpo) are excluded whatever their
names, so the parameter list does not depend on which test files were collected first.

Configs: a library algorithm uses `configs/<name>_arithmetic.py:smoke` when it exists, else the
smoke config of its data kind (grpo_arithmetic for rollouts and SFT, dpo_arithmetic for pairs);
an ext algorithm the smoke config its module names (`SMOKE_CONFIG`, else a `configs/<x>.py:smoke`
in its docstring, else grpo_arithmetic; tests/ext_algorithms/__init__.py) adapted by its
`configure(config)` (or `configure(config, tmp_path)`). Their batch sizes stay (every one gives
rows divisible by 4; asserted), so the sampler and `prepare` are the programs test_trainer and
test_extension_api compile. The SFT warm-start is off (the first main-phase batch, from the
initial policy), and a length reward gives rollouts varied rewards (non-zero advantages) unless
`configure` sets its own. The check runs on all rows of the prepared batch (one mini-batch) and
on params moved off the initial policy (`moved`).
`update` runs with `grouped_update_rows=False` for both micro-batch counts (the check's choice:
rows are split the same way whatever the grouping; grouping changes no value).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import sys

import jax
import jax.numpy as jnp
import pytest
from run_helpers import load_config, smoke_config_name

import jaxrl_llm as jrl
from jaxrl_llm.algorithms import get_factory, make_algorithm, registered_algorithms
from jaxrl_llm.rollout.strategies import PromptBatch
from jaxrl_llm.train.invariance import check_microbatch_invariance
from jaxrl_llm.train.trainer import Trainer, data_batch, grouped_layout

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
EXT_DIR = os.path.join(TESTS, "ext_algorithms")
MICROBATCHES = 4
# Compiles dominate: XLA:CPU at optimisation level 0 compiles the two updates of each algorithm
# in half the time (same programs). Everything else is the trainer's own program for its smoke
# config, compiled already by test_trainer / test_extension_api (the persistent cache).
FAST_COMPILE = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None


@jrl.register_reward("invariance_length")
def invariance_length(*, prompt, completion, answer, finished):
    """Varies within every group of a random policy's samples: non-zero advantages."""
    return len(completion) / 6.0 + float(finished)


def _ext_modules() -> dict:
    """Every module of tests/ext_algorithms, by module name, imported as `ext_algorithms.<name>`
    (tests/ on sys.path) like every other test imports them: registered once per process."""
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    names = sorted(m.name for m in pkgutil.iter_modules([EXT_DIR]))
    modules = (importlib.import_module(f"ext_algorithms.{n}") for n in names)
    return {m.__name__: m for m in modules}


EXT_MODULES = _ext_modules()


def _covered() -> dict:
    """name -> the ext module that registered it (None for the library's)."""
    covered = {}
    for name in registered_algorithms():
        module = get_factory(name).__module__
        if module.startswith("jaxrl_llm."):
            covered[name] = None
        elif module in EXT_MODULES:
            covered[name] = EXT_MODULES[module]
    return covered


ALGORITHMS = _covered()


def _smoke_config_name(name: str, module) -> str:
    """The smoke config an algorithm starts from (the module docstring above)."""
    if module is not None:  # the convention of tests/ext_algorithms/__init__.py
        return smoke_config_name(module)
    if os.path.exists(os.path.join(ROOT, "configs", f"{name}_arithmetic.py")):
        return f"{name}_arithmetic"
    return "dpo_arithmetic" if make_algorithm(name).data == "preference" else "grpo_arithmetic"


def _config(name: str, tfds_dir: str, tmp_path):
    module = ALGORITHMS[name]
    config = load_config(_smoke_config_name(name, module))
    if config.algo.name != name:
        config.algo = {"name": name}
    config.data.data_dir = tfds_dir
    config.data.check_records = 0
    config.rewards = {"invariance_length": 1.0}
    if module is not None:
        positional = [
            p
            for p in inspect.signature(module.configure).parameters.values()
            if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
        config = module.configure(config, tmp_path) if len(positional) >= 2 else module.configure(config)
    config.sft.steps = 0  # the batch of the first step of the main phase, from the initial policy
    return config


def prepared_batch(name: str, tfds_dir: str, tmp_path):
    """(trainer, state, batch) as `Trainer._step` has them after `prepare` on the first step."""
    config = _config(name, tfds_dir, tmp_path)
    trainer = Trainer(config, str(tmp_path / "run"))
    phase = trainer.phases[-1]
    state = trainer._initial_state(phase, trainer.init_params, 0)
    return (trainer, *prepare_step(name, trainer, state, 0))


def prepare_step(name: str, trainer, state, index: int):
    """(state, batch) after `prepare` on the main phase's batch `index` from `state` (donated)."""
    config = trainer.config
    phase = trainer.phases[-1]
    dataset = trainer._datasets(phase, config.seed + 1)
    batch_np = dataset[index]
    kind = phase.algorithm.data
    if kind == "rollout":
        extra = trainer._datasets(phase, config.seed + 1 + 7919)
        batch, _ = trainer.collect(state, PromptBatch.from_dict(batch_np), extra, index)
    else:
        batch = data_batch(kind, batch_np)
    batch = batch._replace(metrics={})
    prepare, _ = trainer._step_fns(phase, grouped_layout(batch, trainer.sampling.num_samples), False)
    batch, state = prepare(state, batch, {n: m.params for n, m in trainer.aux_models.items()})
    rows = batch.prompt_ids.shape[0]
    assert rows % MICROBATCHES == 0, (
        f"{name}: prepare returned {rows} rows; choose train.batch_size / sampling.num_samples (in "
        f"configure) so that they split into {MICROBATCHES} micro-batches"
    )
    return state, batch


def moved(params, seed: int = 0, scale: float = 0.1):
    """`params` + scale * N(0, 1) on every leaf: a policy (critic) away from the one that
    prepared the batch, as in a later epoch, with log-ratios large enough to clip. At the first
    step the policy equals the reference and the old policy: log-ratios are exactly 0 with one
    micro-batch and rounding errors with four, and step-function metrics (DPO's
    reward_accuracy, clip fractions) flip at those ties."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return tree.unflatten(
        [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)]
    )


def check_prepared(trainer, state, batch):
    """`check_microbatch_invariance` of the trainer's algorithm on a prepared batch, params moved."""
    return check_microbatch_invariance(
        trainer.algorithm,
        trainer.model_config,
        moved(state.params),
        batch,
        critic_params=None if state.critic_params is None else moved(state.critic_params, seed=1),
        ref_params=state.ref_params,
        algo_state=state.algo_state,
        microbatches=MICROBATCHES,
        temperature=trainer.sampling.temperature,
        compiler_options=FAST_COMPILE,
    )


@pytest.mark.parametrize("name", sorted(n for n, module in ALGORITHMS.items() if module is not None))
def test_algorithm_is_microbatch_invariant(name, tfds_dir, tmp_path):
    """The ext algorithms (the library's: tests/test_every_algorithm.py, with more checks)."""
    trainer, state, batch = prepared_batch(name, tfds_dir, tmp_path)
    report = check_prepared(trainer, state, batch)
    print(f"\n{name}: " + ", ".join(f"{k} {v:.2g}" for k, v in report.differences.items()))
    print(f"{name} values: " + ", ".join(f"{k} {v:.3g}" for k, v in report.values.items()))
    assert {"loss", "grad_norm", "policy_grad"} <= set(report.differences)
    assert report.values["grad_norm"] > 0, f"{name}: zero policy gradient, the check is vacuous"
    if trainer.algorithm.value_objective is not None:
        assert "critic_grad" in report.differences and report.values["critic_grad_norm"] > 0


# ---- the check catches an objective normalised by the micro-batch ------------------------------
@jrl.register_algorithm("invariance_mean_nll")
def mean_nll() -> jrl.Algorithm:
    """SFT whose NLL is a bare jnp.mean over the loss-mask tokens of each micro-batch."""

    def objective(outputs, batch, state):
        mask = jrl.loss_mask(batch)
        nll = jnp.mean(-outputs.logp, where=mask > 0)
        return nll, {"nll": nll}

    return jrl.sft()._replace(objective=objective)


def test_a_jnp_mean_objective_is_caught(tfds_dir, tmp_path):
    trainer, state, batch = prepared_batch("sft", tfds_dir, tmp_path)
    with pytest.raises(AssertionError, match="loss differs") as info:
        check_microbatch_invariance(
            "invariance_mean_nll", trainer.model_config, state.params, batch, compiler_options=FAST_COMPILE
        )
    message = str(info.value)
    print(message)
    ratio = float(re.search(r"loss differs: .* ratio ([0-9.]+)", message).group(1))
    assert 3.5 < ratio < 4.5  # summed over 4 micro-batches of (nearly) equal token counts
    assert "nll differs" in message and "policy_grad differs" in message
    assert "token_mean / sequence_mean" in message
