"""Verbalised-confidence calibration of reward models on held-out arithmetic pairs (PPO-M,
Leng et al., arXiv 2410.09724): does the reward model prefer a stated high confidence only
when the answer is right?

    python experiments/reward_calibration.py --rms=rm=runs/reward_model/rm_hf,\\
        ppo_m=runs/ppo_m/checkpoints/main/200

For each reward model (an HF `*ForSequenceClassification` directory or a reward-model run's
checkpoint step directory) on the first `--pairs` test pairs (correct answer y_w, nearby wrong
y_l), with y ⊕ c the answer followed by the phrase `--template` of confidence c:
- pair accuracy: r(y_w) > r(y_l) (the plain ranking);
- confidence accuracy: the mean of 1[r(y_w ⊕ high) > r(y_w ⊕ low)] and 1[r(y_l ⊕ low) >
  r(y_l ⊕ high)] (the official "confidence accuracy"; 50% for a model blind to the phrase);
- the confidence bonus r(y ⊕ high) − r(y ⊕ low), on right and on wrong answers (PPO-M wants
  it positive on right answers and negative on wrong ones; an overconfident reward model has
  it positive on both).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import algorithms_table  # noqa: E402


def measure(name: str, checkpoint: str, args) -> dict:
    import jax
    import numpy as np

    from jaxrl_llm.algorithms.calibration import confidence_pairs
    from jaxrl_llm.data import pipeline
    from jaxrl_llm.data.sources import make_source
    from jaxrl_llm.data.tokenizer import load_tokenizer
    from jaxrl_llm.models.auxiliary import load_aux_model
    from jaxrl_llm.train.forward import sequence_scores

    config = algorithms_table.load_config("ppo_m_arithmetic")
    config.data.data_dir = args.data_dir
    model = load_aux_model(name, {"checkpoint": checkpoint, "head": "reward"})
    tokenizer_dir = (
        checkpoint if os.path.exists(os.path.join(checkpoint, "tokenizer.json")) else args.tokenizer
    )
    tokenizer = load_tokenizer(tokenizer_dir)
    source = make_source(config.data, "test")
    score = jax.jit(lambda p, *rows: sequence_scores(model.config, p, *rows))

    def scores(pair_records):
        ds = pipeline.preference_dataset(
            source,
            tokenizer,
            batch_size=64,
            max_prompt_len=config.data.max_prompt_len,
            max_target_len=config.sampling.max_new_tokens,
            seed=0,
            shuffle=False,
            pair_records=pair_records,
        )
        chosen, rejected = [], []
        for i in range(args.pairs // 64):
            b = ds[i]
            for side, out in (("chosen", chosen), ("rejected", rejected)):
                rows = (b["prompt_ids"], b["prompt_mask"], b[f"{side}_ids"], b[f"{side}_mask"])
                out.append(np.asarray(score(model.params, *rows), np.float64))
        return np.concatenate(chosen), np.concatenate(rejected)

    w, l = scores(None)  # noqa: E741
    first, second = scores(confidence_pairs(args.template, args.high, args.low))
    n = len(w)  # each batch of 64 pairs gave 64 (y_w ⊕ high, y_w ⊕ low) rows, then 64 (y_l ⊕ low, y_l ⊕ high)
    blocks = first.reshape(-1, 2, 64), second.reshape(-1, 2, 64)
    w_high, w_low = blocks[0][:, 0].ravel(), blocks[1][:, 0].ravel()
    l_low, l_high = blocks[0][:, 1].ravel(), blocks[1][:, 1].ravel()
    return {
        "name": name,
        "pairs": n,
        "pair_accuracy": float((w > l).mean()),
        "confidence_accuracy": float(((w_high > w_low).mean() + (l_low > l_high).mean()) / 2),
        "bonus_right": float((w_high - w_low).mean()),
        "bonus_wrong": float((l_high - l_low).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rms", required=True, help="name=checkpoint,... (HF dirs or run step dirs)")
    parser.add_argument("--tokenizer", default="", help="a directory with tokenizer.json, for step dirs")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--template", default=" #{}")
    parser.add_argument("--high", type=float, default=9.0)
    parser.add_argument("--low", type=float, default=1.0)
    args = parser.parse_args()
    print(
        "| reward model | pair accuracy | confidence accuracy | r(⊕high) − r(⊕low), right answers | same, wrong answers |"
    )
    print("|---|---:|---:|---:|---:|")
    for item in args.rms.split(","):
        name, checkpoint = item.split("=", 1)
        r = measure(name, checkpoint, args)
        print(
            f"| {name} | {100 * r['pair_accuracy']:.1f}% | {100 * r['confidence_accuracy']:.1f}% | "
            f"{r['bonus_right']:+.2f} | {r['bonus_wrong']:+.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
