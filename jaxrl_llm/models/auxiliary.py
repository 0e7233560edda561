"""Frozen auxiliary models (reward models, ensembles, teachers, process reward models).

`config.aux_models` maps a name to where the model comes from:

    config.aux_models = {
        "rm": {"checkpoint": "/models/my-rm", "head": "reward"},            # an HF directory
        "teacher": {"checkpoint": "runs/big/checkpoints/main/300", "head": "causal_lm"},  # orbax step
    }

A reward model may have K > 1 outputs (a multi-label reward model, `TransformerConfig.num_labels`,
trained by `multi_label_rm`); as a reward its K scores become one, R = Σ_k w_k r_k
(`weighted_reward`), with `"label_weights": (w_1, ..., w_K)` in its entry (default: equal
weights 1/K).

An HF directory holds `config.json` + `*.safetensors` (`load_checkpoint`); an orbax step
directory is an earlier run's checkpoint (`<workdir>/checkpoints/<phase>/<step>`; its policy
params, or with head 'value' its critic), whose model shape comes from that run's `config.json`.
Auxiliary models are never written into the training checkpoints: each checkpoint records
their source and a content digest (SHA-256 over the model's files), and resuming with a
different model under the same name is refused. Under a device mesh their params are sharded
by their heads' logical axes, like the reference policy.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrl_llm.losses.reward import weighted_reward
from jaxrl_llm.models.config import TransformerConfig
from jaxrl_llm.models.hf import load_checkpoint
from jaxrl_llm.models.transformer import HEADS, init_params
from jaxrl_llm.train.forward import sequence_scores

AUX_HEADS = tuple(HEADS)


class AuxModel(NamedTuple):
    """A frozen model: `params` are arrays, the other fields static.

    name: its key in `config.aux_models`; head: 'causal_lm' | 'value' | 'reward';
    source: the directory it was loaded from; digest: SHA-256 of its files;
    label_weights: a multi-label reward model's (w_1, ..., w_K) of R = Σ_k w_k r_k, or None
    (equal weights; always None for other models).
    """

    name: str
    head: str
    config: TransformerConfig
    params: Any
    source: str
    digest: str
    label_weights: tuple[float, ...] | None = None


def content_digest(path: str) -> str:
    """SHA-256 over the relative paths and bytes of every file under `path`, in sorted order."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode() + b"\0")
            with open(full, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def _is_orbax_step(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "state")) and not os.path.exists(
        os.path.join(path, "config.json")
    )


def _load_orbax(path: str, head: str, dtype: str):
    """Policy (or critic, head 'value') params of an earlier run's checkpoint step directory."""
    import orbax.checkpoint as ocp

    from jaxrl_llm.train.builders import model_config_from_run

    run_dir = os.path.abspath(os.path.join(path, "..", "..", ".."))
    config = model_config_from_run(run_dir, dtype)
    restored = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(path), "state"))
    key = "critic_params" if head == "value" else "params"
    params = restored.get(key) if isinstance(restored, dict) else None
    if params is None:
        raise ValueError(f"aux model checkpoint {path!r} has no {key!r} (head={head!r})")
    template = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0), head))
    missing = sorted(set(template) - set(params))
    if missing:  # e.g. head 'reward' on a policy: it has an LM head, no scalar 'score'
        raise ValueError(
            f"aux model checkpoint {path!r}: its {key!r} have no {missing} for head={head!r} (an "
            "earlier run's checkpoint gives its policy as 'causal_lm', its critic as 'value', and the "
            "model of a reward-model run (algo reward_model) as 'reward')"
        )
    params = {k: params[k] for k in template} if head != "causal_lm" else params
    if jax.tree.structure(params) != jax.tree.structure(template):
        raise ValueError(
            f"aux model checkpoint {path!r}: its params do not match a {head!r} model of the shape in "
            f"{run_dir}/config.json"
        )
    return config, jax.tree.map(lambda x, t: jnp.asarray(x, t.dtype), params, template)


def load_aux_model(name: str, spec, dtype: str = "float32") -> AuxModel:
    """Loads `config.aux_models[name]` (`spec` has `checkpoint` and `head`); errors name the field."""
    field = f"aux_models.{name}"
    path, head = spec.get("checkpoint", ""), spec.get("head", "reward")
    if head not in AUX_HEADS:
        raise ValueError(f"{field}.head={head!r}; use one of {AUX_HEADS}")
    if not path or not os.path.isdir(path):
        raise ValueError(
            f"{field}.checkpoint={path!r} is not a directory; give an HF checkpoint directory "
            "(config.json + *.safetensors) or an earlier run's checkpoints/<phase>/<step> directory"
        )
    if _is_orbax_step(path):
        config, params = _load_orbax(path, head, dtype)
    else:
        config, params = load_checkpoint(path, head=head, dtype=dtype)
    weights = _label_weights(spec.get("label_weights"), head, config.num_labels, field)
    return AuxModel(name, head, config, params, os.path.abspath(path), content_digest(path), weights)


def _label_weights(weights, head: str, num_labels: int, field: str) -> tuple[float, ...] | None:
    """`aux_models.<name>.label_weights` checked: None, or K finite numbers for a reward model
    with K = num_labels > 1 outputs."""
    if weights is None:
        return None
    if head != "reward" or num_labels == 1:
        raise ValueError(
            f"{field}.label_weights={weights!r}: only a multi-label reward model (head 'reward', "
            f"num_labels > 1) combines outputs; this model has head {head!r} and num_labels={num_labels}"
        )
    numbers = isinstance(weights, list | tuple) and all(
        isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) for w in weights
    )
    if not numbers or len(weights) != num_labels:
        raise ValueError(
            f"{field}.label_weights={weights!r} must be {num_labels} finite numbers, one weight per "
            f"output of the reward model (num_labels={num_labels}), or absent for equal weights"
        )
    return tuple(float(w) for w in weights)


def load_aux_models(aux_config, dtype: str = "float32") -> dict[str, AuxModel]:
    """Every model of `config.aux_models` (an empty dict when there are none)."""
    return {name: load_aux_model(name, spec, dtype) for name, spec in (aux_config or {}).items()}


def aux_record(models: dict[str, AuxModel]) -> dict:
    """What a checkpoint records of the auxiliary models: name -> {source, digest, head}."""
    return {m.name: {"source": m.source, "digest": m.digest, "head": m.head} for m in models.values()}


def check_aux_record(saved: dict | None, models: dict[str, AuxModel], where: str) -> None:
    """Refuses to resume when an auxiliary model differs from the one the checkpoint used."""
    now = aux_record(models)
    for name in sorted(set(saved or {}) | set(now)):
        before, after = (saved or {}).get(name), now.get(name)
        if before is None or after is None or before["digest"] != after["digest"]:
            was = "absent" if before is None else f"{before['source']} (sha256 {before['digest'][:12]})"
            is_ = "absent" if after is None else f"{after['source']} (sha256 {after['digest'][:12]})"
            raise ValueError(
                f"auxiliary model {name!r} (config field aux_models.{name}) changed since the checkpoint in "
                f"{where}: it was {was}, now {is_}. Restore the original model or use a new --workdir."
            )


def reward_scores(model: AuxModel, params, prompt_ids, prompt_mask, response_ids, response_mask):
    """The reward [B] of a reward-head model on (left-padded prompt, right-padded response):
    its scalar score, or for a multi-label model `combined_reward` of its K scores."""
    scores = sequence_scores(model.config, params, prompt_ids, prompt_mask, response_ids, response_mask)
    return combined_reward(model, scores)


def combined_reward(model: AuxModel, scores):
    """A reward model's scores, [B] or [B, K] (num_labels K > 1), as one reward [B]: the
    scores themselves, or R = Σ_k w_k r_k with the model's label_weights (`weighted_reward`;
    None: equal weights 1/K)."""
    if model.config.num_labels == 1:
        return scores
    return weighted_reward(scores, model.label_weights)
