"""LoRA fine-tuning on a frozen base (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large
Language Models", arXiv 2106.09685).

With `TransformerConfig.lora` set, each targeted projection W ([*in, *out]) of every block has
two adapter parameters stored beside it in the same params tree, `<name>_lora_a` A [*in, r] and
`<name>_lora_b` B [r, *out], and the model computes

    y = x W + (alpha / r) * (dropout(x) A) B.

The functions here operate on such trees:
  split_trainable / join   what an optimiser sees (adapters, plus a value/reward model's scalar
                           `score` head, which starts untrained) and what stays frozen;
  base_params              the tree without adapters = the base model with adapters disabled
                           (the reference policy of a KL term, sharing the base arrays: no copy);
  merge_adapters           W <- W + (alpha / r) A B, for export to Hugging Face safetensors
                           (`save_checkpoint` merges automatically) or to start a new phase;
  add_adapters             fresh adapters (A random, B = 0) for base weights loaded from disk.

Example:
  config = TransformerConfig(..., lora=LoraConfig(rank=8, alpha=16))
  params = init_params(config, rng)                  # base + adapters; equals the base model
  trainable, frozen = split_trainable(config, params)
  opt_state = optax.adam(1e-3).init(trainable)       # optimiser state for the adapters only
  ...
  save_checkpoint(path, config, params)              # merged weights, loads in transformers
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxrl_llm.models.config import TransformerConfig
from jaxrl_llm.models.transformer import init_params, lora_param_names

_A_SUFFIX, _B_SUFFIX = lora_param_names("")  # '_lora_a', '_lora_b'
# Heads trained under LoRA although they are not adapters: a value or reward model's scalar
# head is new (zero or random), so freezing it would leave the critic unable to learn.
_TRAINABLE_HEADS = ("score",)


def is_adapter(path: tuple[str, ...]) -> bool:
    """Whether the params-tree key path names a LoRA A or B matrix."""
    return path[-1].endswith((_A_SUFFIX, _B_SUFFIX))


def _is_trainable(path: tuple[str, ...]) -> bool:
    return is_adapter(path) or path[0] in _TRAINABLE_HEADS


def _partition(params, keep) -> tuple[dict, dict]:
    flat = traverse_util.flatten_dict(params)
    chosen = {k: v for k, v in flat.items() if keep(k)}
    rest = {k: v for k, v in flat.items() if not keep(k)}
    return traverse_util.unflatten_dict(chosen), traverse_util.unflatten_dict(rest)


def split_trainable(config: TransformerConfig, params) -> tuple[dict, dict | None]:
    """(trainable, frozen) halves of `params`; `join` puts them back together.

    With `config.lora` the trainable half holds the adapters (and a top-level `score` head),
    the frozen half everything else; without LoRA everything trains and frozen is None.
    Differentiating and optimising only the trainable half means no gradient buffers and no
    optimiser state for the base weights, and XLA skips the base weights' gradient matmuls.
    """
    if config.lora is None:
        return params, None
    return _partition(params, _is_trainable)


def join(trainable, frozen):
    """Inverse of `split_trainable`."""
    if frozen is None:
        return trainable
    flat = traverse_util.flatten_dict(frozen)
    flat.update(traverse_util.flatten_dict(trainable))
    return traverse_util.unflatten_dict(flat)


def base_params(params):
    """`params` without adapter leaves: the base model (adapters disabled), same arrays."""
    return _partition(params, lambda path: not is_adapter(path))[0]


def _adapted_projections(params):
    """(module path, projection name) of every projection in `params` that has an adapter."""
    flat = traverse_util.flatten_dict(params)
    return [(path[:-1], path[-1][: -len(_A_SUFFIX)]) for path in flat if path[-1].endswith(_A_SUFFIX)]


def merge_adapters(config: TransformerConfig, params, keep_adapters: bool = False):
    """Folds every adapter into its base weight: W <- W + (alpha / r) * A B.

    A: [*in, r] and B: [r, *out] contract over r to W's layout [*in, *out] (computed in float32,
    stored in W's dtype). Returns the plain base tree (what `save_checkpoint` exports), or with
    `keep_adapters` the same tree with each B reset to zero, which computes the same function
    and lets a new phase train fresh updates on top of the merged weights.
    """
    if config.lora is None:
        raise ValueError("merge_adapters needs a config with lora set (TransformerConfig.lora)")
    flat = dict(traverse_util.flatten_dict(params))
    scale = config.lora.scale
    for module, name in _adapted_projections(params):
        a_name, b_name = lora_param_names(name)
        w, a, b = flat[module + (name,)], flat[module + (a_name,)], flat[module + (b_name,)]
        delta = jnp.tensordot(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), axes=1)
        flat[module + (name,)] = (jnp.asarray(w, jnp.float32) + scale * delta).astype(w.dtype)
        if keep_adapters:
            flat[module + (b_name,)] = jnp.zeros_like(b)
        else:
            del flat[module + (a_name,)], flat[module + (b_name,)]
    return traverse_util.unflatten_dict(flat)


def add_adapters(config: TransformerConfig, params, rng: jax.Array, head: str = "causal_lm"):
    """`params` (a base tree, e.g. loaded from a Hugging Face checkpoint) plus freshly
    initialised adapters of `config.lora` (A random, B zero: the model is unchanged)."""
    if config.lora is None:
        raise ValueError("add_adapters needs a config with lora set (TransformerConfig.lora)")

    def fresh(rng):  # jitted, so XLA drops the unused random base weights
        return _partition(init_params(config, rng, head), is_adapter)[0]

    adapters = jax.tree.map(np.asarray, jax.jit(fresh)(rng))
    return join(adapters, base_params(params))


def num_elements(tree) -> int:
    """Total number of array elements in a pytree (parameter or optimiser-state counts)."""
    return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))
