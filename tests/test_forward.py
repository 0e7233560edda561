"""The trainer's teacher-forced passes: the shared-prompt (grouped) forward against the plain
forward over concatenated [prompt, response] rows, and the LM head's custom gradient."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.models.transformer import _dense, _swiglu, init_params
from jaxrl_llm.train.forward import policy_outputs

PROMPTS, GROUP, PROMPT_LEN, RESPONSE_LEN = 3, 4, 7, 6


def _batch(vocab: int, seed: int = 0):
    """Left-padded prompts of lengths 7, 4 and 1 (each repeated for its G rows) and right-padded
    responses of lengths 1..6, two of them fully real."""
    rng = np.random.default_rng(seed)
    rows = PROMPTS * GROUP
    prompt_real = np.array([7, 4, 1])
    prompt_mask = (np.arange(PROMPT_LEN)[None] >= PROMPT_LEN - prompt_real[:, None]).astype(np.int32)
    prompt_ids = rng.integers(3, vocab, (PROMPTS, PROMPT_LEN)).astype(np.int32) * prompt_mask
    response_real = np.array([6, 1, 3, 5, 2, 6, 4, 1, 5, 3, 2, 4])
    response_mask = (np.arange(RESPONSE_LEN)[None] < response_real[:, None]).astype(np.int32)
    response_ids = rng.integers(3, vocab, (rows, RESPONSE_LEN)).astype(np.int32) * response_mask
    weights = rng.normal(size=(rows, RESPONSE_LEN)).astype(np.float32)
    return (
        np.repeat(prompt_ids, GROUP, axis=0),
        np.repeat(prompt_mask, GROUP, axis=0),
        response_ids,
        response_mask,
        weights,
    )


@pytest.mark.parametrize("temperature, tied, remat", [(1.0, False, "none"), (0.7, True, "full")])
def test_grouped_forward_matches_concatenated(tiny_config, tiny_params, temperature, tied, remat):
    """Log-probs, entropies and every parameter's gradient, with left-padded prompts of
    different lengths and right-padded responses (untied head; tied: through the embedding,
    with rematerialised blocks)."""
    if tied:
        tiny_config = dataclasses.replace(tiny_config, tie_embeddings=True, remat=remat)
        tiny_params = init_params(tiny_config, jax.random.PRNGKey(1))
    prompt_ids, prompt_mask, response_ids, response_mask, weights = _batch(tiny_config.vocab_size)

    def run(group_size):
        def loss(params):
            out = policy_outputs(
                tiny_config,
                params,
                prompt_ids,
                prompt_mask,
                response_ids,
                response_mask,
                temperature,
                group_size=group_size,
            )
            return jnp.sum(out.logp * weights) + 0.1 * jnp.sum(out.entropy), out

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(tiny_params)

    (loss_plain, plain), grads_plain = run(1)
    (loss_grouped, grouped), grads_grouped = run(GROUP)
    np.testing.assert_allclose(grouped.logp, plain.logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grouped.entropy, plain.entropy, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(grouped.logp)[response_mask == 0] == 0)
    np.testing.assert_allclose(loss_grouped, loss_plain, rtol=1e-5)
    flat_plain, flat_grouped = jax.tree.leaves(grads_plain), jax.tree.leaves(grads_grouped)
    for a, b in zip(flat_grouped, flat_plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(b))))


def test_grouped_forward_one_response_token(tiny_config, tiny_params):
    """T = 1: only the prompt's last position predicts (no response trunk at all)."""
    prompt_ids, prompt_mask, response_ids, response_mask, _ = _batch(tiny_config.vocab_size)
    args = (tiny_config, tiny_params, prompt_ids, prompt_mask, response_ids[:, :1], response_mask[:, :1], 1.0)
    plain, grouped = policy_outputs(*args), policy_outputs(*args, group_size=GROUP)
    np.testing.assert_allclose(grouped.logp, plain.logp, rtol=1e-5, atol=1e-5)


def test_grouped_forward_rejects_partial_groups(tiny_config, tiny_params):
    prompt_ids, prompt_mask, response_ids, response_mask, _ = _batch(tiny_config.vocab_size)
    with pytest.raises(ValueError, match="group_size=5"):
        policy_outputs(
            tiny_config, tiny_params, prompt_ids, prompt_mask, response_ids, response_mask, 1.0, group_size=5
        )


@pytest.mark.parametrize("shape", [(6, 16), (3, 5, 16)])
def test_dense_gradient_is_the_einsum_gradient(shape):
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=shape), jnp.float32)
    head = jnp.asarray(rng.normal(size=(16, 40)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(*shape[:-1], 40)), jnp.float32)

    def loss(matmul):
        return lambda h, w: jnp.sum(jnp.sin(matmul(h, w)) * cotangent)

    plain = jax.grad(loss(lambda h, w: jnp.einsum("...d,dv->...v", h, w)), argnums=(0, 1))(hidden, head)
    custom = jax.jit(jax.grad(loss(_dense), argnums=(0, 1)))(hidden, head)
    np.testing.assert_allclose(_dense(hidden, head), hidden @ head, rtol=1e-6, atol=1e-6)
    for a, b in zip(custom, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_swiglu_gradient_is_the_autodiff_gradient():
    rng = np.random.default_rng(1)
    gate_up = jnp.asarray(rng.normal(scale=3.0, size=(3, 5, 2 * 24)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(3, 5, 24)), jnp.float32)

    def plain(x):
        gate, up = x[..., :24], x[..., 24:]
        return jax.nn.silu(gate) * up

    def loss(fn):
        return lambda x: jnp.sum(jnp.tanh(fn(x)) * cotangent)

    np.testing.assert_allclose(_swiglu(gate_up), plain(gate_up), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        jax.jit(jax.grad(loss(_swiglu)))(gate_up), jax.grad(loss(plain))(gate_up), rtol=1e-5, atol=1e-5
    )
