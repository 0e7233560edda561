"""Config -> objects: model + tokenizer, optimiser, schedules, reward functions."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxrl_llm.data.tokenizer import Tokenizer, char_tokenizer, load_tokenizer
from jaxrl_llm.models.config import LoraConfig, TransformerConfig, from_hf_config
from jaxrl_llm.models.hf import load_checkpoint
from jaxrl_llm.models.transformer import init_params
from jaxrl_llm.rewards import get_reward

MODEL_SHAPE_FIELDS = (
    "lm_heads",
    "head_weights",
    "d_model",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "mlp_dim",
    "head_dim",
    "max_position_embeddings",
    "init_std",
    "tie_embeddings",
    "num_labels",
)


def lora_config(model) -> LoraConfig | None:
    """`config.model.lora` as a LoraConfig, or None when it is absent or its rank is 0 (off)."""
    lora = model.get("lora")
    if lora is None or lora.rank == 0:
        return None
    return LoraConfig(**lora.to_dict())


def build_model(config) -> tuple[TransformerConfig, dict, Tokenizer]:
    """(model config, params, tokenizer).

    `config.model.checkpoint` set: a local Hugging Face directory (config.json, *.safetensors,
    tokenizer.json). Otherwise a randomly initialised model of the shape in `config.model`
    with a character tokenizer over `config.tokenizer.alphabet` (the embedded arithmetic task).
    `config.model.remat` and `config.model.lora` apply to both; with LoRA the params include
    fresh adapters (the model still equals the base). `config.model.num_labels` is the reward
    head's K (a reward-model phase).
    """
    m = config.model
    memory = dict(remat=m.get("remat", "none"), lora=lora_config(m))  # sampling configs lack them
    if m.checkpoint:
        num_labels = m.get("num_labels", 1)
        model_config, params = load_checkpoint(m.checkpoint, dtype=m.dtype, num_labels=num_labels, **memory)
        model_config, params = with_lm_heads(
            model_config, params, m.get("lm_heads", 1), m.get("head_weights")
        )
        tokenizer = load_tokenizer(m.checkpoint)
    else:
        tokenizer = char_tokenizer(config.tokenizer.alphabet)
        model_config = _random_model_config(m, tokenizer, m.dtype, **memory)
        params = init_params(model_config, jax.random.PRNGKey(config.seed))
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model only {model_config.vocab_size} "
            f"embeddings: checkpoint {m.checkpoint!r} and its tokenizer do not belong together"
        )
    return model_config, params, tokenizer


def with_lm_heads(model_config: TransformerConfig, params, lm_heads: int, head_weights=None):
    """(config, params) of a checkpoint's causal LM with `lm_heads` LM heads (MAH-DPO): H > 1
    copies its `lm_head` [D, V] H times ([H, D, V]: identical heads, so the model is unchanged
    and, as the reference, every head's reference is the SFT head). params may be None (the
    config only). H = 1: unchanged."""
    if lm_heads == 1 and head_weights is None:
        return model_config, params
    model_config = dataclasses.replace(model_config, lm_heads=lm_heads, head_weights=head_weights)
    if params is not None and "lm_head" in params and params["lm_head"].ndim == 2:
        params = {
            **params,
            "lm_head": jnp.broadcast_to(params["lm_head"], (lm_heads, *params["lm_head"].shape)) + 0,
        }
    return model_config, params


def _random_model_config(m, tokenizer: Tokenizer, dtype: str, **memory) -> TransformerConfig:
    """The TransformerConfig of a random model of the shape in `config.model` (`m`)."""
    shape = {k: m[k] for k in MODEL_SHAPE_FIELDS if k in m and m[k] is not None}
    return TransformerConfig(
        vocab_size=tokenizer.vocab_size,
        dtype=dtype,
        eos_token_id=tokenizer.eos_ids,
        pad_token_id=tokenizer.pad_id,
        bos_token_id=tokenizer.bos_id,
        **memory,
        **shape,
    )


def model_config_from_run(run_dir: str, dtype: str | None = None) -> TransformerConfig:
    """The TransformerConfig `build_model` built for the run in `run_dir`, from its
    `config.json` snapshot, without loading or initialising parameters (auxiliary models
    from an earlier run's orbax checkpoints). `dtype` replaces the run's `model.dtype`; the
    run's LoRA adapters are kept (they are in its checkpoints), remat is off (frozen model).
    """
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no config.json in {run_dir!r}: an orbax checkpoint step directory must lie in "
            "<workdir>/checkpoints/<phase>/<step> of a run whose workdir holds its config.json snapshot"
        )
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    m = config.model
    dtype = dtype or m.dtype
    lora = lora_config(m)
    if m.checkpoint:
        hf_path = os.path.join(m.checkpoint, "config.json")
        if not os.path.isfile(hf_path):
            raise FileNotFoundError(
                f"{path}: model.checkpoint={m.checkpoint!r} has no config.json (the run's base model "
                "gives the shape of its checkpoints)"
            )
        with open(hf_path) as f:
            hf = from_hf_config(json.load(f), dtype=dtype, lora=lora, num_labels=m.get("num_labels", 1))
        return with_lm_heads(hf, None, m.get("lm_heads", 1), m.get("head_weights"))[0]
    return _random_model_config(m, char_tokenizer(config.tokenizer.alphabet), dtype, lora=lora)


def make_schedule(learning_rate: float, schedule: str, warmup_steps: int, total_steps: int):
    """'constant' | 'linear' (to 0) | 'cosine' (to 0), each after a linear warm-up from 0."""
    decay_steps = max(total_steps - warmup_steps, 1)
    if schedule == "constant":
        main = optax.constant_schedule(learning_rate)
    elif schedule == "linear":
        main = optax.linear_schedule(learning_rate, 0.0, decay_steps)
    elif schedule == "cosine":
        main = optax.cosine_decay_schedule(learning_rate, decay_steps)
    else:
        raise ValueError(f"optimizer.schedule={schedule!r}; use 'constant', 'linear' or 'cosine'")
    if warmup_steps <= 0:
        return main
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


def make_optimizer(opt, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping (opt.grad_clip > 0) then AdamW with the configured schedule."""
    lr = make_schedule(opt.learning_rate, opt.schedule, opt.warmup_steps, total_steps)
    adam = optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay)
    return optax.chain(optax.clip_by_global_norm(opt.grad_clip), adam) if opt.grad_clip > 0 else adam


def reward_functions(rewards_config) -> list[tuple[str, object, float]]:
    """config.rewards = {name: weight} -> [(name, fn, weight)] from the reward registry."""
    fns = [(name, get_reward(name), float(weight)) for name, weight in rewards_config.items()]
    if not fns:
        raise ValueError("config.rewards is empty; add one, e.g. --config.rewards.exact_match=1.0")
    return fns
