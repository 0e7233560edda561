"""GRPO on code with unit-test rewards run in the sandbox (jaxrl_llm/rewards/sandbox.py).

    python -m jaxrl_llm.main --config=configs/grpo_code.py --workdir=runs/grpo_code \
        --config.model.checkpoint=/models/Qwen2.5-Coder-0.5B-Instruct
    python -m jaxrl_llm.main --config=configs/grpo_code.py:smoke --workdir=runs/smoke_code

Task: the offline synthetic code task (`data.name='code'`, jaxrl_llm/data/code.py: "Write a
function f(x) that returns x + 3." with three asserts). MBPP-style local data goes through the
jsonl source: --config.data.name=jsonl --config.data.path=/data/mbpp_{split}.jsonl with records
{question, answer} where answer is the test list. The training reward is the unit-test pass rate
(`code_tests`); held-out accuracy counts completions that pass every test (`code_tests_all`).
Completions are run in the sandbox: no network, a uid of their own, CPU/memory/process limits,
a fresh temporary directory, killed after 5 s (see the sandbox module for what this machine
allows; configure it with jaxrl_llm.rewards.sandbox.configure_default_sandbox).

The default variant expects an instruction-tuned checkpoint (chat template, code in a ```python
block). The `smoke` variant trains a tiny random model with a character tokenizer for a few
steps (its completions are noise and score ~0; it checks that the pipeline runs).
"""

from jaxrl_llm.data.code import CODE_ALPHABET
from jaxrl_llm.train.config import SMOKE_MODEL, algo_config, base_config

INSTRUCTION = "Write Python code for the task below. Reply with one ```python code block.\n\n"


def get_config(arg=None):
    c = base_config()
    c.name = "grpo_code"
    c.model.checkpoint = ""  # a local HF checkpoint directory (instruction-tuned)
    c.model.dtype = "bfloat16"
    c.data.update(name="code", max_prompt_len=128, chat=True, instruction=INSTRUCTION, check_records=0)
    c.sampling.update(max_new_tokens=256, num_samples=8, temperature=1.0)
    c.algo = algo_config("grpo", beta=0.0, clip_eps=0.2)
    c.rewards = dict(code_tests=1.0)
    c.optimizer.update(learning_rate=1e-6, warmup_steps=10, grad_clip=1.0)
    c.train.update(steps=200, batch_size=32, microbatches=4, checkpoint_every=50)
    c.eval.update(every=50, num_prompts=60, batch_size=60, pass_k=4, reward="code_tests_all")
    if arg == "smoke":
        c.model.update(SMOKE_MODEL, dtype="float32", max_position_embeddings=96)
        c.tokenizer.alphabet = CODE_ALPHABET
        c.data.update(chat=False, instruction="", max_prompt_len=56, check_records=1000)
        c.sampling.update(max_new_tokens=24, num_samples=4)
        c.train.update(steps=3, batch_size=4, microbatches=1, checkpoint_every=3)
        c.optimizer.update(learning_rate=1e-3, warmup_steps=0)
        c.eval.update(every=0, num_prompts=4, batch_size=4, pass_k=2)
        c.progress = False
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return c
