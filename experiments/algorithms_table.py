"""Every registered RL algorithm from the same warm-start with the same budget, on both embedded
tasks, several seeds: the table and curves of experiments/README.md ("Algorithms").

    python experiments/algorithms_table.py --workdir=runs/table                       # everything
    python experiments/algorithms_table.py --workdir=runs/table --tasks=arithmetic \\
        --algorithms=grpo,dapo,gspo --seeds=0 --steps=40                              # a slice
    python experiments/algorithms_table.py --workdir=runs/table --report              # table only

1. Warm-start, once per task (seed 0): the task config's SFT phase (configs/grpo_arithmetic.py:
   SFT until 30% validation greedy accuracy; configs/grpo_countdown.py: its own target), exported
   as a Hugging Face directory. Every run of that task starts from these weights.
2. Each algorithm, each seed: the task config's main phase with `algo.name` replaced (the
   algorithm's defaults, plus `ALGORITHM_SETTINGS` where the defaults do not fit a 3-token
   answer), `--steps` steps of the same sample budget per step (`--prompts` x `--samples`
   responses; algorithms with their own group size, e.g. ReMax's one sample plus a greedy one,
   get prompts x samples / G prompts), the task's reward, Adam 3e-4, no KL unless the algorithm
   has one. Evaluated every `--steps/4` steps (test greedy accuracy; the curves) and at the end
   (test greedy accuracy and pass@8 on 512 questions).
3. On arithmetic, the matched supervised control "more SFT": the warm-start's SFT run
   continued (its optimiser state and data order) for as many questions as an RL run sees
   (steps x prompts; SFT batch 128), same evaluation; deterministic, so one run.

At the end of each run it records the held-out greedy accuracy and pass@8, the wall time, the
mean response length and entropy of the last 10 steps, and the KL to the warm-start measured on
test prompts (per-token mean of log π − log π_ref over 256 x 8 samples of the final policy: the
k1 estimate, so every algorithm is measured the same way whether or not it has a KL term).
Results go to `<workdir>/results.jsonl` (one line per run; a rerun skips finished runs, so a
long sweep can be resumed or split across sessions); `--report` prints the markdown table (mean
± std over seeds) and writes `<workdir>/curves_<task>.png`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK_CONFIGS = {"arithmetic": "grpo_arithmetic", "countdown": "grpo_countdown"}
# Algorithms that need more than a name: hyper-parameters fitted to the embedded tasks or a
# sampling setting the algorithm is defined with. Everything else runs with its defaults.
ALGORITHM_SETTINGS = {
    "remax": {"sampling.num_samples": 1},  # one sample + one greedy response per prompt
    "p3o": {"sampling.num_samples": 2},  # pairs
}
SKIP = {
    "sft",
    "dpo",
    "ipo",
    "simpo",
    "on_policy_distill",
}  # not RL from verifier rewards (distillation: its own row)


def load_task_config(task: str):
    return load_config(TASK_CONFIGS[task])


def load_config(name: str):
    """`configs/<name>.py`'s `get_config()`, without the progress bar."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.progress = False
    return config


def warm_start(task: str, workdir: str, data_dir: str) -> tuple[str, int]:
    """(exported SFT checkpoint, SFT steps taken) for `task`, trained once."""
    from jaxrl_llm.models.hf import save_checkpoint
    from jaxrl_llm.train.trainer import Trainer

    export = os.path.join(workdir, task, "warm_start")
    info = os.path.join(export, "warm_start.json")
    if os.path.exists(info):
        with open(info) as f:
            return export, json.load(f)["sft_steps"]
    config = load_task_config(task)
    config.data.data_dir = data_dir
    config.train.steps = 0  # SFT only
    trainer = Trainer(config, os.path.join(workdir, task, "sft"))
    summary = trainer.fit()
    save_checkpoint(export, trainer.model_config, trainer.final_state.params)
    trainer.tokenizer.save(export)
    steps = int(trainer.final_state.step)
    with open(info, "w") as f:
        json.dump({"sft_steps": steps, "sft_after": summary.get("sft_after")}, f)
    return export, steps


def _set(config, dotted: str, value) -> None:
    node = config
    *path, leaf = dotted.split(".")
    for p in path:
        node = node[p]
    node[leaf] = value


def run_config(task, algorithm, seed, checkpoint, args):
    config = load_task_config(task)
    config.seed = seed
    config.data.data_dir = args.data_dir
    config.model.checkpoint = checkpoint
    config.sft.steps = 0
    config.algo = {"name": algorithm}
    config.train.update(steps=args.steps, checkpoint_every=args.steps)
    config.sampling.num_samples = args.samples
    for field, value in ALGORITHM_SETTINGS.get(algorithm, {}).items():
        _set(config, field, value)
    # The same number of sampled responses per step for every algorithm.
    config.train.batch_size = args.prompts * args.samples // config.sampling.num_samples
    # Every run starts from the same warm-start: its accuracy is the curves' step 0 (no
    # 'before' evaluation); the periodic evaluations are greedy, pass@8 only at the end.
    config.eval.update(
        every=max(args.steps // 4, 1), num_prompts=512, pass_k=8, before=False, periodic_pass_k=False
    )
    return config


def sft_control_config(task, seed, warm_steps, args):
    """The warm-start's SFT run continued (the same run from scratch: same seed, optimiser state
    and batches up to the warm-start's last step, no stopping rule) for as many more questions
    as an RL run sees: a fresh optimiser on the exported weights would not be a continuation
    (one Adam step of 1e-3 from the warm-start took arithmetic from 38.9% to 0.2% greedy)."""
    config = load_task_config(task)
    config.data.data_dir = args.data_dir
    questions = args.steps * args.prompts
    config.sft.update(steps=warm_steps + max(questions // config.sft.batch_size, 1), target_accuracy=0.0)
    config.sft.eval_every = max((config.sft.steps - warm_steps) // 4, 1)
    config.train.steps = 0
    config.eval.update(num_prompts=512, pass_k=8)
    return config


def kl_to_reference(trainer, ref_params, num_prompts: int = 256) -> float:
    """Per-token mean of log π − log π_ref over samples of the final policy on test prompts."""
    import jax
    import numpy as np

    from jaxrl_llm.train.forward import batch_policy_outputs
    from jaxrl_llm.types import Rollout

    params = trainer.final_state.params
    sampler = trainer.sampler(num_samples=8, temperature=1.0)
    _, batches = trainer.evaluator._batches("test", "prompts")
    logp_fn = jax.jit(lambda p, b: batch_policy_outputs(trainer.model_config, p, b, 1.0).logp)
    total, tokens, seen = 0.0, 0.0, 0
    for i, batch in enumerate(batches):
        if seen >= num_prompts:
            break
        out = sampler(params, batch["prompt_ids"], batch["prompt_mask"], jax.random.PRNGKey(100 + i))
        rows = Rollout(
            prompt_ids=np.repeat(batch["prompt_ids"], 8, axis=0),
            prompt_mask=np.repeat(batch["prompt_mask"], 8, axis=0),
            response_ids=np.asarray(out.response_ids),
            response_mask=np.asarray(out.response_mask),
        )
        mask = np.asarray(rows.response_mask, np.float64)
        diff = np.asarray(logp_fn(params, rows)) - np.asarray(logp_fn(ref_params, rows))
        total += float((diff * mask).sum())
        tokens += float(mask.sum())
        seen += len(batch["prompt_ids"])
    return total / max(tokens, 1.0)


def train_one(task, name, seed, checkpoint, warm_steps, args) -> dict:
    from jaxrl_llm.models.hf import load_checkpoint
    from jaxrl_llm.train.metrics import read_metrics
    from jaxrl_llm.train.trainer import Trainer

    control = name == "more_sft"
    if control:
        config = sft_control_config(task, seed, warm_steps, args)
    else:
        config = run_config(task, name, seed, checkpoint, args)
    run_dir = os.path.join(args.workdir, task, f"{name}_seed{seed}")
    t0 = time.perf_counter()
    trainer = Trainer(config, run_dir)
    summary = trainer.fit()
    wall = time.perf_counter() - t0
    phase = "sft" if control else "main"
    after = summary[f"{phase}_after"]
    rows = [r for r in read_metrics(run_dir, phase=phase) if "loss" in r]
    last = rows[-10:]
    mean = lambda key: statistics.mean(r[key] for r in last) if last and key in last[0] else None  # noqa: E731
    _, ref_params = load_checkpoint(checkpoint)
    curve = [
        {"step": r["step"], "greedy_accuracy": r[f"{config.eval.split}/greedy_accuracy"]}
        for r in read_metrics(run_dir, phase="eval")
        if f"{config.eval.split}/greedy_accuracy" in r and (control or r["step"] > 0)
    ]
    if not control:  # step 0: the warm-start's test greedy accuracy (the same for every run)
        with open(os.path.join(checkpoint, "warm_start.json")) as f:
            curve = [{"step": 0, "greedy_accuracy": json.load(f)["sft_after"]["greedy_accuracy"]}] + curve
    return {
        "task": task,
        "algorithm": name,
        "seed": seed,
        "steps": args.steps if not control else config.sft.steps,
        "greedy_accuracy": after["greedy_accuracy"],
        "pass_at_8": after.get("pass_at_8"),
        "wall_s": wall,
        "response_length": mean("response_length"),
        "entropy": mean("entropy"),
        "kl_to_warm_start": kl_to_reference(trainer, ref_params),
        "entropy_curve": [{"step": r["step"], "entropy": r.get("entropy")} for r in rows],
        "accuracy_curve": curve,
    }


def done_runs(path: str) -> set:
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        return {(r["task"], r["algorithm"], r["seed"]) for r in map(json.loads, f) if r}


def rl_algorithms() -> list[str]:
    from jaxrl_llm.algorithms import get_factory, make_algorithm, registered_algorithms

    names = [n for n in registered_algorithms() if get_factory(n).__module__.startswith("jaxrl_llm.")]
    return [n for n in names if n not in SKIP and make_algorithm(n).data == "rollout"]


def _fmt(values, pct=True):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    m = statistics.mean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * m:.1f} ± {100 * s:.1f}" if pct else f"{m:.3g} ± {s:.2g}"


def report(workdir: str) -> None:
    path = os.path.join(workdir, "results.jsonl")
    with open(path) as f:  # rows without results (e.g. {"placeholder": true}) mark runs to skip
        results = [r for r in map(json.loads, filter(str.strip, f)) if "greedy_accuracy" in r]
    for task in sorted({r["task"] for r in results}):
        rows = [r for r in results if r["task"] == task]
        print(f"\n### {task}\n")
        print(
            "| algorithm | seeds | test greedy % | pass@8 % | wall s | response length | entropy | KL to warm-start |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        names = sorted(
            {r["algorithm"] for r in rows},
            key=lambda n: -statistics.mean(r["greedy_accuracy"] for r in rows if r["algorithm"] == n),
        )
        for name in names:
            rs = [r for r in rows if r["algorithm"] == name]
            print(
                f"| {name} | {len(rs)} | {_fmt([r['greedy_accuracy'] for r in rs])} | {_fmt([r['pass_at_8'] for r in rs])} "
                f"| {statistics.mean(r['wall_s'] for r in rs):.0f} | {_fmt([r['response_length'] for r in rs], False)} "
                f"| {_fmt([r['entropy'] for r in rs], False)} | {_fmt([r['kl_to_warm_start'] for r in rs], False)} |"
            )
        plot_curves(rows, os.path.join(workdir, f"curves_{task}.png"), task)


def plot_curves(rows, path, task) -> None:
    """Mean over seeds of test greedy accuracy (at the periodic evaluations) and of the training
    entropy (every step), one line per algorithm; the more-SFT control, whose steps are SFT
    steps, as a dashed line at its final accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, ent) = plt.subplots(1, 2, figsize=(15, 6))
    colours, styles = plt.get_cmap("tab10").colors, ("-", "--", ":", "-.")
    names = sorted({r["algorithm"] for r in rows} - {"more_sft"})
    for i, name in enumerate(names):
        rs = [r for r in rows if r["algorithm"] == name]
        style = dict(color=colours[i % 10], linestyle=styles[i // 10 % 4], linewidth=1.2)
        steps = [p["step"] for p in rs[0]["accuracy_curve"]]
        accs = [
            statistics.mean(r["accuracy_curve"][j]["greedy_accuracy"] for r in rs) for j in range(len(steps))
        ]
        acc.plot(steps, accs, label=name, **style)
        if rs[0]["entropy_curve"]:
            es = [p["step"] for p in rs[0]["entropy_curve"]]
            ent.plot(
                es,
                [statistics.mean(r["entropy_curve"][j]["entropy"] for r in rs) for j in range(len(es))],
                **style,
            )
    control = [r["greedy_accuracy"] for r in rows if r["algorithm"] == "more_sft"]
    if control:
        acc.axhline(
            statistics.mean(control), color="black", linestyle="--", linewidth=2, label="more SFT (end)"
        )
    acc.set(
        xlabel="step", ylabel="test greedy accuracy", title=f"{task}: held-out accuracy (mean over seeds)"
    )
    ent.set(
        xlabel="step",
        ylabel="policy entropy (nats/token)",
        title=f"{task}: training entropy (mean over seeds)",
    )
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.legend(*acc.get_legend_handles_labels(), loc="center right", fontsize=7)
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data_dir", default="", help="TFDS data dir ('' = TFDS default)")
    parser.add_argument("--tasks", default="arithmetic,countdown")
    parser.add_argument(
        "--algorithms", default="", help="comma-separated (default: every registered RL algorithm)"
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument(
        "--shard", default="0/1", help="i/n: run every n-th run from the i-th (n processes side by side)"
    )
    parser.add_argument("--report", action="store_true", help="only print the table and write the plots")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    if not args.report:
        print(
            subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()[:14],
            platform.python_version(),
        )
        import jax

        # Runs of one task share their sampler and evaluation programs (and seeds their update):
        # compiled once, read back from disk by every later run.
        jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir, "jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        path = os.path.join(args.workdir, "results.jsonl")
        names = args.algorithms.split(",") if args.algorithms else rl_algorithms()
        shard, shards = map(int, args.shard.split("/"))
        runs = []
        # Seed-major, so that a sweep cut short has every algorithm at the same seeds.
        for seed in map(int, args.seeds.split(",")):
            for task in args.tasks.split(","):
                # The control continues the seed-0 warm-start run, which is deterministic: one run.
                controls = ["more_sft"] if task == "arithmetic" and seed == 0 else []
                runs += [(task, name, seed) for name in names + controls]
        for task, name, seed in runs[shard::shards]:
            if (task, name, seed) in done_runs(path):
                continue
            checkpoint, warm_steps = warm_start(task, args.workdir, args.data_dir)
            result = train_one(task, name, seed, checkpoint, warm_steps, args)
            print(
                f"{task} {name} seed {seed}: greedy {result['greedy_accuracy']:.3f} "
                f"pass@8 {result['pass_at_8']} in {result['wall_s']:.0f} s",
                flush=True,
            )
            with open(path, "a") as f:
                f.write(json.dumps(result) + "\n")
    report(args.workdir)


if __name__ == "__main__":
    main()
