"""A reward model trained here, checked against `transformers`, then used as GRPO's only reward.

    python experiments/reward_model.py --workdir=runs/reward_model            # everything
    python experiments/reward_model.py --workdir=runs/reward_model --report   # table only

1. Warm-start: the arithmetic SFT warm-start of experiments/algorithms_table.py (trained once
   in `<workdir>/arithmetic/warm_start`, or `--warm_start=<HF dir>` to reuse one).
2. Reward model: `configs/reward_model_arithmetic.py` (Bradley–Terry, centring 0.01) from the
   warm-start's trunk, `--rm_steps` steps of 64 pairs (the correct answer vs a nearby wrong one);
   held-out pair accuracy and calibration error (ECE) on 512 test pairs; exported as an HF
   `*ForSequenceClassification` directory. Parity: `transformers` scores of 256 test pairs
   (chosen and rejected rows, packed and right-padded) against ours, max |difference|.
3. GRPO rewarded by the reward model (an auxiliary model, `config.rewards = {'rm': 1}`; the
   exact-match verifier logged with weight 0) against GRPO rewarded by the verifier, the same
   seeds and the algorithms table's budget (`--steps` x `--prompts` x `--samples`); held-out
   greedy accuracy and pass@8 on 512 test questions.

Results go to `<workdir>/results.jsonl` (a rerun skips finished parts); `--report` prints the
markdown tables of experiments/README.md ("Reward models").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import algorithms_table  # noqa: E402  (warm-start, run configs)


def rm_config(warm: str, args, seed: int = 0, steps: int | None = None):
    config = algorithms_table.load_config("reward_model_arithmetic")
    config.seed = seed
    config.data.data_dir = args.data_dir
    config.model.checkpoint = warm
    config.sft.steps = 0
    config.train.update(steps=steps or args.rm_steps, checkpoint_every=steps or args.rm_steps)
    config.eval.update(every=max((steps or args.rm_steps) // 4, 1), num_prompts=512)
    return config


def train_reward_model(warm: str, args, name: str = "rm", **overrides) -> dict:
    """Trains one reward model; returns its held-out metrics and its exported HF directory."""
    from jaxrl_llm.models.hf import save_checkpoint
    from jaxrl_llm.train.trainer import Trainer

    config = rm_config(warm, args, **{k: v for k, v in overrides.items() if k in ("seed", "steps")})
    for field, value in overrides.get("fields", {}).items():
        algorithms_table._set(config, field, value)
    run_dir = os.path.join(args.workdir, name)
    t0 = time.perf_counter()
    trainer = Trainer(config, run_dir)
    summary = trainer.fit()
    export = os.path.join(args.workdir, f"{name}_hf")
    save_checkpoint(export, trainer.model_config, trainer.final_state.params, head="reward")
    trainer.tokenizer.save(export)
    after = summary["main_after"]
    return {
        "part": "reward_model",
        "name": name,
        "steps": config.train.steps,
        "pairs_seen": config.train.steps * config.train.batch_size,
        "wall_s": time.perf_counter() - t0,
        "export": export,
        **{k: after[k] for k in ("pair_accuracy", "calibration_error", "reward_margin", "score_std")},
        "parity_max_abs": transformers_parity(trainer, export),
    }


def transformers_parity(trainer, export: str, num_pairs: int = 256) -> float:
    """max |ours − transformers| over the chosen and rejected rows of `num_pairs` test pairs."""
    import jax
    import numpy as np
    import torch
    import transformers

    from jaxrl_llm.train.forward import sequence_scores

    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        export, dtype=torch.float32
    ).eval()
    params = trainer.final_state.params
    score = jax.jit(lambda p, *rows: sequence_scores(trainer.model_config, p, *rows))
    _, batches = trainer.evaluator._batches("test", "preference")
    worst, seen = 0.0, 0
    for batch in batches:
        if seen >= num_pairs:
            break
        for side in ("chosen", "rejected"):
            rows = (batch["prompt_ids"], batch["prompt_mask"], batch[f"{side}_ids"], batch[f"{side}_mask"])
            ours = np.asarray(score(params, *rows))
            ids, mask = packed_right(rows)
            with torch.no_grad():
                theirs = model(
                    input_ids=torch.from_numpy(ids.astype(np.int64)),
                    attention_mask=torch.from_numpy(mask.astype(np.int64)),
                    position_ids=torch.from_numpy(np.clip(np.cumsum(mask, -1) - 1, 0, None).astype(np.int64)),
                ).logits[:, 0]
            worst = max(worst, float(np.abs(theirs.numpy() - ours).max()))
        seen += len(batch["prompt_ids"])
    return worst


def packed_right(rows):
    """Each row's real prompt + response tokens without gaps, right-padded with the pad id 0
    (how `transformers` finds a sequence classifier's last token)."""
    import numpy as np

    prompt_ids, prompt_mask, response_ids, response_mask = (np.asarray(x) for x in rows)
    seqs = [
        np.concatenate([p[m > 0], r[k > 0]])
        for p, m, r, k in zip(prompt_ids, prompt_mask, response_ids, response_mask, strict=True)
    ]
    width = max(len(s) for s in seqs)
    ids, mask = np.zeros((len(seqs), width), np.int32), np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    return ids, mask


def grpo_run(warm: str, reward: str, seed: int, args, rm_export: str | None = None) -> dict:
    """GRPO from the warm-start rewarded by `reward` ('verifier' or 'rm')."""
    from jaxrl_llm.train.metrics import read_metrics
    from jaxrl_llm.train.trainer import Trainer

    config = algorithms_table.run_config("arithmetic", "grpo", seed, warm, args)
    if reward == "rm":
        config.aux_models = {"rm": {"checkpoint": rm_export, "head": "reward"}}
        config.rewards = {"rm": 1.0, "exact_match": 0.0}  # the verifier is logged, not rewarded
    run_dir = os.path.join(args.workdir, f"grpo_{reward}_seed{seed}")
    t0 = time.perf_counter()
    summary = Trainer(config, run_dir).fit()
    rows = [r for r in read_metrics(run_dir, phase="main") if "loss" in r]
    last = rows[-10:]
    return {
        "part": "grpo",
        "reward": reward,
        "seed": seed,
        "steps": args.steps,
        "greedy_accuracy": summary["main_after"]["greedy_accuracy"],
        "pass_at_8": summary["main_after"].get("pass_at_8"),
        "train_exact_match": statistics.mean(r["reward/exact_match"] for r in last),
        "train_rm": statistics.mean(r["reward/rm"] for r in last) if reward == "rm" else None,
        "wall_s": time.perf_counter() - t0,
    }


def read_results(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def append(path: str, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _fmt(values, pct=True):
    m = statistics.mean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * m:.1f} ± {100 * s:.1f}" if pct else f"{m:.3g} ± {s:.2g}"


def report(workdir: str) -> None:
    results = read_results(os.path.join(workdir, "results.jsonl"))
    warm = next((r for r in results if r["part"] == "warm_start"), None)
    if warm:
        print(
            f"warm-start: test greedy {100 * warm['greedy_accuracy']:.1f}%, pass@8 {100 * warm['pass_at_8']:.1f}%\n"
        )
    print(
        "| reward model | steps (pairs seen) | test pair accuracy | ECE | margin | transformers max abs diff |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in (r for r in results if r["part"] == "reward_model"):
        print(
            f"| {r['name']} | {r['steps']} ({r['pairs_seen']}) | {100 * r['pair_accuracy']:.1f}% | "
            f"{r['calibration_error']:.3f} | {r['reward_margin']:.2f} | {r['parity_max_abs']:.1e} |"
        )
    print(
        "\n| GRPO reward | seeds | test greedy % | pass@8 % | train exact match % (last 10 steps) | wall s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for reward in ("verifier", "rm"):
        rs = [r for r in results if r["part"] == "grpo" and r["reward"] == reward]
        if rs:
            print(
                f"| {reward} | {len(rs)} | {_fmt([r['greedy_accuracy'] for r in rs])} | "
                f"{_fmt([r['pass_at_8'] for r in rs])} | {_fmt([r['train_exact_match'] for r in rs])} | "
                f"{_fmt([r['wall_s'] for r in rs], False)} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default="runs/reward_model")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--warm_start", default="", help="an HF directory to start from (default: train it)")
    parser.add_argument("--rm_steps", type=int, default=2000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    if args.report:
        report(args.workdir)
        return
    print(
        subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()[7:8]
        or platform.processor()
    )
    path = os.path.join(args.workdir, "results.jsonl")
    results = read_results(path)
    warm = args.warm_start or algorithms_table.warm_start("arithmetic", args.workdir, args.data_dir)[0]
    if not any(r["part"] == "warm_start" for r in results):
        with open(os.path.join(warm, "warm_start.json")) as f:
            after = json.load(f)["sft_after"]
        append(
            path,
            {
                "part": "warm_start",
                "greedy_accuracy": after["greedy_accuracy"],
                "pass_at_8": after["pass_at_8"],
            },
        )
    rm = next((r for r in read_results(path) if r["part"] == "reward_model" and r["name"] == "rm"), None)
    if rm is None:
        rm = train_reward_model(warm, args)
        append(path, rm)
    print(f"reward model: {json.dumps(rm)}")
    for seed in map(int, args.seeds.split(",")):
        for reward in ("verifier", "rm"):
            if any(
                r["part"] == "grpo" and r["reward"] == reward and r["seed"] == seed
                for r in read_results(path)
            ):
                continue
            row = grpo_run(warm, reward, seed, args, rm["export"])
            append(path, row)
            print(json.dumps(row))
    report(args.workdir)


if __name__ == "__main__":
    main()
