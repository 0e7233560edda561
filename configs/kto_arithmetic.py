"""KTO on 3-digit addition: unpaired examples after the SFT warm-start. Each record gives one
completion, its correct answer (desirable) or a nearby wrong answer (undesirable), for
data.desirable_fraction of the records / the rest (`pipeline.unpaired_dataset`).

    python -m jaxrl_llm.main --config=configs/kto_arithmetic.py --workdir=runs/kto_arithmetic

The reference is the warm-started policy (frozen); its log-probs, of each completion and of each
row's mismatched KL completion (the previous row's), are computed once per batch. Reported:
held-out preference accuracy (implicit reward beta*log(pi/pi_ref) of the correct answer above
the wrong one), likelihood accuracy and greedy accuracy, before and after KTO; in training, kl
(KTO's reference point z0), the rewards of desirable / undesirable examples and reward_accuracy.
"""

from jaxrl_llm.train.config import algo_config, base_config, preference_smoke


def get_config(arg=None):
    c = base_config()
    c.name = "kto_arithmetic"
    c.algo = algo_config("kto", beta=0.1)
    # data.desirable_fraction (default 0.5) of the records give their correct answer: with equal
    # weights λ_D n_D / (λ_U n_U) = 1, inside TRL's advised [1, 4/3].
    c.train.update(steps=200, batch_size=64)
    c.optimizer.learning_rate = 1e-4
    c.sft.update(steps=3000, target_accuracy=0.3)  # the GRPO job's warm-start
    c.eval.every = 50
    if arg == "smoke":
        preference_smoke(c)
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return c
