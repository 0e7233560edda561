"""Helpers shared by the benchmarks in this folder (bench_generate.py, bench_peers.py and the Tunix
worker bench_peers_tunix.py, which runs in its own virtualenv without jaxrl_llm).

Only the standard library and numpy are imported at module level; torch, transformers and
tokenizers are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import time

import numpy as np

SIZES = {
    # name: (d_model, layers, heads, kv_heads, mlp_dim, vocab)
    "small": (128, 4, 4, 4, 512, 512),
    "52M": (512, 8, 8, 4, 1024, 32000),
}

# Special tokens of the benchmark tokenizer (`build_tokenizer`); every other id is a word "w<id>".
PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
PAD_ID, EOS_ID = 0, 1

# Workers print their result as one line starting with this marker (other output is ignored).
RESULT_MARKER = "BENCH_RESULT "


def build_checkpoint(size: str, path: str, **config_overrides):
    """Writes a randomly initialised Llama of `size` (SIZES) with `transformers` to `path` and
    returns the torch model. config_overrides go to LlamaConfig (e.g. special token ids)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    d, layers, heads, kv_heads, mlp, vocab = SIZES[size]
    torch.manual_seed(0)
    fields = dict(
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    fields.update(config_overrides)
    model = LlamaForCausalLM(LlamaConfig(**fields)).eval()
    model.save_pretrained(path)
    return model


def build_tokenizer(vocab_size: int, path: str) -> None:
    """Saves a word-level tokenizer with exactly `vocab_size` ids to `path` (tokenizer.json +
    tokenizer_config.json, readable by jaxrl_llm's load_tokenizer, transformers'
    PreTrainedTokenizerFast and so Tunix). Ids 0, 1, 2 are <pad>, <eos>, <unk>; id i >= 3 is the
    word "w<i>", so a text of n space-separated words is exactly n tokens (no BOS is added)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {PAD: PAD_ID, EOS: EOS_ID, UNK: 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([PAD, EOS, UNK])
    os.makedirs(path, exist_ok=True)
    tokenizer.save(os.path.join(path, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": PAD,
        "eos_token": EOS,
        "unk_token": UNK,
        "model_max_length": 512,
    }
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def make_prompts(num: int, length: int, vocab_size: int, seed: int = 0) -> list[str]:
    """`num` prompts of exactly `length` random words (= tokens of `build_tokenizer`)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, vocab_size, (num, length))
    return [" ".join(f"w{i}" for i in row) for row in ids]


def even_word_fraction(completion: str) -> float:
    """The benchmark's reward, identical in every framework: the fraction of the completion's words
    whose id is even (0 for an empty completion). Deterministic, and varies across samples, so
    group advantages are not all zero."""
    words = completion.split()
    if not words:
        return 0.0
    even = sum(1 for w in words if w[1:].isdigit() and int(w[1:]) % 2 == 0)
    return even / len(words)


def time_runs(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Warm each fn once, then time them alternately `repeats` times. Returns seconds per run."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_summary(step_times: list[float], gen_times: list[float]) -> dict:
    """First step (compile/warm-up) and medians over the steps after it."""
    later = step_times[1:] or step_times
    later_gen = gen_times[1:] or gen_times
    return {
        "first_step_s": step_times[0],
        "median_step_s": statistics.median(later),
        "median_gen_s": statistics.median(later_gen) if later_gen else float("nan"),
    }


def workload(spec: dict) -> tuple[int, int, int, int, int]:
    """(prompts B, samples G, prompt length P, new tokens T, steps) of a worker's spec."""
    return spec["prompts"], spec["samples"], spec["prompt_len"], spec["new_tokens"], spec["steps"]


def read_spec(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def emit_result(result: dict) -> None:
    """Prints the worker's result for the driver (one line, after everything else)."""
    print(RESULT_MARKER + json.dumps(result), flush=True)
