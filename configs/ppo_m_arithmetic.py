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

from jaxrl_llm.train.config import algo_config, base_config, preference_smoke


def get_config(arg=None):
    c = base_config()
    c.name = "ppo_m_arithmetic"
    c.algo = algo_config("ppo_m", template=" #{}", high=9.0, low=1.0)
    c.sampling.max_new_tokens = 8  # a 4-digit wrong answer + " #9" + EOS
    c.train.update(steps=300, batch_size=64)
    c.optimizer.learning_rate = 1e-4
    c.sft.update(steps=3000, target_accuracy=0.3)  # the GRPO job's warm-start
    c.eval.update(every=100, num_prompts=512)
    if arg == "smoke":
        preference_smoke(c)
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return c
