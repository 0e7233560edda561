"""MO-GRPO (Li et al., arXiv 2503.21819) on 3-digit addition: GRPO rewarded by a multi-label
reward model, R = Σ_k w_k r_k over its K aspect scores, from the GRPO job's SFT warm-start.

    python -m jaxrl_llm.main --config=configs/multi_label_rm_arithmetic.py --workdir=runs/multi_label_rm
    python -m jaxrl_llm.main --config=configs/mo_grpo_arithmetic.py --workdir=runs/mo_grpo \\
        --config.aux_models.rm.checkpoint=runs/multi_label_rm/checkpoints/main/300

The reward model is the auxiliary model 'rm' (`reward_model_source`): a `multi_label_rm` run's
checkpoint step directory, or an HF `*ForSequenceClassification` directory with num_labels = K.
The algorithm is GRPO itself; the multi-objective part is the reward source: weights
aux_models.rm.label_weights, equal (1/K each) by default [assumed: the paper's weights are not
confirmed], e.g. --config.aux_models.rm.label_weights="(0.6, 0.2, 0.2)". Each aspect is logged
as reward/rm/<k>, the exact-match verifier at weight 0 as reward/exact_match (the gold reward).
':smoke' is the tests' tiny version (the checkpoint still to be set).
"""

from ml_collections import config_dict

from jaxrl_llm.train.config import SMOKE_MODEL, algo_config, base_config, reward_model_source


def get_config(arg=None):
    c = base_config()
    c.name = "mo_grpo_arithmetic"
    c.algo = algo_config("grpo", beta=0.0, clip_eps=0.2)
    c.train.update(steps=350, batch_size=64)
    c.sampling.num_samples = 8
    c.optimizer.learning_rate = 3e-4
    c.sft.update(steps=3000, target_accuracy=0.3)  # the GRPO job's warm-start
    c.eval.every = 50
    reward_model_source(c)
    c.aux_models.rm.label_weights = config_dict.placeholder(tuple)  # None: equal weights
    if arg == "smoke":
        c.model.update(SMOKE_MODEL)
        c.train.update(steps=4, batch_size=8, checkpoint_every=2)
        c.sampling.num_samples = 4
        c.sft.update(steps=4, eval_every=2, batch_size=16)
        c.eval.update(every=2, num_prompts=16, batch_size=16, pass_k=4)
        c.progress = False
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return c
