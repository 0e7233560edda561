"""SuperHF on the arithmetic task, from the GRPO job's SFT warm-start: each step samples
num_samples answers per prompt, keeps the best by the configured reward and fine-tunes on it
with a full-vocabulary KL prior to the frozen warm-start.

    python -m jaxrl_llm.main --config=configs/superhf_arithmetic.py --workdir=runs/superhf
    python -m jaxrl_llm.main --config=configs/superhf_arithmetic.py:rm --workdir=runs/superhf_rm \\
        --config.aux_models.rm.checkpoint=runs/reward_model/checkpoints/main/300

Ranking: the exact-match verifier (default), or with ':rm' a reward model (an auxiliary model,
as in configs/online_dpo_arithmetic.py). ':smoke' (also ':rm,smoke') is the tests' version.
"""

from jaxrl_llm.train.config import algo_config, base_config, preference_smoke, reward_model_source


def get_config(arg=None):
    parts = set(filter(None, (arg or "").split(",")))
    if parts - {"rm", "smoke"}:
        raise ValueError(f"unknown config argument {arg!r}; use 'rm', 'smoke', 'rm,smoke' or nothing")
    c = base_config()
    c.name = "superhf_arithmetic"
    c.algo = algo_config("superhf", num_samples=8, top_k=1, kl_coef=0.35)
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
