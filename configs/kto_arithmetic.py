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

from jaxrl_llm.train.config import offline_pairs_config


def get_config(arg=None):
    c = offline_pairs_config("kto", arg, beta=0.1)
    # data.desirable_fraction (default 0.5) of the records give their correct answer: with equal
    # weights λ_D n_D / (λ_U n_U) = 1, inside TRL's advised [1, 4/3].
    return c
