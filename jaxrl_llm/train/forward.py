"""Teacher-forced forward passes over (prompt, response) pairs: per-token log-probs, entropy and
critic values at the response positions, for the trainer's passes and losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.losses.policy import logprobs_and_entropy
from jaxrl_llm.models.config import TransformerConfig
from jaxrl_llm.models.transformer import CausalLM, ValueModel, positions_from_mask
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
) -> ModelOutputs:
    """log pi(y_t | x, y_<t) and the entropy of pi(. | x, y_<t) at every response position.

    prompt [B, P] left-padded, response [B, T] right-padded -> ModelOutputs(logp [B, T],
    entropy [B, T]), both 0 where response_mask is 0. Only the T response positions go through
    the LM head (never [B, P + T, V]). `temperature` divides the logits as the sampler did.
    """
    p, t = prompt_ids.shape[1], response_ids.shape[1]
    tokens, mask = _concat(prompt_ids, prompt_mask, response_ids, response_mask)

    def forward(module, tokens, mask):
        hidden, _ = module.trunk(tokens, positions_from_mask(mask), mask)
        return module.logits(hidden[:, p - 1 : p + t - 1])

    logits = CausalLM(config).apply({"params": params}, tokens, mask, method=forward)
    logp, entropy = logprobs_and_entropy(logits, response_ids, temperature if temperature > 0 else 1.0)
    m = response_mask.astype(jnp.float32)
    return ModelOutputs(logp=logp * m, entropy=entropy * m)


def critic_values(config: TransformerConfig, params, prompt_ids, prompt_mask, response_ids, response_mask):
    """V(x, y_<t) for every response position t: [B, T] (0 where response_mask is 0)."""
    p, t = prompt_ids.shape[1], response_ids.shape[1]
    tokens, mask = _concat(prompt_ids, prompt_mask, response_ids, response_mask)
    values = ValueModel(config).apply({"params": params}, tokens, mask)[:, p - 1 : p + t - 1]
    return values * response_mask.astype(jnp.float32)


def batch_policy_outputs(config, params, batch, temperature: float) -> ModelOutputs:
    """`policy_outputs` for a Rollout, or for a PreferenceBatch's chosen rows then rejected
    rows in one forward ([2B, T])."""
    if isinstance(batch, PreferenceBatch):
        prompt_ids = jnp.concatenate([batch.prompt_ids, batch.prompt_ids])
        prompt_mask = jnp.concatenate([batch.prompt_mask, batch.prompt_mask])
        response_ids = jnp.concatenate([batch.chosen_ids, batch.rejected_ids])
        response_mask = jnp.concatenate([batch.chosen_mask, batch.rejected_mask])
        return policy_outputs(
            config, params, prompt_ids, prompt_mask, response_ids, response_mask, temperature
        )
    return policy_outputs(
        config,
        params,
        batch.prompt_ids,
        batch.prompt_mask,
        batch.response_ids,
        batch.response_mask,
        temperature,
    )


def loss_mask(batch) -> jax.Array:
    """[B, T] (Rollout) or [2B, T] (PreferenceBatch) float mask matching `batch_policy_outputs`."""
    if isinstance(batch, PreferenceBatch):
        return jnp.concatenate([batch.chosen_mask, batch.rejected_mask]).astype(jnp.float32)
    return batch.response_mask.astype(jnp.float32)
