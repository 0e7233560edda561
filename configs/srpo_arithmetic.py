"""SRPO on the arithmetic pairs (correct answer, a nearby wrong one) after the SFT warm-start,
DPO's budget: the policy learns to answer and to revise a draft answer, each pair giving the
rows x, x + y_l (revise the wrong draft) and x + y_w (keep the right one).

    python -m jaxrl_llm.main --config=configs/srpo_arithmetic.py --workdir=runs/srpo_arithmetic

The revision prompt over the task's alphabet is "<question><draft>\\n<question>", e.g.
"12+34=47\\n12+34=", so the revised answer follows the repeated question.
"""

from jaxrl_llm.train.config import offline_pairs_config


def get_config(arg=None):
    c = offline_pairs_config("srpo", arg, beta=0.1, alpha=0.8, template="{prompt}{draft}\n{prompt}")
    c.data.max_prompt_len = 32  # the question twice and a draft answer
    return c
