"""A Bradley–Terry reward model on arithmetic preference pairs (the correct answer vs a nearby
wrong one, `pipeline.preference_dataset`), started from the GRPO job's SFT warm-start trunk.

Reports held-out pair accuracy, calibration error (ECE) and score distributions. Its checkpoint
is a reward model: hand it to GRPO/PPO with
    --config.aux_models="{'rm': {'checkpoint': '<workdir>/checkpoints/main/<step>', 'head': 'reward'}}"
    --config.rewards="{'rm': 1.0}"
or export it with `jaxrl_llm.save_checkpoint(dir, config, params, head='reward')`
(`experiments/reward_model.py` does both).
"""

from jaxrl_llm.train.config import algo_config, base_config, preference_smoke


def get_config(arg=None):
    c = base_config()
    c.name = "reward_model_arithmetic"
    c.algo = algo_config("reward_model", margin=0.0, center_coef=0.01)
    c.train.update(steps=300, batch_size=64)
    c.optimizer.learning_rate = 1e-4
    c.sft.update(steps=3000, target_accuracy=0.3)  # the GRPO job's warm-start
    c.eval.update(every=100, num_prompts=512)
    if arg == "smoke":
        preference_smoke(c)
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return c
