"""Which queries of :class:`~.multi_head.MultiHeadAttention` have a key to attend to: the
others get a zero output row (not the output projection's bias)."""

import math

import jax.numpy as jnp

from attention_np._validate import check_window as _check_window

from .._masking import combine_all_masks as _combine_all_masks
from .._masking import segment_mask


def attending_queries(mask, is_causal, local_window_size, query_shape, S, query_seq_lengths=None,
             key_value_seq_lengths=None):
    """``(B..., T)`` bool: True where a query has some key to attend to in some head, or
    None when every query has one (no mask, window or lengths). A mask without a query
    axis (key padding, ``(B..., N|1, 1, S)``, key lengths included) is reduced through
    prefix sums, so long sequences never build a ``(T, S)`` array here."""
    window = _check_window(local_window_size)
    if mask is None and window is None and query_seq_lengths is None and key_value_seq_lengths is None:
        return None
    batch, T = tuple(query_shape[:-3]), query_shape[-3]
    mask = None if mask is None else jnp.asarray(mask)
    if key_value_seq_lengths is not None:                                          # keys past a row's length
        valid = jnp.arange(S) < jnp.asarray(key_value_seq_lengths).reshape(-1, 1, 1, 1)  # (B, 1, 1, S)
        mask = valid if mask is None else mask & valid
    if query_seq_lengths is not None:                                              # queries past a row's length
        rows = attending_queries(mask, is_causal, local_window_size, query_shape, S)
        valid = jnp.arange(T) < jnp.asarray(query_seq_lengths).reshape(-1, 1)      # (B, T)
        return valid if rows is None else rows & valid
    if mask is not None and mask.ndim >= 2 and mask.shape[-2] != 1:  # per query: reduce the mask itself
        combined = _combine_all_masks(mask, is_causal, window, None, T, S)
        return jnp.broadcast_to(combined, (*batch, 1, T, S) if combined.ndim < 3 else
                                (*batch, combined.shape[-3], T, S)).any(axis=(-3, -1))
    if mask is None:
        keys = jnp.ones((1, S), bool)                                              # (1, S)
    else:
        m = mask.reshape((1,) * (len(batch) + 3 - mask.ndim) + mask.shape)         # (B...|1, N|1, 1, S|1)
        keys = jnp.broadcast_to(m, m.shape[:-1] + (S,)).any(axis=-3)[..., 0, :]    # (B...|1, S)
    counts = jnp.cumsum(keys, axis=-1, dtype=jnp.int32)                              # (B...|1, S)
    # zeros_like, not zeros: sharded like the counts on an Explicit mesh, as concatenate needs
    prefix = jnp.concatenate([jnp.zeros_like(counts[..., :1]), counts], axis=-1)      # (B...|1, S + 1)
    t = jnp.arange(T)
    low, high = jnp.zeros_like(t), jnp.full_like(t, S - 1)                          # keys row t may see
    if is_causal:
        high = jnp.minimum(high, t)
    if window is not None:
        low, high = jnp.maximum(low, t - window[0]), jnp.minimum(high, t + window[1])
    count = jnp.take(prefix, jnp.clip(high + 1, 0, S), axis=-1) - jnp.take(prefix, jnp.clip(low, 0, S), axis=-1)
    attends = (count > 0) & (low <= high)                                           # (B...|1, T)
    return jnp.broadcast_to(attends, (*batch, T))


def attending_segments(query_segment_ids, key_value_segment_ids, mask, is_causal, local_window_size, query_shape, S):
    """``(B..., T)`` bool: True where a query has a key of its own segment that the mask, the
    causal mask and the window leave it."""
    batch, T = tuple(query_shape[:-3]), query_shape[-3]
    segments = segment_mask(query_segment_ids, key_value_segment_ids, math.prod(batch))       # (B, 1, T, S)
    combined = _combine_all_masks(None if mask is None else jnp.asarray(mask), is_causal,
                                  _check_window(local_window_size), None, T, S,
                                  segments.reshape(batch + (1, T, S)))                         # (B..., N|1, T, S)
    return combined.any(axis=(-3, -1))
