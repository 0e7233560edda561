"""Reward-model over-optimisation at our scale (the Gao et al. 2022 setting, arXiv 2210.10760):
optimise GRPO against a *proxy* reward model trained on few preference pairs and watch the
*gold* reward (the exact-match verifier) against the KL to the reference.

    python experiments/overoptimisation.py --workdir=runs/overopt            # everything
    python experiments/overoptimisation.py --workdir=runs/overopt --report   # table + plot

1. Warm-start: the arithmetic SFT warm-start of experiments/algorithms_table.py (`--warm_start`
   to reuse one); it is also the reference π_ref of every KL below.
2. Proxy reward models: `configs/reward_model_arithmetic.py` trained on only `--pairs` training
   pairs each (`data.train_records`), `--members` of them on disjoint subsets
   (`data.train_offset`), `--rm_steps` steps; their held-out pair accuracy is recorded.
3. GRPO (no KL term unless stated), `--steps` steps of `--prompts` x `--samples`, rewarded by:
   'proxy' (member 0 alone), 'wco' (worst case: the members' minimum, Coste et al., arXiv
   2310.02743), 'uwo' (uncertainty-weighted: mean − λ·variance, λ = `--uwo_coef`), and
   'proxy_kl' (member 0 with GRPO's KL penalty β = `--kl_beta`, the KL budget). The verifier is
   logged with weight 0. A checkpoint every `--every` steps.
4. At every checkpoint, on `--eval_prompts` test prompts x 4 samples at temperature 1: the
   optimised reward (proxy), the gold reward (exact match), and the sequence-level KL to the
   reference KL̂ = mean over samples of Σ_t [log π_θ − log π_ref] (Rafailov et al. 2024's KL
   budget, arXiv 2406.02900). Gao et al.'s forms R(d) = d(a − b log d) and R(d) = d(a − b d),
   d = sqrt(KL̂), are fitted to the gold reward gain (`jaxrl_llm.losses.preference.gao_fit`)
   and reported with R².

Results in `<workdir>/results.jsonl`; `--report` prints the table of experiments/README.md
("Over-optimisation") and writes `<workdir>/overoptimisation.png`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import algorithms_table  # noqa: E402
import reward_model as rm_experiment  # noqa: E402

RUNS = ("proxy", "wco", "uwo", "proxy_kl")


def members(args) -> list[str]:
    return [f"rm{k}" for k in range(args.members)]


def grpo_config(run: str, warm: str, seed: int, exports: dict, args):
    config = algorithms_table.run_config("arithmetic", "grpo", seed, warm, args)
    config.algo = {"name": "grpo", "beta": args.kl_beta if run == "proxy_kl" else 0.0}
    config.train.update(checkpoint_every=args.every, keep_checkpoints=args.steps // args.every + 1)
    config.eval.update(every=0, pass_k=0)  # measured per checkpoint below
    if run in ("proxy", "proxy_kl"):
        config.aux_models = {"rm0": {"checkpoint": exports["rm0"], "head": "reward"}}
        config.rewards = {"rm0": 1.0, "exact_match": 0.0}
    else:
        config.aux_models = {m: {"checkpoint": exports[m], "head": "reward"} for m in members(args)}
        combine = {"wco": ("min", 0.0), "uwo": ("mean_minus_var", args.uwo_coef)}[run]
        config.reward_ensembles = {
            "ens": {"members": ",".join(members(args)), "combine": combine[0], "coef": combine[1]}
        }
        config.rewards = {"ens": 1.0, "exact_match": 0.0}
    return config


def measure(trainer, params, ref_params, args) -> dict:
    """Optimised reward, gold reward and KL̂ of `params` on held-out prompts (4 samples each)."""
    import jax
    import numpy as np

    from jaxrl_llm.rollout.strategies import PromptBatch, decode_responses
    from jaxrl_llm.train.forward import batch_policy_outputs
    from jaxrl_llm.types import Rollout

    g = 4
    sampler = trainer.sampler(num_samples=g, temperature=1.0)
    logp = jax.jit(lambda p, b: batch_policy_outputs(trainer.model_config, p, b, 1.0).logp)
    _, batches = trainer.evaluator._batches("test", "prompts")
    optimised, gold, kl, seen = [], [], [], 0
    source = "ens" if "ens" in trainer.config.rewards else "rm0"
    for i, batch in enumerate(batches):
        if seen >= args.eval_prompts:
            break
        out = sampler(params, batch["prompt_ids"], batch["prompt_mask"], jax.random.PRNGKey(1000 + i))
        ids, mask = np.asarray(out.response_ids), np.asarray(out.response_mask)
        rows = PromptBatch.from_dict(batch).repeat(g)
        completions, finished = decode_responses(trainer.tokenizer, ids, mask, trainer.tokenizer.eos_ids)
        scores = trainer.reward_sources(rows, ids, mask, completions, finished)
        optimised.append(scores.per_source[source])
        gold.append(scores.per_source["exact_match"])
        r = Rollout(rows.prompt_ids, rows.prompt_mask, ids, mask)
        kl.append(((np.asarray(logp(params, r)) - np.asarray(logp(ref_params, r))) * mask).sum(1))
        seen += len(batch["prompt_ids"])
    return {
        "optimised": float(np.concatenate(optimised).mean()),
        "gold": float(np.concatenate(gold).mean()),
        "kl": float(np.concatenate(kl).mean()),
    }


def run_one(run: str, seed: int, warm: str, exports: dict, args) -> dict:
    from jaxrl_llm.models.auxiliary import load_aux_model
    from jaxrl_llm.models.hf import load_checkpoint
    from jaxrl_llm.train.trainer import Trainer

    config = grpo_config(run, warm, seed, exports, args)
    run_dir = os.path.join(args.workdir, f"{run}_seed{seed}")
    t0 = time.perf_counter()
    trainer = Trainer(config, run_dir)
    trainer.fit()
    wall = time.perf_counter() - t0
    _, ref_params = load_checkpoint(warm)
    points = [{"step": 0, **measure(trainer, ref_params, ref_params, args)}]
    for step in range(args.every, args.steps + 1, args.every):
        step_dir = os.path.join(run_dir, "checkpoints", "main", str(step))
        params = load_aux_model("policy", {"checkpoint": step_dir, "head": "causal_lm"}).params
        points.append({"step": step, **measure(trainer, params, ref_params, args)})
        print(run, seed, points[-1], flush=True)
    return {"part": "grpo", "run": run, "seed": seed, "wall_s": wall, "points": points}


def report(workdir: str) -> None:
    import numpy as np

    from jaxrl_llm.losses.preference import gao_fit

    results = rm_experiment.read_results(os.path.join(workdir, "results.jsonl"))
    proxies = [r for r in results if r["part"] == "reward_model"]
    print("| proxy reward model | train pairs | steps | test pair accuracy | ECE |")
    print("|---|---:|---:|---:|---:|")
    for r in proxies:
        print(
            f"| {r['name']} | {r['pairs']} | {r['steps']} | {100 * r['pair_accuracy']:.1f}% | {r['calibration_error']:.3f} |"
        )
    runs = [r for r in results if r["part"] == "grpo"]
    print(
        "\n| GRPO reward | seeds | KL̂ at the end | optimised reward: start → peak → end | gold (exact match): start → peak (step) → end | Gao RL fit R² |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for run in RUNS:
        rs = [r for r in runs if r["run"] == run]
        if not rs:
            continue
        steps = [p["step"] for p in rs[0]["points"]]
        kl, opt, gold = (
            np.mean([[p[k] for p in r["points"]] for r in rs], axis=0) for k in ("kl", "optimised", "gold")
        )
        peak = int(np.argmax(gold))
        fit = [float(x) for x in gao_fit(np.sqrt(np.maximum(kl, 0)), gold - gold[0], "rl")]
        print(
            f"| {run} | {len(rs)} | {kl[-1]:.2f} | {opt[0]:.2f} → {opt.max():.2f} → {opt[-1]:.2f} | "
            f"{100 * gold[0]:.1f} → {100 * gold[peak]:.1f} (step {steps[peak]}) → {100 * gold[-1]:.1f}% | {fit[2]:.2f} |"
        )
    plot(runs, os.path.join(workdir, "overoptimisation.png"))


def plot(runs, path: str) -> None:
    """Per run kind (colour) and seed (line): the optimised reward, the gold reward and KL̂
    against the step, and the gold reward against sqrt(KL̂) (Gao et al.'s axis)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 4))
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, 4, i + 1) for i in range(4)]
    for run in RUNS:
        for i, r in enumerate(x for x in runs if x["run"] == run):
            steps = [p["step"] for p in r["points"]]
            style = dict(color=f"C{RUNS.index(run)}", alpha=0.75, ms=3, label=run if i == 0 else None)
            axes[0].plot(steps, [p["optimised"] for p in r["points"]], "o-", **style)
            axes[1].plot(steps, [100 * p["gold"] for p in r["points"]], "o-", **style)
            axes[2].plot(steps, [p["kl"] for p in r["points"]], "o-", **style)
            d = np.sqrt(np.maximum([p["kl"] for p in r["points"]], 0))
            axes[3].plot(d, [100 * p["gold"] for p in r["points"]], "o", **style)
    axes[0].set(xlabel="GRPO step", ylabel="optimised reward (proxy / ensemble)", title="what GRPO optimises")
    axes[1].set(xlabel="GRPO step", ylabel="gold: exact match % (T = 1 samples)", title="gold reward")
    axes[2].set(xlabel="GRPO step", ylabel="KL̂ to the reference, nats / sequence", title="KL budget")
    axes[3].set(xlabel="sqrt(KL̂)", ylabel="gold: exact match %", title="gold against sqrt(KL)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default="runs/overopt")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--warm_start", default="")
    parser.add_argument("--pairs", type=int, default=4096)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--rm_steps", type=int, default=400)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--eval_prompts", type=int, default=256)
    parser.add_argument("--uwo_coef", type=float, default=0.5)
    parser.add_argument("--kl_beta", type=float, default=0.1)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    if args.report:
        report(args.workdir)
        return
    path = os.path.join(args.workdir, "results.jsonl")
    warm = args.warm_start or algorithms_table.warm_start("arithmetic", args.workdir, args.data_dir)[0]
    exports = {}
    for k, name in enumerate(members(args)):
        done = next(
            (
                r
                for r in rm_experiment.read_results(path)
                if r["part"] == "reward_model" and r["name"] == name
            ),
            None,
        )
        if done is None:
            fields = {"data.train_records": args.pairs, "data.train_offset": k * args.pairs}
            done = rm_experiment.train_reward_model(
                warm, args, name, steps=args.rm_steps, seed=k, fields=fields
            )
            done["pairs"] = args.pairs
            rm_experiment.append(path, done)
        exports[name] = done["export"]
    for seed in map(int, args.seeds.split(",")):
        for run in args.runs.split(","):
            if any(
                r["part"] == "grpo" and r["run"] == run and r["seed"] == seed
                for r in rm_experiment.read_results(path)
            ):
                continue
            rm_experiment.append(path, run_one(run, seed, warm, exports, args))
    report(args.workdir)


if __name__ == "__main__":
    main()
