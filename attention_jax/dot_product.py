"""Scaled dot-product attention (Vaswani et al. 2017): line-by-line mirror of
``attention_np/dot_product.py``. The path tuned for XLA's CPU backend, with the same numbers,
is :mod:`attention_jax.fast.dense`.

Read the core first: :func:`scaled_dot_product_attention_core` is the equation in three
lines. :func:`scaled_dot_product_attention`, after it, is the function the library calls:
the same three steps, through the same helpers, with the options research code needs
around them (grouped heads, masks of every kind, bias, soft cap, sinks, dropout, the
log-sum-exp).
"""

import math

import jax.numpy as jnp

from attention_np._validate import check_sdpa, check_sdpa_extras, check_sdpa_options

from ._batch import fold_batch, fold_broadcast, unfold_batch
from ._dtypes import compute_dtype, operand_dtype
from ._jit import jit, logits_scale, split_scale, static_rng
from ._masking import (
    combine_all_masks,
    length_mask,
    log_sum_exp,
    masked_softmax,
    segment_mask,
    zero_unattended,
)
from ._sharding import repeat_heads
from .dropout import dropout_weights

# ------------------------------------------------------------------------------------------
# The core: Attention(Q, K, V) = softmax(Q K^T / sqrt(H)) V, in three lines.
# ------------------------------------------------------------------------------------------


def scaled_dot_product_attention_core(query, key, value, mask=None):
    r"""The equation and nothing else: scores, softmax, weighted average.

    .. math::
        \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\Big(\frac{Q K^\top}{\sqrt{H}}\Big) V

    Vaswani et al. 2017, "Attention is all you need", eq. (1). No options and no checks:
    :func:`scaled_dot_product_attention` below runs these same three steps (its steps 3 to
    5) and adds them. float16/bfloat16 matmuls accumulate in float32, the softmax is float32.

    Args:
      query: ``(..., T, H)``: one head ``(B, T, H)``, or several, heads first, ``(B, N, T, H)``.
      key: ``(..., S, H)``.
      value: ``(..., S, H)``.
      mask: optional bool broadcastable to ``(..., T, S)``, True = attend; a masked key gets
        weight exactly 0.

    Returns:
      ``(out, weights)``: ``(..., T, H)`` and ``(..., T, S)``.
    """
    scale = 1.0 / math.sqrt(query.shape[-1])
    # 1. logits: how well each query matches each key, q k^T / sqrt(H)
    logits = _logits(query, key, scale)                                   # (..., T, S)
    # 2. weights: a softmax over the keys (each row sums to 1; a masked key gets 0)
    weights = masked_softmax(logits, mask)                                # (..., T, S)
    # 3. out: the weighted average of the values
    out = _weighted_sum(weights, value)                                   # (..., T, H)
    return out, weights


def _logits(query, key, scale):
    """Every query dotted with every key, times ``scale``: ``(..., T, H), (..., S, H) -> (..., T, S)``;
    float16/bfloat16 products accumulate in float32."""
    return jnp.einsum("...TH,...SH->...TS", query, key, preferred_element_type=compute_dtype(query.dtype)) * scale


def _weighted_sum(weights, value):
    """The values averaged with the weights: ``(..., T, S), (..., S, H) -> (..., T, H)``; the weights in the
    values' dtype, accumulated in float32 for float16/bfloat16."""
    return jnp.einsum("...TS,...SH->...TH", weights.astype(value.dtype), value,
                      preferred_element_type=compute_dtype(value.dtype))


# ------------------------------------------------------------------------------------------
# The full function: the core's three steps with the options around them.
# ------------------------------------------------------------------------------------------


def scaled_dot_product_attention(
    query, key, value, *, bias=None, mask=None, is_causal=False, scale=None,
    query_seq_lengths=None, key_value_seq_lengths=None, local_window_size=None,
    dropout_rate=0.0, dropout_rng=None, broadcast_dropout=False,
    query_segment_ids=None, key_value_segment_ids=None, logits_soft_cap=None, sinks=None, return_residual=False,
):
    r"""Scaled dot-product attention, with grouped key/value heads.

    .. math::
        \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\Big(\frac{Q K^\top}{\sqrt{H}} + \text{bias}\Big) V

    Vaswani et al. 2017, "Attention is all you need", eq. (1); grouped-query heads after
    Ainslie et al. 2023 (GQA). Same semantics as ``jax.nn.dot_product_attention``, except
    that a query with every key masked gets zero weights, a zero output and zero gradients
    (``jax.nn`` returns the mean of the values).

    Shapes: B batch, T query length, S key length, N query heads, K key/value heads
    (N % K == 0), H features per head. ``B`` may be any number of batch axes ``B...``
    (none, as ``jax.nn``'s ``(T, N, H)``, or several, as Flax's), shared by all three inputs.

    Precision: float16/bfloat16 inputs run both matmuls with float16/bfloat16 operands and
    float32 accumulation (``preferred_element_type``), the softmax in float32, as Flax and
    cuDNN do; float32 and float64 inputs compute in their own dtype.

    Args:
      query: ``(B, T, N, H)``.
      key: ``(B, S, K, H)``, the dtype of ``query``.
      value: ``(B, S, K, H)``, the dtype of ``query``.
      bias: optional float array broadcastable to ``(B, N, T, S)``, added to the scaled logits.
      mask: optional bool array broadcastable to ``(B, N, T, S)``, True = attend.
      is_causal: if True, query t attends only to keys ``s <= t``. Static under jit.
      scale: multiplies the logits, any finite number; default ``1 / sqrt(H)``. A Python
        number is static under jit; a 0-d float array (e.g. a learnable temperature, traced)
        is an ordinary argument and receives gradients.
      query_seq_lengths: optional int ``(B,)``: queries ``t >= query_seq_lengths[b]`` are
        padding (zero weights, zero output), as ``jax.nn.dot_product_attention``.
      key_value_seq_lengths: optional int ``(B,)``: keys ``s >= key_value_seq_lengths[b]``
        are padding.
      local_window_size: optional ``(left, right)`` (or an int w for ``(w, w)``): query t
        attends only keys ``t - left <= s <= t + right`` (Beltagy et al. 2020,
        "Longformer"), as ``jax.nn``. Static.
      dropout_rate: probability of dropping an attention weight (after the softmax); kept
        weights are scaled by ``1 / (1 - rate)``. Static. The keep-mask is a hash of
        ``(dropout_rng, b, n, t, s)`` (:mod:`attention_jax.dropout`), identical in the NumPy
        half and in :func:`chunked_attention`.
      dropout_rng: a JAX key (new-style or ``PRNGKey``), its ``key_data``, or an int.
      broadcast_dropout: one dropout mask for every batch row and head (Flax's default in
        its modules). Static.
      query_segment_ids, key_value_segment_ids: optional int ``(B, T)``, ``(B, S)``: a query
        attends only keys of its own segment (packed sequences); either alone serves both.
      logits_soft_cap: optional c > 0 (static): logits become ``c * tanh(logits / c)``
        after the scale and the bias, before the mask (Gemma 2).
      sinks: optional float ``(N,)``: per-head logits that join each row's normaliser and
        hold no value (attention sinks); they receive gradients.
      return_residual: also return ``lse (B, T, N)``, the log-sum-exp of the attended
        logits and the sink (``-inf`` for a query that attends nothing and has no sink).

    Returns:
      ``(out, weights)``: ``(B, T, N, H)`` and ``(B, N, T, S)``, in the dtype of ``query``
      (and ``lse`` third with ``return_residual``).
      ``weights`` are the softmax probabilities before dropout (what Flax sows); ``out``
      uses the dropped ones. T = 0 gives empty arrays; S = 0 a zero ``out``.
    """
    scale, scale_value = split_scale(scale)
    return _scaled_dot_product_attention(
        query, key, value, bias=bias, mask=mask, is_causal=is_causal, scale=scale, scale_value=scale_value,
        query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
        local_window_size=local_window_size, dropout_rate=dropout_rate,
        dropout_rng=static_rng(dropout_rng, dropout_rate), broadcast_dropout=broadcast_dropout,
        query_segment_ids=query_segment_ids, key_value_segment_ids=key_value_segment_ids,
        logits_soft_cap=logits_soft_cap, sinks=sinks, return_residual=bool(return_residual),
    )


@jit(static_argnames=("is_causal", "scale", "local_window_size", "dropout_rate", "broadcast_dropout",
                      "logits_soft_cap", "return_residual"))
def _scaled_dot_product_attention(
    query, key, value, *, bias, mask, is_causal, scale, scale_value, query_seq_lengths,
    key_value_seq_lengths, local_window_size, dropout_rate, dropout_rng, broadcast_dropout,
    query_segment_ids, key_value_segment_ids, logits_soft_cap, sinks, return_residual,
):
    """:func:`scaled_dot_product_attention`, jit-compiled."""
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    shapes = check_sdpa(query, key, value, bias, mask, scale)
    window, dropout_rate = check_sdpa_options(
        shapes, query_seq_lengths, key_value_seq_lengths, local_window_size, dropout_rate, dropout_rng
    )
    soft_cap = check_sdpa_extras(shapes, query_segment_ids, key_value_segment_ids, logits_soft_cap, sinks)
    batch = shapes["B..."]  # the caller's batch axes, folded into one axis B here
    query, key, value = (fold_batch(x, batch) for x in (query, key, value))
    bias, mask = (None if x is None else fold_broadcast(x, batch, 3) for x in (bias, mask))
    B, T, N, H = query.shape
    S, K = shapes["S"], shapes["K"]
    dtype, compute, operand = query.dtype, compute_dtype(query.dtype), operand_dtype(query.dtype)
    scale = logits_scale(scale, scale_value, H, compute)  # static, or a traced 0-d array
    # 1. heads first, (B, N, T, H): every head is one batched matmul; with grouped-query
    #    attention each key/value head serves N // K consecutive query heads
    query = query.astype(operand).transpose(0, 2, 1, 3)                   # (B, N, T, H)
    key = repeat_heads(key.astype(operand), N // K).transpose(0, 2, 1, 3)      # (B, N, S, H)
    value = repeat_heads(value.astype(operand), N // K).transpose(0, 2, 1, 3)  # (B, N, S, H)
    # 2. the mask: every option that rules keys out (mask, causal, window, lengths, segments) in one
    lengths = length_mask(query_seq_lengths, key_value_seq_lengths, B, T, S)   # (B, 1, T, S) or None
    segments = segment_mask(query_segment_ids, key_value_segment_ids, B)       # (B, 1, T, S) or None
    mask = combine_all_masks(mask, is_causal, window, lengths, T, S, segments)
    # keys no query may attend (padding) are zeroed: even NaN there cannot reach the output or gradients
    key, value = (zero_unattended(x, mask, (B, N, T, S)) for x in (key, value))  # (B, N, S, H)
    # 3. logits (core step 1): one score per (query, key) pair, scaled, plus the optional bias, soft-capped
    logits = _logits(query, key, scale)                                    # (B, N, T, S)
    if bias is not None:
        logits = logits + jnp.asarray(bias).astype(compute)
    if soft_cap is not None:
        logits = soft_cap * jnp.tanh(logits / soft_cap)
    # 4. weights (core step 2): softmax over the keys a query may attend to (and its sink), then dropout
    sinks = None if sinks is None else jnp.asarray(sinks).astype(compute).reshape(1, N, 1, 1)
    weights = masked_softmax(logits, mask, sinks)                          # (B, N, T, S)
    dropped = dropout_weights(weights, dropout_rng, dropout_rate, broadcast=broadcast_dropout)
    # 5. out (core step 3): the weighted average of the values, back to (B, T, N, H)
    out = _weighted_sum(dropped, value).transpose(0, 2, 1, 3)             # (B, T, N, H)
    out, weights = unfold_batch(out.astype(dtype), batch), unfold_batch(weights.astype(dtype), batch)
    if not return_residual:
        return out, weights
    lse = log_sum_exp(logits, mask, sinks)[..., 0].transpose(0, 2, 1)       # (B, T, N)
    return out, weights, unfold_batch(lse, batch)
