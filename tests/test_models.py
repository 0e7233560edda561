"""Tests for jaxrl_llm.models: logit parity with `transformers`, checkpoint import/export, heads,
error reporting and the Hugging Face config mapping.

Every Hugging Face checkpoint is a tiny randomly initialised model written once per module
(hidden 64, 2 layers, vocab 97). torch / transformers are imported inside fixtures only.
"""

import copy
import dataclasses
import functools
import json
import os
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
from hf_helpers import randomise_biases_and_norms
from jax.sharding import PartitionSpec
from safetensors.numpy import load_file, save_file

from jaxrl_llm.models.config import (
    SUPPORTED_MODEL_TYPES,
    TransformerConfig,
    UnsupportedModelError,
    from_hf_config,
    to_hf_config,
)
from jaxrl_llm.models.hf import CheckpointMismatchError, load_checkpoint, save_checkpoint
from jaxrl_llm.models.transformer import (
    CausalLM,
    RewardModel,
    init_params,
    logical_axes,
    positions_from_mask,
    rope_inverse_frequencies,
)

VOCAB = 97
TOL = 1e-4
PAD_ID = 0  # never used as a real token in the batches below

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
HF_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    initializer_range=0.1,
    rms_norm_eps=1e-6,
    attn_implementation="eager",
)
# name -> (config class, model class, extra config kwargs)
HF_ARCHS = {
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(rope_parameters=LLAMA3_ROPE, tie_word_embeddings=False),
    ),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32, tie_word_embeddings=False)),
}
ARCHS = list(HF_ARCHS)


def _batch(padding_side: str):
    """[3, 8] ids and mask: rows padded by 3, 0 and 5 tokens on `padding_side`; real ids != PAD_ID."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, size=(3, 8)).astype(np.int32)
    mask = np.ones((3, 8), np.int32)
    for row, pad in ((0, 3), (2, 5)):
        if padding_side == "left":
            mask[row, :pad] = 0
        else:
            mask[row, -pad:] = 0
    return np.where(mask == 1, ids, PAD_ID).astype(np.int32), mask


def _hf_positions(mask):
    return np.clip(np.cumsum(mask, axis=-1) - 1, 0, None)


def _torch_forward(model, ids, mask):
    import torch

    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            position_ids=torch.from_numpy(_hf_positions(mask).astype(np.int64)),
        )
    return out.logits.float().numpy()


@functools.cache
def _jitted(module_cls, config):
    return jax.jit(module_cls(config).apply)


def _ours(module_cls, config, params, ids, mask):
    return np.asarray(_jitted(module_cls, config)({"params": params}, ids, mask))


def _max_real_diff(a, b, mask):
    return float(np.abs(a - b)[mask == 1].max())


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for path, x in jax.tree_util.tree_leaves_with_path(a):
        y = b
        for key in path:
            y = y[key.key]
        assert x.dtype == y.dtype, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


# ---------------------------------------------------------------------------------------------
# Fixtures: tiny random HF checkpoints, built once
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """arch -> dict(dir, model, logits) for random tiny Llama / Qwen2 / Qwen3 causal LMs."""
    import torch
    import transformers

    ids, mask = _batch("left")
    out = {}
    for seed, (arch, (config_cls, model_cls, extra)) in enumerate(HF_ARCHS.items()):
        torch.manual_seed(seed)
        hf_config = getattr(transformers, config_cls)(**HF_COMMON, **extra)
        model = getattr(transformers, model_cls)(hf_config).eval()
        randomise_biases_and_norms(model)
        path = str(tmp_path_factory.mktemp(f"hf_{arch}"))
        model.save_pretrained(path)
        out[arch] = dict(dir=path, model=model, logits=_torch_forward(model, ids, mask))
    return out


@pytest.fixture(scope="module")
def loaded(hf_models):
    """arch -> (config, params, our logits on the left-padded batch)."""
    ids, mask = _batch("left")
    out = {}
    for arch, hf in hf_models.items():
        config, params = load_checkpoint(hf["dir"])
        out[arch] = (config, params, _ours(CausalLM, config, params, ids, mask))
    return out


@pytest.fixture(scope="module")
def hf_reward(tmp_path_factory):
    """A random LlamaForSequenceClassification (num_labels=1) and its scores on a right-padded batch."""
    import torch
    import transformers

    torch.manual_seed(7)
    hf_config = transformers.LlamaConfig(
        **HF_COMMON, num_labels=1, pad_token_id=PAD_ID, tie_word_embeddings=False
    )
    model = transformers.LlamaForSequenceClassification(hf_config).eval()
    randomise_biases_and_norms(model)
    path = str(tmp_path_factory.mktemp("hf_reward"))
    model.save_pretrained(path)
    ids, mask = _batch("right")
    with torch.no_grad():
        scores = model(
            input_ids=torch.from_numpy(ids.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            position_ids=torch.from_numpy(_hf_positions(mask).astype(np.int64)),
        ).logits
    assert scores.shape == (3, 1)
    return dict(dir=path, model=model, scores=scores[:, 0].numpy())


@pytest.fixture(scope="module")
def own_checkpoint(tmp_path_factory, tiny_config, tiny_params):
    """A checkpoint of conftest's tiny Llama written by save_checkpoint (no torch needed)."""
    path = str(tmp_path_factory.mktemp("own_ckpt"))
    save_checkpoint(path, tiny_config, tiny_params)
    return path


def _copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


# ---------------------------------------------------------------------------------------------
# 1. Logit parity with transformers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_logit_parity_with_transformers(arch, hf_models, loaded):
    hf = hf_models[arch]
    config, params, ours = loaded[arch]
    ids, mask = _batch("left")
    assert mask.sum(-1).tolist() == [5, 8, 3]
    assert ours.shape == hf["logits"].shape == (3, 8, VOCAB)
    assert np.abs(hf["logits"][mask == 1]).max() > 0.5  # a meaningful, non-degenerate comparison
    assert _max_real_diff(ours, hf["logits"], mask) < TOL
    # Same parameter count as transformers (which counts a tied matrix once).
    assert config.num_params == hf["model"].num_parameters()


def test_llama_checkpoint_config(loaded):
    config, params, _ = loaded["llama"]
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (4, 2, 16)
    assert not config.tie_embeddings and "lm_head" in params
    assert params["lm_head"].shape == (64, VOCAB)
    assert config.rope_type == "llama3" and config.rope_original_max_positions == 16
    assert config.rope_theta == 500000.0 and config.rope_factor == 8.0


def test_qwen2_checkpoint_config(loaded):
    config, params, _ = loaded["qwen2"]
    assert config.qkv_bias and config.tie_embeddings and not config.qk_norm
    assert "lm_head" not in params
    bias = params["trunk"]["layers_0"]["attn"]["k_bias"]
    assert bias.shape == (2, 16) and np.abs(bias).min() > 0  # the randomised biases arrived


def test_qwen3_checkpoint_config(loaded):
    config, params, _ = loaded["qwen3"]
    assert config.qk_norm and not config.qkv_bias and config.head_dim == 32
    attn = params["trunk"]["layers_1"]["attn"]
    assert attn["q_proj"].shape == (64, 4, 32) and attn["o_proj"].shape == (4, 32, 64)
    assert attn["q_norm"]["scale"].shape == (32,)
    assert np.abs(attn["k_norm"]["scale"] - 1).max() > 0.01  # randomised norm weights


def test_llama3_rope_frequencies_match_transformers(hf_models, loaded):
    config, _, _ = loaded["llama"]
    ours = rope_inverse_frequencies(config)
    theirs = hf_models["llama"]["model"].model.rotary_emb.inv_freq.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    unscaled = rope_inverse_frequencies(TransformerConfig(**{**_fields(config), "rope_type": "default"}))
    # The scaling really changes frequencies at this short original length: the highest frequency
    # (wavelength 2*pi, between 16/4 and 16/1) is smoothed, all longer wavelengths are divided by 8.
    ratio = unscaled / ours
    assert 1.5 < ratio[0] < 2.0
    np.testing.assert_allclose(ratio[1:], 8.0, rtol=1e-12)


def _fields(config):
    return {f: getattr(config, f) for f in config.__dataclass_fields__}


# ---------------------------------------------------------------------------------------------
# 2. Export round trip
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_export_loads_in_transformers(arch, hf_models, loaded, tmp_path):
    import torch
    import transformers

    config, params, ours = loaded[arch]
    save_checkpoint(str(tmp_path), config, params)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    assert type(model).__name__ == HF_ARCHS[arch][1]
    ids, mask = _batch("left")
    exported = _torch_forward(model, ids, mask)
    assert _max_real_diff(exported, ours, mask) < TOL
    # Tensor-for-tensor identical to the original HF checkpoint.
    original = hf_models[arch]["model"].state_dict()
    reloaded = model.state_dict()
    assert set(original) == set(reloaded)
    for name, value in original.items():
        assert torch.equal(value, reloaded[name]), name
    # Our own loader reads our export back to the same config and bit-identical params.
    config2, params2 = load_checkpoint(str(tmp_path))
    assert config2 == config
    _assert_trees_equal(params2, params)


def test_sharded_export(hf_models, loaded, tmp_path):
    import torch
    import transformers

    config, params, ours = loaded["llama"]
    save_checkpoint(str(tmp_path), config, params, max_shard_bytes=64 * 1024)
    files = sorted(os.listdir(tmp_path))
    shards = [f for f in files if f.endswith(".safetensors")]
    assert "model.safetensors" not in files and "model.safetensors.index.json" in files
    assert len(shards) >= 3
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    with open(tmp_path / "model.safetensors.index.json") as f:
        index = json.load(f)
    assert sorted(set(index["weight_map"].values())) == shards
    assert set(index["weight_map"]) == set(hf_models["llama"]["model"].state_dict())
    assert index["metadata"]["total_size"] == 4 * config.num_params
    for shard in shards[:-1]:  # every shard but the last is within the limit unless it holds one tensor
        tensors = load_file(str(tmp_path / shard))
        assert len(tensors) == 1 or sum(t.nbytes for t in tensors.values()) <= 64 * 1024

    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids, mask = _batch("left")
    assert _max_real_diff(_torch_forward(model, ids, mask), ours, mask) < TOL
    config2, params2 = load_checkpoint(str(tmp_path))
    assert config2 == config
    _assert_trees_equal(params2, params)


def test_reexport_replaces_stale_layout(loaded, tmp_path):
    """Sharded then single-file export into one directory: the loader reads the new weights."""
    config, params, _ = loaded["qwen2"]
    save_checkpoint(str(tmp_path), config, params, max_shard_bytes=64 * 1024)
    doubled = jax.tree.map(lambda x: 2 * x, params)
    save_checkpoint(str(tmp_path), config, doubled)
    assert "model.safetensors.index.json" not in os.listdir(tmp_path)
    _, params2 = load_checkpoint(str(tmp_path))
    _assert_trees_equal(params2, doubled)


# ---------------------------------------------------------------------------------------------
# 3. Reward and value heads
# ---------------------------------------------------------------------------------------------


def test_reward_model_parity_and_export(hf_reward, tmp_path):
    import torch
    import transformers

    config, params = load_checkpoint(hf_reward["dir"])  # head inferred from `architectures`
    assert set(params) == {"trunk", "score"}
    assert params["score"].shape == (64, 1)
    assert config.pad_token_id == PAD_ID
    ids, mask = _batch("right")
    assert mask[:, 0].all() and not mask[:, -1].all() and not np.any(ids[mask == 1] == PAD_ID)
    ours = _ours(RewardModel, config, params, ids, mask)
    assert ours.shape == (3,)
    assert np.abs(hf_reward["scores"]).max() > 0.1 and np.ptp(hf_reward["scores"]) > 0.01
    np.testing.assert_allclose(ours, hf_reward["scores"], rtol=0, atol=TOL)

    save_checkpoint(str(tmp_path), config, params, head="reward")
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["architectures"] == ["LlamaForSequenceClassification"]
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(tmp_path), dtype=torch.float32
    ).eval()
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 1
    with torch.no_grad():
        exported = model(
            input_ids=torch.from_numpy(ids.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            position_ids=torch.from_numpy(_hf_positions(mask).astype(np.int64)),
        ).logits[:, 0]
    np.testing.assert_allclose(exported.numpy(), ours, rtol=0, atol=TOL)
    config2, params2 = load_checkpoint(str(tmp_path))
    assert config2 == config
    _assert_trees_equal(params2, params)


def test_value_head_from_causal_lm(hf_models, loaded):
    config, causal, _ = loaded["llama"]
    config_v, value = load_checkpoint(hf_models["llama"]["dir"], head="value")
    assert config_v == config
    assert set(value) == {"trunk", "score"}
    _assert_trees_equal(value["trunk"], causal["trunk"])
    assert value["score"].shape == (config.d_model, 1) and value["score"].dtype == np.float32
    assert 0.03 < float(np.std(value["score"])) < 0.3  # fresh normal(init_std=0.1) head
    expected = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0), "value"))
    assert jax.tree.structure(expected) == jax.tree.structure(value)
    assert jax.tree.map(lambda s: s.shape, expected) == jax.tree.map(np.shape, value)
    # rng controls the fresh head; the trunk is unaffected.
    _, value2 = load_checkpoint(hf_models["llama"]["dir"], head="value", rng=jax.random.PRNGKey(1))
    assert not np.array_equal(value2["score"], value["score"])
    _assert_trees_equal(value2["trunk"], value["trunk"])


def test_value_head_seeded_from_reward_model(hf_reward):
    _, reward = load_checkpoint(hf_reward["dir"])
    _, value = load_checkpoint(hf_reward["dir"], head="value")
    _assert_trees_equal(value, reward)


# ---------------------------------------------------------------------------------------------
# 4. bf16 checkpoints
# ---------------------------------------------------------------------------------------------


def test_bf16_checkpoint_upcasts_exactly(hf_models, loaded, tmp_path):
    import torch

    model = copy.deepcopy(hf_models["llama"]["model"]).to(torch.bfloat16)
    model.save_pretrained(str(tmp_path))
    with open(tmp_path / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}

    config, params = load_checkpoint(str(tmp_path))
    assert config.param_dtype == "float32"
    params32 = loaded["llama"][1]
    expected = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), params32)
    _assert_trees_equal(params, expected)
    # The rounding really happened (the comparison is not trivially against the fp32 weights).
    assert not np.array_equal(params["trunk"]["embed"], params32["trunk"]["embed"])
    np.testing.assert_array_equal(
        params["trunk"]["embed"], model.model.embed_tokens.weight.detach().float().numpy()
    )


# ---------------------------------------------------------------------------------------------
# 5. Errors
# ---------------------------------------------------------------------------------------------


def _edit_config(path, **changes):
    with open(os.path.join(path, "config.json")) as f:
        hf = json.load(f)
    hf.update(changes)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf, f)


def _edit_tensors(path, fn):
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    fn(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_unsupported_model_type(own_checkpoint, tmp_path):
    path = _copy_checkpoint(own_checkpoint, tmp_path / "ckpt")
    _edit_config(path, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    with pytest.raises(UnsupportedModelError, match="gpt2") as err:
        load_checkpoint(path)
    for supported in SUPPORTED_MODEL_TYPES:
        assert supported in str(err.value)


@pytest.mark.parametrize(
    "name, edit, shown_shape",
    [
        ("model.layers.1.mlp.up_proj.weight", lambda w: w[:-1], "(127, 64)"),
        ("model.layers.0.self_attn.k_proj.weight", lambda w: w[:-2], "(30, 64)"),
        # Right number of elements, wrong shape: must not be silently reshaped.
        ("model.layers.0.self_attn.k_proj.weight", lambda w: w.T, "(64, 32)"),
    ],
    ids=["truncated_mlp", "truncated_attention", "transposed_same_size"],
)
def test_wrong_shape_tensor(own_checkpoint, tmp_path, name, edit, shown_shape):
    path = _copy_checkpoint(own_checkpoint, tmp_path / "ckpt")

    def apply(tensors):
        tensors[name] = np.ascontiguousarray(edit(tensors[name]))

    _edit_tensors(path, apply)
    with pytest.raises(CheckpointMismatchError, match=name.replace(".", r"\.")) as err:
        load_checkpoint(path)
    assert shown_shape in str(err.value)


def test_missing_tensor(own_checkpoint, tmp_path):
    path = _copy_checkpoint(own_checkpoint, tmp_path / "ckpt")
    name = "model.layers.1.self_attn.v_proj.weight"
    _edit_tensors(path, lambda t: t.pop(name))
    with pytest.raises(CheckpointMismatchError, match=name.replace(".", r"\.")):
        load_checkpoint(path)


def test_missing_lm_head_of_untied_model(own_checkpoint, tmp_path):
    path = _copy_checkpoint(own_checkpoint, tmp_path / "ckpt")
    _edit_tensors(path, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(CheckpointMismatchError, match=r"lm_head\.weight"):
        load_checkpoint(path)


def test_unexpected_tensor(own_checkpoint, tmp_path):
    path = _copy_checkpoint(own_checkpoint, tmp_path / "ckpt")
    name = "model.layers.0.self_attn.extra_proj.weight"

    def add(t):
        t[name] = np.zeros((4, 4), np.float32)

    _edit_tensors(path, add)
    with pytest.raises(CheckpointMismatchError, match=name.replace(".", r"\.")):
        load_checkpoint(path)


def test_ignored_rotary_buffer_is_accepted(own_checkpoint, tiny_params, tmp_path):
    path = _copy_checkpoint(own_checkpoint, tmp_path / "ckpt")

    def add(t):
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones((8,), np.float32)

    _edit_tensors(path, add)
    _, params = load_checkpoint(path)
    _assert_trees_equal(params, jax.tree.map(np.asarray, tiny_params))


def _strip_to_bare_trunk(tensors):
    """What `LlamaModel.save_pretrained` writes: no LM head, names without the 'model.' prefix."""
    tensors.pop("lm_head.weight", None)
    for name in list(tensors):
        tensors[name.removeprefix("model.")] = tensors.pop(name)


def test_bare_trunk_checkpoint_tied(tiny_config, tiny_params, tmp_path):
    config = dataclasses.replace(tiny_config, tie_embeddings=True)
    params = {"trunk": tiny_params["trunk"]}
    save_checkpoint(str(tmp_path), config, params)
    _edit_tensors(str(tmp_path), _strip_to_bare_trunk)
    assert not any(n.startswith("model.") for n in load_file(str(tmp_path / "model.safetensors")))
    config2, params2 = load_checkpoint(str(tmp_path))
    assert config2 == config
    _assert_trees_equal(params2, jax.tree.map(np.asarray, params))


def test_bare_trunk_checkpoint_as_value_model(own_checkpoint, tiny_params, tmp_path):
    path = _copy_checkpoint(own_checkpoint, tmp_path / "ckpt")
    _edit_tensors(path, _strip_to_bare_trunk)
    _, value = load_checkpoint(path, head="value")
    _assert_trees_equal(value["trunk"], jax.tree.map(np.asarray, tiny_params["trunk"]))


def test_directory_without_safetensors(own_checkpoint, tmp_path):
    path = tmp_path / "ckpt"
    path.mkdir()
    shutil.copy(os.path.join(own_checkpoint, "config.json"), path / "config.json")
    (path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_checkpoint(str(path))


def test_unsupported_rope_type(own_checkpoint, tmp_path):
    path = _copy_checkpoint(own_checkpoint, tmp_path / "ckpt")
    yarn = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32}
    _edit_config(path, rope_parameters=yarn)
    with pytest.raises(UnsupportedModelError, match="yarn"):
        load_checkpoint(path)
    # The transformers<5 layout is rejected the same way.
    old = {"model_type": "llama", "rope_theta": 10000.0, "rope_scaling": {"type": "yarn", "factor": 4.0}}
    with pytest.raises(UnsupportedModelError, match="yarn"):
        from_hf_config({**_hf_dims(), **old})
    with pytest.raises(UnsupportedModelError, match="yarn"):
        TransformerConfig(**{**_fields(TransformerConfig(**_dims())), "rope_type": "yarn"})


def test_sliding_window_rejected(own_checkpoint, tmp_path):
    path = _copy_checkpoint(own_checkpoint, tmp_path / "ckpt")
    _edit_config(path, model_type="qwen2", use_sliding_window=True, sliding_window=4)
    with pytest.raises(UnsupportedModelError, match="use_sliding_window"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"mlp_bias": True}, "mlp_bias"),
    ],
)
def test_other_unsupported_options(changes, match):
    with pytest.raises(UnsupportedModelError, match=match):
        from_hf_config({**_hf_dims(), "model_type": "llama", **changes})


def test_classifier_score_must_have_num_labels_rows(tiny_config, tiny_params, tmp_path):
    # num_labels K > 1 loads (tests/test_multi_label.py); a score tensor of another K is refused.
    params = {"trunk": tiny_params["trunk"], "score": np.zeros((tiny_config.d_model, 1), np.float32)}
    save_checkpoint(str(tmp_path), tiny_config, params, head="reward")
    _edit_config(str(tmp_path), num_labels=2, id2label={"0": "LABEL_0", "1": "LABEL_1"})
    with pytest.raises(CheckpointMismatchError, match=r"'score\.weight' has shape \(1, 64\).*\(2, 64\)"):
        load_checkpoint(str(tmp_path))


def test_save_rejects_value_head(tiny_config, tiny_params, tmp_path):
    with pytest.raises(ValueError, match="value"):
        save_checkpoint(str(tmp_path), tiny_config, tiny_params, head="value")


# ---------------------------------------------------------------------------------------------
# 6. Logical axes and parameter counts
# ---------------------------------------------------------------------------------------------


def _dims(**overrides):
    return (
        dict(vocab_size=VOCAB, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=128) | overrides
    )


def _hf_dims():
    sizes = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    return {k: HF_COMMON[k] for k in (*sizes, "intermediate_size")}


VARIANTS = {
    "untied": _dims(),
    "tied": _dims(tie_embeddings=True),
    "qkv_bias": _dims(qkv_bias=True, model_type="qwen2"),
    "qkv_bias_tied": _dims(qkv_bias=True, tie_embeddings=True, model_type="qwen2"),
    "qk_norm": _dims(qk_norm=True, head_dim=32, model_type="qwen3"),
    "mha_qk_norm_tied": _dims(qk_norm=True, num_kv_heads=4, head_dim=24, tie_embeddings=True),
}
AXIS_NAMES = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", None}


def _is_spec(x):
    return isinstance(x, PartitionSpec)


@pytest.mark.parametrize("head", ["causal_lm", "value", "reward"])
def test_logical_axes_match_init_params(tiny_config, tiny_params, head):
    params = tiny_params if head == "causal_lm" else init_params(tiny_config, jax.random.PRNGKey(0), head)
    axes = logical_axes(tiny_config, head)
    assert jax.tree.structure(axes, is_leaf=_is_spec) == jax.tree.structure(params)
    specs = jax.tree.leaves(axes, is_leaf=_is_spec)
    assert specs and all(_is_spec(s) for s in specs)
    for spec, p in zip(specs, jax.tree.leaves(params), strict=True):
        assert len(spec) == p.ndim
        assert set(spec) <= AXIS_NAMES
    if head != "causal_lm":
        assert axes["score"] == PartitionSpec("embed", None)
    else:
        assert axes["lm_head"] == PartitionSpec("embed", "vocab")
        assert axes["trunk"]["layers_0"]["attn"]["k_proj"] == PartitionSpec("embed", "kv_heads", "head_dim")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logical_axes_and_num_params(variant):
    config = TransformerConfig(**VARIANTS[variant])
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
    axes = logical_axes(config)
    assert jax.tree.structure(axes, is_leaf=_is_spec) == jax.tree.structure(shapes)
    for spec, p in zip(jax.tree.leaves(axes, is_leaf=_is_spec), jax.tree.leaves(shapes), strict=True):
        assert _is_spec(spec) and len(spec) == len(p.shape)
    assert config.num_params == sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes))
    assert ("lm_head" in shapes) != config.tie_embeddings


def test_num_params_real_init(tiny_config, tiny_params):
    assert tiny_config.num_params == sum(x.size for x in jax.tree.leaves(tiny_params))
    # 97*64 embed + lm_head, per layer q,o 64*64, k,v 64*32, mlp 3*64*128, two norms; final norm.
    layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64
    assert tiny_config.num_params == 2 * 97 * 64 + 2 * layer + 64


# ---------------------------------------------------------------------------------------------
# 7. Config mapping
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "old_scaling, new_params",
    [
        (None, {"rope_type": "default", "rope_theta": 250000.0}),
        ({"type": "linear", "factor": 4.0}, {"rope_type": "linear", "rope_theta": 250000.0, "factor": 4.0}),
        (
            {k: v for k, v in LLAMA3_ROPE.items() if k not in ("rope_type", "rope_theta")}
            | {"type": "llama3"},
            LLAMA3_ROPE | {"rope_theta": 250000.0},
        ),
    ],
)
def test_old_and_new_rope_layouts_agree(old_scaling, new_params):
    base = {**_hf_dims(), "model_type": "llama"}
    old = from_hf_config({**base, "rope_theta": 250000.0, "rope_scaling": old_scaling})
    new = from_hf_config({**base, "rope_parameters": new_params})
    assert old == new
    assert new.rope_theta == 250000.0 and new.rope_type == new_params["rope_type"]
    if new.rope_type != "default":
        assert new.rope_factor == new_params["factor"]
        np.testing.assert_allclose(
            rope_inverse_frequencies(new)[-1],
            rope_inverse_frequencies(TransformerConfig(**_dims(rope_theta=250000.0)))[-1] / new.rope_factor,
        )
    if new.rope_type == "llama3":
        assert (new.rope_low_freq_factor, new.rope_high_freq_factor) == (1.0, 4.0)
        assert new.rope_original_max_positions == 16


KEY_FIELDS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "rms_norm_eps",
    "rope_parameters",
    "tie_word_embeddings",
    "max_position_embeddings",
    "initializer_range",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


@pytest.mark.parametrize("arch", ARCHS)
def test_to_hf_config_round_trips_transformers_config(arch, hf_models):
    with open(os.path.join(hf_models[arch]["dir"], "config.json")) as f:
        hf = json.load(f)
    exported = to_hf_config(from_hf_config(hf))
    for key in KEY_FIELDS:
        if key in hf:
            assert exported[key] == hf[key], key
    assert exported["architectures"] == hf["architectures"] == [HF_ARCHS[arch][1]]
    if arch == "llama":
        assert exported["attention_bias"] is False and exported["rope_scaling"]["type"] == "llama3"
    else:
        assert exported["use_sliding_window"] is False


@pytest.mark.parametrize("variant", ["untied", "qkv_bias_tied", "qk_norm"])
def test_from_hf_config_inverts_to_hf_config(variant):
    config = TransformerConfig(
        **VARIANTS[variant], rope_type="linear", rope_factor=2.0, eos_token_id=[3, 4], bos_token_id=1
    )
    assert config.eos_token_id == (3, 4)
    hf = to_hf_config(config)
    assert hf["eos_token_id"] == [3, 4]
    assert from_hf_config(hf) == config
    # Through a JSON file as well (no tuples, string keys).
    assert from_hf_config(json.loads(json.dumps(hf))) == config
    assert from_hf_config(hf, dtype="bfloat16").dtype == "bfloat16"


def test_to_hf_config_rejects_inexpressible_configs():
    with pytest.raises(UnsupportedModelError, match="qkv_bias"):
        to_hf_config(TransformerConfig(**_dims(model_type="qwen3", qk_norm=True, qkv_bias=True)))
    with pytest.raises(UnsupportedModelError, match="qk_norm"):
        to_hf_config(TransformerConfig(**_dims(model_type="llama", qk_norm=True)))
    # A biased Llama is expressible (attention_bias=true).
    assert to_hf_config(TransformerConfig(**_dims(qkv_bias=True)))["attention_bias"] is True


def test_positions_from_mask_matches_hf_convention():
    _, left = _batch("left")
    _, right = _batch("right")
    for mask in (left, right):
        np.testing.assert_array_equal(np.asarray(positions_from_mask(mask)), _hf_positions(mask))
    assert np.asarray(positions_from_mask(left))[0].tolist() == [0, 0, 0, 0, 1, 2, 3, 4]


def test_reward_checkpoint_cannot_become_causal_lm(hf_reward):
    """An untied reward model has no LM head: asking for one is an error, never a random head."""
    with pytest.raises(CheckpointMismatchError, match="lm_head"):
        load_checkpoint(hf_reward["dir"], head="causal_lm")


def test_directory_without_config_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_checkpoint(str(tmp_path))
