"""Published qualitative claims about policy-gradient methods, tested at this scale with seeds:
the "Claims" section of experiments/README.md.

    python experiments/claims.py --workdir=runs/claims                    # every claim, 3 seeds
    python experiments/claims.py --workdir=runs/claims --claims=clip_higher --seeds=0 --steps=30
    python experiments/claims.py --workdir=runs/claims --report           # the tables only

Each claim compares conditions (an algorithm and its hyper-parameters, a rollout strategy)
from the same warm-start as experiments/algorithms_table.py (that script's `warm_start`: one
SFT checkpoint per task), with the same budget, on `--seeds` seeds. A condition's numbers are
means over the last 20 training steps (entropy, lengths, reward) and the final held-out test
greedy accuracy. The verdict compares the claimed direction of the difference between the two
named conditions with its standard error over seeds (Welch): "reproduces" when the difference
has the claimed sign and exceeds 2 standard errors, "contradicted" when it has the opposite
sign and exceeds 2 standard errors, else "not resolved at this scale" (no difference larger
than the seed noise). Results go to `<workdir>/claims.jsonl` (resumable, one line per run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import time

from algorithms_table import _set, load_task_config, warm_start

# Off-policy conditions train against the behaviour policy: logp_old = the sampler's log-probs.
OFF_POLICY = {"correction": {"behaviour_as_old": {}}}
# claim -> task, the statement, conditions {label: config overrides}, the compared metric, and
# (a, b, sign): the claim is that metric(a) − metric(b) has this sign.
CLAIMS = {
    "clip_higher": dict(
        task="arithmetic",
        statement="clip-higher (ε_hi 0.28 > ε_lo 0.2) keeps policy entropy higher than symmetric "
        "clipping (DAPO, arXiv 2503.14476); 4 updates per rollout so the clip binds",
        conditions={
            "symmetric": {
                "algo": {"name": "grpo", "beta": 0.0, "loss_agg": "token_mean"},
                "train.minibatches": 4,
            },
            "clip_higher": {
                "algo": {"name": "grpo", "beta": 0.0, "loss_agg": "token_mean", "clip_eps_high": 0.28},
                "train.minibatches": 4,
            },
        },
        metric="entropy",
        compare=("clip_higher", "symmetric", +1),
    ),
    "dr_grpo_length": dict(
        task="countdown",
        statement="Dr.GRPO (no std division, constant-length normaliser) curbs the growth of "
        "incorrect responses' length that GRPO's 1/|o| normaliser causes (arXiv 2503.20783)",
        conditions={
            "grpo": {"algo": {"name": "grpo", "beta": 0.0}},
            "dr_grpo": {"algo": {"name": "dr_grpo"}},
        },
        metric="response_length_incorrect",
        compare=("dr_grpo", "grpo", -1),
    ),
    "negative_groups": dict(
        task="countdown",
        statement="NGRPO's virtual maximum reward gives all-wrong groups a learning signal that "
        "GRPO lacks, and this raises accuracy on a hard task (arXiv 2509.18851)",
        conditions={"grpo": {"algo": {"name": "grpo", "beta": 0.0}}, "ngrpo": {"algo": {"name": "ngrpo"}}},
        metric="test_greedy_accuracy",
        compare=("ngrpo", "grpo", +1),
    ),
    "bapo_replay": dict(
        task="arithmetic",
        statement="under stale off-policy replay BAPO keeps entropy up where GRPO's entropy "
        "collapses (arXiv 2510.18927); replay of rollouts 4 steps old, ratios against the behaviour policy",
        conditions={
            "grpo": {
                "algo": {"name": "grpo", "beta": 0.0},
                "rollout": {"name": "replay", "k": 4},
                **OFF_POLICY,
            },
            "bapo": {"algo": {"name": "bapo"}, "rollout": {"name": "replay", "k": 4}, **OFF_POLICY},
        },
        metric="entropy",
        compare=("bapo", "grpo", +1),
    ),
    "gspo_replay": dict(
        task="arithmetic",
        statement="GSPO's sequence ratio trains more stably than token-ratio GRPO under off-policy "
        "replay (arXiv 2507.18071): higher held-out accuracy after replay of 4-step-old rollouts",
        conditions={
            "grpo": {
                "algo": {"name": "grpo", "beta": 0.0},
                "rollout": {"name": "replay", "k": 4},
                **OFF_POLICY,
            },
            "gspo": {"algo": {"name": "gspo"}, "rollout": {"name": "replay", "k": 4}, **OFF_POLICY},
        },
        metric="test_greedy_accuracy",
        compare=("gspo", "grpo", +1),
    ),
    "tis_mismatch": dict(
        task="arithmetic",
        statement="truncated importance sampling restores learning when behaviour and trainer "
        "log-probs differ (Yao et al. 2025): rollouts sampled at temperature 1.1, trained at 1.0",
        conditions={
            "matched": {"algo": {"name": "grpo", "beta": 0.0}},
            "mismatch": {
                "algo": {"name": "grpo", "beta": 0.0},
                "rollout": {"name": "group_sampling", "temperature": 1.1},
            },
            "mismatch_tis": {
                "algo": {"name": "grpo", "beta": 0.0},
                "rollout": {"name": "group_sampling", "temperature": 1.1},
                "correction": {"truncated_is": {"level": "token", "cap": 2.0}},
            },
        },
        metric="test_greedy_accuracy",
        compare=("mismatch_tis", "mismatch", +1),
    ),
}


def condition_config(claim, label, seed, checkpoint, args):
    spec = CLAIMS[claim]
    config = load_task_config(spec["task"])
    config.seed = seed
    config.data.data_dir = args.data_dir
    config.model.checkpoint = checkpoint
    config.sft.steps = 0
    config.train.update(steps=args.steps, checkpoint_every=args.steps, batch_size=args.prompts)
    config.sampling.num_samples = args.samples
    config.eval.update(every=0, num_prompts=512, pass_k=8)
    for field, value in spec["conditions"][label].items():
        if field in ("algo", "rollout", "correction"):
            config[field] = dict(value)
        else:
            _set(config, field, value)
    return config


def run_condition(claim, label, seed, checkpoint, args) -> dict:
    from jaxrl_llm.train.metrics import read_metrics
    from jaxrl_llm.train.trainer import Trainer

    config = condition_config(claim, label, seed, checkpoint, args)
    run_dir = os.path.join(args.workdir, claim, f"{label}_seed{seed}")
    t0 = time.perf_counter()
    summary = Trainer(config, run_dir).fit()
    rows = [r for r in read_metrics(run_dir, phase="main") if "loss" in r][-20:]
    means = {}
    for key in (
        "entropy",
        "response_length",
        "response_length_incorrect",
        "reward_mean",
        "zero_variance_groups",
    ):
        values = [r[key] for r in rows if key in r]
        means[key] = statistics.mean(values) if values else None
    return {
        "claim": claim,
        "condition": label,
        "seed": seed,
        "test_greedy_accuracy": summary["main_after"]["greedy_accuracy"],
        "test_pass_at_8": summary["main_after"].get("pass_at_8"),
        **means,
        "wall_s": time.perf_counter() - t0,
    }


def verdict(a: list[float], b: list[float], sign: int) -> tuple[float, float, str]:
    """(mean difference a − b, its standard error, verdict) — see the module docstring."""
    diff = statistics.mean(a) - statistics.mean(b)
    var = sum(statistics.variance(x) / len(x) for x in (a, b) if len(x) > 1)
    se = math.sqrt(var) if var > 0 else float("nan")
    if not se == se or abs(diff) <= 2 * se:  # NaN (one seed) or within the noise
        return diff, se, "not resolved at this scale"
    return diff, se, "reproduces" if diff * sign > 0 else "contradicted"


def report(workdir: str) -> None:
    with open(os.path.join(workdir, "claims.jsonl")) as f:
        results = [json.loads(line) for line in f if line.strip()]
    for claim, spec in CLAIMS.items():
        rows = [r for r in results if r["claim"] == claim]
        if not rows:
            continue
        metric = spec["metric"]
        print(f"\n#### {claim} ({spec['task']}): {spec['statement']}\n")
        print(
            f"| condition | seeds | test greedy | entropy | incorrect-response length | reward | {metric} |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        values = {}
        for label in spec["conditions"]:
            rs = [r for r in rows if r["condition"] == label]
            if not rs:
                continue
            values[label] = [r[metric] for r in rs if r[metric] is not None]
            cells = []
            for key in (
                "test_greedy_accuracy",
                "entropy",
                "response_length_incorrect",
                "reward_mean",
                metric,
            ):
                xs = [r[key] for r in rs if r[key] is not None]
                sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
                cells.append(f"{statistics.mean(xs):.3f} ± {sd:.3f}" if xs else "–")
            print(f"| {label} | {len(rs)} | " + " | ".join(cells) + " |")
        a, b, sign = spec["compare"]
        if a in values and b in values and values[a] and values[b]:
            diff, se, word = verdict(values[a], values[b], sign)
            print(f"\n{metric}({a}) − {metric}({b}) = {diff:+.4f} ± {se:.4f} (SE): **{word}**")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--claims", default=",".join(CLAIMS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    if not args.report:
        print("\n".join(subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()[:14]))
        path = os.path.join(args.workdir, "claims.jsonl")
        done = set()
        if os.path.exists(path):
            with open(path) as f:
                done = {(r["claim"], r["condition"], r["seed"]) for r in map(json.loads, f)}
        for claim in args.claims.split(","):
            checkpoint, _ = warm_start(CLAIMS[claim]["task"], args.workdir, args.data_dir)
            for seed in map(int, args.seeds.split(",")):
                for label in CLAIMS[claim]["conditions"]:
                    if (claim, label, seed) in done:
                        continue
                    result = run_condition(claim, label, seed, checkpoint, args)
                    print(f"{claim} {label} seed {seed}: {json.dumps(result)}")
                    with open(path, "a") as f:
                        f.write(json.dumps(result) + "\n")
    report(args.workdir)


if __name__ == "__main__":
    main()
