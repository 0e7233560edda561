"""One GRPO training step side by side: jaxrl_llm vs TRL's GRPOTrainer vs Tunix's GRPOLearner.

The same workload in each framework, each in its own subprocess, one at a time, alternating
A B C A B C over `--repeats`: the same random Llama checkpoint (written by `transformers`; all
three load its weights), the same word-level tokenizer (every word one token, no BOS), the same
prompts of exactly `--prompt_len` tokens, G samples per prompt at temperature 1 without
top-k/top-p, `--new_tokens` tokens per sample forced to the full length, the same reward function
(bench_common.even_word_fraction), one AdamW update per step (lr 1e-5, global-norm clip 1,
float32, no gradient checkpointing), GRPO loss aggregated sequence-mean-token-mean with
clip eps 0.2, and beta=0.04 with a k3 KL to a reference model (a reference forward every step)
or beta=0 (no reference model).

    python experiments/bench_peers.py                      # the full protocol (hours on 2 cores)
    python experiments/bench_peers.py --quick              # validates the harness in minutes
    python experiments/bench_peers.py --sizes=52M --groups=4x4 --steps=4 --repeats=1 --threads=1
    python experiments/bench_peers.py --quick --profile --frameworks=jaxrl

Threads: every worker runs under `taskset -c 0..n-1` (n = each value of `--threads`), the one
mechanism that constrains all three frameworks equally; torch additionally gets
`torch.set_num_threads(n)` (its default under taskset is the same). XLA sizes its thread pool
from the affinity mask too, so n = 2 is the machine's default.

Measures, per framework and setting (medians over `--repeats` runs of `--steps` steps each; the
first step of every run is the warm-up and is reported separately as "first step": it includes
JAX compilation without a persistent cache, and torch's first-call costs):
  step s        median wall time of one optimiser step after the first (rollout, scoring,
                reference/log-prob passes, update), as each framework's loop delimits it (below);
  gen tok/s     B*G*T generated tokens / median time inside generation;
  train tok/s   B*G*(P+T) tokens / (median step - median generation): everything but sampling;
  peak RSS      ru_maxrss of the worker after its last step (before any final checkpoint);
  our GFLOP/s   XLA's cost_analysis() flops of our jitted update (forward + backward + AdamW) /
                its measured time, and that as a fraction of the f32 matmul rate measured by a
                large jitted jnp.dot in the same script under the same thread setting.
`--profile` also prints our step split into rollout / scoring / log-probs / update / host
overhead, measured inside the trainer's own steps of the first run of each setting: the
trainer's sample_time and score_time metrics, its two jitted step functions each followed by
block_until_ready, and host overhead = step time - the four pieces of the same step (medians
over the steps after the warm-up).

Remaining differences between the frameworks (not removable without changing a framework):
  * Group sampling: ours prefills each prompt once and shares its KV cache across the G samples;
    TRL (HF generate) and Tunix repeat every prompt G times and prefill each copy. Likewise ours
    runs each prompt's tokens through the trunk once per group in its reference pass and update
    (the G responses attend to the shared prompt keys/values); TRL and Tunix run all G copies.
  * Execution: ours is one jitted sampler (prefill + while-loop decode) and two jitted step
    functions (reference pass + advantages, update); Tunix jits prefill, decode, the log-prob
    passes and the train step separately; TRL runs eager PyTorch (HF generate with a dynamic KV
    cache, no torch.compile).
  * Forcing the length: TRL masks EOS with min_new_tokens (EOS is never sampled); Tunix forbids EOS
    and pad (`forbidden_tokens`; its completion mask is `ids != pad`, so pad must not be sampled);
    ours sets sampling.ignore_eos (EOS may be sampled, ~1/V per token, but does not stop the
    sample and is trained on like any token). The number of tokens generated and trained on is
    the same: every step's count is asserted equal to B*G*T in every framework.
  * Sampling: ours inverse-CDF with pre-drawn uniforms; Tunix jax.random.categorical; TRL
    torch.multinomial. Same distribution, different random streams, so texts and rewards differ.
  * Log-prob passes: ours and TRL put only the T response positions through the LM head; Tunix
    computes logits at all P+T positions. None recomputes old log-probs (one update per rollout:
    the ratio uses stop_gradient(logp) in all three).
  * Advantage epsilon: (r - mean) / (std + eps) with the unbiased group std; eps 1e-6 in ours and
    Tunix, 1e-4 in TRL.
  * Reference model: a second copy of the weights in all three (ours: ref_params; TRL: a second
    model loaded from the checkpoint; Tunix: a second Llama3 loaded from it).
  * Step boundaries: ours the trainer's own step_time (batch fetch -> metrics on the host, which
    forces the update to finish); TRL on_step_begin -> on_step_end callbacks; Tunix the learner's
    _run_global_step, followed by block_until_ready on the actor's parameters. Per-step metric
    writing is outside in ours and TRL, inside in Tunix (it buffers metrics in the step).
  * Our trainer is run without its held-out evaluation and periodic checkpoints (the peers do
    neither); its final checkpoint is written after the measurement.
  * Prompt order: ours shuffles the prompt file with the seed, TRL and Tunix take it in order;
    all prompts have the same length, so the work is the same.
  * Peak RSS includes each framework's imports (torch + transformers + datasets for TRL;
    jax + flax + grain + TFDS for ours; jax + flax + transformers for Tunix).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402

FRAMEWORKS = ("jaxrl", "trl", "tunix")
TUNIX_REQUIREMENT = "google-tunix==0.1.7"
DEFAULT_TUNIX_VENV = os.path.join(os.path.expanduser("~"), ".cache", "jaxrl_llm", "tunix-venv")
LEARNING_RATE = 1e-5
MATMUL_N = 4096

HERE = os.path.dirname(os.path.abspath(__file__))


# ============================================================================ workers
# Each runs in a fresh subprocess: `bench_peers.py --worker=NAME --spec=SPEC.json`.


def worker_matmul(spec: dict) -> dict:
    """f32 matmul rate of a jitted jnp.dot of two [N, N] matrices (the practical ceiling)."""
    import jax
    import jax.numpy as jnp

    n = spec["n"]
    x = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    y = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(x, y).block_until_ready()
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        dot(x, y).block_until_ready()
        times.append(time.perf_counter() - start)
    return {"gflops": 2 * n**3 / statistics.median(times) / 1e9, "n": n}


def _cost_flops(jitted, *args) -> float | None:
    """XLA's flop count of the compiled program (None where the function cannot be lowered)."""
    if not hasattr(jitted, "lower"):
        return None
    analysis = jitted.lower(*args).compile().cost_analysis()
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops is not None else None


def worker_jaxrl(spec: dict) -> dict:
    """jaxrl_llm's trainer (`Trainer.fit`) on the benchmark workload."""
    import jax
    import numpy as np

    from jaxrl_llm.rewards import register_reward
    from jaxrl_llm.train import trainer as trainer_lib
    from jaxrl_llm.train.config import algo_config, base_config
    from jaxrl_llm.train.metrics import MetricsWriter, read_metrics
    from jaxrl_llm.types import Rollout

    @register_reward("bench_even_word_fraction")
    def reward(*, prompt, completion, answer, finished):
        return bench_common.even_word_fraction(completion)

    b, g, p, t, steps = bench_common.workload(spec)
    workdir = tempfile.mkdtemp(prefix="bench_jaxrl_")
    prompts = bench_common.make_prompts(b * steps, p, spec["vocab_size"], seed=spec["seed"])
    with open(os.path.join(workdir, "prompts_train.jsonl"), "w") as f:
        f.writelines(json.dumps({"question": q, "answer": "0"}) + "\n" for q in prompts)

    c = base_config()
    c.seed = spec["seed"]
    c.progress = False
    c.model.checkpoint = spec["checkpoint"]
    c.model.dtype = "float32"
    c.data.update(
        name="jsonl",
        path=os.path.join(workdir, "prompts_{split}.jsonl"),
        splits=("train",),
        max_prompt_len=p,
        chat=False,
        instruction="",
    )
    c.sampling.update(max_new_tokens=t, num_samples=g, temperature=1.0, top_k=0, top_p=1.0, ignore_eos=True)
    c.algo = algo_config(
        "grpo", beta=spec["beta"], clip_eps=0.2, kl_estimator="k3", loss_agg="seq_mean_token_mean"
    )
    c.rewards = {"bench_even_word_fraction": 1.0}
    c.optimizer.update(learning_rate=spec["learning_rate"], grad_clip=1.0, weight_decay=0.0, warmup_steps=0)
    c.train.update(steps=steps, batch_size=b, microbatches=1, checkpoint_every=10**9)
    c.eval.update(
        split="train", every=0, num_prompts=b, batch_size=b, pass_k=0, reward="bench_even_word_fraction"
    )

    # Peak RSS at the end of the last step, before the final checkpoint is written.
    rss_at_step: list[float] = []

    class RecordingWriter(MetricsWriter):
        def write(self, step, metrics, phase="train"):
            if phase == "main":
                rss_at_step.append(bench_common.peak_rss_mb())
            super().write(step, metrics, phase=phase)

    class BenchTrainer(trainer_lib.Trainer):
        def _evaluate(self, *args, **kwargs):  # TRL and Tunix evaluate nothing in this benchmark
            return {}

    trainer_lib.MetricsWriter = RecordingWriter
    step_fn_times: dict[str, list[float]] = {"logprobs": [], "update": []}
    if spec.get("analyse"):
        trainer_lib.make_step_fns = _timed_step_fns(trainer_lib.make_step_fns, step_fn_times, jax)
    trainer = BenchTrainer(c, os.path.join(workdir, "run"))
    start = time.perf_counter()
    trainer.fit()
    total = time.perf_counter() - start
    records = read_metrics(os.path.join(workdir, "run", "metrics.jsonl"), phase="main")
    result = dict(
        framework="jaxrl",
        step_times=[r["step_time"] for r in records],
        gen_times=[r["sample_time"] for r in records],
        tokens_per_step=[round(r["response_length"] * b * g) for r in records],
        train_wall_s=total,
        peak_rss_mb=rss_at_step[-1],
        threads=len(os.sched_getaffinity(0)),
        versions={"jax": jax.__version__},
    )
    if spec.get("analyse"):
        result["analysis"] = _analyse_our_step(
            trainer, spec, prompts[:b], records, step_fn_times, np, jax, Rollout
        )
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def _timed_step_fns(make_step_fns, times: dict[str, list[float]], jax):
    """`make_step_fns` whose (prepare, update) record their time (block_until_ready after each
    call) into times['logprobs'] / times['update']; `.lower` is kept for the cost analysis."""

    def make(*args, **kwargs):
        def timed(name, fn):
            def call(*a):
                start = time.perf_counter()
                out = jax.block_until_ready(fn(*a))
                times[name].append(time.perf_counter() - start)
                return out

            for attr in ("lower", "_cache_size"):
                if hasattr(fn, attr):
                    setattr(call, attr, getattr(fn, attr))
            return call

        prepare, update = make_step_fns(*args, **kwargs)
        return timed("logprobs", prepare), timed("update", update)

    return make


def _analyse_our_step(trainer, spec, prompts, records, times, np, jax, Rollout) -> dict:
    """Our step's pieces, measured inside the trainer's own steps (after the warm-up step):
    rollout = the trainer's sample_time (sampler + device-to-host copy of the responses),
    scoring = its score_time (decoding + rewards), log-probs = `prepare` (reference pass +
    advantages), update = `update`, host = step_time - the four, per step; medians over steps.
    Plus XLA's flop counts of the two jitted step functions (lowered on the trained state)."""
    b, g, p = spec["prompts"], spec["samples"], spec["prompt_len"]
    steps = records[1:]
    per_step = {
        "rollout": [r["sample_time"] for r in steps],
        "scoring": [r["score_time"] for r in steps],
        "logprobs": times["logprobs"][1 : len(records)],
        "update": times["update"][1 : len(records)],
    }
    host = [r["step_time"] - sum(v[i] for v in per_step.values()) for i, r in enumerate(steps)]
    state = trainer.final_state
    prepare, update = trainer.step_fns["main"]
    ids, mask = trainer.tokenizer.encode_batch(prompts, max_length=p)
    out = trainer.sampler()(state.params, ids, mask, jax.random.PRNGKey(1000))
    rollout = Rollout(
        prompt_ids=np.repeat(ids, g, axis=0),
        prompt_mask=np.repeat(mask, g, axis=0),
        response_ids=out.response_ids,
        response_mask=out.response_mask,
        group_ids=out.group_ids,
        logp_behav=out.logprobs,
        rewards=np.linspace(0, 1, b * g, dtype=np.float32),
    )
    flops = {"logprobs": _cost_flops(prepare, state, rollout)}
    batch, state = prepare(state, rollout)
    flops["update"] = _cost_flops(update, state, batch, np.arange(b * g))
    return {
        "pieces_s": {k: statistics.median(v) for k, v in per_step.items()},
        "host_s": statistics.median(host),
        "step_s": statistics.median(r["step_time"] for r in steps),
        "flops": flops,
    }


def worker_trl(spec: dict) -> dict:
    """TRL's GRPOTrainer (torch, CPU) on the benchmark workload."""
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    import transformers
    import trl
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast, TrainerCallback

    b, g, p, t, steps = bench_common.workload(spec)
    tokens_per_step: list[int] = []

    def reward(prompts, completions, completion_ids, **kwargs):
        tokens_per_step.append(sum(len(ids) for ids in completion_ids))
        return [bench_common.even_word_fraction(c) for c in completions]

    reward.__name__ = "even_word_fraction"
    step_times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_times.append(time.perf_counter() - self.start)

    prompts = bench_common.make_prompts(b * steps, p, spec["vocab_size"], seed=spec["seed"])
    workdir = tempfile.mkdtemp(prefix="bench_trl_")
    args = trl.GRPOConfig(
        output_dir=workdir,
        per_device_train_batch_size=b * g,
        gradient_accumulation_steps=1,
        num_generations=g,
        max_completion_length=t,
        generation_kwargs={"min_new_tokens": t},
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        beta=spec["beta"],
        epsilon=0.2,
        loss_type="grpo",  # sequence-mean-token-mean, as ours and Tunix
        scale_rewards="group",
        num_iterations=1,
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        max_steps=steps,
        shuffle_dataset=False,
        model_init_kwargs={"dtype": torch.float32},
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=spec["seed"],
    )
    tokenizer = PreTrainedTokenizerFast.from_pretrained(spec["checkpoint"])
    trainer = trl.GRPOTrainer(
        model=spec["checkpoint"],
        reward_funcs=[reward],
        args=args,
        train_dataset=Dataset.from_list([{"prompt": q} for q in prompts]),
        processing_class=tokenizer,
        callbacks=[StepTimer()],
    )
    gen_times: list[float] = []
    generate = trainer.model.generate

    def timed_generate(*a, **kw):
        start = time.perf_counter()
        out = generate(*a, **kw)
        gen_times.append(time.perf_counter() - start)
        return out

    trainer.model.generate = timed_generate
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    rss = bench_common.peak_rss_mb()
    shutil.rmtree(workdir, ignore_errors=True)
    return dict(
        framework="trl",
        step_times=step_times,
        gen_times=gen_times,
        tokens_per_step=tokens_per_step,
        train_wall_s=total,
        peak_rss_mb=rss,
        threads=torch.get_num_threads(),
        versions={
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
    )


WORKERS = {"matmul": worker_matmul, "jaxrl": worker_jaxrl, "trl": worker_trl}


# ============================================================================ driver


def ensure_tunix_venv(path: str) -> str:
    """The Python of a virtualenv with Tunix at `path`, created there if missing (python3.11 -m
    venv + pip install google-tunix; needs the package index once, then runs offline)."""
    python = os.path.join(path, "bin", "python")
    if os.path.exists(python):
        if subprocess.run([python, "-c", "import tunix"], capture_output=True).returncode == 0:
            return python
    base = shutil.which("python3.11") or sys.executable
    print(f"creating the Tunix virtualenv {path} ({TUNIX_REQUIREMENT}) ...", flush=True)
    subprocess.run([base, "-m", "venv", path], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", TUNIX_REQUIREMENT], check=True)
    return python


def run_worker(kind: str, spec: dict, threads: int, tunix_python: str | None, scratch: str) -> dict:
    """Runs one worker under `taskset -c 0..threads-1` and returns its parsed result."""
    spec_path = os.path.join(scratch, f"spec_{kind}.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    if kind == "tunix":
        command = [tunix_python, os.path.join(HERE, "bench_peers_tunix.py"), spec_path]
    else:
        command = [sys.executable, os.path.abspath(__file__), f"--worker={kind}", f"--spec={spec_path}"]
    cpus = ",".join(str(i) for i in range(threads))
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}  # cold compiles
    env.update(
        JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"
    )
    proc = subprocess.run(["taskset", "-c", cpus, *command], capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(bench_common.RESULT_MARKER):
            return json.loads(line[len(bench_common.RESULT_MARKER) :])
    raise RuntimeError(
        f"worker {kind} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )


def summarise(runs: list[dict], rows: int, prompt_len: int, new_tokens: int) -> dict:
    """Medians over repetitions of each run's step statistics."""
    per_run = [bench_common.step_summary(r["step_times"], r["gen_times"]) for r in runs]
    step = statistics.median(s["median_step_s"] for s in per_run)
    gen = statistics.median(s["median_gen_s"] for s in per_run)
    return {
        "step_s": step,
        "first_step_s": statistics.median(s["first_step_s"] for s in per_run),
        "gen_s": gen,
        "gen_tok_s": rows * new_tokens / gen,
        "train_tok_s": rows * (prompt_len + new_tokens) / max(step - gen, 1e-9),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "threads_seen": sorted({r["threads"] for r in runs}),
        "step_times_all": [s["median_step_s"] for s in per_run],
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="small,52M", help=f"of {sorted(bench_common.SIZES)}")
    parser.add_argument("--groups", default="4x4,16x4", help="prompts x samples per step")
    parser.add_argument("--betas", default="0.04,0", help="KL coefficients (0: no reference model)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per framework, alternating")
    parser.add_argument("--steps", type=int, default=5, help="optimiser steps per run (first = warm-up)")
    parser.add_argument("--threads", default="1,2", help="CPU cores per worker (taskset)")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--profile", action="store_true", help="also print our step's time breakdown")
    parser.add_argument("--profile_repeats", type=int, default=3, help="timed rounds of each piece")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="defaults for a harness check: small, 4x4, 3 steps, 1 repeat, 1 thread",
    )
    parser.add_argument("--tunix-venv", dest="tunix_venv", default=DEFAULT_TUNIX_VENV)
    parser.add_argument("--out", default="", help="also write every raw result to this JSON file")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--spec", default="", help=argparse.SUPPRESS)
    if parser.parse_known_args()[0].quick:  # quick changes the defaults; explicit flags still win
        parser.set_defaults(sizes="small", groups="4x4", steps=3, repeats=1, threads="1")
    args = parser.parse_args()

    if args.worker:
        bench_common.emit_result(WORKERS[args.worker](bench_common.read_spec(args.spec)))
        return
    frameworks = [f for f in args.frameworks.split(",") if f]
    unknown = set(frameworks) - set(FRAMEWORKS)
    if unknown or "jaxrl" not in frameworks:
        parser.error(f"--frameworks must include jaxrl and be among {FRAMEWORKS}; got {args.frameworks}")
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is the warm-up)")
    sizes = args.sizes.split(",")
    groups = [tuple(int(x) for x in grp.split("x")) for grp in args.groups.split(",")]
    betas = [float(x) for x in args.betas.split(",")]
    threads = [int(x) for x in args.threads.split(",")]
    if max(threads) > os.cpu_count():
        parser.error(f"--threads {max(threads)} exceeds the {os.cpu_count()} CPUs")
    tunix_python = ensure_tunix_venv(args.tunix_venv) if "tunix" in frameworks else None

    print(
        f"GRPO step: prompts of {args.prompt_len} tokens, {args.new_tokens} new tokens (forced), "
        f"{args.steps} steps per run (first = warm-up), {args.repeats} alternating runs, float32",
        flush=True,
    )
    results = {"settings": vars(args), "matmul_gflops": {}, "cases": []}
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as scratch:
        for n in threads:
            m = run_worker("matmul", {"n": MATMUL_N, "repeats": 5}, n, tunix_python, scratch)
            results["matmul_gflops"][n] = m["gflops"]
            print(
                f"f32 matmul ({MATMUL_N}^2, jitted jnp.dot), {n} thread(s): {m['gflops']:.0f} GFLOP/s",
                flush=True,
            )
        for size in sizes:
            checkpoint = os.path.join(scratch, f"ckpt_{size}")
            model = bench_common.build_checkpoint(
                size, checkpoint, eos_token_id=bench_common.EOS_ID, pad_token_id=bench_common.PAD_ID
            )
            num_params = sum(x.numel() for x in model.parameters())
            del model
            vocab = bench_common.SIZES[size][-1]
            bench_common.build_tokenizer(vocab, checkpoint)
            for b, g in groups:
                for beta in betas:
                    for n in threads:
                        case = dict(size=size, params=num_params, prompts=b, samples=g, beta=beta, threads=n)
                        spec = dict(
                            checkpoint=checkpoint,
                            vocab_size=vocab,
                            prompts=b,
                            samples=g,
                            prompt_len=args.prompt_len,
                            new_tokens=args.new_tokens,
                            steps=args.steps,
                            beta=beta,
                            learning_rate=LEARNING_RATE,
                            seed=0,
                            profile_repeats=args.profile_repeats,
                        )
                        runs = {f: [] for f in frameworks}
                        for rep in range(args.repeats):
                            for f in frameworks:
                                r = run_worker(f, {**spec, "analyse": rep == 0}, n, tunix_python, scratch)
                                expected = b * g * args.new_tokens
                                if len(r["step_times"]) != args.steps or any(
                                    k != expected for k in r["tokens_per_step"]
                                ):
                                    raise AssertionError(
                                        f"{f}: {len(r['step_times'])} steps with {r['tokens_per_step']} generated "
                                        f"tokens; expected {args.steps} steps of {expected}"
                                    )
                                runs[f].append(r)
                        case["frameworks"] = {
                            f: summarise(rs, b * g, args.prompt_len, args.new_tokens)
                            for f, rs in runs.items()
                        }
                        analysis = runs["jaxrl"][0]["analysis"]
                        case["analysis"] = analysis
                        case["raw"] = runs
                        results["cases"].append(case)
                        print_case_progress(case)
    print_table(results, frameworks)
    if args.profile:
        print_profile(results)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        print(f"raw results: {args.out}")


def print_case_progress(case: dict) -> None:
    parts = [f"{f} {s['step_s']:.3f} s" for f, s in case["frameworks"].items()]
    print(
        f"  {case['size']} {case['prompts']}x{case['samples']} beta={case['beta']:g} "
        f"{case['threads']} thread(s): " + ", ".join(parts),
        flush=True,
    )


def _update_gflops(case: dict) -> float | None:
    a = case["analysis"]
    flops, seconds = a["flops"].get("update"), a["pieces_s"]["update"]
    return flops / seconds / 1e9 if flops else None


def print_table(results: dict, frameworks: list[str]) -> None:
    """One markdown table: a row per (setting, framework); peers' rows carry the ratios."""
    print()
    header = (
        "| model | prompts x G | beta | threads | framework | step s (median) | first step s | gen tok/s "
        "| train tok/s | peak RSS MB | ours faster (step) | ours faster (gen) | ours faster (train) "
        "| our RSS / theirs "
        "| our update GFLOP/s (% of matmul) |"
    )
    print(header)
    print("|" + "|".join(["---"] * (header.count("|") - 1)) + "|")
    for case in results["cases"]:
        ours = case["frameworks"]["jaxrl"]
        setting = (
            f"| {case['size']} ({case['params'] / 1e6:.2f}M) | {case['prompts']} x {case['samples']} "
            f"| {case['beta']:g} | {case['threads']} "
        )
        for f in frameworks:
            s = case["frameworks"][f]
            if f == "jaxrl":
                ratios = "| - | - | - | - "
                gflops = _update_gflops(case)
                matmul = results["matmul_gflops"][case["threads"]]
                flop_cell = f"{gflops:.1f} ({100 * gflops / matmul:.0f}%)" if gflops else "n/a"
            else:
                ratios = (
                    f"| {s['step_s'] / ours['step_s']:.2f}x | {ours['gen_tok_s'] / s['gen_tok_s']:.2f}x "
                    f"| {ours['train_tok_s'] / s['train_tok_s']:.2f}x "
                    f"| {ours['peak_rss_mb'] / s['peak_rss_mb']:.2f} "
                )
                flop_cell = ""
            print(
                f"{setting}| {f} | {s['step_s']:.3f} | {s['first_step_s']:.2f} | {s['gen_tok_s']:,.0f} "
                f"| {s['train_tok_s']:,.0f} | {s['peak_rss_mb']:,.0f} {ratios}| {flop_cell} |"
            )
    matmul = ", ".join(f"{n} thread(s) {v:.0f}" for n, v in results["matmul_gflops"].items())
    print(f"\nf32 matmul rate (GFLOP/s): {matmul}")


def print_profile(results: dict) -> None:
    """Our step split into its pieces, measured inside the trainer's steps of the first run."""
    print(
        "\nOur step, profiled inside the trainer's own steps (first run of each setting; medians "
        "over its steps after the warm-up; host overhead = step - the four pieces, per step):"
    )
    print(
        "| model | prompts x G | beta | threads | rollout | scoring | log-probs | update | host overhead | step |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case in results["cases"]:
        a = case["analysis"]
        pieces, step = {**a["pieces_s"], "host": a["host_s"]}, a["step_s"]
        cells = [
            f"{1e3 * pieces[k]:.1f} ms ({100 * pieces[k] / step:.0f}%)"
            for k in ("rollout", "scoring", "logprobs", "update", "host")
        ]
        print(
            f"| {case['size']} | {case['prompts']} x {case['samples']} | {case['beta']:g} | {case['threads']} | "
            + " | ".join(cells)
            + f" | {1e3 * step:.1f} ms |"
        )


if __name__ == "__main__":
    main()
