"""The sampling job (`config.job = "sample"`): build or load a model from the config, group-sample
prompts with the jitted sampler, report throughput. It sits beside the trainer (both turn a config
into objects with `train.builders`), above the sampler layer it uses."""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from jaxrl_llm.rollout.sampler import SamplingConfig, make_sampler
from jaxrl_llm.train.builders import build_model


def run_sampling(config, workdir: str | None = None) -> list[dict]:
    """Samples `config.sampling.num_samples` completions per prompt and prints them.

    Returns one record per sample (prompt, completion, tokens, sum log-prob); with a workdir,
    also writes them to `workdir/samples.jsonl`.
    """
    model_config, params, tokenizer = build_model(config)
    prompts = list(config.prompts)
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}]) if config.chat else p for p in prompts
    ]
    prompt_ids, prompt_mask = tokenizer.encode_batch(
        texts, config.max_prompt_len, padding_side="left", add_special_tokens=not config.chat
    )
    sampling = SamplingConfig(stop_ids=tokenizer.eos_ids, pad_id=tokenizer.pad_id, **config.sampling)
    sampler = make_sampler(model_config, sampling)
    params = jax.device_put(params)
    rng = jax.random.PRNGKey(config.seed)

    start = time.perf_counter()
    out = jax.block_until_ready(sampler(params, prompt_ids, prompt_mask, rng))
    first = time.perf_counter() - start
    timings = []
    for i in range(config.timed_repeats):
        start = time.perf_counter()
        timed = jax.block_until_ready(
            sampler(params, prompt_ids, prompt_mask, jax.random.fold_in(rng, i + 1))
        )
        timings.append((time.perf_counter() - start, int(np.asarray(timed.response_mask).sum())))

    ids, mask, logp = (np.asarray(x) for x in (out.response_ids, out.response_mask, out.logprobs))
    records = []
    print(f"model: {model_config.num_params / 1e6:.2f}M params ({config.model.checkpoint or 'random init'})")
    for row in range(ids.shape[0]):
        prompt = prompts[row // sampling.num_samples]
        tokens = ids[row][mask[row] == 1]
        completion = tokenizer.decode(tokens)
        records.append(
            dict(
                prompt=prompt, completion=completion, tokens=int(len(tokens)), logprob=float(logp[row].sum())
            )
        )
        print(f"[{row // sampling.num_samples}.{row % sampling.num_samples}] {prompt!r} -> {completion!r}")
    print(f"first call (compile + run): {first:.2f} s")
    if timings:
        seconds = float(np.median([t for t, _ in timings]))
        tokens = float(np.median([n for _, n in timings]))
        print(
            f"generation: {tokens / seconds:,.0f} tokens/s ({seconds * 1e3:.1f} ms per call, median of {len(timings)})"
        )
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "samples.jsonl"), "w") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
    return records
