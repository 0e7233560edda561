"""Decoder-only transformer (Llama / Qwen2 / Qwen3 family) in Flax linen, with three heads.

Shapes: B batch, S sequence, D d_model, H query heads, K key/value heads, R = H // K,
Dh head_dim, F mlp_dim, V vocab. Every parameter carries logical axis names
('vocab', 'embed', 'heads', 'kv_heads', 'head_dim', 'mlp'; see `logical_axes`) for a rule table
to map onto the ('data', 'fsdp', 'tensor') mesh; activations carry 'batch'/'length' constraints.

Three attention paths share the same weights:
  * full causal self-attention over a padded [B, S] batch (training, scoring, prefill);
  * cached decoding against a `KVCache` whose prompt part is stored once per prompt and
    shared by the G samples of that prompt (group sampling never copies the prompt cache);
  * grouped teacher forcing (`Transformer.grouped`, the trainer's passes): each prompt and its
    G responses packed in one row; token-wise layers run once over the packed row, and the G
    responses attend to the prompt's keys/values, computed once per prompt, differentiably.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl_llm.models.config import LoraConfig, TransformerConfig

Array = jax.Array
_NEG_INF = -1e30  # finite, so fully-masked rows give a uniform (ignored) distribution, not NaN


# ---------------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------------


def rope_inverse_frequencies(config: TransformerConfig) -> np.ndarray:
    """Per-pair RoPE inverse frequencies, [Dh/2], float64 numpy (a compile-time constant).

    default: inv_freq_i = theta^(-2i/Dh)                      (Su et al. 2021, arXiv 2104.09864)
    linear:  inv_freq_i / factor                              (position interpolation)
    llama3:  long wavelengths (> original_max / low_freq_factor) divided by factor, short ones
             (< original_max / high_freq_factor) kept, smooth interpolation in between (Llama 3.1).
    """
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    if config.rope_type == "linear":
        return inv_freq / config.rope_factor
    if config.rope_type == "llama3":
        factor, low, high = config.rope_factor, config.rope_low_freq_factor, config.rope_high_freq_factor
        old_len = config.rope_original_max_positions
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return np.where(is_medium, smoothed, scaled)
    return inv_freq


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
    """Rotary embedding in the Hugging Face 'rotate_half' layout.

    x: [B, S, N, Dh]; positions: [B, S] int. Returns x * cos + rotate_half(x) * sin with
    angles positions * inv_freq computed in float32, where rotate_half([a, b]) = [-b, a].
    """
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)  # [B,S,Dh/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)


def positions_from_mask(mask: Array) -> Array:
    """Token positions for a left- or right-padded batch: cumsum(mask) - 1, clipped at 0. [B, S]."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def last_token_index(mask: Array) -> Array:
    """Index of the last non-pad token of each row of a [B, S] mask (any padding side). [B]."""
    seq_len = mask.shape[-1]
    return seq_len - 1 - jnp.argmax(mask[:, ::-1].astype(jnp.int32), axis=-1)


def _softmax_attention(scores: Array, mask: Array, values_fn):
    """Masked softmax in float32 followed by `values_fn(probs)`."""
    scores = jnp.where(mask, scores.astype(jnp.float32), _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    return values_fn(probs)


# ---------------------------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------------------------


@struct.dataclass
class KVCache:
    """Decoding cache with a prompt part shared by the G samples of each prompt.

    prefix_k: per layer [B, K, Dh, P], prefix_v: [B, K, P, Dh]: the B prompts (one copy each).
    prefix_mask: [B, P] bool, True on real prompt tokens.
    k: per layer [N, K, Dh, T], v: [N, K, T, Dh]: generated tokens of the N = B * G samples
      (row b * G + g). Keeping N flat (no size-1 group axis when G = 1) stops XLA from
      duplicating the cache write into a bitcast consumer, which would copy the cache per step.

    Layouts are chosen so both attention contractions are plain batched matmuls with the cache
    as the right-hand [contract, out] operand: q @ K and p @ V never transpose the cache.
    index: int32 scalar, number of generated positions already written (all rows in lockstep).
    """

    prefix_k: tuple
    prefix_v: tuple
    prefix_mask: Array
    k: tuple
    v: tuple
    index: Array


def init_cache(prefix_kv, prefix_mask: Array, num_samples: int, max_len: int) -> KVCache:
    """Empty generation cache of length `max_len` behind the prefilled prompts.

    prefix_kv: per layer (k, v) with k, v [B, P, K, Dh], as returned by `CausalLM.prefill`.
    """
    batch = prefix_mask.shape[0]
    prefix_k = tuple(k.transpose(0, 2, 3, 1) for k, _ in prefix_kv)
    prefix_v = tuple(v.transpose(0, 2, 1, 3) for _, v in prefix_kv)
    _, num_kv, head_dim, _ = prefix_k[0].shape
    dtype = prefix_k[0].dtype
    return KVCache(
        prefix_k=prefix_k,
        prefix_v=prefix_v,
        prefix_mask=prefix_mask.astype(bool),
        k=tuple(jnp.zeros((batch * num_samples, num_kv, head_dim, max_len), dtype) for _ in prefix_k),
        v=tuple(jnp.zeros((batch * num_samples, num_kv, max_len, head_dim), dtype) for _ in prefix_k),
        index=jnp.zeros((), jnp.int32),
    )


def _cached_attention(q, k, v, prefix_k, prefix_v, prefix_mask, cache_k, cache_v, index):
    """Attention of S new tokens per sample against the shared prompt and the generated cache.

    q: [N, S, H, Dh] (already scaled), k, v: [N, S, K, Dh] with N = B * G (row b * G + g);
    cache layouts as in KVCache. Writes the new keys/values at `index`, then runs one softmax
    jointly over the prompt segment (prefix_mask) and the generated segment (positions
    <= index + s, causal). Returns (out [N, S, H, Dh], updated (cache_k, cache_v)).
    """
    n, kh, t, dh = cache_v.shape
    _, s, h, _ = q.shape
    b, p_len = prefix_v.shape[0], prefix_v.shape[2]
    g, r, dtype = n // b, h // kh, q.dtype
    cache_k = jax.lax.dynamic_update_slice_in_dim(cache_k, k.transpose(0, 2, 3, 1), index, axis=3)
    cache_v = jax.lax.dynamic_update_slice_in_dim(cache_v, v.transpose(0, 2, 1, 3), index, axis=2)
    q = q.reshape(n, s, kh, r, dh).transpose(0, 2, 1, 3, 4).reshape(n, kh, s * r, dh)  # rows (s, r)
    q_prefix = q.reshape(b, g, kh, s * r, dh).transpose(0, 2, 1, 3, 4).reshape(b, kh, g * s * r, dh)
    scores_p = jnp.einsum("bkqd,bkdp->bkqp", q_prefix, prefix_k).reshape(b, kh, g, s * r, p_len)
    scores = jnp.concatenate(
        [
            scores_p.transpose(0, 2, 1, 3, 4).reshape(n, kh, s * r, p_len),
            jnp.einsum("nkqd,nkdt->nkqt", q, cache_k),
        ],
        axis=-1,
    )  # [N, K, S*R, P+T]
    row_pos = index + jnp.repeat(jnp.arange(s), r)  # [S*R]
    prefix_mask = jnp.repeat(prefix_mask, g, axis=0)  # [N, P]
    mask = jnp.concatenate(
        [
            jnp.broadcast_to(prefix_mask[:, None, None, :], (n, kh, s * r, p_len)),
            jnp.broadcast_to(jnp.arange(t)[None, :] <= row_pos[:, None], (n, kh, s * r, t)),
        ],
        axis=-1,
    )

    def values_fn(probs):
        probs = probs.astype(dtype)
        p_prefix = probs[..., :p_len].reshape(b, g, kh, s * r, p_len).transpose(0, 2, 1, 3, 4)
        out_p = jnp.einsum("bkqp,bkpd->bkqd", p_prefix.reshape(b, kh, g * s * r, p_len), prefix_v)
        out_p = out_p.reshape(b, kh, g, s * r, dh).transpose(0, 2, 1, 3, 4).reshape(n, kh, s * r, dh)
        out = out_p + jnp.einsum("nkqt,nktd->nkqd", probs[..., p_len:], cache_v)
        return out.reshape(n, kh, s, r, dh).transpose(0, 2, 1, 3, 4).reshape(n, s, h, dh)

    return _softmax_attention(scores, mask, values_fn), (cache_k, cache_v)


def _causal_attention(q, k, v, mask):
    """Causal self-attention of a padded batch. q: [N, S, H, Dh] (already scaled), k, v:
    [N, S, K, Dh], mask: [N, S] (real tokens). Returns [N, S, K, R, Dh]."""
    n, s, h, dh = q.shape
    kh = k.shape[2]
    qh = q.reshape(n, s, kh, h // kh, dh)
    causal = jnp.tril(jnp.ones((s, s), bool))
    full_mask = causal[None, None, None] & mask.astype(bool)[:, None, None, None, :]
    scores = jnp.einsum("nskrd,ntkd->nkrst", qh, k)
    return _softmax_attention(
        scores, full_mask, lambda p: jnp.einsum("nkrst,ntkd->nskrd", p.astype(q.dtype), v)
    )


def _prefix_attention(q, k, v, mask, prefix_k, prefix_v, prefix_mask):
    """Causal attention of N = B * G rows of S tokens that continue B shared prompts.

    q: [N, S, H, Dh] (already scaled), k, v: [N, S, K, Dh], mask: [N, S] (real tokens);
    prefix_k, prefix_v: [B, P, K, Dh] and prefix_mask: [B, P] of the prompts, row n continuing
    prompt n // G. One softmax jointly over the prompt's keys and the row's own keys up to each
    position: the values attention over the concatenated [N, P + S] rows gives at positions P..,
    with the prompt's keys/values computed once per group (their gradient sums over its G rows).
    Returns [N, S, K, R, Dh].
    """
    n, s, h, dh = q.shape
    b, p_len, kh, _ = prefix_k.shape
    g, r, dtype = n // b, h // kh, q.dtype
    # One layout throughout, batch dimensions (b, k) or (b, k, g) leading, so that every
    # contraction is a plain batched matmul and XLA copies only q, k, v in and the output out.
    qh = q.reshape(b, g, s, kh, r, dh).transpose(0, 3, 1, 4, 2, 5)  # [B, K, G, R, S, Dh]
    kg, vg = (a.reshape(b, g, s, kh, dh).transpose(0, 3, 1, 2, 4) for a in (k, v))  # [B, K, G, S, Dh]
    pk, pv = prefix_k.transpose(0, 2, 1, 3), prefix_v.transpose(0, 2, 1, 3)  # [B, K, P, Dh]
    scores_p = jnp.einsum("bkgrsd,bkpd->bkgrsp", qh, pk)
    scores = jnp.concatenate([scores_p, jnp.einsum("bkgrsd,bkgtd->bkgrst", qh, kg)], axis=-1)
    own = jnp.tril(jnp.ones((s, s), bool))[None] & mask.astype(bool)[:, None, :]  # [N, S, S]
    prompt = jnp.broadcast_to(prefix_mask.astype(bool)[:, None, None, :], (b, g, s, p_len))
    full_mask = jnp.concatenate([prompt, own.reshape(b, g, s, s)], axis=-1)[:, None, :, None]

    def values_fn(probs):  # [B, K, G, R, S, P + S]
        probs = probs.astype(dtype)
        out = jnp.einsum("bkgrsp,bkpd->bkgrsd", probs[..., :p_len], pv)
        out = out + jnp.einsum("bkgrst,bkgtd->bkgrsd", probs[..., p_len:], vg)
        return out.transpose(0, 2, 4, 1, 3, 5).reshape(n, s, kh, r, dh)

    return _softmax_attention(scores, full_mask, values_fn)


@jax.custom_vjp
def _dense(x: Array, w: Array) -> Array:
    """x [..., D] @ w [D, F] -> [..., F]: every projection and the LM head.

    Differentiated as usual except for the layout of the weight gradient: the sum over tokens
    of x^T g is computed as (x^T, materialised through an optimization barrier) @ g. Left
    alone, XLA:CPU transposed the [tokens, F] cotangent instead and ran the matmul with both
    operands transposed, well below the speed of the other matmuls: the LM head of the 52M
    benchmark model took 164 ms against 76 ms for its forward; the trunk's weight gradients
    ran at 134 GFLOP/s against ~200 (1.18M model: 88).
    """
    return jnp.einsum("...d,df->...f", x, w)


def _dense_fwd(x, w):
    return _dense(x, w), (x, w)


def _dense_bwd(residuals, g):
    x, w = residuals
    d_x = jnp.einsum("...f,df->...d", g, w)
    tokens_t = jax.lax.optimization_barrier(x.reshape(-1, x.shape[-1]).T)  # [D, tokens]
    return d_x, tokens_t @ g.reshape(-1, g.shape[-1])


_dense.defvjp(_dense_fwd, _dense_bwd)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


@jax.custom_vjp
def _swiglu(gate_up: Array) -> Array:
    """[..., 2F] = [x W_gate | x W_up] -> silu(x W_gate) * (x W_up), [..., F].

    Differentiated by hand: the forward keeps only its input and the backward recomputes the
    sigmoid, writing [dgate | dup] as one array. Left to autodiff, the training forward stored
    sigmoid and silu as extra [tokens, F] arrays (three elementwise passes instead of one) and
    the backward padded and added the two halves' gradients.
    With s = sigmoid(g): d/dg silu(g) u = u s (1 + g (1 - s)), d/du = silu(g).
    """
    gate, up = jnp.split(gate_up, 2, axis=-1)
    return jax.nn.silu(gate) * up


def _swiglu_fwd(gate_up):
    return _swiglu(gate_up), gate_up


def _swiglu_bwd(gate_up, d_hidden):
    gate, up = jnp.split(gate_up, 2, axis=-1)
    sig = jax.nn.sigmoid(gate)
    d_gate = d_hidden * up * sig * (1 + gate * (1 - sig))
    return (jnp.concatenate([d_gate, d_hidden * gate * sig], axis=-1),)


_swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


def _param(module: nn.Module, name: str, shape, axes, config: TransformerConfig, init=None):
    init = init or nn.initializers.normal(stddev=config.init_std)
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.dtype(config.param_dtype))


def lora_param_names(target: str) -> tuple[str, str]:
    """Names of the (A, B) adapter parameters of projection `target`, stored beside it."""
    return f"{target}_lora_a", f"{target}_lora_b"


def _has_adapter(module: nn.Module, target: str) -> bool:
    """Whether projection `target` of `module` applies a LoRA adapter (see `_adapted`)."""
    lora: LoraConfig | None = module.config.lora
    if lora is None or target not in lora.target_modules:
        return False
    return module.is_initializing() or module.has_variable("params", lora_param_names(target)[0])


def _adapted(module: nn.Module, target: str, x: Array, y: Array, inputs, outputs) -> Array:
    """y + (alpha / r) * (dropout(x) A) B when `target` carries a LoRA adapter, else y.

    LoRA (Hu et al. 2021, arXiv 2106.09685). x: [N, S, prod(in)], y = x W: [N, S, prod(out)];
    `inputs` / `outputs` are (shape, logical axes) of W's input and output dimensions, so
    A: [*in, r] and B: [r, *out] shard like W. Adapters present in `config.lora` but absent from
    the params tree are disabled: `jaxrl_llm.lora.base_params(params)` is the frozen base model
    (the reference policy) without a copy of its weights. Dropout needs a 'dropout' rng.
    """
    if not _has_adapter(module, target):
        return y
    cfg = module.config
    lora: LoraConfig = cfg.lora
    a_name, b_name = lora_param_names(target)
    (in_shape, in_axes), (out_shape, out_axes) = inputs, outputs
    # Uniform with bound 1/sqrt(fan_in): PEFT's kaiming_uniform(a=sqrt(5)) for A.
    fan_in = tuple(range(len(in_shape)))
    a_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=fan_in, out_axis=-1)
    a = _param(module, a_name, (*in_shape, lora.rank), (*in_axes, None), cfg, a_init)
    b = _param(module, b_name, (lora.rank, *out_shape), (None, *out_axes), cfg, nn.initializers.zeros)
    if lora.dropout > 0 and module.has_rng("dropout"):
        keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - lora.dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - lora.dropout), 0.0).astype(x.dtype)
    dtype = y.dtype
    low = x @ a.astype(dtype).reshape(-1, lora.rank)
    return y + (low @ b.astype(dtype).reshape(lora.rank, -1)) * jnp.asarray(lora.scale, dtype)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * scale, computed in float32 (Zhang & Sennrich 2019)."""

    config: TransformerConfig
    dim: int
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = _param(self, "scale", (self.dim,), (self.axis_name,), self.config, nn.initializers.ones)
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.config.rms_norm_eps)
        return (xf.astype(x.dtype) * scale.astype(x.dtype)).astype(jnp.dtype(self.config.dtype))


class Attention(nn.Module):
    """Grouped-query attention with RoPE, optional q/k/v bias (Qwen2) and q/k RMSNorm (Qwen3)."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x, positions, mask, cache: tuple | None = None):
        """x: [N, S, D]; positions: [N, S].

        Without cache: full causal attention, mask [N, S] marks real tokens; returns
        (out [N, S, D], (k, v)) with k, v [N, S, K, Dh] for prefilling.
        With cache = (prefix_k, prefix_v, prefix_mask, k, v, index) of one layer (see KVCache)
        and N = B * G: writes the S new keys/values at `index` and attends to the shared prompt
        plus the generated tokens so far; returns (out, (k, v)) with the updated generated part.
        Packed (training passes, `Transformer.grouped`): mask = (prompt_mask [B, P],
        mask [B * G, S]) and x: [B, P + G * S, D], each row prompt b's P tokens followed by its
        G continuations of S tokens. Causal attention over the prompt, and of each continuation
        over its prompt and its own earlier tokens (row b * G + g continues prompt b);
        differentiable. Returns (out [B, P + G * S, D], None).
        """
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        h, kh, dh, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_model
        wq = _param(self, "q_proj", (d, h, dh), ("embed", "heads", "head_dim"), cfg)
        wk = _param(self, "k_proj", (d, kh, dh), ("embed", "kv_heads", "head_dim"), cfg)
        wv = _param(self, "v_proj", (d, kh, dh), ("embed", "kv_heads", "head_dim"), cfg)
        wo = _param(self, "o_proj", (h, dh, d), ("heads", "head_dim", "embed"), cfg)
        x = x.astype(dtype)
        n, s = x.shape[:2]
        # One 2-D matmul against [wq | wk | wv]: fewer, larger dots; inside the sampler's decode
        # loop XLA hoists the (loop-invariant) concatenation out of the loop.
        wqkv = jnp.concatenate([w.astype(dtype).reshape(d, -1) for w in (wq, wk, wv)], axis=1)
        q, k, v = jnp.split(_dense(x, wqkv), [h * dh, (h + kh) * dh], axis=-1)
        embed = ((d,), ("embed",))
        q = _adapted(self, "q_proj", x, q, embed, ((h, dh), ("heads", "head_dim")))
        k = _adapted(self, "k_proj", x, k, embed, ((kh, dh), ("kv_heads", "head_dim")))
        v = _adapted(self, "v_proj", x, v, embed, ((kh, dh), ("kv_heads", "head_dim")))
        q, k, v = q.reshape(n, s, h, dh), k.reshape(n, s, kh, dh), v.reshape(n, s, kh, dh)
        if cfg.qkv_bias:
            zeros = nn.initializers.zeros
            q = q + _param(self, "q_bias", (h, dh), ("heads", "head_dim"), cfg, zeros).astype(dtype)
            k = k + _param(self, "k_bias", (kh, dh), ("kv_heads", "head_dim"), cfg, zeros).astype(dtype)
            v = v + _param(self, "v_bias", (kh, dh), ("kv_heads", "head_dim"), cfg, zeros).astype(dtype)
        if cfg.qk_norm:
            q = RMSNorm(cfg, dh, "head_dim", name="q_norm")(q)
            k = RMSNorm(cfg, dh, "head_dim", name="k_norm")(k)
        inv_freq = rope_inverse_frequencies(cfg)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        q = q * jnp.asarray(1.0 / math.sqrt(dh), dtype)

        if isinstance(mask, tuple):
            prompt_mask, own_mask = mask
            p_len, (rows, steps) = prompt_mask.shape[1], own_mask.shape
            (qp, qr), (kp, kr), (vp, vr) = (jnp.split(a, [p_len], axis=1) for a in (q, k, v))
            out_p = _causal_attention(qp, kp, vp, prompt_mask).reshape(n, p_len, h * dh)
            qr, kr, vr = (a.reshape(rows, steps, *a.shape[2:]) for a in (qr, kr, vr))
            out_r = _prefix_attention(qr, kr, vr, own_mask, kp, vp, prompt_mask)
            out, new_kv = jnp.concatenate([out_p, out_r.reshape(n, s - p_len, h * dh)], axis=1), None
        elif cache is None:
            out, new_kv = _causal_attention(q, k, v, mask), (k, v)
        else:
            out, new_kv = _cached_attention(q, k, v, *cache)
        out = out.reshape(n, s, h * dh)
        y = _dense(out, wo.astype(dtype).reshape(h * dh, d))
        return _adapted(self, "o_proj", out, y, ((h, dh), ("heads", "head_dim")), ((d,), ("embed",))), new_kv


class MLP(nn.Module):
    """SwiGLU: down(silu(x @ gate) * (x @ up)) (Shazeer 2020, arXiv 2002.05202)."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        gate = _param(self, "gate_proj", (cfg.d_model, cfg.mlp_dim), ("embed", "mlp"), cfg)
        up = _param(self, "up_proj", (cfg.d_model, cfg.mlp_dim), ("embed", "mlp"), cfg)
        down = _param(self, "down_proj", (cfg.mlp_dim, cfg.d_model), ("mlp", "embed"), cfg)
        x = x.astype(dtype)
        gate_up = _dense(x, jnp.concatenate([gate.astype(dtype), up.astype(dtype)], axis=1))  # see Attention
        embed, mlp = ((cfg.d_model,), ("embed",)), ((cfg.mlp_dim,), ("mlp",))
        if _has_adapter(self, "gate_proj") or _has_adapter(self, "up_proj"):
            gate_x, up_x = jnp.split(gate_up, 2, axis=-1)
            gate_x = _adapted(self, "gate_proj", x, gate_x, embed, mlp)
            up_x = _adapted(self, "up_proj", x, up_x, embed, mlp)
            gate_up = jnp.concatenate([gate_x, up_x], axis=-1)
        hidden = _swiglu(gate_up)
        hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
        return _adapted(self, "down_proj", hidden, _dense(hidden, down.astype(dtype)), mlp, embed)


class Block(nn.Module):
    """Pre-norm decoder block: x += attn(norm(x)); x += mlp(norm(x))."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x, positions, mask, cache=None):
        cfg = self.config
        attn_out, kv = Attention(cfg, name="attn")(
            RMSNorm(cfg, cfg.d_model, name="attn_norm")(x), positions, mask, cache
        )
        x = x + attn_out
        x = x + MLP(cfg, name="mlp")(RMSNorm(cfg, cfg.d_model, name="mlp_norm")(x))
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), kv


# config.remat -> what jax.checkpoint keeps of each block for the backward pass.
_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def block_class(config: TransformerConfig) -> type[nn.Module]:
    """Block, wrapped in `nn.remat` with the policy of `config.remat` unless it is 'none'.

    Rematerialisation (Chen et al. 2016, arXiv 1604.06174) trades the backward pass's stored
    activations for recomputing them; parameter names and values are the same either way.
    """
    if config.remat == "none":
        return Block
    return nn.remat(Block, policy=_REMAT_POLICIES[config.remat])


def remat_compiler_options(config: TransformerConfig) -> dict[str, str] | None:
    """XLA options for compiling a differentiated pass of a `config.remat` model (None: none).

    jax.checkpoint wraps the recomputed forward in optimisation barriers so that CSE does not
    merge it back into the original; XLA:CPU removes those barriers ('cse_barrier_expander')
    before its CSE pass, which undoes the remat: measured on a 4-layer model, the gradient
    step's temporaries were 61 MB without remat and 56 MB with it, and 20 MB once the barriers
    are kept. Applied on the CPU backend only, where this was measured.
    """
    if config.remat == "none" or jax.default_backend() != "cpu":
        return None
    return {"xla_disable_hlo_passes": "cse_barrier_expander"}


class Transformer(nn.Module):
    """Token embedding, L blocks, final RMSNorm. The shared trunk of every head."""

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        self.embed = _param(self, "embed", (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg)
        block = block_class(cfg)
        self.layers = [block(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
        self.final_norm = RMSNorm(cfg, cfg.d_model)

    def _embed(self, tokens):
        """[B, S] ids -> [B, S, D]. Under a mesh the table's 'embed' dimension is gathered first
        (as FSDP does for every weight): rows looked up from an 'embed'-sharded table have no
        efficient reshard to the batch-sharded activations."""
        table = nn.with_logical_constraint(self.embed, ("vocab", None))
        x = jnp.take(table, tokens, axis=0).astype(jnp.dtype(self.config.dtype))
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))

    def __call__(self, tokens, positions, mask):
        """tokens, positions, mask: [B, S]. Returns (hidden [B, S, D], per-layer (k, v))."""
        x = self._embed(tokens)
        kvs = []
        for layer in self.layers:
            x, kv = layer(x, positions, mask)
            kvs.append(kv)
        return self.final_norm(x), tuple(kvs)

    def grouped(self, prompt_tokens, prompt_mask, tokens, mask):
        """B prompts [B, P] (left-padded) and N = B * G continuations [N, S] (right-padded; row
        n continues prompt n // G) -> (prompt hidden [B, P, D], continuation hidden [N, S, D]).

        The values of the trunk over the N concatenated [N, P + S] rows (same positions, same
        masks), with each prompt's tokens computed once instead of G times. Each prompt and its
        G continuations are packed into one row of P + G * S tokens, so every token-wise layer
        (norms, projections, MLP) is one matmul per weight over all tokens; only attention
        splits the row (see `Attention`).
        """
        (b, p), (n, s) = prompt_tokens.shape, tokens.shape
        g = n // b
        prompt_len = jnp.repeat(jnp.sum(prompt_mask.astype(jnp.int32), axis=-1), g)  # [N]
        positions = jnp.maximum(prompt_len[:, None] + jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
        packed_positions = jnp.concatenate(
            [positions_from_mask(prompt_mask), positions.reshape(b, g * s)], axis=1
        )  # [B, P + G S]
        x = self._embed(jnp.concatenate([prompt_tokens, tokens.reshape(b, g * s)], axis=1))
        for layer in self.layers:
            x, _ = layer(x, packed_positions, (prompt_mask, mask))
        prompt_hidden, hidden = jnp.split(self.final_norm(x), [p], axis=1)
        return prompt_hidden, hidden.reshape(n, s, -1)

    def decode(self, tokens, positions, cache: KVCache):
        """tokens, positions: [B * G, S] new tokens. Returns (hidden [B*G, S, D], new cache)."""
        x = self._embed(tokens)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            layer_cache = (
                cache.prefix_k[i],
                cache.prefix_v[i],
                cache.prefix_mask,
                cache.k[i],
                cache.v[i],
                cache.index,
            )
            x, (k, v) = layer(x, positions, None, layer_cache)
            new_k.append(k)
            new_v.append(v)
        cache = cache.replace(k=tuple(new_k), v=tuple(new_v), index=cache.index + tokens.shape[1])
        return self.final_norm(x), cache

    def embedding(self):
        return self.embed


class CausalLM(nn.Module):
    """Policy: trunk + LM head (tied to the embedding when config.tie_embeddings)."""

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        self.trunk = Transformer(cfg)
        if cfg.lm_heads > 1:  # MAH-DPO: [H, D, V]
            shape, axes = (cfg.lm_heads, cfg.d_model, cfg.vocab_size), (None, "embed", "vocab")
            self.lm_head = _param(self, "lm_head", shape, axes, cfg)
        elif not cfg.tie_embeddings:
            self.lm_head = _param(self, "lm_head", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg)

    def logits(self, hidden, heads=None):
        """hidden [..., D] -> logits [..., V] in float32. With config.lm_heads = H > 1: `heads`
        [B] int (row b's head, hidden [B, ...]) picks each row's head; None mixes the heads,
        Σ_k w̄_k W_k (the inference policy: sampling, evaluation, export)."""
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        if cfg.tie_embeddings:
            head = self.trunk.embedding().astype(dtype).T
        elif cfg.lm_heads > 1:
            weights = jnp.asarray(cfg.head_weights or (1.0,) * cfg.lm_heads, jnp.float32)
            heads_w = self.lm_head.astype(jnp.float32)
            if heads is not None:
                rows = heads_w[heads].astype(dtype)  # [B, D, V]
                logits = jnp.einsum("b...d,bdv->b...v", hidden.astype(dtype), rows)
                axes = ("batch", "length")[: logits.ndim - 1] + ("vocab",)
                return nn.with_logical_constraint(logits, axes).astype(jnp.float32)
            head = jnp.einsum("k,kdv->dv", weights / weights.sum(), heads_w).astype(dtype)
        else:
            head = self.lm_head.astype(dtype)
        logits = _dense(hidden.astype(dtype), head)
        axes = ("batch", "length")[: logits.ndim - 1] + ("vocab",)  # prefill's logits are [B, V]
        return nn.with_logical_constraint(logits, axes).astype(jnp.float32)

    def __call__(self, tokens, mask, positions=None):
        """Full forward. tokens, mask: [B, S]; positions default to cumsum(mask) - 1. -> [B, S, V]."""
        positions = positions_from_mask(mask) if positions is None else positions
        hidden, _ = self.trunk(tokens, positions, mask)
        return self.logits(hidden)

    def prefill(self, tokens, mask):
        """Prompts [B, P] (left-padded) -> (logits of the last position [B, V], per-layer (k, v)).

        Only the last position goes through the LM head: prefill never builds [B, P, V].
        """
        hidden, kvs = self.trunk(tokens, positions_from_mask(mask), mask)
        return self.logits(hidden[:, -1]), kvs

    def decode(self, tokens, positions, cache: KVCache):
        """New tokens [B*G, S] at `positions` -> (logits [B*G, S, V], updated cache)."""
        hidden, cache = self.trunk.decode(tokens, positions, cache)
        return self.logits(hidden), cache


class ValueModel(nn.Module):
    """Critic: trunk + per-token scalar head. (tokens, mask) [B, S] -> values [B, S] float32."""

    config: TransformerConfig

    def setup(self):
        self.trunk = Transformer(self.config)
        self.score = _param(self, "score", (self.config.d_model, 1), ("embed", None), self.config)

    def __call__(self, tokens, mask, positions=None):
        positions = positions_from_mask(mask) if positions is None else positions
        hidden, _ = self.trunk(tokens, positions, mask)
        return (hidden @ self.score.astype(hidden.dtype))[..., 0].astype(jnp.float32)


class RewardModel(nn.Module):
    """Reward model: trunk + a linear head `score` [D, K] read at the last non-pad token, K =
    config.num_labels. -> rewards [B] float32 (K = 1), or [B, K] float32 (K > 1: one score per
    aspect of a multi-label reward model).

    Same parameter layout as Hugging Face `*ForSequenceClassification` with num_labels=K.
    """

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        self.trunk = Transformer(cfg)
        self.score = _param(self, "score", (cfg.d_model, cfg.num_labels), ("embed", None), cfg)

    def __call__(self, tokens, mask, positions=None):
        positions = positions_from_mask(mask) if positions is None else positions
        hidden, _ = self.trunk(tokens, positions, mask)
        last = jnp.take_along_axis(hidden, last_token_index(mask)[:, None, None], axis=1)[:, 0]
        scores = (last @ self.score.astype(last.dtype)).astype(jnp.float32)
        return scores[:, 0] if self.config.num_labels == 1 else scores


HEADS = {"causal_lm": CausalLM, "value": ValueModel, "reward": RewardModel}


def init_params(config: TransformerConfig, rng: Array, head: str = "causal_lm"):
    """Randomly initialised parameters (plain arrays, logical-axis boxes removed)."""
    model = HEADS[head](config)
    tokens = jnp.zeros((1, 2), jnp.int32)
    variables = jax.jit(model.init)(rng, tokens, jnp.ones((1, 2), jnp.int32))
    return nn.meta.unbox(variables["params"])


def logical_axes(config: TransformerConfig, head: str = "causal_lm"):
    """PartitionSpec tree of logical axis names, matching `init_params`'s structure."""
    model = HEADS[head](config)
    tokens = jnp.zeros((1, 2), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, jnp.ones((1, 2), jnp.int32))
    return nn.get_partition_spec(abstract)["params"]
