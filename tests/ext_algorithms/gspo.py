"""GSPO (Zheng et al. 2025, arXiv 2507.18071): a sequence-level importance ratio

    s_i = exp( (1/|y_i|) Σ_t [log π(y_i,t) − log π_old(y_i,t)] )
    L = −(1/B) Σ_i min(s_i A_i, clip(s_i, 1 − ε_lo, 1 + ε_hi) A_i),  A_i = GRPO group advantage

with ε_lo = 3e-4, ε_hi = 4e-4 (verl's GSPO defaults); no KL term.
"""

import jax
import jax.numpy as jnp

import jaxrl_llm as jrl


@jrl.register_algorithm("ext_gspo")
def gspo(clip_eps: float = 3e-4, clip_eps_high: float = 4e-4) -> jrl.Algorithm:
    def objective(outputs, batch, state):
        mask = jrl.loss_mask(batch)
        length = jnp.maximum(jnp.sum(mask, axis=1), 1.0)
        log_ratio = outputs.logp - jrl.old_logp(outputs, batch)
        seq_log_ratio = jnp.sum(jnp.where(mask > 0, log_ratio, 0.0), axis=1) / length
        adv = jnp.sum(batch.advantages * mask, axis=1) / length  # A_i (constant over the tokens)
        pg, clipped = jrl.ppo_clip_loss(seq_log_ratio, 0.0, adv, clip_eps, clip_eps_high)
        seq_kl = jax.lax.stop_gradient(-seq_log_ratio)  # k1 estimate of KL(π_old‖π) per sequence
        metrics = {"pg_loss": pg, "clip_fraction": clipped, "seq_approx_kl": seq_kl}
        return jrl.sequence_mean(pg, batch), {k: jrl.sequence_mean(v, batch) for k, v in metrics.items()}

    return jrl.Algorithm("rollout", jrl.group_advantages(), objective)


def configure(config):
    config.algo = {"name": "ext_gspo"}
    config.sft.steps = 0
    config.rewards = {"ext_finished": 1.0}
    config.train.minibatches = 2  # two updates per rollout: the ratio (and its clip) move
    return config
