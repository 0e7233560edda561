"""GRPO with LoRA adapters on the default arithmetic task, against full fine-tuning.

    python experiments/lora_arithmetic.py --workdir=runs/lora_arithmetic
    python experiments/lora_arithmetic.py --workdir=/tmp/l --steps=100 --variants=lora

1. Warm-start: the default job's SFT phase (configs/grpo_arithmetic.py: the 1.19M-parameter
   model from scratch, Adam 1e-3, batch 128, until 30% greedy accuracy on the validation split),
   full fine-tuning, exported with `save_checkpoint` as a Hugging Face directory (+ tokenizer).
2. From that checkpoint, the default job's GRPO phase (64 prompts x 8 samples, exact-match
   reward, no KL, `--steps` steps) once per variant:
     lora   `model.lora` rank 8, alpha 16, on q, k, v, o, gate, up, down; base frozen; Adam
            `--lora_lr` (LoRA usually wants a larger step than full fine-tuning)
     full   full fine-tuning, Adam 3e-4 (the default job's GRPO phase)
   Both start from the same weights and see the same prompts in the same order.

Prints, per variant: training reward (mean of the first / last 25 steps), held-out greedy accuracy
and pass@8 on the test split before / after, median step time, and trainable parameters.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_config():
    spec = importlib.util.spec_from_file_location(
        "grpo_arithmetic", os.path.join(ROOT, "configs", "grpo_arithmetic.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.progress = False
    return config


def warm_start(workdir: str, data_dir: str) -> str:
    """Runs the SFT phase alone and exports it; returns the checkpoint directory."""
    from jaxrl_llm.models.hf import save_checkpoint
    from jaxrl_llm.train.trainer import Trainer

    export = os.path.join(workdir, "sft_checkpoint")
    if os.path.exists(os.path.join(export, "config.json")):
        return export
    config = default_config()
    config.data.data_dir = data_dir
    config.train.steps = 0  # SFT only
    trainer = Trainer(config, os.path.join(workdir, "sft"))
    trainer.fit()
    save_checkpoint(export, trainer.model_config, trainer.final_state.params)
    trainer.tokenizer.save(export)
    return export


def grpo(variant: str, checkpoint: str, workdir: str, data_dir: str, steps: int, lora_lr: float) -> dict:
    from jaxrl_llm import lora
    from jaxrl_llm.train.metrics import read_metrics
    from jaxrl_llm.train.trainer import Trainer

    config = default_config()
    config.data.data_dir = data_dir
    config.model.checkpoint = checkpoint
    config.sft.steps = 0
    config.train.steps = steps
    if variant == "lora":
        config.model.lora.update(rank=8, alpha=16.0)
        config.optimizer.learning_rate = lora_lr
    run_dir = os.path.join(workdir, variant)
    trainer = Trainer(config, run_dir)
    summary = trainer.fit()
    main = read_metrics(os.path.join(run_dir, "metrics.jsonl"), phase="main")
    rewards = [r["reward_mean"] for r in main]
    k = min(25, len(rewards))
    trainable, _ = lora.split_trainable(trainer.model_config, trainer.final_state.params)
    before, after = summary["main_before"], summary["main_after"]
    return {
        "variant": variant,
        "learning_rate": config.optimizer.learning_rate,
        "trainable_params": lora.num_elements(trainable),
        "reward_first": statistics.mean(rewards[:k]),
        "reward_last": statistics.mean(rewards[-k:]),
        "greedy_before": before["greedy_accuracy"],
        "greedy_after": after["greedy_accuracy"],
        "pass8_before": before["pass_at_8"],
        "pass8_after": after["pass_at_8"],
        "median_step_s": statistics.median(r["step_time"] for r in main[1:]),
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data_dir", default="", help="TFDS data dir ('' = TFDS default)")
    parser.add_argument("--steps", type=int, default=350)
    parser.add_argument("--variants", default="lora,full")
    parser.add_argument("--lora_lr", type=float, default=1e-3)
    args = parser.parse_args()
    checkpoint = warm_start(args.workdir, args.data_dir)
    results = [
        grpo(v, checkpoint, args.workdir, args.data_dir, args.steps, args.lora_lr)
        for v in args.variants.split(",")
    ]
    print(
        "| variant | lr | trainable params | training reward first / last 25 steps | test greedy before -> after | pass@8 before -> after | step s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['variant']} | {r['learning_rate']:g} | {r['trainable_params']:,} "
            f"| {r['reward_first']:.2f} -> {r['reward_last']:.2f} "
            f"| {r['greedy_before']:.1%} -> {r['greedy_after']:.1%} "
            f"| {r['pass8_before']:.1%} -> {r['pass8_after']:.1%} | {r['median_step_s']:.2f} |"
        )
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
