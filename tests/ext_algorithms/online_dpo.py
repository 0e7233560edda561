"""Online DPO (Guo et al. 2024, arXiv 2402.04792): two on-policy samples per prompt, the one with
the higher reward is y_w, the other y_l; the DPO loss against the frozen reference, S = Σ_t log π:
    L = −(1/B) Σ_b w_b log σ(β [(S_θ(y_w) − S_ref(y_w)) − (S_θ(y_l) − S_ref(y_l))])
Ties (equal rewards): the first sample is y_w and w_b = 0 (no gradient); otherwise w_b = 1."""

import jax.numpy as jnp

import jaxrl_llm as jrl


def to_pairs(r, state):  # a RolloutTransform's update: rows 2b, 2b + 1 (prompt b's samples) -> pair b
    rewards = r.rewards.reshape(-1, 2)
    c = 2 * jnp.arange(rewards.shape[0]) + jnp.argmax(rewards, axis=1)  # chosen rows (ties: the first)
    j, w = c ^ 1, (rewards[:, 0] != rewards[:, 1]).astype(jnp.float32)  # rejected rows, pair weights
    ids, mask, ref = r.response_ids, r.response_mask, r.logp_ref
    batch = jrl.PreferenceBatch(r.prompt_ids[::2], r.prompt_mask[::2], ids[c], mask[c], ids[j], mask[j])
    batch = batch._replace(ref_chosen_logps=ref[c], ref_rejected_logps=ref[j], extras={"weight": w})
    return jrl.add_metrics(batch, tie_fraction=1.0 - jnp.mean(w)), state


@jrl.register_algorithm("ext_online_dpo")
def online_dpo(beta: float = 0.1) -> jrl.Algorithm:
    def objective(outputs, batch, state):  # outputs.logp: [2B, T], chosen rows then rejected rows
        b, mask = batch.chosen_ids.shape[0], jrl.loss_mask(batch)
        policy = jrl.sequence_logps(outputs.logp, mask)
        ref = jrl.sequence_logps(jnp.concatenate([batch.ref_chosen_logps, batch.ref_rejected_logps]), mask)
        losses, metrics = jrl.dpo_loss(policy[:b], policy[b:], ref[:b], ref[b:], beta)
        loss = jrl.sequence_mean(batch.extras["weight"] * losses, batch)
        return loss, {k: jrl.sequence_mean(v, batch) for k, v in metrics.items()}

    return jrl.Algorithm(
        "rollout", jrl.RolloutTransform(lambda: (), to_pairs), objective, passes=(jrl.reference_pass(),)
    )


def configure(config):
    config.algo, config.rewards = {"name": "ext_online_dpo"}, {"ext_finished": 1.0}
    config.sft.steps, config.sampling.num_samples = 0, 2  # two samples: one pair per prompt
    return config
