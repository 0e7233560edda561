"""PPO with a critic on 3-digit addition, after the same SFT warm-start as the GRPO job.

    python -m jaxrl_llm.main --config=configs/ppo_arithmetic.py --workdir=runs/ppo_arithmetic

The critic starts from the warm-started policy's trunk with a zero value head; rewards are the
exact-match outcome on the last token minus a small k1 KL-to-reference penalty on every token;
GAE(gamma=1, lam=0.95), whitened advantages, two epochs of two mini-batches per rollout.
"""

from jaxrl_llm.train.config import SMOKE_MODEL, algo_config, base_config


def get_config(arg=None):
    c = base_config()
    c.name = "ppo_arithmetic"
    c.algo = algo_config("ppo", clip_eps=0.2, value_clip=0.2, kl_coef=0.01, gamma=1.0, lam=0.95)
    c.train.update(steps=200, batch_size=64, epochs=2, minibatches=2)
    c.sampling.num_samples = 4
    c.optimizer.learning_rate = 2e-4
    c.critic.optimizer.learning_rate = 1e-3
    c.sft.update(steps=3000, target_accuracy=0.3)  # the GRPO job's warm-start
    c.eval.every = 50
    if arg == "smoke":
        c.model.update(SMOKE_MODEL)
        c.train.update(steps=4, batch_size=8, checkpoint_every=2)
        c.sampling.num_samples = 2
        c.sft.update(steps=4, eval_every=2, batch_size=16)
        c.eval.update(every=2, num_prompts=16, batch_size=16, pass_k=2)
        c.progress = False
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return c
