"""REINFORCE++ (Hu 2025, arXiv 2501.03262): no critic; the KL to the reference enters the
reward per token, returns-to-go are normalised over the whole batch, PPO-clip per token:

    r_t = 1[t = |y|]·R − β·(log π_old(y_t) − log π_ref(y_t)),   G_t = Σ_{s ≥ t} r_s
    A_t = (G_t − mean G) / std G  (over every loss token of the batch)
    L = token mean of max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε)),  ρ_t = π/π_old
"""

import jaxrl_llm as jrl


@jrl.register_algorithm("ext_reinforce_pp")
def reinforce_pp(kl_coef: float = 0.01, clip_eps: float = 0.2) -> jrl.Algorithm:
    return jrl.Algorithm(
        data="rollout",
        transform=jrl.chain(jrl.kl_penalty_in_reward(kl_coef), jrl.reinforce_pp_advantages()),
        objective=jrl.policy_surrogate(clip_eps=clip_eps, loss_agg="token_mean"),
        passes=(jrl.old_policy_pass(), jrl.reference_pass()),
    )


def configure(config):
    config.algo = {"name": "ext_reinforce_pp", "kl_coef": 0.01}
    config.sft.steps = 0
    config.rewards = {"ext_finished": 1.0}
    config.train.minibatches = 2  # the policy moves away from the reference and the old policy
    return config
