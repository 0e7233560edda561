"""Teacher-forced forward passes over (prompt, response) pairs: per-token log-probs, entropy and
critic values at the response positions, and reward-head scores per sequence, for the trainer's
passes and losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.losses.policy import full_kl, logprobs_and_entropy
from jaxrl_llm.models.config import TransformerConfig
from jaxrl_llm.models.transformer import CausalLM, RewardModel, ValueModel, positions_from_mask
from jaxrl_llm.types import ModelOutputs, PreferenceBatch


def _concat(prompt_ids, prompt_mask, response_ids, response_mask):
    tokens = jnp.concatenate([prompt_ids, response_ids], axis=1)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1).astype(jnp.int32)
    return tokens, mask


def policy_outputs(
    config: TransformerConfig,
    params,
    prompt_ids,
    prompt_mask,
    response_ids,
    response_mask,
    temperature: float,
    dropout_rng=None,
    group_size: int = 1,
    kl_params=None,
    kl_direction: str = "forward",
    heads=None,
) -> ModelOutputs:
    """log pi(y_t | x, y_<t) and the entropy of pi(. | x, y_<t) at every response position.

    prompt [B, P] left-padded, response [B, T] right-padded -> ModelOutputs(logp [B, T],
    entropy [B, T]), both 0 where response_mask is 0. Only the T response positions go through
    the LM head (never [B, P + T, V]). `temperature` divides the logits as the sampler did.
    `dropout_rng` turns on LoRA adapter dropout (training updates only).

    group_size: G > 1 when rows b * G .. b * G + G - 1 share one prompt (the layout of the
    trainer's rollouts; only row b * G's prompt is read). The prompt part of the trunk then runs
    once per group and the G responses attend to its keys/values (`Transformer.grouped`): the
    same log-probs and gradients up to float rounding, with (G - 1) / G of the prompt tokens'
    compute removed. The response's last token feeds no prediction and is not run at all.

    kl_params: another model of the same shape (the frozen reference), run at the same
    positions without gradient: `kl` [B, T] is then the exact KL between the full next-token
    distributions (`full_kl`), 'forward' KL(π_other ‖ π) or 'reverse' KL(π ‖ π_other).

    heads: [B] int, each row's LM head (config.lm_heads > 1, MAH-DPO), or None (the mixture).
    """
    p, t = prompt_ids.shape[1], response_ids.shape[1]
    model = CausalLM(config)
    if group_size > 1:
        n = prompt_ids.shape[0]
        if n % group_size:
            raise ValueError(f"{n} rows are not groups of group_size={group_size}")
        prompts = prompt_ids.reshape(n // group_size, group_size, p)[:, 0]
        prompts_mask = prompt_mask.reshape(n // group_size, group_size, p)[:, 0]

        def grouped(module, prompts, prompts_mask, response_ids, response_mask):
            if t == 1:  # only the prompt's last position predicts
                prompt_hidden, _ = module.trunk(prompts, positions_from_mask(prompts_mask), prompts_mask)
                hidden = jnp.repeat(prompt_hidden[:, -1:], group_size, axis=0)
            else:
                prompt_hidden, hidden = module.trunk.grouped(
                    prompts, prompts_mask, response_ids[:, :-1], response_mask[:, :-1]
                )
                last = jnp.repeat(prompt_hidden[:, -1:], group_size, axis=0)  # predicts y_0
                hidden = jnp.concatenate([last, hidden], axis=1)
            return module.logits(hidden, heads)

        def logits_of(params, rng):
            args = (prompts, prompts_mask, response_ids, response_mask)
            return model.apply({"params": params}, *args, method=grouped, rngs=_rngs(rng))
    else:
        tokens, mask = _concat(prompt_ids, prompt_mask, response_ids, response_mask)

        def forward(module, tokens, mask):
            hidden, _ = module.trunk(tokens, positions_from_mask(mask), mask)
            return module.logits(hidden[:, p - 1 : p + t - 1], heads)

        def logits_of(params, rng):
            return model.apply({"params": params}, tokens, mask, method=forward, rngs=_rngs(rng))

    logits = logits_of(params, dropout_rng)
    tau = temperature if temperature > 0 else 1.0
    logp, entropy = logprobs_and_entropy(logits, response_ids, tau)
    m = response_mask.astype(jnp.float32)
    kl = None
    if kl_params is not None:
        other = jax.lax.stop_gradient(logits_of(kl_params, None))
        kl = (full_kl(other, logits, tau) if kl_direction == "forward" else full_kl(logits, other, tau)) * m
    return ModelOutputs(logp=logp * m, entropy=entropy * m, kl=kl)


def critic_values(
    config: TransformerConfig, params, prompt_ids, prompt_mask, response_ids, response_mask, dropout_rng=None
):
    """V(x, y_<t) for every response position t: [B, T] (0 where response_mask is 0)."""
    p, t = prompt_ids.shape[1], response_ids.shape[1]
    tokens, mask = _concat(prompt_ids, prompt_mask, response_ids, response_mask)
    values = ValueModel(config).apply({"params": params}, tokens, mask, rngs=_rngs(dropout_rng))
    values = values[:, p - 1 : p + t - 1]
    return values * response_mask.astype(jnp.float32)


def _rngs(dropout_rng):
    return None if dropout_rng is None else {"dropout": dropout_rng}


def sequence_scores(
    config: TransformerConfig, params, prompt_ids, prompt_mask, response_ids, response_mask, dropout_rng=None
):
    """r(x, y): a reward model's head at the last real token of prompt + response
    (`RewardModel`, the layout of HF `*ForSequenceClassification`). -> [B] float32, or [B, K]
    for a multi-label reward model (config.num_labels = K > 1)."""
    tokens, mask = _concat(prompt_ids, prompt_mask, response_ids, response_mask)
    return RewardModel(config).apply({"params": params}, tokens, mask, rngs=_rngs(dropout_rng))


def _rows(batch):
    """(prompt_ids, prompt_mask, response_ids, response_mask) of a Rollout, or of a
    PreferenceBatch's chosen rows then rejected rows ([2B, ...])."""
    if isinstance(batch, PreferenceBatch):
        return (
            jnp.concatenate([batch.prompt_ids, batch.prompt_ids]),
            jnp.concatenate([batch.prompt_mask, batch.prompt_mask]),
            jnp.concatenate([batch.chosen_ids, batch.rejected_ids]),
            jnp.concatenate([batch.chosen_mask, batch.rejected_mask]),
        )
    return batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask


HEAD_IDS = "head_ids"  # batch.extras: each row's LM head [B] (a multi-head policy, MAH-DPO)


def batch_policy_outputs(
    config,
    params,
    batch,
    temperature: float,
    dropout_rng=None,
    group_size: int = 1,
    kl_params=None,
    kl_direction: str = "forward",
) -> ModelOutputs:
    """`policy_outputs` for a Rollout (`group_size` as there), or for a PreferenceBatch's chosen
    rows then rejected rows in one forward ([2B, T]); `kl_params` as there. A multi-head policy
    (config.lm_heads > 1) scores each row with its head `extras['head_ids']` when the batch
    has them (MAH-DPO's pairs), else with the heads' mixture."""
    g = 1 if isinstance(batch, PreferenceBatch) else group_size
    heads = batch.extras.get(HEAD_IDS) if config.lm_heads > 1 else None
    if heads is not None and isinstance(batch, PreferenceBatch):  # the chosen rows, then the rejected
        heads = jnp.concatenate([heads, heads])
    return policy_outputs(
        config, params, *_rows(batch), temperature, dropout_rng, g, kl_params, kl_direction, heads
    )


def batch_reward_outputs(config, params, batch, dropout_rng=None) -> ModelOutputs:
    """ModelOutputs(scores=`sequence_scores`) for a Rollout ([B]) or a PreferenceBatch's chosen
    rows then rejected rows ([2B]); [B, K] / [2B, K] with config.num_labels = K > 1: the
    forward of algorithms that train a reward model."""
    return ModelOutputs(scores=sequence_scores(config, params, *_rows(batch), dropout_rng))


def loss_mask(batch) -> jax.Array:
    """[B, T] (Rollout) or [2B, T] (PreferenceBatch) float mask matching `batch_policy_outputs`."""
    if isinstance(batch, PreferenceBatch):
        return jnp.concatenate([batch.chosen_mask, batch.rejected_mask]).astype(jnp.float32)
    return batch.response_mask.astype(jnp.float32)
