"""Peak memory and step time of the 52M-parameter PPO training step, without/with remat and LoRA.

    python experiments/bench_memory.py                        # every variant, 3 runs x 3 timed steps
    python experiments/bench_memory.py --variants=none,full --repeats=1 --steps=5

The step is the trainer's own (`train.steps.make_step_fns` with `ppo`, kl_coef 0.02): `prepare`
runs the reference, pre-update policy and critic passes, `update` one AdamW step of the policy
and of the critic (value head + trunk) on all rows. Model: bench_common.SIZES['52M'] (d 512,
8 layers, 8 heads / 4 KV heads, MLP 1024, vocab 32000), float32; batch 16 sequences of
32 prompt + 96 response tokens (random ids, every token real). The critic starts from the
policy's trunk, as in the trainer. Variants (`--variants`):

  none        full fine-tuning: policy, reference copy, critic; Adam moments for policy and critic
  dots, full  the same with `model.remat` = 'dots' / 'full' on every block
  lora        rank-16 adapters (alpha 32) on q, k, v, o, gate, up, down of policy and critic;
              the base frozen, no reference copy (the reference = the base), Adam moments for the
              adapters (and the critic's value head) only
  lora_full   lora + remat 'full'

Each variant runs in a fresh subprocess (`--worker=VARIANT`), without a persistent compilation
cache; `--repeats` runs of every variant alternate (A B C A B C ...) so that load from other
processes spreads over all variants. Reported per variant:
  params M          parameter elements held in the train state (policy + reference + critic)
  opt state M       optimiser-state elements (Adam's mu and nu, counts)
  XLA update MB     the compiled update's memory_analysis(): temporaries / arguments (the state
                    and batch it reads; outputs alias the donated state)
  XLA prepare MB    temporaries of the compiled prepare (forward passes only)
  peak RSS MB       ru_maxrss of the worker at the end (whole process, compilation included;
                    the largest over the runs)
  steps RSS MB      the process's peak RSS during the timed steps only: VmHWM after resetting it
                    through /proc/self/clear_refs once everything is compiled and warmed up
  step s            median (and min) wall time of prepare + update over the timed steps of all
                    runs (each run: 1 warm-up step, then `--steps` timed steps)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bench_common import RESULT_MARKER, SIZES, emit_result, peak_rss_mb

VARIANTS = {
    "none": dict(remat="none", lora_rank=0),
    "dots": dict(remat="dots", lora_rank=0),
    "full": dict(remat="full", lora_rank=0),
    "lora": dict(remat="none", lora_rank=16),
    "lora_full": dict(remat="full", lora_rank=16),
}
ROWS, PROMPT_LEN, RESPONSE_LEN = 16, 32, 96


def _current_hwm_mb() -> float | None:
    """VmHWM (peak RSS since the last reset) from /proc/self/status, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def _reset_hwm() -> bool:
    """Resets the kernel's peak-RSS mark of this process (Linux clear_refs value 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rollout(vocab: int):
    import numpy as np

    from jaxrl_llm.types import Rollout

    rng = np.random.default_rng(0)
    return Rollout(
        prompt_ids=rng.integers(3, vocab, (ROWS, PROMPT_LEN)).astype(np.int32),
        prompt_mask=np.ones((ROWS, PROMPT_LEN), np.int32),
        response_ids=rng.integers(3, vocab, (ROWS, RESPONSE_LEN)).astype(np.int32),
        response_mask=np.ones((ROWS, RESPONSE_LEN), np.int32),
        group_ids=np.arange(ROWS, dtype=np.int32),
        logp_behav=np.full((ROWS, RESPONSE_LEN), -3.0, np.float32),
        rewards=rng.random(ROWS).astype(np.float32),
    )


def worker(variant: str, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from jaxrl_llm import lora
    from jaxrl_llm.algorithms import make_algorithm
    from jaxrl_llm.models.config import LoraConfig, TransformerConfig
    from jaxrl_llm.models.transformer import init_params
    from jaxrl_llm.train.steps import TrainState, make_step_fns

    v = VARIANTS[variant]
    d, layers, heads, kv_heads, mlp, vocab = SIZES["52M"]
    config = TransformerConfig(
        vocab_size=vocab,
        d_model=d,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        mlp_dim=mlp,
        remat=v["remat"],
        lora=LoraConfig(rank=v["lora_rank"], alpha=2.0 * v["lora_rank"]) if v["lora_rank"] else None,
    )
    algorithm = make_algorithm("ppo", kl_coef=0.02)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5))
    prepare, update = make_step_fns(
        algorithm, config, optimizer, optimizer, temperature=1.0, microbatches=1, recompute_old_logp=False
    )

    params = init_params(config, jax.random.PRNGKey(0))
    critic = {
        "trunk": jax.tree.map(jnp.copy, params["trunk"]),
        "score": jnp.zeros((d, 1), jnp.float32),
    }

    def trainable(tree):
        return lora.split_trainable(config, tree)[0]

    state = TrainState(
        step=jnp.asarray(0, jnp.int32),
        params=params,
        opt_state=optimizer.init(trainable(params)),
        algo_state=algorithm.transform.init(),
        rng=jax.random.PRNGKey(0),
        ref_params=None if config.lora else jax.tree.map(jnp.copy, params),
        critic_params=critic,
        critic_opt_state=optimizer.init(trainable(critic)),
    )
    del params, critic
    rollout = _rollout(vocab)
    rows = np.arange(ROWS, dtype=np.int32)

    t0 = time.perf_counter()
    batch_shape = jax.eval_shape(prepare, state, rollout)[0]
    prepare = prepare.lower(state, rollout).compile()
    update = update.lower(state, batch_shape, rows).compile()
    compile_s = time.perf_counter() - t0
    prepare_mem, update_mem = prepare.memory_analysis(), update.memory_analysis()

    def one_step(state):
        batch, state = prepare(state, rollout)
        state, metrics, _ = update(state, batch, rows)
        jax.block_until_ready((state, metrics))
        return state, metrics

    state, metrics = one_step(state)  # warm-up
    hwm_reset = _reset_hwm()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = one_step(state)
        times.append(time.perf_counter() - start)
    steps_rss = _current_hwm_mb() if hwm_reset else None
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["critic_loss"]))
    mb = 2**20
    return {
        "variant": variant,
        "params_m": lora.num_elements((state.params, state.ref_params, state.critic_params)) / 1e6,
        "trainable_m": lora.num_elements((trainable(state.params), trainable(state.critic_params))) / 1e6,
        "opt_state_m": lora.num_elements((state.opt_state, state.critic_opt_state)) / 1e6,
        "update_temp_mb": update_mem.temp_size_in_bytes / mb,
        "update_args_mb": update_mem.argument_size_in_bytes / mb,
        "update_alias_mb": update_mem.alias_size_in_bytes / mb,
        "prepare_temp_mb": prepare_mem.temp_size_in_bytes / mb,
        "peak_rss_mb": peak_rss_mb(),
        "steps_rss_mb": steps_rss,
        "median_step_s": statistics.median(times),
        "step_times": times,
        "compile_s": compile_s,
    }


def run_variant(variant: str, steps: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), f"--worker={variant}", f"--steps={steps}"]
    proc = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if proc.returncode or not lines:
        raise RuntimeError(f"worker {variant} failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_MARKER) :])


def combine(runs: list[dict]) -> dict:
    """One row from several runs of a variant: largest memory figures, all step times pooled."""
    times = [t for r in runs for t in r["step_times"]]
    steps_rss = [r["steps_rss_mb"] for r in runs if r["steps_rss_mb"] is not None]
    return {
        **runs[0],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "steps_rss_mb": max(steps_rss) if steps_rss else None,
        "step_times": times,
        "median_step_s": statistics.median(times),
        "min_step_s": min(times),
    }


def table(results: list[dict]) -> str:
    header = (
        "| variant | params M | trainable M | opt state M | XLA update temp MB | XLA update args MB "
        "| XLA prepare temp MB | peak RSS MB | steps RSS MB | step s median (min) |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in results:
        steps_rss = f"{r['steps_rss_mb']:,.0f}" if r["steps_rss_mb"] is not None else "n/a"
        lines.append(
            f"| {r['variant']} | {r['params_m']:.1f} | {r['trainable_m']:.2f} | {r['opt_state_m']:.2f} "
            f"| {r['update_temp_mb']:,.0f} | {r['update_args_mb']:,.0f} | {r['prepare_temp_mb']:,.0f} "
            f"| {r['peak_rss_mb']:,.0f} | {steps_rss} | {r['median_step_s']:.2f} ({r['min_step_s']:.2f}) |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (after 1 warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant, alternating variants")
    parser.add_argument("--json", default="", help="also write the results to this file")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        emit_result(worker(args.worker, args.steps))
        return
    names = args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"--variants names {unknown}; choose from {list(VARIANTS)}")
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names:
            r = run_variant(name, args.steps)
            runs[name].append(r)
            print(
                f"run {repeat + 1} {name}: steps {', '.join(f'{t:.2f}' for t in r['step_times'])} s, "
                f"peak RSS {r['peak_rss_mb']:,.0f} MB, XLA update temp {r['update_temp_mb']:,.0f} MB "
                f"(compile {r['compile_s']:.0f} s)",
                flush=True,
            )
    results = [combine(runs[name]) for name in names]
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
