"""Sampling demo: group-sample completions with the jitted KV-cache sampler.

Default: a tiny randomly initialised Llama-style model with a character tokenizer (offline,
seconds on a CPU; its completions are random characters). With `checkpoint` set to a local
Hugging Face directory (config.json, *.safetensors, tokenizer.json), it samples from that model.

    python -m jaxrl_llm.main --config=configs/sample_demo.py
    python -m jaxrl_llm.main --config=configs/sample_demo.py:smoke --workdir=runs/demo
    python -m jaxrl_llm.main --config=configs/sample_demo.py \
        --config.model.checkpoint=/models/Qwen2.5-0.5B-Instruct --config.chat=True \
        --config.prompts='("What is 17 * 3?",)' --config.sampling.top_p=0.9
"""

import ml_collections

from jaxrl_llm.train.config import ARITHMETIC_ALPHABET


def get_config(arg=None):
    config = ml_collections.ConfigDict()
    config.job = "sample"
    config.seed = 0
    # model.checkpoint: a local HF checkpoint directory; '' builds a random model of this shape
    # with a character tokenizer over tokenizer.alphabet (the same fields as training configs).
    config.model = ml_collections.ConfigDict(
        dict(
            checkpoint="",
            dtype="float32",  # 'bfloat16' on accelerators; float32 is faster on XLA:CPU
            d_model=128,
            num_layers=4,
            num_heads=4,
            num_kv_heads=2,
            mlp_dim=512,
        )
    )
    config.tokenizer = ml_collections.ConfigDict(dict(alphabet=ARITHMETIC_ALPHABET))
    config.prompts = ("12+34=", "7*8=", "100-1=")
    config.chat = False  # wrap each prompt as a user turn with the tokenizer's chat template
    config.max_prompt_len = 64
    config.sampling = ml_collections.ConfigDict(
        dict(max_new_tokens=32, num_samples=4, temperature=1.0, top_k=0, top_p=1.0)
    )
    config.timed_repeats = 3  # extra timed calls after the first (compiling) one
    if arg == "smoke":
        config.sampling.max_new_tokens = 8
        config.timed_repeats = 1
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return config
