"""Generation throughput: jaxrl_llm's jitted KV-cache sampler vs Hugging Face `generate`.

Same random Llama checkpoint (written by `transformers`, loaded by both), same prompts, ancestral
sampling at temperature 1 with no top-k/top-p, EOS disabled so both produce exactly
`--new_tokens` tokens per row. Runs alternate A B A B; the median of `--repeats` timed runs after
one warm-up (which includes our compile) is reported. Also times group sampling (prompts x G
samples; ours prefills each prompt once, HF uses num_return_sequences).

    python experiments/bench_generate.py                  # both sizes of experiments/README.md
    python experiments/bench_generate.py --sizes=small --repeats=5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import numpy as np
from bench_common import build_checkpoint, time_runs

from jaxrl_llm.models.hf import load_checkpoint
from jaxrl_llm.rollout.sampler import SamplingConfig, make_sampler


def bench(size: str, batch: int, samples: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as path:
        hf_model = build_checkpoint(size, path)
        config, params = load_checkpoint(path)
    params = jax.device_put(params)
    rng = np.random.RandomState(0)
    prompts = rng.randint(0, config.vocab_size, (batch, prompt_len)).astype(np.int32)
    mask = np.ones_like(prompts)
    sampler = make_sampler(
        config, SamplingConfig(max_new_tokens=new_tokens, num_samples=samples, temperature=1.0)
    )
    prompts_t, mask_t = torch.tensor(prompts, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    key = jax.random.PRNGKey(0)

    def ours():
        out = sampler(params, prompts, mask, key)
        jax.block_until_ready(out.response_ids)
        assert int(out.num_steps) == new_tokens

    def hf():
        with torch.no_grad():
            out = hf_model.generate(
                input_ids=prompts_t,
                attention_mask=mask_t,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                num_return_sequences=samples,
                use_cache=True,
                pad_token_id=0,
            )
        assert out.shape == (batch * samples, prompt_len + new_tokens)

    compile_start = time.perf_counter()
    ours()
    first_call = time.perf_counter() - compile_start
    times = time_runs({"jaxrl_llm": ours, "hf_generate": hf}, repeats)
    tokens = batch * samples * new_tokens
    result = {name: tokens / statistics.median(t) for name, t in times.items()}
    result.update(size=size, params=config.num_params, batch=batch, samples=samples, first_call_s=first_call)
    return result


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="small,52M")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--group", default="4x4", help="prompts x samples for the group-sampling row ('' skips)"
    )
    args = parser.parse_args()

    import torch

    print(
        f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    print(
        f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, temperature 1, median of {args.repeats}"
    )
    rows = []
    for size in args.sizes.split(","):
        shapes = [(args.batch, 1)]
        if args.group:
            shapes.append(tuple(int(x) for x in args.group.split("x")))
        for batch, samples in shapes:
            rows.append(bench(size, batch, samples, args.prompt_len, args.new_tokens, args.repeats))
            r = rows[-1]
            print(
                f"{r['size']:>5} ({r['params'] / 1e6:5.2f}M params) {r['batch']:>2} prompts x {r['samples']} samples: "
                f"jaxrl_llm {r['jaxrl_llm']:8.0f} tok/s | HF generate {r['hf_generate']:8.0f} tok/s | "
                f"ratio {r['jaxrl_llm'] / r['hf_generate']:5.2f}x | our first call (compile) {r['first_call_s']:.1f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
