"""BRAIn on the arithmetic task, from the GRPO job's SFT warm-start: each step samples 8 answers
per prompt from the current policy, weights them by the self-normalised posterior
π_ref·exp(r/β) importance weights minus their baseline (β 1), and raises the log-likelihood of
the weighted samples.

    python -m jaxrl_llm.main --config=configs/brain_arithmetic.py --workdir=runs/brain

Reward: the exact-match verifier, or with ':rm' a reward model (as in
configs/online_dpo_arithmetic.py). ':smoke' (also ':rm,smoke') is the tests' tiny version.
"""

from jaxrl_llm.train.config import online_config


def get_config(arg=None):
    return online_config("brain", arg, beta=1.0)
