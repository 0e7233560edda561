"""DPO on 3-digit addition: pairs (correct answer, a nearby wrong answer) after the SFT warm-start.

    python -m jaxrl_llm.main --config=configs/dpo_arithmetic.py --workdir=runs/dpo_arithmetic

The reference is the warm-started policy (frozen); its log-probs are computed once per batch.
Reported: held-out preference accuracy (implicit reward beta*log(pi/pi_ref) of the correct
answer above the wrong one), likelihood accuracy (pi prefers the correct answer) and greedy
accuracy, before and after DPO.
"""

from jaxrl_llm.train.config import offline_pairs_config


def get_config(arg=None):
    c = offline_pairs_config("dpo", arg, beta=0.1)
    return c
