"""Top-20% high-entropy tokens ("Beyond the 80/20 Rule", Wang et al. 2025, arXiv 2506.01939):
GRPO with clip-higher and token-mean loss (the paper's DAPO setup, no KL) where only the
"forking" tokens carry loss: those whose pre-update entropy H_t is in the top ρ = 20% of the batch,
    loss_mask'_t = loss_mask_t · 1[H_t ≥ τ],   τ = the (1 − ρ) quantile of H over every loss token
τ is batch-wide (computed once per batch in the transform, not per micro-batch).
"""

import jax.numpy as jnp

import jaxrl_llm as jrl


def top_entropy_tokens(rho: float = 0.2) -> jrl.RolloutTransform:
    def update(r, state):
        mask = jrl.loss_mask(r) > 0
        tau = jnp.nanquantile(jnp.where(mask, r.entropy_old, jnp.nan), 1.0 - rho)
        keep = mask & (r.entropy_old >= tau)
        kept = jnp.sum(keep) / jnp.maximum(jnp.sum(mask), 1)
        r = r._replace(loss_mask=keep.astype(jnp.float32))
        return jrl.add_metrics(r, kept_token_fraction=kept), state

    return jrl.RolloutTransform(init=lambda: (), update=update)


@jrl.register_algorithm("ext_entropy_top20")
def entropy_top20(rho: float = 0.2) -> jrl.Algorithm:
    return jrl.Algorithm(
        data="rollout",
        transform=jrl.chain(jrl.group_advantages(), top_entropy_tokens(rho)),
        objective=jrl.policy_surrogate(clip_eps=0.2, clip_eps_high=0.28, loss_agg="token_mean"),
        passes=(jrl.old_policy_pass(),),  # writes entropy_old
    )


def configure(config):
    config.algo = {"name": "ext_entropy_top20"}
    config.sft.steps = 0
    config.rewards = {"ext_finished": 1.0}
    return config
