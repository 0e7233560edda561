"""The micro-batch invariance contract, checked with the trainer's own update.

The trainer splits a mini-batch into `train.microbatches` parts and sums the objective's loss,
gradients and metrics over them (`jaxrl_llm.objectives`). An objective that normalises by the
micro-batch (a bare `jnp.mean`) then trains differently with every `train.microbatches`;
`check_microbatch_invariance` runs `update` (`jaxrl_llm.train.steps.make_step_fns`) with 1 and
with k micro-batches and compares everything it produces.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrl_llm import lora
from jaxrl_llm.algorithms import make_algorithm
from jaxrl_llm.models.config import TransformerConfig
from jaxrl_llm.train.steps import TrainState, make_step_fns
from jaxrl_llm.types import Algorithm

_HINT_SCALED = (
    "the objective normalises by the micro-batch; use jaxrl_llm.objectives.token_mean / "
    "sequence_mean (or aggregate(..., **normalisers(batch))) instead of jnp.mean"
)
_HINT_OTHER = (
    "it is not a sum over micro-batches: normalise by the whole mini-batch's "
    "batch.extras['num_tokens'] / ['num_seqs'] (jaxrl_llm.objectives.token_mean / sequence_mean), "
    "and report batch-level statistics from a transform (add_metrics), not from the objective"
)


class InvarianceReport(NamedTuple):
    """differences: quantity -> |a − b| / max(|a|, atol), a its value with 1 micro-batch and b
    with k: the loss, every metric, and 'policy_grad' / 'critic_grad' (the largest over parameter
    leaves, in norm). values: the loss and metrics with 1 micro-batch (grad_norm and
    critic_grad_norm among them: with a zero gradient the check proves nothing)."""

    differences: dict[str, float]
    values: dict[str, float]


def gradient_recorder() -> optax.GradientTransformation:
    """Plain SGD with learning rate 1 and no clipping (the update is exactly −gradient) whose
    state is the last gradient it was given, so the gradient is read back without the rounding
    of (params − g) − params."""
    return optax.GradientTransformation(
        init=lambda params: jax.tree.map(jnp.zeros_like, params),
        update=lambda grads, state, params=None: (jax.tree.map(jnp.negative, grads), grads),
    )


def _update_outputs(
    algorithm,
    model_config,
    params,
    critic_params,
    ref_params,
    batch,
    algo_state,
    microbatches,
    temperature,
    options,
) -> tuple[dict, Any, Any]:
    """(metrics, policy gradient, critic gradient) of one trainer `update` on every row of `batch`."""
    recorder = gradient_recorder()
    has_critic = algorithm.value_objective is not None
    _, update = make_step_fns(
        algorithm,
        model_config,
        recorder,
        recorder if has_critic else None,
        temperature=temperature,
        microbatches=microbatches,
        recompute_old_logp=False,
        grouped_update_rows=False,
    )

    def opt_state(p):
        return recorder.init(lora.split_trainable(model_config, p)[0])

    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731  (`update` donates its state)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=copy(params),
        opt_state=opt_state(params),
        algo_state=copy(algo_state),
        rng=jax.random.PRNGKey(0),
        critic_params=copy(critic_params) if has_critic else None,
        critic_opt_state=opt_state(critic_params) if has_critic else None,
        ref_params=None if ref_params is None else copy(ref_params),
    )
    rows = jnp.arange(batch.prompt_ids.shape[0])
    if options:  # the same program, compiled with other XLA options (added to the trainer's)
        update = update.lower(state, batch, rows).compile(options)
    new, metrics, finite = update(state, batch, rows)
    if not bool(finite):
        raise AssertionError(
            f"the update with {microbatches} micro-batch(es) has a non-finite loss or gradient"
        )
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    return metrics, new.opt_state, new.critic_opt_state if has_critic else None


def _scalar_difference(name, a, b, k, rtol, atol) -> tuple[float, str | None]:
    """(relative difference, failure message or None) of a value with 1 and with k micro-batches."""
    diff = abs(a - b)
    rel = diff / max(abs(a), atol, 1e-30)
    if np.isfinite(diff) and diff <= atol + rtol * abs(a):
        return rel, None
    ratio = b / a if a != 0 else float("inf")
    hint = _HINT_SCALED if abs(ratio - k) < 0.25 * k else _HINT_OTHER
    return rel, f"{name} differs: {a:.6g} (1 micro-batch) vs {b:.6g} ({k}): ratio {ratio:.3g} — {hint}"


def _tree_difference(name, a, b, k, rtol, atol) -> tuple[float, str | None]:
    """Per-leaf norm-relative difference of two gradient trees: max over leaves of
    ‖a − b‖ / max(‖a‖, atol); a leaf fails when ‖a − b‖ > atol + rtol ‖a‖."""
    worst, failure = 0.0, None
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        norm, diff = np.linalg.norm(x), np.linalg.norm(x - y)
        rel = diff / max(norm, atol, 1e-30)
        worst = max(worst, rel)
        if np.isfinite(diff) and diff <= atol + rtol * norm:
            continue
        if failure is None:
            ratio = np.linalg.norm(y) / norm if norm > 0 else float("inf")
            hint = _HINT_SCALED if abs(ratio - k) < 0.25 * k else _HINT_OTHER
            failure = (
                f"{name} differs at {jax.tree_util.keystr(path)}: |g| {norm:.6g} (1 micro-batch) vs "
                f"{np.linalg.norm(y):.6g} ({k}): ratio {ratio:.3g}, relative difference {rel:.3g} — {hint}"
            )
    return worst, failure


def check_microbatch_invariance(
    algorithm: Algorithm | str,
    model_config: TransformerConfig,
    params,
    batch,
    *,
    critic_params=None,
    ref_params=None,
    algo_state=None,
    microbatches: int = 4,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    temperature: float = 1.0,
    compiler_options: dict | None = None,
) -> InvarianceReport:
    """Runs the trainer's jitted `update` on every row of `batch` with 1 and with `microbatches`
    micro-batches (SGD, learning rate 1, no clipping: the step is exactly −gradient) and compares
    the loss, every metric and the policy (and critic) gradients. Returns an `InvarianceReport`;
    raises an AssertionError naming each quantity that differs by more than atol + rtol·|value|
    (gradients: per parameter leaf, in norm), with both values and their ratio.

    algorithm: an `Algorithm`, or a registered name (built with its defaults).
    params: the policy's params; `critic_params`: the critic's (needed with a value objective);
      `ref_params`: the frozen reference's (needed with `Algorithm.full_kl`).
    batch: a Rollout / PreferenceBatch as `update` gets it, i.e. after `prepare` (passes and
      transform), with rows divisible by `microbatches`; `algo_state`: the state `prepare`
      returned (default `algorithm.transform.init()`).
    temperature: the sampling temperature, at which the trainer computes log-probs.
    compiler_options: XLA options for compiling both updates (tests on CPU:
      {"xla_backend_optimization_level": 0} halves the compile time; same program and values).

    Both updates are traced at 'highest' matmul precision (accelerators may otherwise run float32
    matmuls in TF32, whose rounding exceeds rtol); a bfloat16 model needs a larger rtol. Params
    equal to the reference / old policy make log-ratios exactly 0 with one micro-batch and
    rounding noise with k, which flips step-function metrics (accuracies, clip fractions) at
    those ties: check with params moved away from them (tests/test_microbatch_invariance.py).

    Example (`prepared_batch` of tests/test_microbatch_invariance.py builds the batch of a
    Trainer's first step, as `Trainer._step` does):

        trainer, state, batch = prepared_batch("my_algo", data_dir, tmp_path)
        report = jrl.check_microbatch_invariance(
            trainer.algorithm, trainer.model_config, state.params, batch,
            critic_params=state.critic_params, algo_state=state.algo_state,
        )
        report.differences  # {'loss': 3e-07, 'pg_loss': 2e-07, ..., 'policy_grad': 4e-07}

    With a bare `jnp.mean` over tokens the loss comes out ~`microbatches` times larger:

        AssertionError: micro-batch invariance violated:
          loss differs: 3.04014 (1 micro-batch) vs 12.1606 (4): ratio 4 — the objective
          normalises by the micro-batch; use jaxrl_llm.objectives.token_mean / sequence_mean ...
    """
    if isinstance(algorithm, str):
        algorithm = make_algorithm(algorithm)
    if model_config.lora is not None and model_config.lora.dropout > 0:
        raise ValueError("adapter dropout draws other masks per micro-batch; check with lora.dropout=0")
    if algorithm.value_objective is not None and critic_params is None:
        raise ValueError("the algorithm has a value objective: pass critic_params")
    if algorithm.full_kl and ref_params is None and model_config.lora is None:
        raise ValueError("the algorithm has full_kl (a KL to the reference in the update): pass ref_params")
    rows = batch.prompt_ids.shape[0]
    if rows % microbatches:
        raise ValueError(f"the batch has {rows} rows, which do not split into {microbatches} micro-batches")
    if algo_state is None:
        algo_state = algorithm.transform.init()
    batch = batch._replace(metrics={})  # the trainer logs them after `prepare`, never updates with them
    args = (algorithm, model_config, params, critic_params, ref_params, batch, algo_state)
    with jax.default_matmul_precision("highest"):
        one, g_one, critic_one = _update_outputs(*args, 1, temperature, compiler_options)
        many, g_many, critic_many = _update_outputs(*args, microbatches, temperature, compiler_options)
    if set(one) != set(many):
        raise AssertionError(
            f"metrics differ: {sorted(one)} (1 micro-batch) vs {sorted(many)} ({microbatches})"
        )
    report, failures = {}, []
    for name in ["loss", *sorted(set(one) - {"loss"})]:
        report[name], failure = _scalar_difference(name, one[name], many[name], microbatches, rtol, atol)
        failures.append(failure)
    trees = [("policy_grad", g_one, g_many)]
    if critic_one is not None:
        trees.append(("critic_grad", critic_one, critic_many))
    for name, a, b in trees:
        report[name], failure = _tree_difference(name, a, b, microbatches, rtol, atol)
        failures.append(failure)
    failures = [f for f in failures if f]
    if failures:
        raise AssertionError("micro-batch invariance violated:\n  " + "\n  ".join(failures))
    return InvarianceReport(report, one)
