"""PPO-C on 3-digit addition, after the GRPO job's SFT warm-start: PPO (critic, GAE, a KL
penalty in the reward) whose rewards are calibrated by the confidence each sample states.

    python -m jaxrl_llm.main --config=configs/ppo_c_arithmetic.py --workdir=runs/ppo_c
    python -m jaxrl_llm.main --config=configs/ppo_c_arithmetic.py:rm --workdir=runs/ppo_c_rm \\
        --config.aux_models.rm.checkpoint=runs/ppo_m/checkpoints/main/300

A confidence is " #c" at the end of an answer ("579 #8": 8 out of 10, in the task's alphabet);
the answer is scored without it, and the reward moved by the confidence around a running
average of the rewards (jaxrl_llm/algorithms/calibration.py). The prompts do not ask for one:
a sample stating none counts as c = 5, which changes nothing, so until the policy states one
this trains as plain PPO. Reward: the exact-match verifier (default; with its 0/1 reward the
paper's 'threshold' adjustment never changes a wrong answer's 0, `--config.algo.adjustment=
difference` does), or with ':rm' a reward model (an auxiliary model, as in
configs/online_dpo_arithmetic.py; the paper starts r̄ at its mean score:
`--config.algo.reward_avg_init`). ':smoke' (also ':rm,smoke') is the tests' tiny version.
"""

from jaxrl_llm.train.config import SMOKE_MODEL, algo_config, base_config, reward_model_source


def get_config(arg=None):
    parts = set(filter(None, (arg or "").split(",")))
    if parts - {"rm", "smoke"}:
        raise ValueError(f"unknown config argument {arg!r}; use 'rm', 'smoke', 'rm,smoke' or nothing")
    c = base_config()
    c.name = "ppo_c_arithmetic"
    c.algo = algo_config("ppo_c", template=" #{}", alpha=0.1, weight=0.5, kl_coef=0.01)
    c.sampling.max_new_tokens = 8  # a 4-digit answer + " #9" + EOS
    c.train.update(steps=200, batch_size=64, epochs=2, minibatches=2)
    c.sampling.num_samples = 4
    c.optimizer.learning_rate = 2e-4
    c.critic.optimizer.learning_rate = 1e-3
    c.sft.update(steps=3000, target_accuracy=0.3)  # the GRPO job's warm-start
    c.eval.every = 50
    if "rm" in parts:
        reward_model_source(c)
    if "smoke" in parts:
        c.model.update(SMOKE_MODEL)
        c.train.update(steps=4, batch_size=8, checkpoint_every=2)
        c.sampling.num_samples = 2
        c.sft.update(steps=4, eval_every=2, batch_size=16)
        c.eval.update(every=2, num_prompts=16, batch_size=16, pass_k=2)
        c.progress = False
    return c
