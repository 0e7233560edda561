"""GRPO on GSM8K with a real instruction-tuned model (run it on an accelerator).

    python -m jaxrl_llm.main --config=configs/grpo_gsm8k.py --workdir=runs/grpo_gsm8k \
        --config.model.checkpoint=/models/Qwen2.5-0.5B-Instruct

`model.checkpoint` is a local Hugging Face directory (config.json, *.safetensors, tokenizer.json
with its chat template). Data comes from TFDS's `gsm8k` builder (downloaded and prepared as
array_record on first use; no TensorFlow needed). Offline, point it at local JSONL files in the
same format: --config.data.name=jsonl --config.data.path=/data/gsm8k_{split}.jsonl.
Defaults follow DeepSeekMath/TRL practice for GRPO on math: G=8 samples per prompt at
temperature 1, eps=0.2, beta=0.04 with the k3 estimator, lr 1e-6 with a short warm-up, grad clip
1, the GSM8K answer verifier (final number vs the reference after ####).
The `smoke` variant is what the tests run on a tiny random Qwen2 checkpoint and a JSONL fixture.
"""

from jaxrl_llm.train.config import algo_config, base_config

INSTRUCTION = "Solve the problem step by step. Put the final answer after '####'.\n\n"


def get_config(arg=None):
    c = base_config()
    c.name = "grpo_gsm8k"
    c.model.checkpoint = ""  # required: a local HF checkpoint directory
    c.model.dtype = "bfloat16"
    c.data.update(
        name="gsm8k", splits=("train", "test"), max_prompt_len=320, chat=True, instruction=INSTRUCTION
    )
    c.sampling.update(max_new_tokens=512, num_samples=8, temperature=1.0)
    c.algo = algo_config("grpo", beta=0.04, clip_eps=0.2, kl_estimator="k3")
    c.rewards = dict(math_answer=1.0)
    c.optimizer.update(learning_rate=1e-6, warmup_steps=20, grad_clip=1.0, weight_decay=0.0)
    c.train.update(steps=500, batch_size=32, microbatches=8, checkpoint_every=50)
    c.eval.update(every=50, num_prompts=256, batch_size=64, pass_k=0, reward="math_answer")
    if arg == "smoke":
        c.model.dtype = "float32"
        c.data.update(name="jsonl", max_prompt_len=96, instruction="Answer: ")
        c.sampling.update(max_new_tokens=12, num_samples=2)
        c.train.update(steps=3, batch_size=4, microbatches=2, checkpoint_every=1)
        c.eval.update(every=0, num_prompts=4, batch_size=4, pass_k=2)
        c.progress = False
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return c
