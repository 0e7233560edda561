"""Online DPO on the arithmetic task, from the GRPO job's SFT warm-start: each step samples
num_samples answers per prompt from the current policy, ranks them by the configured reward
and trains DPO on (best, worst) against the frozen warm-start.

    python -m jaxrl_llm.main --config=configs/online_dpo_arithmetic.py --workdir=runs/online_dpo
    python -m jaxrl_llm.main --config=configs/online_dpo_arithmetic.py:rm --workdir=runs/online_dpo_rm \\
        --config.aux_models.rm.checkpoint=runs/reward_model/checkpoints/main/300

Pair source: the exact-match verifier (default), or with ':rm' a reward model (an auxiliary
model: an earlier `reward_model` run's checkpoint step directory, or an HF
`*ForSequenceClassification` directory, e.g. the one `experiments/reward_model.py` exports);
the verifier is then logged with weight 0, not used. ':smoke' (also ':rm,smoke') is the tests'
tiny version.
"""

from jaxrl_llm.train.config import online_config


def get_config(arg=None):
    return online_config("online_dpo", arg, beta=0.1, choose="max_min")
