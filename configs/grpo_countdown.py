"""Countdown: SFT warm-start of a tiny model on reference solutions, then GRPO with the verifier.

    python -m jaxrl_llm.main --config=configs/grpo_countdown.py --workdir=runs/grpo_countdown
    python -m jaxrl_llm.main --config=configs/grpo_countdown.py:n4 --workdir=runs/grpo_countdown_n4
    python -m jaxrl_llm.main --config=configs/grpo_countdown.py:smoke --workdir=runs/smoke_countdown

Task: `jaxrl_countdown/n3` (jaxrl_llm/data/countdown.py): "3 7 25>46:" asks for an expression
using each of 3 numbers in [1, 25] exactly once with + - * / and parentheses whose exact value is
the target (in [1, 100]); `:n4` selects the harder `n4` task (4 numbers, targets up to 200).
Most questions have many solutions, so both the training reward and held-out accuracy use the
verifier (`countdown` reward, jaxrl_llm/rewards/countdown.py: exact rational arithmetic, every
number used once, EOS required), never a match against the one reference solution the dataset
stores. The same 1.19M-parameter model as configs/grpo_arithmetic.py (d=192, 2 layers, 8 heads)
is trained from scratch with SFT on the reference solutions (Adam 1e-3, batch 128) until greedy
accuracy on the validation split reaches `sft.target_accuracy` (checked every 10 steps), then
GRPO runs 64 prompts x 8 samples per step at temperature 1, eps 0.2, no KL (beta 0), Adam 3e-4.
`countdown_format` (the expression uses the right numbers, any value) is registered as an
optional shaping term: `--config.rewards.countdown_format=0.1`.
"""

from jaxrl_llm.data.countdown import COUNTDOWN_ALPHABET
from jaxrl_llm.train.config import SMOKE_MODEL, algo_config, base_config


def get_config(arg=None):
    c = base_config()
    c.name = "grpo_countdown"
    c.tokenizer.alphabet = COUNTDOWN_ALPHABET
    # Questions of n3 have at most 13 characters (+ bos); solutions at most 10 (+ EOS).
    c.data.update(name="countdown", builder_config="n3", max_prompt_len=16)
    c.sampling.update(max_new_tokens=12, num_samples=8, temperature=1.0)
    c.algo = algo_config("grpo", beta=0.0, clip_eps=0.2)
    c.rewards = dict(countdown=1.0)
    c.train.update(steps=300, batch_size=64)
    c.optimizer.learning_rate = 3e-4
    c.sft.update(steps=3000, target_accuracy=0.3)  # batch 128, Adam 1e-3, checked every 10 steps
    c.eval.update(every=50, reward="countdown")
    if arg == "n4":
        c.name = "grpo_countdown_n4"
        # n4: questions of at most 16 characters, solutions of at most 15.
        c.data.update(builder_config="n4", max_prompt_len=20)
        c.sampling.max_new_tokens = 16
    elif arg == "smoke":
        c.model.update(SMOKE_MODEL)
        c.train.update(steps=6, batch_size=8, checkpoint_every=2)
        c.sampling.num_samples = 4
        c.sft.update(steps=4, eval_every=2, batch_size=16)
        c.eval.update(every=3, num_prompts=16, batch_size=16, pass_k=4)
        c.progress = False
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke', 'n4' or nothing")
    return c
