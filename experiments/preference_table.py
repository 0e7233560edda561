"""Every preference method from the same warm-start with the same budget on the arithmetic task,
several seeds: the table of experiments/README.md ("Preference methods").

    python experiments/preference_table.py --workdir=runs/preference_table \\
        --rm=runs/reward_model/rm_hf                                   # everything
    python experiments/preference_table.py --workdir=runs/preference_table --report   # table only

1. Warm-start: the arithmetic SFT warm-start of experiments/algorithms_table.py (`--warm_start`
   to reuse one); every run starts from it and it is every run's reference.
2. Offline methods (pairs: the correct answer vs a nearby wrong one; KTO: one of the two,
   labelled): `configs/dpo_arithmetic.py`'s budget, `--steps` steps of 64 pairs (KTO: 64
   examples), Adam 1e-4, each method's defaults except `SETTINGS`. TGDPO's token-level reward
   model is the seed's DPO run (its final checkpoint); MODPO's margin model is the reward model
   `--rm` (an HF reward-model directory, e.g. experiments/reward_model.py's export). SRPO
   (`configs/srpo_arithmetic.py`) trains on three rows per pair (answer, and revise each draft).
3. Online methods (`configs/<method>_arithmetic.py`: online DPO, iterative DPO and APO in 3
   rounds of 17 steps, SuperHF, BRAIn): the algorithms table's RL budget, `--online_steps` steps of 32
   prompts x 8 samples, ranked by the exact-match verifier (Adam 1e-4, the configs' rate).
4. The matched control: `sft` on the chosen answers (the correct ones), the offline budget:
   CPO, ORPO and RPO add an NLL term on exactly those answers.
5. Measured at the end on the test split: greedy accuracy and pass@8 on 512 questions (the
   held-out answer accuracy), pair accuracy on 512 held-out pairs (implicit reward
   β·log π/π_ref of the correct answer above the wrong one; and likelihood accuracy, π itself
   prefers the correct answer), and the KL to the warm-start (per-token mean of log π − log π_ref
   over 256 x 8 samples at temperature 1, as in the algorithms table).

Results in `<workdir>/results.jsonl` (a rerun skips finished runs); `--report` prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import algorithms_table  # noqa: E402
import reward_model as rm_experiment  # noqa: E402

OFFLINE = (
    "dpo",
    "ipo",
    "simpo",
    "cpo",
    "orpo",
    "rpo",
    "flex_dpo",
    "kto",
    "tgdpo",
    "modpo",
    "srpo",
    "mah_dpo",
)
ONLINE = ("online_dpo", "iterative_dpo", "apo", "superhf", "brain")
CONTROL = ("sft",)  # supervised on the chosen (correct) answers, the same budget: the matched control
CONFIGS = {m: f"{m}_arithmetic" for m in ("kto", "srpo", "mah_dpo") + ONLINE}
# Hyper-parameters that differ from the defaults: Flex-DPO's defaults are DPO, so its row uses
# the paper's reading β_l < β_w; iterative DPO and APO run 3 rounds of the online budget.
SETTINGS = {
    "flex_dpo": {"beta_rejected": 0.05},
    "iterative_dpo": {"round_steps": 17},
    "apo": {"round_steps": 17, "alpha": 0.3},
}


def run_config(method: str, seed: int, warm: str, args):
    config = algorithms_table.load_config(CONFIGS.get(method, "dpo_arithmetic"))
    config.seed = seed
    config.data.data_dir = args.data_dir
    config.model.checkpoint = warm
    config.sft.steps = 0
    own = dict(config.algo) if method in CONFIGS else {}  # a method's own config keeps its fields
    config.algo = {**own, "name": method, **SETTINGS.get(method, {})}
    if method in ONLINE:
        config.algo.num_samples = config.sampling.num_samples
    steps = args.online_steps if method in ONLINE else args.steps
    config.train.update(steps=steps, checkpoint_every=steps)
    config.eval.update(every=0, num_prompts=512, pass_k=8, before=False)
    if method == "tgdpo":
        dpo_final = os.path.join(args.workdir, f"dpo_seed{seed}", "checkpoints", "main", str(args.steps))
        config.aux_models = {"token_rm": {"checkpoint": dpo_final, "head": "causal_lm"}}
    if method == "modpo":
        config.aux_models = {"margin_rm": {"checkpoint": args.rm, "head": "reward"}}
    return config


def train_one(method: str, seed: int, warm: str, args) -> dict:
    from jaxrl_llm.models.hf import load_checkpoint
    from jaxrl_llm.train.builders import with_lm_heads
    from jaxrl_llm.train.trainer import Trainer

    config = run_config(method, seed, warm, args)
    run_dir = os.path.join(args.workdir, f"{method}_seed{seed}")
    t0 = time.perf_counter()
    trainer = Trainer(config, run_dir)
    summary = trainer.fit()
    wall = time.perf_counter() - t0
    after = summary["main_after"]
    warm_config, ref_params = load_checkpoint(warm)
    # a multi-head policy (MAH-DPO): its reference is the warm-start's head in every head
    ref_params = with_lm_heads(warm_config, ref_params, trainer.model_config.lm_heads)[1]
    pairs = trainer.evaluator._preference_accuracy(trainer.final_state.params, ref_params, "test")
    return {
        "method": method,
        "seed": seed,
        "steps": config.train.steps,
        "greedy_accuracy": after["greedy_accuracy"],
        "pass_at_8": after.get("pass_at_8"),
        "preference_accuracy": pairs["preference_accuracy"],
        "likelihood_accuracy": pairs["likelihood_accuracy"],
        "kl_to_warm_start": algorithms_table.kl_to_reference(trainer, ref_params),
        "wall_s": wall,
    }


def _fmt(values, pct=True):
    m = statistics.mean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * m:.1f} ± {100 * s:.1f}" if pct else f"{m:.3g} ± {s:.2g}"


def report(workdir: str) -> None:
    results = rm_experiment.read_results(os.path.join(workdir, "results.jsonl"))
    print(
        "| method | seeds | test greedy % | pass@8 % | pair accuracy % (implicit reward) | "
        "likelihood accuracy % | KL to warm-start | wall s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method in OFFLINE + ONLINE + CONTROL:
        rs = [r for r in results if r["method"] == method]
        if not rs:
            continue
        print(
            f"| {method} | {len(rs)} | {_fmt([r['greedy_accuracy'] for r in rs])} | "
            f"{_fmt([r['pass_at_8'] for r in rs])} | {_fmt([r['preference_accuracy'] for r in rs])} | "
            f"{_fmt([r['likelihood_accuracy'] for r in rs])} | {_fmt([r['kl_to_warm_start'] for r in rs], False)} | "
            f"{_fmt([r['wall_s'] for r in rs], False)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default="runs/preference_table")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--warm_start", default="")
    parser.add_argument(
        "--rm", default="runs/reward_model/rm_hf", help="MODPO's margin reward model (HF dir)"
    )
    parser.add_argument("--methods", default=",".join(OFFLINE + ONLINE + CONTROL))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--online_steps", type=int, default=50, help="the algorithms table's RL budget")
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th (seed, method) from the i-th")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    if args.report:
        report(args.workdir)
        return
    path = os.path.join(args.workdir, "results.jsonl")
    warm = args.warm_start or algorithms_table.warm_start("arithmetic", args.workdir, args.data_dir)[0]
    index, count = map(int, args.shard.split("/"))
    # Seed-major; within a seed DPO first (TGDPO's token reward model is that seed's DPO run).
    jobs = [(s, m) for s in map(int, args.seeds.split(",")) for m in args.methods.split(",")]
    for k, (seed, method) in enumerate(jobs):
        if k % count != index:
            continue
        if any(r["method"] == method and r["seed"] == seed for r in rm_experiment.read_results(path)):
            continue
        if method == "tgdpo":  # wait for this seed's DPO run (another shard may be training it)
            while not any(
                r["method"] == "dpo" and r["seed"] == seed for r in rm_experiment.read_results(path)
            ):
                time.sleep(10)
        row = train_one(method, seed, warm, args)
        rm_experiment.append(path, row)
        print(json.dumps(row), flush=True)
    report(args.workdir)


if __name__ == "__main__":
    main()
