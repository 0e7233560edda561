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

from jaxrl_llm.train.config import algo_config, base_config, preference_smoke, reward_model_source


def get_config(arg=None):
    parts = set(filter(None, (arg or "").split(",")))
    if parts - {"rm", "smoke"}:
        raise ValueError(f"unknown config argument {arg!r}; use 'rm', 'smoke', 'rm,smoke' or nothing")
    c = base_config()
    c.name = "online_dpo_arithmetic"
    c.algo = algo_config("online_dpo", beta=0.1, num_samples=8, choose="max_min")
    c.sampling.num_samples = 8
    c.train.update(steps=100, batch_size=32)
    c.optimizer.learning_rate = 1e-4
    c.sft.update(steps=3000, target_accuracy=0.3)  # the GRPO job's warm-start
    c.eval.every = 25
    if "rm" in parts:
        reward_model_source(c)
    if "smoke" in parts:
        preference_smoke(c)
        c.algo.num_samples = c.sampling.num_samples = 4
    return c
