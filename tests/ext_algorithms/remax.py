"""ReMax (Li et al. 2023, arXiv 2310.10505): REINFORCE with the greedy response's reward as the
baseline, one sample per prompt and one update per rollout:

    A_i = clip(R(y_i) − R(ȳ_i), −5, 5),  ȳ_i = greedy response,   L = −(1/N) Σ_{i,t} A_i log π(y_i,t)

(token mean over the N loss tokens of the batch).
"""

import jaxrl_llm as jrl


@jrl.register_algorithm("ext_remax")
def remax(clip: float = 5.0) -> jrl.Algorithm:
    def objective(outputs, batch, state):
        mask = jrl.loss_mask(batch)
        pg = -batch.advantages * outputs.logp
        return jrl.token_mean(pg, mask, batch), {"pg_loss": jrl.token_mean(pg, mask, batch)}

    return jrl.Algorithm(
        data="rollout",
        transform=jrl.remax_advantages(clip=clip),
        objective=objective,
        strategy=jrl.greedy_baseline(),
    )


def configure(config):
    config.algo = {"name": "ext_remax"}
    config.sft.steps = 0
    config.sampling.num_samples = 1  # one sample per prompt; the baseline is the greedy one
    config.train.batch_size = 16
    config.rewards = {"ext_finished": 1.0}
    return config
