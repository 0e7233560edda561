"""SuperHF on the arithmetic task, from the GRPO job's SFT warm-start: each step samples
num_samples answers per prompt, keeps the best by the configured reward and fine-tunes on it
with a full-vocabulary KL prior to the frozen warm-start.

    python -m jaxrl_llm.main --config=configs/superhf_arithmetic.py --workdir=runs/superhf
    python -m jaxrl_llm.main --config=configs/superhf_arithmetic.py:rm --workdir=runs/superhf_rm \\
        --config.aux_models.rm.checkpoint=runs/reward_model/checkpoints/main/300

Ranking: the exact-match verifier (default), or with ':rm' a reward model (an auxiliary model,
as in configs/online_dpo_arithmetic.py). ':smoke' (also ':rm,smoke') is the tests' version.
"""

from jaxrl_llm.train.config import online_config


def get_config(arg=None):
    return online_config("superhf", arg, top_k=1, kl_coef=0.35)
