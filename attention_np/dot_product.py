"""Scaled dot-product attention (Vaswani et al. 2017), the core of every modern mechanism.

Read the core first: :func:`scaled_dot_product_attention_core` is the equation in three
lines. :func:`scaled_dot_product_attention`, after it, is the function the library calls:
the same three steps, through the same helpers, with the options research code needs
around them (grouped heads, masks of every kind, bias, soft cap, sinks, dropout, the
log-sum-exp).
"""

import math

import numpy as np

from ._batch import fold_batch, fold_broadcast, unfold_batch
from ._dtypes import compute_dtype
from ._masking import (
    combine_all_masks,
    length_mask,
    log_sum_exp,
    masked_softmax,
    segment_mask,
    zero_unattended,
)
from ._validate import check_sdpa, check_sdpa_extras, check_sdpa_options
from .dropout import dropout_weights

# ------------------------------------------------------------------------------------------
# The core: Attention(Q, K, V) = softmax(Q K^T / sqrt(H)) V, in three lines.
# ------------------------------------------------------------------------------------------


def scaled_dot_product_attention_core(query, key, value, mask=None):
    r"""The equation and nothing else: scores, softmax, weighted average.

    .. math::
        \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\Big(\frac{Q K^\top}{\sqrt{H}}\Big) V

    Vaswani et al. 2017, "Attention is all you need", eq. (1). No options, no checks, no
    dtype handling: :func:`scaled_dot_product_attention` below runs these same three steps
    (its steps 3 to 5) and adds them.

    Args:
      query: ``(..., T, H)``: one head ``(B, T, H)``, or several, heads first, ``(B, N, T, H)``.
      key: ``(..., S, H)``.
      value: ``(..., S, H)``.
      mask: optional bool broadcastable to ``(..., T, S)``, True = attend; a masked key gets
        weight exactly 0.

    Returns:
      ``(out, weights)``: ``(..., T, H)`` and ``(..., T, S)``.

    Example: the query scores the keys ``sqrt(2) ln 3 / sqrt(2) = ln 3`` and 0, so the
    weights are ``3/4`` and ``1/4`` and ``out = 3/4 [4, 0] + 1/4 [0, 8] = [3, 2]``. With the
    heads moved after the positions it is the full function with no option set, to the bit.

    >>> query = np.array([[[1.0, 0.0]]])                            # (B, T, H) = (1, 1, 2)
    >>> key = np.array([[[np.sqrt(2) * np.log(3), 0.0], [0.0, 0.0]]])  # (B, S, H) = (1, 2, 2)
    >>> value = np.array([[[4.0, 0.0], [0.0, 8.0]]])                # (B, S, H) = (1, 2, 2)
    >>> out, weights = scaled_dot_product_attention_core(query, key, value)
    >>> weights.round(4), out.round(4)
    (array([[[0.75, 0.25]]]), array([[[3., 2.]]]))
    >>> full_out, full_weights = scaled_dot_product_attention(query[:, :, None], key[:, :, None], value[:, :, None])
    >>> bool(np.array_equal(full_out[:, :, 0], out) and np.array_equal(full_weights[:, 0], weights))
    True
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
    """Every query dotted with every key, times ``scale``: ``(..., T, H), (..., S, H) -> (..., T, S)``."""
    return np.einsum("...TH,...SH->...TS", query, key) * scale


def _weighted_sum(weights, value):
    """The values averaged with the weights: ``(..., T, S), (..., S, H) -> (..., T, H)``."""
    return np.einsum("...TS,...SH->...TH", weights, value)


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
    that a query with every key masked gets zero weights and a zero output.

    Why :math:`1/\sqrt{H}`: if the H entries of a query and a key are independent with mean
    0 and variance 1, their dot product is a sum of H products of variance 1, so its variance
    is H; dividing by :math:`\sqrt{H}` brings it back to 1, so wide heads do not push the
    softmax into saturation, where it is nearly one-hot and its gradients vanish.

    Shapes: B batch, T query length, S key length, N query heads, K key/value heads
    (N % K == 0), H features per head. ``B`` may be any number of batch axes ``B...``
    (none, as ``jax.nn``'s ``(T, N, H)``, or several, as Flax's), shared by all three inputs.

    Args:
      query: ``(B, T, N, H)``.
      key: ``(B, S, K, H)``, the dtype of ``query``.
      value: ``(B, S, K, H)``, the dtype of ``query``.
      bias: optional float array broadcastable to ``(B, N, T, S)``, added to the scaled logits.
      mask: optional bool array broadcastable to ``(B, N, T, S)``, True = attend.
      is_causal: if True, query t attends only to keys ``s <= t``.
      scale: multiplies the logits, any finite number; default ``1 / sqrt(H)``.
      query_seq_lengths: optional int ``(B,)``: queries ``t >= query_seq_lengths[b]`` are
        padding (zero weights, zero output), as ``jax.nn.dot_product_attention``.
      key_value_seq_lengths: optional int ``(B,)``: keys ``s >= key_value_seq_lengths[b]``
        are padding.
      local_window_size: optional ``(left, right)`` (or an int w for ``(w, w)``): query t
        attends only keys ``t - left <= s <= t + right`` (sliding-window attention,
        Beltagy et al. 2020, "Longformer"), as ``jax.nn``.
      dropout_rate: probability of dropping an attention weight (after the softmax); kept
        weights are scaled by ``1 / (1 - rate)``. The keep-mask is a hash of ``(dropout_rng,
        b, n, t, s)`` (:mod:`attention_np.dropout`), the same in the JAX half.
      dropout_rng: an int, or a JAX key's data (``numpy.asarray(jax.random.key_data(key))``).
      broadcast_dropout: one dropout mask for every batch row and head (Flax's default in
        its modules).
      query_segment_ids: optional int ``(B, T)``: query t attends only keys of its own
        segment (packed sequences; with ``is_causal``, causal within each segment).
      key_value_segment_ids: optional int ``(B, S)``; either one alone serves both (T = S).
      logits_soft_cap: optional c > 0: logits become ``c * tanh(logits / c)`` after the scale
        and the bias, before the mask (Gemma Team 2024, "Gemma 2").
      sinks: optional float ``(N,)``: per-head logits that join each row's softmax
        normaliser and hold no value (Xiao et al. 2024, "attention sinks"; gpt-oss), so a
        row's weights may sum to less than 1.
      return_residual: also return ``lse (B, T, N)``, the log-sum-exp of the logits a
        query attends (and its sink), as ``jax.nn.dot_product_attention``; ``-inf`` for a
        query that attends no key and has no sink.

    Returns:
      ``(out, weights)``: ``(B, T, N, H)`` and ``(B, N, T, S)``, in the dtype of ``query``
      (and ``lse`` third with ``return_residual``, in the compute dtype).
      ``weights`` are the softmax probabilities before dropout (what Flax sows); ``out``
      uses the dropped ones. T = 0 gives empty arrays; S = 0 a zero ``out``.

    Example: three equal keys get equal weights, so ``out`` is the mean of the values; with
    ``is_causal`` the first query sees only the first key, so its ``out`` is that value.

    >>> query, key = np.ones((1, 3, 1, 2)), np.zeros((1, 3, 1, 2))     # B=1, T=S=3, N=K=1, H=2
    >>> value = np.arange(6.0).reshape(1, 3, 1, 2)                     # values [0, 1], [2, 3], [4, 5]
    >>> out, weights = scaled_dot_product_attention(query, key, value)
    >>> weights[0, 0].round(4), out[0, :, 0]
    (array([[0.3333, 0.3333, 0.3333],
           [0.3333, 0.3333, 0.3333],
           [0.3333, 0.3333, 0.3333]]), array([[2., 3.],
           [2., 3.],
           [2., 3.]]))
    >>> out, weights = scaled_dot_product_attention(query, key, value, is_causal=True)
    >>> out[0, :, 0]                                                   # means of the first 1, 2, 3 values
    array([[0., 1.],
           [1., 2.],
           [2., 3.]])
    """
    query, key, value = np.asarray(query), np.asarray(key), np.asarray(value)
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
    dtype, compute = query.dtype, compute_dtype(query.dtype)
    scale = 1.0 / math.sqrt(max(H, 1)) if scale is None else float(scale)  # H = 0: the logits are empty sums, 0
    # 1. heads first, (B, N, T, H): every head is one batched matmul; with grouped-query
    #    attention each key/value head serves N // K consecutive query heads
    query = query.astype(compute).transpose(0, 2, 1, 3)                   # (B, N, T, H)
    key = np.repeat(key.astype(compute), N // K, axis=2).transpose(0, 2, 1, 3)    # (B, N, S, H)
    value = np.repeat(value.astype(compute), N // K, axis=2).transpose(0, 2, 1, 3)  # (B, N, S, H)
    # 2. the mask: every option that rules keys out (mask, causal, window, lengths, segments) in one
    lengths = length_mask(query_seq_lengths, key_value_seq_lengths, B, T, S)   # (B, 1, T, S) or None
    segments = segment_mask(query_segment_ids, key_value_segment_ids, B)       # (B, 1, T, S) or None
    mask = combine_all_masks(mask, is_causal, window, lengths, T, S, segments)
    # keys no query may attend (padding) are zeroed: even NaN there cannot reach the output or gradients
    key, value = (zero_unattended(x, mask, (B, N, T, S)) for x in (key, value))  # (B, N, S, H)
    # 3. logits (core step 1): one score per (query, key) pair, scaled, plus the optional bias, soft-capped
    logits = _logits(query, key, scale)                                    # (B, N, T, S)
    if bias is not None:
        logits = logits + np.asarray(bias).astype(compute)
    if soft_cap is not None:
        logits = soft_cap * np.tanh(logits / soft_cap)
    # 4. weights (core step 2): softmax over the keys a query may attend to (and its sink), then dropout
    sinks = None if sinks is None else np.asarray(sinks).astype(compute).reshape(1, N, 1, 1)
    weights = masked_softmax(logits, mask, sinks)                          # (B, N, T, S)
    dropped = dropout_weights(weights, dropout_rng, dropout_rate, broadcast=broadcast_dropout)
    # 5. out (core step 3): the weighted average of the values, back to (B, T, N, H)
    out = _weighted_sum(dropped, value).transpose(0, 2, 1, 3)             # (B, T, N, H)
    out, weights = unfold_batch(out.astype(dtype), batch), unfold_batch(weights.astype(dtype), batch)
    if not return_residual:
        return out, weights
    lse = log_sum_exp(logits, mask, sinks)[..., 0].transpose(0, 2, 1)       # (B, T, N)
    return out, weights, unfold_batch(lse, batch)
