"""Hugging Face checkpoint interop: local safetensors directories <-> params pytrees.

A checkpoint directory holds `config.json` and either `model.safetensors` or shards listed in
`model.safetensors.index.json`. Supported: `{Llama,Qwen2,Qwen3}ForCausalLM` (head 'causal_lm')
and `{...}ForSequenceClassification` (head 'reward'; num_labels K >= 1, a scalar or a
multi-label reward model, `TransformerConfig.num_labels`). Loading never touches the network
and never unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxrl_llm import lora
from jaxrl_llm.models.config import TransformerConfig, from_hf_config, hf_num_labels, to_hf_config
from jaxrl_llm.models.transformer import init_params

_SINGLE_FILE = "model.safetensors"
_INDEX_FILE = "model.safetensors.index.json"
# Tensors some checkpoints carry that hold no learned state.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointMismatchError(ValueError):
    """A checkpoint tensor is missing, unexpected, or has the wrong shape."""


def _transpose(w):
    return w.T


def _tensor_map(
    config: TransformerConfig, head: str
) -> Iterator[tuple[str, tuple[str, ...], Callable, Callable]]:
    """Yields (hf_name, params_path, hf_to_ours, ours_to_hf) for every parameter of `head`."""
    d, h, k, dh = config.d_model, config.num_heads, config.num_kv_heads, config.head_dim
    yield "model.embed_tokens.weight", ("trunk", "embed"), np.asarray, np.asarray
    yield "model.norm.weight", ("trunk", "final_norm", "scale"), np.asarray, np.asarray
    for i in range(config.num_layers):
        hf, ours = f"model.layers.{i}.", ("trunk", f"layers_{i}")
        yield hf + "input_layernorm.weight", ours + ("attn_norm", "scale"), np.asarray, np.asarray
        yield hf + "post_attention_layernorm.weight", ours + ("mlp_norm", "scale"), np.asarray, np.asarray
        for name, heads in (("q", h), ("k", k), ("v", k)):
            # HF Linear weight [heads*Dh, D]  <->  ours [D, heads, Dh]
            yield (
                hf + f"self_attn.{name}_proj.weight",
                ours + ("attn", f"{name}_proj"),
                lambda w, n=heads: w.T.reshape(d, n, dh),
                lambda w, n=heads: w.reshape(d, n * dh).T,
            )
            if config.qkv_bias:
                yield (
                    hf + f"self_attn.{name}_proj.bias",
                    ours + ("attn", f"{name}_bias"),
                    lambda b, n=heads: b.reshape(n, dh),
                    lambda b, n=heads: b.reshape(n * dh),
                )
        yield (
            hf + "self_attn.o_proj.weight",
            ours + ("attn", "o_proj"),
            lambda w: w.T.reshape(h, dh, d),
            lambda w: w.reshape(h * dh, d).T,
        )
        if config.qk_norm:
            for name in ("q_norm", "k_norm"):
                yield hf + f"self_attn.{name}.weight", ours + ("attn", name, "scale"), np.asarray, np.asarray
        for name in ("gate_proj", "up_proj", "down_proj"):
            yield hf + f"mlp.{name}.weight", ours + ("mlp", name), _transpose, _transpose
    if head == "causal_lm" and not config.tie_embeddings:
        yield "lm_head.weight", ("lm_head",), _transpose, _transpose
    if head == "reward":
        yield "score.weight", ("score",), _transpose, _transpose


def _read_json(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def _head_from_architectures(hf_config: dict[str, Any]) -> str:
    archs = hf_config.get("architectures") or []
    return "reward" if any(a.endswith("ForSequenceClassification") for a in archs) else "causal_lm"


def _open_tensors(path: str) -> dict[str, Callable[[], np.ndarray]]:
    """Maps every tensor name in the directory's safetensors file(s) to a lazy loader."""
    if os.path.exists(os.path.join(path, _INDEX_FILE)):
        files = sorted(set(_read_json(os.path.join(path, _INDEX_FILE))["weight_map"].values()))
    elif os.path.exists(os.path.join(path, _SINGLE_FILE)):
        files = [_SINGLE_FILE]
    else:
        raise FileNotFoundError(
            f"No {_SINGLE_FILE} or {_INDEX_FILE} in {path!r}: a Hugging Face safetensors checkpoint is "
            "expected (PyTorch .bin checkpoints are not loaded because they need pickle)."
        )
    loaders = {}
    for file in files:
        full = os.path.join(path, file)
        with safe_open(full, framework="numpy") as f:
            names = list(f.keys())
        for name in names:
            loaders[name] = lambda full=full, name=name: _load_tensor(full, name)
    return loaders


def _load_tensor(file: str, name: str) -> np.ndarray:
    # numpy has no bfloat16: read the raw bytes and view them through ml_dtypes.
    with safe_open(file, framework="numpy") as f:
        try:
            return f.get_tensor(name)
        except TypeError:
            pass
    with open(file, "rb") as raw:
        header_len = int.from_bytes(raw.read(8), "little")
        header = json.loads(raw.read(header_len))
        meta = header[name]
        start, end = meta["data_offsets"]
        raw.seek(8 + header_len + start)
        buf = raw.read(end - start)
    dtypes = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32}
    if meta["dtype"] not in dtypes:
        raise CheckpointMismatchError(f"tensor {name!r} has unsupported dtype {meta['dtype']}.")
    return np.frombuffer(buf, dtypes[meta["dtype"]]).reshape(meta["shape"])


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def load_checkpoint(path: str, head: str | None = None, rng: jax.Array | None = None, **config_overrides):
    """Loads a local Hugging Face checkpoint directory.

    Args:
      path: directory with config.json and *.safetensors (single file or index + shards).
      head: 'causal_lm', 'value' or 'reward'; default from config.json `architectures`. The trunk
        always comes from the checkpoint; a head the checkpoint lacks (the scalar `score` of a
        value or reward model built from a causal LM, as when a critic starts from the SFT
        policy) is freshly initialised from `rng`, and a reward model's `score` seeds a value head.
      rng: PRNG key for freshly initialised heads and LoRA adapters (default PRNGKey(0)).
      **config_overrides: TransformerConfig fields to replace (e.g. dtype='bfloat16'; with
        lora=LoraConfig(...) the checkpoint is the frozen base and fresh adapters are added).

    Returns:
      (TransformerConfig, params) with numpy arrays of config.param_dtype.

    Raises:
      UnsupportedModelError for architectures or options outside the Llama/Qwen2/Qwen3 family;
      CheckpointMismatchError naming the tensor for missing, unexpected or mis-shaped tensors.
    """
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"no config.json in {path!r}: expected a local Hugging Face checkpoint directory "
            "(config.json + *.safetensors, e.g. from `huggingface-cli download` or `save_pretrained`)."
        )
    hf_config = _read_json(os.path.join(path, "config.json"))
    stored_head = _head_from_architectures(hf_config)
    head = head or stored_head
    config = from_hf_config(hf_config, **config_overrides)
    if stored_head == "reward" and config.num_labels != hf_num_labels(hf_config):
        raise CheckpointMismatchError(
            f"checkpoint {path!r} is a reward model with num_labels={hf_num_labels(hf_config)}, but "
            f"num_labels={config.num_labels} was asked for (in a training config: set model.num_labels="
            f"{hf_num_labels(hf_config)})."
        )
    loaders = _open_tensors(path)
    if not any(n.startswith("model.") for n in loaders):  # bare `*Model` checkpoints
        loaders = {"model." + n: fn for n, fn in loaders.items()}
    expected = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0), head))
    params: dict = {}
    stored = list(_tensor_map(config, stored_head))
    for hf_name, our_path, to_ours, to_hf in stored:
        if our_path[0] not in expected:  # e.g. the LM head when loading a value model
            continue
        if hf_name not in loaders:
            raise CheckpointMismatchError(
                f"checkpoint {path!r} has no tensor {hf_name!r} (needed for {'/'.join(our_path)})."
            )
        want = _get(expected, our_path).shape
        want_hf = to_hf(np.broadcast_to(np.zeros((), np.float32), want)).shape  # zero-stride: no memory
        raw = loaders[hf_name]()
        if raw.shape != want_hf:
            raise CheckpointMismatchError(
                f"tensor {hf_name!r} has shape {raw.shape}, but config.json implies {want_hf}."
            )
        _set(params, our_path, np.asarray(to_ours(raw), dtype=config.param_dtype))
    for name, spec in expected.items():
        if name in params:
            continue
        if name != "score":
            raise CheckpointMismatchError(
                f"checkpoint {path!r} ({stored_head}) has no weights for {name!r}, which head={head!r} needs."
            )
        # A scalar head the checkpoint does not have (e.g. a critic started from the SFT policy).
        rng = jax.random.PRNGKey(0) if rng is None else rng
        params[name] = np.asarray(jax.random.normal(rng, spec.shape) * config.init_std, config.param_dtype)
    if config.lora is not None:
        params = lora.add_adapters(config, params, jax.random.PRNGKey(0) if rng is None else rng, head)
    known = {name for name, *_ in stored} | {"lm_head.weight"}
    unexpected = [n for n in loaders if n not in known and not n.endswith(_IGNORED_SUFFIXES)]
    if unexpected:
        raise CheckpointMismatchError(
            f"checkpoint {path!r} has tensors a {config.model_type} {stored_head} model does not use: "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}."
        )
    return config, params


def save_checkpoint(
    path: str, config: TransformerConfig, params, head: str = "causal_lm", max_shard_bytes: int = 5 * 2**30
) -> None:
    """Writes params as a Hugging Face checkpoint directory that `transformers` loads.

    head 'causal_lm' writes `*ForCausalLM`, 'reward' writes `*ForSequenceClassification`
    with num_labels = config.num_labels (K > 1 also writes problem_type 'regression': the MSE
    loss of `transformers` for K aspect scores). Shards into `model-0000i-of-0000n.safetensors`
    + index when the weights exceed `max_shard_bytes`. With `config.lora`, the adapters are merged into the weights
    first (W + alpha / r * A B; `jaxrl_llm.lora.merge_adapters`).
    """
    if head not in ("causal_lm", "reward"):
        raise ValueError(f"head={head!r} cannot be exported; use 'causal_lm' or 'reward'.")
    os.makedirs(path, exist_ok=True)
    if config.lora is not None:
        params = lora.merge_adapters(config, params)
    params = jax.device_get(params)
    if config.lm_heads > 1:  # MAH-DPO: the mixture Σ_k w̄_k W_k, the policy it samples from
        w = np.asarray(config.head_weights or (1.0,) * config.lm_heads, np.float64)
        mixed = np.einsum("k,kdv->dv", w / w.sum(), np.asarray(params["lm_head"], np.float64))
        params = {**params, "lm_head": mixed.astype(np.asarray(params["lm_head"]).dtype)}
        config = dataclasses.replace(config, lm_heads=1, head_weights=None)
    tensors = {
        hf_name: np.ascontiguousarray(to_hf(np.asarray(_get(params, our_path))))
        for hf_name, our_path, _, to_hf in _tensor_map(config, head)
    }
    hf_config = to_hf_config(config)
    if head == "reward":
        hf_config["architectures"] = [
            hf_config["architectures"][0].replace("ForCausalLM", "ForSequenceClassification")
        ]
        k = config.num_labels
        labels = [f"LABEL_{i}" for i in range(k)]
        hf_config.update(
            num_labels=k,
            id2label={str(i): name for i, name in enumerate(labels)},
            label2id={name: i for i, name in enumerate(labels)},
        )
        if k > 1:
            hf_config["problem_type"] = "regression"
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, value in tensors.items():
        if shards[-1] and size + value.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = value
        size += value.nbytes
    for stale in (_SINGLE_FILE, _INDEX_FILE):
        if os.path.exists(os.path.join(path, stale)):
            os.remove(os.path.join(path, stale))
    if len(shards) == 1:
        save_file(shards[0], os.path.join(path, _SINGLE_FILE), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(path, file), metadata={"format": "pt"})
        weight_map.update({name: file for name in shard})
    index = {"metadata": {"total_size": sum(v.nbytes for v in tensors.values())}, "weight_map": weight_map}
    with open(os.path.join(path, _INDEX_FILE), "w") as f:
        json.dump(index, f, indent=2)
