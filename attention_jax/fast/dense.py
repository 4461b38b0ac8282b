"""The dense path tuned for XLA's CPU backend: the numbers of
:func:`attention_jax.scaled_dot_product_attention` (tested equal), computed the way XLA fuses
best. ``dot_product_attention(implementation="dense")`` and the ``implementation=None`` rule at
short lengths run it.

What differs from the plain mirror in :mod:`attention_jax.dot_product`, each measured in
``benchmarks/results/experiments.md``:

- the softmax as numerator and row sums (:func:`attention_jax.fast._fused.softmax_parts`), and the
  sums divide the ``(T, H)`` output, not the ``(T, S)`` weights;
- the causal mask alone is a minimum (:func:`attention_jax.fast._fused.replace_masked`), and only
  keys ``s >= T`` are padding, so no reduction over the mask is needed;
- without a bias or a mask that can empty a row, the empty-row guards are skipped.
"""

import jax.numpy as jnp

from attention_np._validate import check_sdpa, check_sdpa_options

from .._batch import fold_batch, fold_broadcast, unfold_batch
from .._dtypes import compute_dtype, operand_dtype
from .._jit import jit, logits_scale, split_scale, static_rng
from .._masking import attended_keys, combine_all_masks, length_mask, log_sum_exp
from .._sharding import repeat_heads
from ..dropout import dropout_weights
from ._fused import softmax_parts


def dense_attention(
    query, key, value, *, bias=None, mask=None, is_causal=False, scale=None,
    query_seq_lengths=None, key_value_seq_lengths=None, local_window_size=None,
    dropout_rate=0.0, dropout_rng=None, broadcast_dropout=False, return_residual=False,
):
    """:func:`attention_jax.scaled_dot_product_attention` (same arguments, same ``(out,
    weights)``, and ``lse (B, T, N)`` third with ``return_residual``; same numbers to
    rounding), tuned for XLA's CPU fusions."""
    scale, scale_value = split_scale(scale)
    return _dense_attention(
        query, key, value, bias=bias, mask=mask, is_causal=is_causal, scale=scale, scale_value=scale_value,
        query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
        local_window_size=local_window_size, dropout_rate=dropout_rate,
        dropout_rng=static_rng(dropout_rng, dropout_rate), broadcast_dropout=broadcast_dropout,
        return_residual=bool(return_residual),
    )


@jit(static_argnames=("is_causal", "scale", "local_window_size", "dropout_rate", "broadcast_dropout",
                      "return_residual"))
def _dense_attention(
    query, key, value, *, bias, mask, is_causal, scale, scale_value, query_seq_lengths,
    key_value_seq_lengths, local_window_size, dropout_rate, dropout_rng, broadcast_dropout, return_residual,
):
    """:func:`dense_attention`, jit-compiled."""
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    shapes = check_sdpa(query, key, value, bias, mask, scale)
    window, dropout_rate = check_sdpa_options(
        shapes, query_seq_lengths, key_value_seq_lengths, local_window_size, dropout_rate, dropout_rng
    )
    batch = shapes["B..."]  # the caller's batch axes, folded into one axis B here
    query, key, value = (fold_batch(x, batch) for x in (query, key, value))
    bias, mask = (None if x is None else fold_broadcast(x, batch, 3) for x in (bias, mask))
    B, T, N, H = query.shape
    S, K = shapes["S"], shapes["K"]
    dtype, compute, operand = query.dtype, compute_dtype(query.dtype), operand_dtype(query.dtype)
    scale = logits_scale(scale, scale_value, H, compute)
    # 1. heads first, (B, N, T, H): every head is one batched matmul; with grouped-query
    #    attention each key/value head serves N // K consecutive query heads
    query = query.astype(operand).transpose(0, 2, 1, 3)                   # (B, N, T, H)
    key, value = (repeat_heads(x.astype(operand), N // K).transpose(0, 2, 1, 3) for x in (key, value))  # (B, N, S, H)
    lengths = length_mask(query_seq_lengths, key_value_seq_lengths, B, T, S)   # (B, 1, T, S) or None
    causal_only = is_causal and mask is None and window is None and lengths is None
    mask = combine_all_masks(mask, is_causal, window, lengths, T, S)
    # keys no query may attend to (padding) are zeroed: whatever they hold, even NaN, cannot
    # reach the output or the gradients. The causal mask alone leaves out keys s >= T only.
    if causal_only:
        keep = None if S <= T else (jnp.arange(S) < T)[:, None]            # (S, 1)
    else:
        keep = None if mask is None else attended_keys(mask, (B, N, T, S))[..., None]  # (B, N, S, 1)
    if keep is not None:
        key, value = jnp.where(keep, key, 0), jnp.where(keep, value, 0)
    # 2. logits: one score per (query, key) pair, scaled, plus the optional bias
    logits = jnp.einsum("BNTH,BNSH->BNTS", query, key, preferred_element_type=compute) * scale  # (B, N, T, S)
    if bias is not None:
        logits = logits + jnp.asarray(bias).astype(compute)
    # 3. weights: softmax over the keys a query may attend to
    # (without a bias that could be -inf, and with no mask or the causal mask alone, every
    # query sees a key)
    empty_rows = bias is not None or (mask is not None and not causal_only)
    unnormalized, total = softmax_parts(logits, mask, empty_rows=empty_rows)  # (B, N, T, S), (B, N, T, 1)
    weights = unnormalized / total                                         # (B, N, T, S)
    dropped = dropout_weights(unnormalized, dropout_rng, dropout_rate, broadcast=broadcast_dropout)
    # 4. out: the weighted average of the values, back to (B, T, N, H). The sums divide the
    #    (T, H) product, not the (T, S) weights: the same numbers, one (T, S) pass fewer
    #    (benchmarks/results/experiments.md), and the weights are computed only when used
    out = jnp.einsum("BNTS,BNSH->BNTH", dropped.astype(operand), value, preferred_element_type=compute) / total
    out = out.transpose(0, 2, 1, 3)                                        # (B, T, N, H)
    out, weights = unfold_batch(out.astype(dtype), batch), unfold_batch(weights.astype(dtype), batch)
    if not return_residual:
        return out, weights
    lse = log_sum_exp(logits, mask)[..., 0].transpose(0, 2, 1)             # (B, T, N), -inf where no key
    return out, weights, unfold_batch(lse, batch)
