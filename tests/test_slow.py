"""Larger-scale parity runs (`python -m pytest -m slow`): long sequences, wider models.

The default suite checks parity on 2-layer, 64-wide models and a dozen positions; these runs
check that nothing drifts at realistic widths, 32k vocabularies and hundreds of positions
(RoPE scaling regimes, accumulated float error over long cached generations).
"""

import jax
import numpy as np
import pytest
from hf_helpers import randomise_biases_and_norms

from jaxrl_llm.models.hf import load_checkpoint
from jaxrl_llm.models.transformer import CausalLM
from jaxrl_llm.rollout.sampler import SamplingConfig, make_sampler

pytestmark = pytest.mark.slow

ARCHS = {
    "llama_rope_llama3": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            num_key_value_heads=2,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
    ),
    "qwen2_tied": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(num_key_value_heads=4, head_dim=64)),
}


def _hf_model(arch, path):
    import torch
    import transformers

    config_cls, model_cls, extra = ARCHS[arch]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(
        vocab_size=32000,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        max_position_embeddings=1024,
        initializer_range=0.05,
        attn_implementation="eager",
        bos_token_id=None,
        eos_token_id=None,  # no early stop: compare all 192 greedy tokens
        pad_token_id=0,
        **extra,
    )
    model = getattr(transformers, model_cls)(config).eval()
    randomise_biases_and_norms(model)
    model.save_pretrained(path)
    return model


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_long_sequence_parity_and_long_greedy_generation(arch, tmp_path):
    import torch

    model = _hf_model(arch, str(tmp_path))
    config, params = load_checkpoint(str(tmp_path))
    rng = np.random.RandomState(0)
    ids = rng.randint(0, 32000, (2, 384))
    mask = np.ones_like(ids)
    mask[1, :100] = 0  # left padding
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        reference = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(positions),
        ).logits.numpy()
    ours = np.asarray(CausalLM(config).apply({"params": params}, ids, mask))
    assert np.abs(ours - reference)[mask == 1].max() < 1e-4

    prompts, prompt_mask = ids[:, :64], mask[:, :64].copy()
    prompt_mask[1] = 0
    prompt_mask[1, 40:] = 1
    prompts = np.where(prompt_mask == 1, prompts, 0)
    sampler = make_sampler(config, SamplingConfig(max_new_tokens=192, temperature=0))
    out = sampler(params, prompts.astype(np.int32), prompt_mask.astype(np.int32), jax.random.PRNGKey(0))
    with torch.no_grad():
        generated = model.generate(
            input_ids=torch.from_numpy(prompts),
            attention_mask=torch.from_numpy(prompt_mask),
            max_new_tokens=192,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        ).numpy()[:, 64:]
    np.testing.assert_array_equal(np.asarray(out.response_ids), generated)
