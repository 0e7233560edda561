"""MAH-DPO on the arithmetic pairs after the SFT warm-start, DPO's budget: a policy with two LM
heads on one trunk (`model.lm_heads=2`, both starting as the warm-start's head). Even records
train head 0 on correctness (the right answer over a nearby wrong one), odd records head 1 on
format (the right answer over the same answer followed by " ="). Sampling, evaluation and the
export use the heads' mixture by `model.head_weights` (equal by default; e.g.
`--config.model.head_weights="(0.8, 0.2)"`).

    python -m jaxrl_llm.main --config=configs/mah_dpo_arithmetic.py --workdir=runs/mah_dpo
"""

from jaxrl_llm.train.config import offline_pairs_config


def get_config(arg=None):
    c = offline_pairs_config("mah_dpo", arg, num_objectives=2, beta=0.1)
    c.model.lm_heads = 2
    c.sampling.max_new_tokens = 7  # a 4-digit answer + " =" + EOS
    return c
