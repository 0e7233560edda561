"""A multi-label reward model on 3-digit addition: K = 3 aspect scores in [0, 1] (correctness,
brevity, format) of a synthetic completion of each question (the final answer or a near miss,
bare or with a suffix: jaxrl_llm/data/aspects.py), regressed with the mean per-aspect squared
error (`multi_label_rm`), from the GRPO job's SFT warm-start trunk.

    python -m jaxrl_llm.main --config=configs/multi_label_rm_arithmetic.py --workdir=runs/multi_label_rm

Reports the held-out MSE and correlation of each aspect (label_mse/<k>, label_corr/<k>). Its
checkpoint is a 3-output reward model: MO-GRPO (configs/mo_grpo_arithmetic.py) is rewarded by it
with `--config.aux_models.rm.checkpoint=runs/multi_label_rm/checkpoints/main/<step>`, and
`jaxrl_llm.save_checkpoint(dir, config, params, head='reward')` exports it as an HF
`*ForSequenceClassification` with num_labels=3. Scored records of your own instead:
`--config.data.name=jsonl --config.data.path=<files with {split}>` holding {"prompt",
"completion", "labels": [K numbers]}, with --config.model.num_labels=K,
--config.data.label_range="(low, high)" (their scale, mapped to [0, 1]) and --config.sft.steps=0.
':smoke' is the tests' tiny version.
"""

from jaxrl_llm.data.aspects import ASPECTS
from jaxrl_llm.train.config import offline_pairs_config


def get_config(arg=None):
    c = offline_pairs_config("multi_label_rm", arg, 300, 100, 512)
    c.model.num_labels = len(ASPECTS)
    c.sampling.max_new_tokens = 7  # a 4-digit answer + a 2-character suffix (" 0") + EOS
    return c
