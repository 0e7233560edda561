"""Every algorithm the library registers, on one shared smoke setup (one model size, one sampler
program, the persistent compilation cache across algorithms):

1. a smoke end-to-end run: two steps of the main phase through `Trainer.fit` (the config path),
   finite metrics, a final checkpoint;
2. no recompilation: every jitted step function compiled once over the two steps;
3. the algorithm state round-trips through the orbax checkpoint the run wrote;
4. the objective contract: the trainer's update with 1 and with 4 micro-batches gives the same
   loss, metrics and gradients (`check_microbatch_invariance`, params moved off the policy that
   prepared the batch), on the third step's prepared batch;
5. finiteness at extreme log-ratios: |logp − logp_old| = |logp − logp_behav| = 50 (preference
   batches: the reference log-probs ±50), with the batch's advantages and with zero advantages.

Algorithms that need a particular smoke setting (one sample per prompt, pairs, a teacher) get
it from `SETUPS`; the rest use the smoke config of their data kind (grpo_arithmetic for rollouts
and SFT, dpo_arithmetic for pairs, `configs/<name>_arithmetic.py` when it exists) with a
length reward that varies within every group of a random policy (tests/test_microbatch_invariance.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ext_algorithms.ppo_reward_model import write_reward_model
from test_distill import write_teacher
from test_microbatch_invariance import FAST_COMPILE, ROOT, _config, check_prepared, prepare_step

import jaxrl_llm as jrl
from jaxrl_llm.algorithms import get_factory, registered_algorithms
from jaxrl_llm.train.checkpoint import Checkpointer
from jaxrl_llm.train.forward import batch_policy_outputs
from jaxrl_llm.train.invariance import _update_outputs

# Options that change an algorithm's pieces (a carried multiplier instead of a penalty) run as
# their own case, "name[option]", built with these hyper-parameters.
VARIANTS = {}  # e.g. {"disco[multiplier]": ("disco", {"constraint": "multiplier"})}
LIBRARY = sorted(n for n in registered_algorithms() if get_factory(n).__module__.startswith("jaxrl_llm."))
CASES = sorted(LIBRARY + list(VARIANTS))
STEPS = 2
EXTREME = 50.0


def _one_sample(config, tmp_path):
    config.sampling.num_samples = 1
    config.train.batch_size = 16
    return config


def _pairs(config, tmp_path):
    config.sampling.num_samples = 2
    return config


@jrl.register_reward("every_parity")
def every_parity(*, prompt, completion, answer, finished):
    """A binary reward (0/1, like a verifier's) that varies within a random policy's groups."""
    return float(len(completion) % 2)


def _binary(config, tmp_path):
    config.rewards = {"every_parity": 1.0}  # correct = reward > 0.5: positives and negatives
    return config


def _parity_judge(config, tmp_path):
    """CGPO with a judge that about half of a random policy's samples pass (the arithmetic
    judges, a finished number, pass few of them, some smoke batches none: no gradient)."""
    config.algo.judges = "every_parity"
    return config


def _binary_two_minibatches(config, tmp_path):
    """Two updates per rollout on whole groups: the trainer permutes groups (whole_groups) and
    adds the old-policy pass."""
    config.train.minibatches = 2
    return _binary(config, tmp_path)


def _teacher(config, tmp_path):
    """A random teacher over the policy's tokenizer (an auxiliary model, as users give one)."""
    path = write_teacher(str(tmp_path / "teacher"), config.tokenizer.alphabet)
    config.aux_models = {"teacher": {"checkpoint": path, "head": "causal_lm"}}
    return config


def _token_reward_model(config, tmp_path):
    """TGDPO's token-level reward model: a random causal LM over the policy's tokenizer."""
    path = write_teacher(str(tmp_path / "token_rm"), config.tokenizer.alphabet)
    config.aux_models = {"token_rm": {"checkpoint": path, "head": "causal_lm"}}
    return config


def _margin_models(config, tmp_path):
    """MODPO with two margin models: a random reward model and a random causal LM (its
    implicit DPO reward), so both kinds of margin run."""
    alphabet = config.tokenizer.alphabet
    config.aux_models = {
        "margin_rm": {
            "checkpoint": write_reward_model(str(tmp_path / "margin_rm"), alphabet),
            "head": "reward",
        },
        "margin_lm": {
            "checkpoint": write_teacher(str(tmp_path / "margin_lm"), alphabet),
            "head": "causal_lm",
        },
    }
    config.algo.update(margin_models="margin_rm,margin_lm", weights=(0.5, 0.25, 0.25))
    return config


SETUPS = {  # name -> (config, tmp_path) -> config, applied after the default setup
    "remax": _one_sample,
    "on_policy_distill": _teacher,
    "tgdpo": _token_reward_model,
    "modpo": _margin_models,
    "p3o": _pairs,
    "cgpo": _parity_judge,
    **dict.fromkeys(["disco", "drpo", "trpa", "ngrpo", "grpo_lambda"], _binary),
    "pacs": _binary_two_minibatches,
}


def smoke(case, tfds_dir, tmp_path):
    name, hyperparams = VARIANTS.get(case, (case, {}))
    config = _config(name, tfds_dir, tmp_path)
    if hyperparams:
        config.algo = {"name": name, **hyperparams}
    config.train.update(steps=STEPS, checkpoint_every=STEPS)
    config.eval.update(every=0, num_prompts=8, batch_size=8, pass_k=0)  # greedy only: one sampler
    return SETUPS.get(case, lambda c, t: c)(config, tmp_path)


@jax.jit
def _logp(params, prompt_ids, prompt_mask, response_ids, response_mask):
    batch = jrl.Rollout(prompt_ids, prompt_mask, response_ids, response_mask)
    return batch_policy_outputs(_logp.model_config, params, batch, 1.0).logp


def current_logp(trainer, params, batch):
    _logp.model_config = trainer.model_config  # one model size for every algorithm
    return _logp(params, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask)


def with_old_logp(trainer, params, batch):
    """The batch with logp_old as the old-policy pass would write it (when the algorithm's own
    passes did not): one pytree shape for the invariance and the extreme-ratio updates."""
    reward_model = trainer.algorithm.head == "reward"  # scored completions: no log-probs
    if isinstance(batch, jrl.PreferenceBatch) or batch.logp_old is not None or reward_model:
        return batch
    return batch._replace(logp_old=current_logp(trainer, params, batch))


def extreme(trainer, params, batch, zero_advantages: bool):
    """log-ratios of ±50 against the old/behaviour (or reference) log-probs, alternating by token
    (a multi-label reward model, which has none: its labels ±50, alternating by aspect)."""
    if "labels" in batch.extras:
        labels = batch.extras["labels"]
        sign = jnp.where(jnp.arange(labels.shape[1]) % 2 == 0, 1.0, -1.0)
        return batch._replace(extras={**batch.extras, "labels": labels + EXTREME * sign})
    if isinstance(batch, jrl.PreferenceBatch):
        sign = jnp.where(jnp.arange(batch.chosen_ids.shape[1]) % 2 == 0, 1.0, -1.0)
        shift = lambda x: None if x is None else x + EXTREME * sign  # noqa: E731
        return batch._replace(
            ref_chosen_logps=shift(batch.ref_chosen_logps), ref_rejected_logps=shift(batch.ref_rejected_logps)
        )
    logp = current_logp(trainer, params, batch)
    sign = jnp.where(jnp.arange(logp.shape[1]) % 2 == 0, 1.0, -1.0)
    batch = batch._replace(logp_old=logp + EXTREME * sign)
    if batch.logp_behav is not None:
        batch = batch._replace(logp_behav=logp - EXTREME * sign)
    if zero_advantages and batch.advantages is not None:
        batch = batch._replace(advantages=jnp.zeros_like(batch.advantages))
    return batch


def finite_update_check(trainer):
    """`check(state, batch)`: the trainer's update (1 micro-batch, SGD recorder) on every row of
    `batch`, asserting a finite loss, metrics and gradient. It is the invariance check's own
    1-micro-batch program (`invariance._update_outputs`, the same precision and compiler
    options), so its compile is a cache hit of that check's."""
    algorithm = trainer.algorithm

    def check(state, batch) -> dict:
        with jax.default_matmul_precision("highest"):
            metrics, grads, critic_grads = _update_outputs(
                algorithm,
                trainer.model_config,
                state.params,
                state.critic_params,
                state.ref_params,
                batch,
                state.algo_state,
                1,
                trainer.sampling.temperature,
                FAST_COMPILE,
            )  # raises when the loss or a gradient is not finite
        bad = sorted(k for k, v in metrics.items() if not np.isfinite(v))
        assert not bad, f"non-finite update: {bad}"
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves((grads, critic_grads)))
        return metrics

    return check


@pytest.mark.parametrize("case", CASES[::2])
def test_algorithm(case, tfds_dir, tmp_path):
    """Every other case; the rest run in tests/test_every_algorithm_2.py (another file, so that
    xdist's loadfile scheduling runs the two halves on different workers)."""
    check_case(case, tfds_dir, tmp_path)


def check_case(case, tfds_dir, tmp_path):
    """Checks 1-5 of the module docstring for one case."""
    config = smoke(case, tfds_dir, tmp_path)
    name = config.algo.name
    workdir = str(tmp_path / "run")
    trainer = jrl.Trainer(config, workdir)
    trainer.fit()
    # 1. the smoke run
    rows = jrl.read_metrics(workdir, phase="main")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    for r in rows:
        bad = [k for k, v in r.items() if isinstance(v, float) and not np.isfinite(v)]
        assert not bad, f"step {r['step']}: non-finite {bad}"
    # 2. compiled once
    sizes = {key: [f._cache_size() for f in fns] for key, fns in trainer._step_fn_cache.items()}
    assert max(max(v) for v in sizes.values()) == 1, f"(prepare, update) programs per layout: {sizes}"
    # 3. orbax round trip of the algorithm state (and everything else)
    phase = trainer.phases[-1]
    final = trainer.final_state
    ckpt = Checkpointer(f"{workdir}/checkpoints/{phase.name}")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), final)
    step, restored, _ = ckpt.restore_latest_good(abstract_state=abstract)
    ckpt.close()
    assert step == STEPS
    carried = lambda s: jax.tree.leaves((s.algo_state, s.anchor_params))  # noqa: E731 (APO's anchor)
    for a, b in zip(carried(final), carried(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # 4. 1 vs 4 micro-batches, on the next step's batch
    state, batch = prepare_step(name, trainer, jax.tree.map(jnp.copy, final), STEPS)
    batch = with_old_logp(trainer, state.params, batch._replace(metrics={}))
    report = check_prepared(trainer, state, batch)
    print(f"\n{name}: " + ", ".join(f"{k} {v:.2g}" for k, v in report.differences.items()))
    assert report.values["grad_norm"] > 0, f"{name}: zero policy gradient, the check is vacuous"
    # 5. extreme log-ratios
    if phase.algorithm.data != "supervised":
        check = finite_update_check(trainer)
        for zero in (False, True):
            check(state, extreme(trainer, state.params, batch, zero))


def test_every_algorithm_is_documented():
    with open(f"{ROOT}/docs/algorithms.md") as f:
        text = f.read()
    missing = [n for n in LIBRARY if f"`{n}`" not in text]
    assert not missing, f"docs/algorithms.md does not list {missing}"
