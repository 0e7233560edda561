"""DAPO (Yu et al. 2025, arXiv 2503.14476): dynamic sampling (groups whose rewards are all equal
are dropped and more prompts sampled until the batch is full), clip-higher ε_lo = 0.2,
ε_hi = 0.28, token-mean loss, no KL, and overlong reward shaping added to R:

    R_len(y) = min(−(|y| − L_exp) / L_cache, 0) · factor,   L_exp = L_max − L_cache

Groups are filtered on the strategy's rewards, before shaping (verl's default filter on `acc`).
"""

import jax.numpy as jnp

import jaxrl_llm as jrl


def overlong_shaping(max_len: int, cache_len: int, factor: float = 1.0) -> jrl.RolloutTransform:
    def update(r, state):
        length = jnp.sum(r.response_mask, axis=1).astype(jnp.float32)
        penalty = jnp.minimum(-(length - (max_len - cache_len)) / cache_len, 0.0) * factor
        r = r._replace(rewards=r.rewards + penalty)
        return jrl.add_metrics(r, overlong_penalty=jnp.mean(penalty)), state

    return jrl.RolloutTransform(init=lambda: (), update=update)


@jrl.register_algorithm("ext_dapo")
def dapo(max_len: int = 6, cache_len: int = 2, factor: float = 1.0, max_rounds: int = 3) -> jrl.Algorithm:
    return jrl.Algorithm(
        data="rollout",
        transform=jrl.chain(overlong_shaping(max_len, cache_len, factor), jrl.group_advantages()),
        objective=jrl.policy_surrogate(clip_eps=0.2, clip_eps_high=0.28, loss_agg="token_mean"),
        strategy=jrl.dynamic_sampling(max_rounds=max_rounds),
    )


def configure(config):
    config.algo = {"name": "ext_dapo", "max_len": config.sampling.max_new_tokens, "max_rounds": 3}
    config.sft.steps = 0
    config.rewards = {"ext_finished": 1.0}  # some groups vary, some do not (a random policy)
    return config
