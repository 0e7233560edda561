"""Iterative DPO in rounds on the arithmetic task: online_dpo_arithmetic's job (same warm-start,
sampling, ranking and budget) whose reference is refreshed from the policy every
`algo.round_steps` steps: 3 rounds of 34 steps in the 100-step run (':smoke': every step).

    python -m jaxrl_llm.main --config=configs/iterative_dpo_arithmetic.py --workdir=runs/iterative_dpo

Arguments as online_dpo_arithmetic's: 'rm' (a reward-model ranked pair source), 'smoke'.
"""

from jaxrl_llm.train.config import online_config


def get_config(arg=None):
    c = online_config("iterative_dpo", arg, beta=0.1, choose="max_min", round_steps=34)
    if "smoke" in (arg or ""):
        c.algo.round_steps = 1
    return c
