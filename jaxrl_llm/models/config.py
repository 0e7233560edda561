"""Transformer configuration for the Llama / Qwen2 / Qwen3 family, and its Hugging Face mapping."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

# Hugging Face `architectures` entries this library can import, by model_type.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
_ARCH_PREFIX = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
# `remat` policies of the decoder blocks (jaxrl_llm/models/transformer.py maps them to jax.checkpoint).
REMAT_POLICIES = ("none", "full", "dots")
# Projections a LoRA adapter can attach to (the parameter names in every decoder block).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class UnsupportedModelError(ValueError):
    """Raised when a checkpoint's config.json asks for something this library does not implement."""


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters (LoRA, Hu et al. 2021, arXiv 2106.09685) on the block projections.

    A targeted projection y = x W (W: [*in, *out]) becomes
        y = x W + (alpha / rank) * (dropout(x) A) B,   A: [*in, rank], B: [rank, *out],
    with W frozen, A random (uniform, bound 1/sqrt(fan_in), as PEFT's kaiming_uniform(a=sqrt(5)))
    and B zero, so the adapted model starts equal to the base. Dropout acts on the adapter's
    input only, and only when the forward pass is given a 'dropout' rng (training updates).

    Attributes:
      rank: r, the adapters' inner width (> 0; `model.lora.rank=0` in a training config means off).
      alpha: scale numerator: the update is multiplied by alpha / rank.
      dropout: drop probability on the adapter input, in [0, 1).
      target_modules: names from LORA_TARGETS.
    """

    rank: int
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        if isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", (self.target_modules,))
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.rank < 1:
            raise ValueError(f"model.lora.rank={self.rank} must be positive (0 turns LoRA off in configs).")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.lora.dropout={self.dropout} must be in [0, 1).")
        unknown = [t for t in self.target_modules if t not in LORA_TARGETS]
        if unknown or not self.target_modules:
            raise ValueError(
                f"model.lora.target_modules={self.target_modules} names {unknown or 'nothing'}; "
                f"choose from {LORA_TARGETS}."
            )

    @property
    def scale(self) -> float:
        """alpha / rank, the factor of every adapter update."""
        return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of a decoder-only transformer (Llama/Qwen2/Qwen3 family).

    Frozen and hashable so it can be a static argument of jitted functions.

    Attributes:
      vocab_size: number of token embeddings V.
      d_model: residual width D (HF `hidden_size`).
      num_layers: number of decoder blocks L.
      num_heads: query heads H.
      num_kv_heads: key/value heads K (grouped-query attention when K < H; H % K == 0).
      head_dim: per-head width Dh (HF `head_dim`; defaults to D // H).
      mlp_dim: SwiGLU hidden width F (HF `intermediate_size`).
      rms_norm_eps: epsilon of every RMSNorm.
      rope_theta: RoPE base.
      rope_type: 'default', 'linear' or 'llama3' (Llama 3.1 frequency scaling).
      rope_factor, rope_low_freq_factor, rope_high_freq_factor, rope_original_max_positions:
        scaling parameters, used by 'linear' (factor) and 'llama3' (all four).
      qkv_bias: bias on q/k/v projections (Qwen2).
      qk_norm: RMSNorm over head_dim on queries and keys before RoPE (Qwen3).
      tie_embeddings: LM head shares the token-embedding matrix.
      max_position_embeddings: informational (RoPE is computed on the fly, no table).
      init_std: standard deviation of the normal initialiser of every matrix (HF `initializer_range`).
      dtype: activation/compute dtype name ('float32' default; 'bfloat16' for accelerators).
      param_dtype: parameter dtype name.
      model_type: 'llama', 'qwen2' or 'qwen3': which HF architecture export writes.
      bos_token_id, eos_token_id, pad_token_id: carried over from / to HF config.json.
      remat: rematerialisation of each decoder block in differentiated passes (REMAT_POLICIES):
        'none' keeps every activation for the backward pass, 'full' keeps only the block inputs
        and recomputes the rest, 'dots' also keeps the outputs of the weight matmuls
        (jax.checkpoint_policies.dots_with_no_batch_dims_saveable) and recomputes attention.
        Forward-only passes (sampling, scoring) are unaffected.
      lora: LoraConfig of low-rank adapters, or None (the model has no adapter parameters).
      num_labels: K, the outputs of the reward head (`RewardModel`; HF `num_labels` of
        `*ForSequenceClassification`): 1 a scalar reward model (scores [B]), K > 1 a multi-label
        one (scores [B, K], one per aspect). The other heads ignore it.
      lm_heads: H, the policy's LM heads on one trunk (MAH-DPO, `CausalLM`): 1 a plain causal
        LM; H > 1 an `lm_head` [H, D, V] whose rows train per objective (a row's head in
        `extras['head_ids']`) and mix at inference, logits = Σ_k w̄_k (W_k h) with
        w̄ = head_weights / Σ head_weights (None: equal). Needs untied embeddings.
      head_weights: the H inference mixing weights (None: equal), e.g. a user's preference.
    """

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    mlp_dim: int
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_positions: int = 8192
    qkv_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = False
    max_position_embeddings: int = 4096
    init_std: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] | None = None
    pad_token_id: int | None = None
    remat: str = "none"
    lora: LoraConfig | None = None
    num_labels: int = 1
    lm_heads: int = 1
    head_weights: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.head_dim is None:
            if self.d_model % self.num_heads:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
                    "set head_dim explicitly."
                )
            object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}."
            )
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedModelError(
                f"rope_type={self.rope_type!r} is not supported; use one of {SUPPORTED_ROPE_TYPES}."
            )
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"model_type={self.model_type!r} is not supported; use one of {SUPPORTED_MODEL_TYPES}."
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE.")
        if not isinstance(self.num_labels, int) or self.num_labels < 1:
            raise ValueError(
                f"model.num_labels={self.num_labels!r} must be a positive integer (the reward head's "
                "outputs: 1 for a scalar reward model, K for K aspect scores)."
            )
        if not isinstance(self.lm_heads, int) or self.lm_heads < 1:
            raise ValueError(f"model.lm_heads={self.lm_heads!r} must be a positive integer (LM heads).")
        if self.lm_heads > 1 and self.tie_embeddings:
            raise ValueError(
                f"model.lm_heads={self.lm_heads} needs untied embeddings (tie_embeddings=False): each "
                "head is its own matrix"
            )
        if self.head_weights is not None:
            w = tuple(float(x) for x in self.head_weights)
            if len(w) != self.lm_heads or min(w) < 0 or sum(w) <= 0:
                raise ValueError(
                    f"model.head_weights={self.head_weights!r} must be {self.lm_heads} non-negative numbers "
                    f"(one per LM head, model.lm_heads={self.lm_heads}) with a positive sum"
                )
            object.__setattr__(self, "head_weights", w)
        if self.remat not in REMAT_POLICIES:
            raise ValueError(
                f"model.remat={self.remat!r} is not a remat policy; use one of {REMAT_POLICIES}."
            )
        if isinstance(self.eos_token_id, int):
            object.__setattr__(self, "eos_token_id", (self.eos_token_id,))
        elif self.eos_token_id is not None:
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)  # fail early on a bad dtype name

    @property
    def num_params(self) -> int:
        """Exact parameter count of the causal LM (embeddings included)."""
        d, h, k, dh, f = self.d_model, self.num_heads, self.num_kv_heads, self.head_dim, self.mlp_dim
        attn = d * h * dh * 2 + d * k * dh * 2
        if self.qkv_bias:
            attn += h * dh + 2 * k * dh
        if self.qk_norm:
            attn += 2 * dh
        layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_embeddings else self.lm_heads * d * self.vocab_size
        return self.vocab_size * d + self.num_layers * layer + d + head


def from_hf_config(hf: dict[str, Any], **overrides) -> TransformerConfig:
    """Builds a TransformerConfig from a Hugging Face `config.json` dict.

    Accepts both the transformers<5 layout (`rope_theta`, `rope_scaling`) and the
    transformers>=5 layout (`rope_parameters`). Raises UnsupportedModelError naming the field
    for anything that would silently change the maths (sliding windows, other RoPE types,
    non-SiLU activations, MLP biases).
    """
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"config.json model_type={model_type!r} (architectures={hf.get('architectures')}) is not "
            f"supported; supported model types: {SUPPORTED_MODEL_TYPES}."
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"config.json hidden_act={hf['hidden_act']!r}: only 'silu' is supported.")
    if hf.get("mlp_bias", False):
        raise UnsupportedModelError("config.json mlp_bias=true is not supported.")
    if hf.get("use_sliding_window", False):
        raise UnsupportedModelError(
            "config.json use_sliding_window=true is not supported (sliding-window attention); "
            "set it to false if the sequences you use are shorter than sliding_window."
        )
    rope = dict(hf.get("rope_parameters") or {})
    if not rope:
        rope = dict(hf.get("rope_scaling") or {})
        rope.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"config.json rope type {rope_type!r} is not supported; supported: {SUPPORTED_ROPE_TYPES}."
        )
    num_heads = hf["num_attention_heads"]
    kwargs = dict(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads") or num_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
        mlp_dim=hf["intermediate_size"],
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", 10000.0)),
        rope_type=rope_type,
        rope_factor=float(rope.get("factor", 1.0)),
        rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
        rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
        rope_original_max_positions=int(rope.get("original_max_position_embeddings", 8192)),
        qkv_bias=bool(hf.get("attention_bias", model_type == "qwen2")),
        qk_norm=model_type == "qwen3",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        init_std=hf.get("initializer_range", 0.02),
        model_type=model_type,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
        pad_token_id=hf.get("pad_token_id"),
        num_labels=hf_num_labels(hf),
    )
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def hf_num_labels(hf: dict[str, Any]) -> int:
    """The reward head's outputs K of a `*ForSequenceClassification` config.json: its
    `num_labels`, else the size of its `id2label`, else 1; 1 for any other architecture."""
    if not any(a.endswith("ForSequenceClassification") for a in hf.get("architectures") or []):
        return 1
    return int(hf.get("num_labels", len(hf.get("id2label") or {0: 0})))


def to_hf_config(config: TransformerConfig) -> dict[str, Any]:
    """The Hugging Face `config.json` dict that reproduces `config` in `transformers`."""
    rope: dict[str, Any] = {"rope_type": config.rope_type, "rope_theta": config.rope_theta}
    if config.rope_type in ("linear", "llama3"):
        rope["factor"] = config.rope_factor
    if config.rope_type == "llama3":
        rope.update(
            low_freq_factor=config.rope_low_freq_factor,
            high_freq_factor=config.rope_high_freq_factor,
            original_max_position_embeddings=config.rope_original_max_positions,
        )
    eos = config.eos_token_id
    hf = {
        "architectures": [f"{_ARCH_PREFIX[config.model_type]}ForCausalLM"],
        "model_type": config.model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.mlp_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": rope,
        # transformers<5 reads these two instead of rope_parameters.
        "rope_theta": config.rope_theta,
        "rope_scaling": None if config.rope_type == "default" else {**rope, "type": config.rope_type},
        "tie_word_embeddings": config.tie_embeddings,
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.init_std,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": (eos[0] if len(eos) == 1 else list(eos)) if eos else None,
        "pad_token_id": config.pad_token_id,
        "torch_dtype": config.param_dtype,
    }
    if config.model_type == "llama":
        hf.update(attention_bias=config.qkv_bias, mlp_bias=False)
    elif config.qkv_bias != (config.model_type == "qwen2"):
        raise UnsupportedModelError(
            f"{config.model_type} in transformers has qkv_bias={config.model_type == 'qwen2'} fixed; "
            f"this config has qkv_bias={config.qkv_bias}: export it as model_type='llama' instead."
        )
    if config.qk_norm != (config.model_type == "qwen3"):
        raise UnsupportedModelError(
            f"qk_norm={config.qk_norm} cannot be expressed as model_type={config.model_type!r}; "
            "use model_type='qwen3' for q/k norms."
        )
    if config.model_type in ("qwen2", "qwen3"):
        hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=config.num_layers)
        if config.model_type == "qwen3":
            hf["attention_bias"] = False
    return hf
