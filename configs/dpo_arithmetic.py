"""DPO on 3-digit addition: pairs (correct answer, a nearby wrong answer) after the SFT warm-start.

    python -m jaxrl_llm.main --config=configs/dpo_arithmetic.py --workdir=runs/dpo_arithmetic

The reference is the warm-started policy (frozen); its log-probs are computed once per batch.
Reported: held-out preference accuracy (implicit reward beta*log(pi/pi_ref) of the correct
answer above the wrong one), likelihood accuracy (pi prefers the correct answer) and greedy
accuracy, before and after DPO.
"""

from jaxrl_llm.train.config import algo_config, base_config, preference_smoke


def get_config(arg=None):
    c = base_config()
    c.name = "dpo_arithmetic"
    c.algo = algo_config("dpo", beta=0.1)
    c.train.update(steps=200, batch_size=64)
    c.optimizer.learning_rate = 1e-4
    c.sft.update(steps=3000, target_accuracy=0.3)  # the GRPO job's warm-start
    c.eval.every = 50
    if arg == "smoke":
        preference_smoke(c)
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return c
