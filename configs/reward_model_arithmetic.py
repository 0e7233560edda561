"""A Bradley–Terry reward model on arithmetic preference pairs (the correct answer vs a nearby
wrong one, `pipeline.preference_dataset`), started from the GRPO job's SFT warm-start trunk.

Reports held-out pair accuracy, calibration error (ECE) and score distributions. Its checkpoint
is a reward model: hand it to GRPO/PPO with
    --config.aux_models="{'rm': {'checkpoint': '<workdir>/checkpoints/main/<step>', 'head': 'reward'}}"
    --config.rewards="{'rm': 1.0}"
or export it with `jaxrl_llm.save_checkpoint(dir, config, params, head='reward')`
(`experiments/reward_model.py` does both).
"""

from jaxrl_llm.train.config import offline_pairs_config


def get_config(arg=None):
    c = offline_pairs_config("reward_model", arg, 300, 100, 512, margin=0.0, center_coef=0.01)
    return c
