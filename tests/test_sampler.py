"""The jitted KV-cache sampler: cache correctness, HF parity, sampling filters, group sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.models.hf import save_checkpoint
from jaxrl_llm.models.transformer import CausalLM, init_cache
from jaxrl_llm.rollout.sampler import (
    SamplingConfig,
    inverse_cdf,
    make_sampler,
    process_logits,
    sample_from_logits,
)

PROMPT_LEN = 12
PAD = 0


def _prompts(batch=3, seed=0):
    """Left-padded prompts [B, P] with different amounts of padding (row 0 unpadded)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(4, 97, (batch, PROMPT_LEN)).astype(np.int32)
    mask = np.ones_like(ids)
    for row in range(1, batch):
        mask[row, : 2 * row + 1] = 0
    ids[mask == 0] = PAD
    return ids, mask


def _full_logprobs(config, params, prompt_ids, prompt_mask, out):
    """Log-probs of the sampled tokens recomputed by one full forward pass. [N, T]."""
    g = out.response_ids.shape[0] // prompt_ids.shape[0]
    ids = np.concatenate([np.repeat(prompt_ids, g, 0), np.asarray(out.response_ids)], 1)
    mask = np.concatenate([np.repeat(prompt_mask, g, 0), np.asarray(out.response_mask)], 1)
    logits = CausalLM(config).apply({"params": params}, ids, mask)[:, PROMPT_LEN - 1 : -1]
    logp = jax.nn.log_softmax(logits, -1)
    return np.take_along_axis(np.asarray(logp), ids[:, PROMPT_LEN:, None], -1)[..., 0]


@pytest.mark.parametrize("chunk", [1, 3])
def test_cached_decoding_equals_full_forward(tiny_config, tiny_params, chunk):
    """Prefill + decode (1 or 3 tokens per call, G=2 samples sharing a prompt cache) gives the
    full-sequence forward logits at every generated position."""
    model = CausalLM(tiny_config)
    prompt_ids, prompt_mask = _prompts()
    g, steps = 2, 6
    rng = np.random.RandomState(1)
    continuation = rng.randint(4, 97, (3 * g, steps)).astype(np.int32)
    variables = {"params": tiny_params}
    prefill = jax.jit(lambda v, i, m: model.apply(v, i, m, method=CausalLM.prefill))
    decode = jax.jit(lambda v, t, p, c: model.apply(v, t, p, c, method=CausalLM.decode))
    last_logits, kv = prefill(variables, prompt_ids, prompt_mask)
    cache = init_cache(kv, jnp.asarray(prompt_mask), g, steps)
    start = np.repeat(prompt_mask.sum(1), g)
    cached = []
    for t in range(0, steps, chunk):
        tokens = continuation[:, t : t + chunk]
        positions = start[:, None] + t + np.arange(chunk)[None]
        logits, cache = decode(variables, tokens, positions, cache)
        cached.append(np.asarray(logits))
    cached = np.concatenate(cached, 1)  # logits after each continuation token

    full_ids = np.concatenate([np.repeat(prompt_ids, g, 0), continuation], 1)
    full_mask = np.concatenate([np.repeat(prompt_mask, g, 0), np.ones_like(continuation)], 1)
    full = np.asarray(model.apply(variables, full_ids, full_mask))
    np.testing.assert_allclose(cached, full[:, PROMPT_LEN:], atol=1e-4, rtol=0)
    np.testing.assert_allclose(
        np.repeat(np.asarray(last_logits), g, 0), full[:, PROMPT_LEN - 1], atol=1e-4, rtol=0
    )


def test_sampler_logprobs_equal_full_forward(tiny_config, tiny_params):
    prompt_ids, prompt_mask = _prompts()
    sampler = make_sampler(tiny_config, SamplingConfig(max_new_tokens=10, num_samples=3, temperature=1.0))
    out = sampler(tiny_params, prompt_ids, prompt_mask, jax.random.PRNGKey(3))
    assert out.response_ids.shape == (9, 10) and int(out.num_steps) == 10
    np.testing.assert_array_equal(np.asarray(out.group_ids), np.repeat(np.arange(3), 3))
    full = _full_logprobs(tiny_config, tiny_params, prompt_ids, prompt_mask, out)
    np.testing.assert_allclose(np.asarray(out.logprobs), full, atol=1e-4, rtol=0)


def test_temperature_logprobs_are_of_the_scaled_distribution(tiny_config, tiny_params):
    prompt_ids, prompt_mask = _prompts()
    sampler = make_sampler(tiny_config, SamplingConfig(max_new_tokens=4, temperature=0.7))
    out = sampler(tiny_params, prompt_ids, prompt_mask, jax.random.PRNGKey(0))
    ids = np.concatenate([prompt_ids, np.asarray(out.response_ids)], 1)
    mask = np.concatenate([prompt_mask, np.asarray(out.response_mask)], 1)
    logits = CausalLM(tiny_config).apply({"params": tiny_params}, ids, mask)[:, PROMPT_LEN - 1 : -1]
    logp = np.asarray(jax.nn.log_softmax(logits / 0.7, -1))
    expected = np.take_along_axis(logp, ids[:, PROMPT_LEN:, None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(out.logprobs), expected, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def hf_tiny(tiny_config, tiny_params, tmp_path_factory):
    """conftest's tiny Llama exported and loaded in transformers."""
    import transformers

    path = str(tmp_path_factory.mktemp("hf_tiny"))
    save_checkpoint(path, tiny_config, tiny_params)
    return transformers.LlamaForCausalLM.from_pretrained(path).eval()


def test_greedy_equals_hf_generate(tiny_config, tiny_params, hf_tiny):
    """Greedy tokens equal HF greedy `generate` (left-padded batch, KV cache on), including
    stopping at EOS and padding after it."""
    import torch

    prompt_ids, prompt_mask = _prompts()
    new_tokens = 16
    free = make_sampler(tiny_config, SamplingConfig(max_new_tokens=new_tokens, temperature=0))
    free_ids = np.asarray(free(tiny_params, prompt_ids, prompt_mask, jax.random.PRNGKey(0)).response_ids)
    eos = int(free_ids[1, 5])  # a token row 1 emits mid-way, so EOS handling is exercised
    sampler = make_sampler(
        tiny_config, SamplingConfig(max_new_tokens=new_tokens, temperature=0, stop_ids=(eos,), pad_id=PAD)
    )
    out = sampler(tiny_params, prompt_ids, prompt_mask, jax.random.PRNGKey(0))
    with torch.no_grad():
        hf = hf_tiny.generate(
            input_ids=torch.from_numpy(prompt_ids.astype(np.int64)),
            attention_mask=torch.from_numpy(prompt_mask.astype(np.int64)),
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=PAD,
        ).numpy()[:, PROMPT_LEN:]
    ours = np.asarray(out.response_ids)[:, : hf.shape[1]]
    np.testing.assert_array_equal(ours, hf)
    assert (np.asarray(out.response_ids)[:, hf.shape[1] :] == PAD).all()
    assert (hf == eos).any(axis=1)[1]


def test_reproducible_for_a_fixed_seed(tiny_config, tiny_params):
    prompt_ids, prompt_mask = _prompts()
    sampler = make_sampler(tiny_config, SamplingConfig(max_new_tokens=8, num_samples=2))
    a = sampler(tiny_params, prompt_ids, prompt_mask, jax.random.PRNGKey(5))
    b = sampler(tiny_params, prompt_ids, prompt_mask, jax.random.PRNGKey(5))
    c = sampler(tiny_params, prompt_ids, prompt_mask, jax.random.PRNGKey(6))
    np.testing.assert_array_equal(np.asarray(a.response_ids), np.asarray(b.response_ids))
    np.testing.assert_array_equal(np.asarray(a.logprobs), np.asarray(b.logprobs))
    assert (np.asarray(a.response_ids) != np.asarray(c.response_ids)).any()
    assert sampler.jitted._cache_size() == 1  # new seeds and values never recompile


def test_positions_after_stop_are_masked(tiny_config, tiny_params):
    prompt_ids, prompt_mask = _prompts()
    free = make_sampler(tiny_config, SamplingConfig(max_new_tokens=12, num_samples=4))
    tokens = np.asarray(free(tiny_params, prompt_ids, prompt_mask, jax.random.PRNGKey(1)).response_ids)
    stop = int(np.bincount(tokens.ravel()).argmax())  # the most frequent token: many rows stop
    sampler = make_sampler(tiny_config, SamplingConfig(max_new_tokens=12, num_samples=4, stop_ids=(stop, 96)))
    out = sampler(tiny_params, prompt_ids, prompt_mask, jax.random.PRNGKey(1))
    ids, mask, logp = (np.asarray(x) for x in (out.response_ids, out.response_mask, out.logprobs))
    stopped = 0
    for row in range(ids.shape[0]):
        hits = np.flatnonzero(np.isin(ids[row], (stop, 96)) & (mask[row] == 1))
        length = hits[0] + 1 if len(hits) else ids.shape[1]
        stopped += bool(len(hits))
        assert (mask[row, :length] == 1).all() and (mask[row, length:] == 0).all()
        assert (ids[row, length:] == 0).all() and (logp[row, length:] == 0).all()
        assert (logp[row, :length] < 0).all()
    assert stopped >= 4
    assert int(out.num_steps) == mask.sum(1).max()


def test_early_exit_when_every_sample_stopped(tiny_config, tiny_params):
    """With every token a stop token the loop ends after the first token."""
    prompt_ids, prompt_mask = _prompts()
    sampler = make_sampler(tiny_config, SamplingConfig(max_new_tokens=32, stop_ids=tuple(range(97))))
    out = sampler(tiny_params, prompt_ids, prompt_mask, jax.random.PRNGKey(0))
    assert int(out.num_steps) == 1
    assert np.asarray(out.response_mask).sum() == 3


# A known next-token distribution for the filter tests.
PROBS = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
DRAWS = 40_000


def _renormalised(keep):
    return np.where(np.arange(6) < keep, PROBS, 0.0) / PROBS[:keep].sum()


def _frequencies(config):
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(PROBS, jnp.float32)), (DRAWS, len(PROBS)))
    uniform = jax.random.uniform(jax.random.PRNGKey(0), (DRAWS,))
    tokens = np.asarray(jax.jit(sample_from_logits, static_argnums=2)(logits, uniform, config))
    return np.bincount(tokens, minlength=len(PROBS)) / DRAWS


@pytest.mark.parametrize(
    "top_k, top_p, temperature, allowed, expected",
    [
        (0, 1.0, 1.0, 6, PROBS),
        (3, 1.0, 1.0, 3, _renormalised(3)),
        (0, 0.7, 1.0, 3, _renormalised(3)),  # mass before token 3 is 0.8 >= 0.7
        (0, 0.5, 1.0, 2, _renormalised(2)),
        (0, 0.3, 1.0, 1, np.eye(6)[0]),  # the top token always survives
        (2, 0.9, 1.0, 2, _renormalised(2)),
        (0, 1.0, 0.5, 6, PROBS**2 / (PROBS**2).sum()),
    ],
)
def test_filters_sample_the_renormalised_distribution(top_k, top_p, temperature, allowed, expected):
    """Never a token outside the allowed set; frequencies match the renormalised distribution
    (40k draws: 4 standard errors is < 0.01)."""
    config = SamplingConfig(max_new_tokens=1, temperature=temperature, top_k=top_k, top_p=top_p)
    freq = _frequencies(config)
    assert (freq[allowed:] == 0).all()
    np.testing.assert_allclose(freq, expected, atol=0.01)


def test_process_logits_masks_exactly_the_excluded_tokens():
    logits = jnp.log(jnp.asarray([PROBS, PROBS[::-1]], jnp.float32))
    out = np.asarray(process_logits(logits, 1.0, top_k=0, top_p=0.7))
    np.testing.assert_array_equal(np.isfinite(out), [[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]])
    out = np.asarray(process_logits(logits, 2.0, top_k=4))
    np.testing.assert_allclose(out[0, :4], np.log(PROBS[:4]) / 2, rtol=1e-6)
    assert np.isinf(out[0, 4:]).all()


def test_top_k_one_is_greedy(tiny_config, tiny_params):
    prompt_ids, prompt_mask = _prompts()
    greedy = make_sampler(tiny_config, SamplingConfig(max_new_tokens=8, temperature=0))
    top1 = make_sampler(tiny_config, SamplingConfig(max_new_tokens=8, temperature=1.3, top_k=1))
    a = greedy(tiny_params, prompt_ids, prompt_mask, jax.random.PRNGKey(0)).response_ids
    b = top1(tiny_params, prompt_ids, prompt_mask, jax.random.PRNGKey(9)).response_ids
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_group_sampling_equals_independent_sampling(tiny_config, tiny_params):
    """G samples sharing one prompt cache are token-for-token the samples drawn with the prompt
    repeated G times and no sharing (same seed): the same distribution, exactly."""
    prompt_ids, prompt_mask = _prompts()
    g = 4
    grouped = make_sampler(tiny_config, SamplingConfig(max_new_tokens=10, num_samples=g))
    single = make_sampler(tiny_config, SamplingConfig(max_new_tokens=10, num_samples=1))
    a = grouped(tiny_params, prompt_ids, prompt_mask, jax.random.PRNGKey(2))
    b = single(tiny_params, np.repeat(prompt_ids, g, 0), np.repeat(prompt_mask, g, 0), jax.random.PRNGKey(2))
    np.testing.assert_array_equal(np.asarray(a.response_ids), np.asarray(b.response_ids))
    np.testing.assert_array_equal(np.asarray(a.response_mask), np.asarray(b.response_mask))
    np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-5)
    per_prompt = np.asarray(a.response_ids).reshape(3, g, -1)
    assert all(len({tuple(s) for s in group}) > 1 for group in per_prompt)  # samples differ


def _flops(config, params, num_samples, prompt_ids, prompt_mask):
    sampler = make_sampler(config, SamplingConfig(max_new_tokens=1, num_samples=num_samples))
    cost = (
        sampler.jitted.lower(params, prompt_ids, prompt_mask, jax.random.PRNGKey(0)).compile().cost_analysis()
    )
    return (cost if isinstance(cost, dict) else cost[0])["flops"]


def test_group_sampling_prefills_each_prompt_once(tiny_config, tiny_params):
    """Compiled cost with one new token (prefill + first sample only): G=8 costs about the same
    as G=1, while prefilling the 8 copies of each prompt costs 8x."""
    ids = np.ones((2, 32), np.int32)
    mask = np.ones_like(ids)
    one = _flops(tiny_config, tiny_params, 1, ids, mask)
    shared = _flops(tiny_config, tiny_params, 8, ids, mask)
    repeated = _flops(tiny_config, tiny_params, 1, np.repeat(ids, 8, 0), np.repeat(mask, 8, 0))
    assert shared < 1.3 * one, (shared, one)
    assert repeated > 7 * one, (repeated, one)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(max_new_tokens=4, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(max_new_tokens=4, temperature=-1.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingConfig(max_new_tokens=0)


def test_right_padded_prompts_are_rejected(tiny_config, tiny_params):
    prompt_ids, prompt_mask = _prompts()
    sampler = make_sampler(tiny_config, SamplingConfig(max_new_tokens=2))
    with pytest.raises(ValueError, match=r"left-padded.*\[1, 2\]"):
        sampler(tiny_params, prompt_ids, prompt_mask[:, ::-1].copy(), jax.random.PRNGKey(0))


def test_positions_past_the_trained_context_warn(tiny_config, tiny_params):
    import dataclasses

    short = dataclasses.replace(tiny_config, max_position_embeddings=16)
    prompt_ids, prompt_mask = _prompts()
    sampler = make_sampler(short, SamplingConfig(max_new_tokens=8))
    with pytest.warns(UserWarning, match="max_position_embeddings=16"):
        sampler(tiny_params, prompt_ids, prompt_mask, jax.random.PRNGKey(0))


def test_bfloat16_compute_tracks_float32(tiny_config, tiny_params):
    """dtype='bfloat16' (the accelerator setting) computes in bf16 from the same f32 params."""
    import dataclasses

    bf16 = dataclasses.replace(tiny_config, dtype="bfloat16")
    prompt_ids, prompt_mask = _prompts()
    f32_logits = CausalLM(tiny_config).apply({"params": tiny_params}, prompt_ids, prompt_mask)
    bf16_logits = CausalLM(bf16).apply({"params": tiny_params}, prompt_ids, prompt_mask)
    assert bf16_logits.dtype == jnp.float32  # logits are always returned in f32
    real = prompt_mask.astype(bool)
    scale = np.abs(np.asarray(f32_logits)[real]).max()
    assert np.abs(np.asarray(bf16_logits - f32_logits)[real]).max() < 0.05 * scale
    out = make_sampler(bf16, SamplingConfig(max_new_tokens=4, num_samples=2))(
        tiny_params, prompt_ids, prompt_mask, jax.random.PRNGKey(0)
    )
    assert np.isfinite(np.asarray(out.logprobs)).all() and (np.asarray(out.logprobs) < 0).all()


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_keeps_exactly_the_sorted_nucleus(top_p):
    """The sort-free top-p keeps the same tokens as the textbook sort + cumulative-sum rule on
    peaked and flat random distributions over 2000 tokens."""
    logits = jax.random.normal(jax.random.PRNGKey(0), (8, 2000)) * jnp.arange(1, 9)[:, None]
    kept = np.isfinite(np.asarray(process_logits(logits, 1.0, top_p=top_p)))
    probs = np.asarray(jax.nn.softmax(logits, -1), np.float64)
    order = np.argsort(-probs, axis=-1)
    sorted_probs = np.take_along_axis(probs, order, -1)
    keep_sorted = np.cumsum(sorted_probs, -1) - sorted_probs < top_p  # mass before each token
    expected = np.zeros_like(kept)
    np.put_along_axis(expected, order, keep_sorted, -1)
    np.testing.assert_array_equal(kept, expected)


def test_inverse_cdf_never_returns_zero_weight_entries():
    """Zero blocks, zeros inside blocks, a ragged last block and uniforms at 0 and just below 1."""
    v = 300  # not a multiple of the 128-entry block
    weights = np.zeros((6, v), np.float32)
    weights[:, [5, 130, 299]] = [1.0, 1e-30, 3.0]  # block 1 holds only a denormal-sized weight
    weights[1] = 0
    weights[1, 129] = 1.0  # a single allowed entry
    uniform = jnp.asarray([0.0, 0.5, 1 - 2**-24, 0.25, 0.999999, 0.75], jnp.float32)
    picked = np.asarray(inverse_cdf(jnp.asarray(weights), uniform))
    assert (weights[np.arange(6), picked] > 0).all(), picked
    assert picked[1] == 129 and picked[0] == 5 and picked[2] == 299


def test_inverse_cdf_frequencies_match_weights():
    weights = jax.random.uniform(jax.random.PRNGKey(0), (1, 1000)) ** 4
    uniform = jax.random.uniform(jax.random.PRNGKey(1), (200_000,))
    picked = np.asarray(jax.jit(inverse_cdf)(jnp.broadcast_to(weights, (200_000, 1000)), uniform))
    freq = np.bincount(picked, minlength=1000) / 200_000
    expected = np.asarray(weights[0] / weights.sum())
    assert np.abs(freq - expected).max() < 5 * np.sqrt(expected.max() / 200_000)
