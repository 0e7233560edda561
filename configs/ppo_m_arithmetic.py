"""PPO-M's calibrated reward model on arithmetic preference pairs (the correct answer vs a nearby
wrong one, `pipeline.preference_dataset`), started from the GRPO job's SFT warm-start trunk.

Each pair becomes two pairs with a verbalised confidence appended in the task's alphabet,
" #c" for "confidence c out of 10": ("579 #9" ≻ "579 #1") and ("578 #1" ≻ "578 #9"), so the
model learns to reward confidence only on right answers (jaxrl_llm/algorithms/calibration.py).

    python -m jaxrl_llm.main --config=configs/ppo_m_arithmetic.py --workdir=runs/ppo_m

From a trained reward model instead (the paper's setting): export a `reward_model` run with
`jaxrl_llm.save_checkpoint(dir, config, params, head='reward')` (experiments/reward_model.py
does) and pass `--config.model.checkpoint=<dir> --config.sft.steps=0`. The result is a reward
model for PPO like any other (`--config.aux_models.rm.checkpoint=<workdir>/checkpoints/main/<step>`,
head 'reward'). ':smoke' is the tests' tiny version.
"""

from jaxrl_llm.train.config import offline_pairs_config


def get_config(arg=None):
    c = offline_pairs_config("ppo_m", arg, 300, 100, 512, template=" #{}", high=9.0, low=1.0)
    c.sampling.max_new_tokens = 8  # a 4-digit wrong answer + " #9" + EOS
    return c
