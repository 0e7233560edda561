"""CGPO (CRPG) on the arithmetic task, from the GRPO job's SFT warm-start: each step samples
k = 4 answers per prompt, gates each one's calibrated reward σ(R − R(reference answer)) by the
judges (finished with EOS, the completion is a number) and a KL threshold to the frozen
warm-start, and follows the policy gradient of the gated rewards minus their batch mean.

    python -m jaxrl_llm.main --config=configs/cgpo_arithmetic.py --workdir=runs/cgpo
    python -m jaxrl_llm.main --config=configs/cgpo_arithmetic.py:rm --workdir=runs/cgpo_rm \\
        --config.aux_models.rm.checkpoint=runs/reward_model/checkpoints/main/300

Reward: the exact-match verifier (default; the reference answer scores 1), or with ':rm' a
reward model (an auxiliary model, as in configs/online_dpo_arithmetic.py), which also scores
the reference answer; the verifier is then logged with weight 0. ':smoke' (also ':rm,smoke')
is the tests' version.
"""

from jaxrl_llm.train.config import online_config


def get_config(arg=None):
    # k = 4 samples per prompt, TRL's default
    return online_config("cgpo", arg, num_samples=4, judges="finished,is_number", kl_threshold=10.0)
