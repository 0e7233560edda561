"""Reducing per-token losses [B, T] to a scalar: the selectable aggregation piece.

Under gradient accumulation or data parallelism a mini-batch is split into micro-batches
(or shards). Pass the WHOLE mini-batch's ``num_tokens`` / ``num_seqs`` to every micro-batch
call: the micro-batch results then sum to the full mini-batch value, instead of becoming a
mean of per-micro-batch means.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

AGGREGATION_MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm", "seq_mean_token_sum")


def aggregate(
    token_loss: Array,
    mask: Array,
    mode: str,
    *,
    num_tokens: Array | float | None = None,
    num_seqs: Array | float | None = None,
    max_len: int | None = None,
) -> Array:
    """Masked reduction of a per-token loss. [B, T], [B, T] -> scalar.

    With m the mask, S = Σ_{i,t} m ℓ and L_i = max(Σ_t m_{i,t}, 1):

    * ``token_mean`` (DAPO, arXiv 2503.14476):        S / num_tokens
    * ``seq_mean_token_mean`` (GRPO, arXiv 2402.03300): (1/num_seqs) Σ_i (Σ_t m ℓ) / L_i
    * ``seq_mean_token_sum_norm`` (Dr.GRPO, arXiv 2503.20783): (1/num_seqs) Σ_i (Σ_t m ℓ) / max_len
    * ``seq_mean_token_sum`` (sequence-level REINFORCE / RLOO): (1/num_seqs) Σ_i Σ_t m ℓ

    ``num_tokens`` defaults to this batch's Σ m and ``num_seqs`` to B (fully masked padding rows
    included; pass num_seqs to exclude them); both are clamped to ≥ 1. ``max_len`` defaults to
    T and must be a constant (the generation budget), not the batch's longest response. Rows
    with no mask-1 token contribute 0. Masked positions are selected out (not multiplied), so
    inf/NaN there does not leak into the value.

    Example (losses seq1=[2], seq2=[1, 1, 1]):
      >>> loss = jnp.array([[2.0, 0, 0, 0], [1, 1, 1, 0]])
      >>> mask = jnp.array([[1, 0, 0, 0], [1, 1, 1, 0]])
      >>> aggregate(loss, mask, "token_mean")               # 1.25
      >>> aggregate(loss, mask, "seq_mean_token_mean")      # 1.5
      >>> aggregate(loss, mask, "seq_mean_token_sum_norm")  # 0.625 (max_len = T = 4)
    """
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"Unknown loss aggregation mode={mode!r}; expected one of {AGGREGATION_MODES}.")
    mask = jnp.asarray(mask, jnp.float32)
    token_loss = jnp.where(mask > 0, jnp.asarray(token_loss, jnp.float32), 0.0)
    seq_sums = jnp.sum(token_loss, axis=-1)  # [B]
    if mode == "token_mean":
        if num_tokens is None:
            num_tokens = jnp.sum(mask)
        return jnp.sum(seq_sums) / jnp.maximum(num_tokens, 1.0)
    if num_seqs is None:
        num_seqs = token_loss.shape[0]
    num_seqs = jnp.maximum(num_seqs, 1.0)
    if mode == "seq_mean_token_mean":
        lengths = jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
        return jnp.sum(seq_sums / lengths) / num_seqs
    if mode == "seq_mean_token_sum_norm":
        if max_len is None:
            max_len = token_loss.shape[-1]
        return jnp.sum(seq_sums) / max_len / num_seqs
    return jnp.sum(seq_sums) / num_seqs
