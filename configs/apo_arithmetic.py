"""APO (accelerated preference optimisation) on the arithmetic task: iterative_dpo_arithmetic's
job with the parameters extrapolated at each round boundary, θ ← θ̂ + α (θ̂ − θ̂_previous), α 0.3.

    python -m jaxrl_llm.main --config=configs/apo_arithmetic.py --workdir=runs/apo

Arguments as online_dpo_arithmetic's: 'rm' (a reward-model ranked pair source), 'smoke'.
"""

from jaxrl_llm.train.config import online_config


def get_config(arg=None):
    c = online_config("apo", arg, beta=0.1, choose="max_min", alpha=0.3, round_steps=34)
    if "smoke" in (arg or ""):
        c.algo.round_steps = 1
    return c
