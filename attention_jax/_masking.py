"""Softmax with a boolean mask, and the causal mask: line-by-line mirror of
``attention_np/_masking.py``. The fusion-friendly variants the tuned paths use are in
:mod:`attention_jax.fast._fused`.

docs/design.md section 4: masked logits are *replaced* (``where``), never added to ``-inf``, so
no NaN can appear, in the forward pass or the gradients; a row with every key masked gets
all-zero weights and zero gradients; softmax runs in float32 (float64 for float64 input).
"""

import jax
import jax.numpy as jnp

from ._dtypes import compute_dtype


def masked_softmax(logits, mask=None, sinks=None):
    r"""Softmax over the last axis that gives masked entries exactly zero weight.

    .. math::
        w_s = \frac{m_s \exp(x_s - \max_{s'} x_{s'})}{\sum_{s'} m_{s'} \exp(x_{s'} - \max_{s''} x_{s''})}

    with ``0 / 0 := 0``, so a row whose entries are all masked (or all ``-inf``) gets
    all-zero weights and zero gradients.

    Args:
      logits: float array ``(..., S)``.
      mask: optional bool array broadcastable to ``logits``, True = attend.
      sinks: optional float array broadcastable to ``logits[..., :1]``: one more logit per
        row, never masked, that joins the normaliser and whose weight is dropped (attention
        sinks: the weights of a row then sum to less than 1).

    Returns:
      weights, same shape as ``logits``, in float32 (float64 for float64 ``logits``).

    """
    logits = logits.astype(compute_dtype(logits.dtype))
    if sinks is not None:  # the sink as one more column, always attended; its weight dropped
        logits, mask = _with_sinks(logits, mask, sinks)
        return masked_softmax(logits, mask)[..., :-1]
    if mask is not None:
        # replace, not add -inf: masked NaN/inf logits vanish and exp never sees inf - inf
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    unnormalized = jnp.exp(logits - _row_max(logits))
    if mask is not None:
        unnormalized = jnp.where(mask, unnormalized, 0.0)  # exactly zero, even in all-masked rows
    total = unnormalized.sum(axis=-1, keepdims=True)
    return unnormalized / _nonzero(total)


def _row_max(logits):
    """Each row's largest logit ``(..., 1)``, subtracted before ``exp`` for stability; 0 for a
    row with no logit above ``-inf`` (every bias ``-inf``, or S = 0), so that ``exp`` sees
    ``-inf - 0``, not ``-inf - (-inf) = NaN``."""
    peak = logits.max(axis=-1, keepdims=True, initial=-jnp.inf)
    return jax.lax.stop_gradient(jnp.where(peak == -jnp.inf, 0.0, peak))  # any shift gives the same softmax


def _nonzero(total):
    """Row sums with 0 replaced by 1. A row that sees a key has ``total >= 1`` (its max
    contributes ``exp(0)``); a row that sees none (all masked, or every logit ``-inf``) has
    ``total = 0`` and numerator 0, and gets ``0 / 1 = 0``. Dividing by 1, not by a tiny
    number, keeps its gradients finite whatever the upstream gradient."""
    return jnp.where(total == 0, 1.0, total).astype(total.dtype)


def causal_matrix(T: int, S: int):
    """``(T, S)`` bool, True where key ``s <= t``: query t sees keys 0..t (top-left aligned,
    as ``jax.nn.dot_product_attention`` and PyTorch's ``is_causal``)."""
    return jnp.tril(jnp.ones((T, S), dtype=bool))


def combine_masks(mask, is_causal: bool, T: int, S: int):
    """``mask & causal`` where both are given; either one alone; or None."""
    if not is_causal:
        return mask
    causal = causal_matrix(T, S)
    return causal if mask is None else jnp.logical_and(mask, causal)


def attended_keys(mask, shape):
    """True where any query may attend key s: ``mask`` broadcast to the weights' ``shape``
    ``(B, [N,] T, S)``, reduced over T to ``(B, [N,] S)``.

    Values of keys nobody attends to are zeroed before the weighted sum, so ``0 * NaN``
    from a masked (padding) position cannot leak into the output.
    """
    return jnp.broadcast_to(mask, shape).any(axis=-2)


def zero_unattended(x, mask, shape):
    """``x (..., S, F)`` with the rows of keys no query attends (:func:`attended_keys` of
    ``mask`` broadcast to ``shape (..., T, S)``) set to 0, so that ``0 * NaN`` from a masked
    (padding) position cannot reach an output or a gradient; ``x`` itself without a mask.
    """
    if mask is None:
        return x
    return jnp.where(attended_keys(mask, shape)[..., None], x, 0)


def window_mask(T: int, S: int, window):
    """``(T, S)`` bool, True where ``t - left <= s <= t + right`` for ``window = (left, right)``
    (``jax.nn.dot_product_attention``'s ``local_window_size``)."""
    left, right = window
    t = jnp.arange(T)[:, None]
    s = jnp.arange(S)[None, :]
    return (s >= t - left) & (s <= t + right)


def length_mask(query_seq_lengths, key_value_seq_lengths, B: int, T: int, S: int):
    """``(B, 1, T, S)`` bool (or None): query t of row b is valid when
    ``t < query_seq_lengths[b]``, key s when ``s < key_value_seq_lengths[b]``."""
    if query_seq_lengths is None and key_value_seq_lengths is None:
        return None
    mask = jnp.ones((B, 1, T, S), dtype=bool)
    if query_seq_lengths is not None:
        lengths = jnp.asarray(query_seq_lengths).reshape(B, 1, 1, 1)
        mask = mask & (jnp.arange(T).reshape(1, 1, T, 1) < lengths)
    if key_value_seq_lengths is not None:
        lengths = jnp.asarray(key_value_seq_lengths).reshape(B, 1, 1, 1)
        mask = mask & (jnp.arange(S).reshape(1, 1, 1, S) < lengths)
    return mask


def combine_all_masks(mask, is_causal: bool, window, lengths, T: int, S: int, segments=None):
    """The caller's ``mask``, the causal mask, the local window, the sequence-length mask and the
    segment mask, combined with ``and``; None when there is none of them."""
    mask = combine_masks(mask, is_causal, T, S)
    for extra in (None if window is None else window_mask(T, S, window), lengths, segments):
        if extra is not None:
            mask = extra if mask is None else jnp.logical_and(mask, extra)
    return mask


def _with_sinks(logits, mask, sinks):
    """``logits (..., S)`` and ``mask`` with the sink logits as column S, attended."""
    sink = jnp.broadcast_to(jnp.asarray(sinks).astype(logits.dtype), logits.shape[:-1] + (1,))
    attend = jnp.ones(logits.shape, bool) if mask is None else jnp.broadcast_to(mask, logits.shape)
    return jnp.concatenate([logits, sink], axis=-1), jnp.concatenate([attend, jnp.ones(sink.shape, bool)], axis=-1)


def log_sum_exp(logits, mask=None, sinks=None):
    r""":math:`\log (e^{\sigma} + \sum_s [m_s] e^{x_s})` over the last axis, keeping it: the
    log of the softmax's normaliser (``jax.nn.dot_product_attention``'s residual). ``-inf`` for
    a row that attends nothing and has no sink (its gradient there is 0, not NaN: the log
    never sees 0).
    """
    logits = logits.astype(compute_dtype(logits.dtype))
    if sinks is not None:
        logits, mask = _with_sinks(logits, mask, sinks)
    if mask is not None:
        logits = jnp.where(mask, logits, -jnp.inf)
    peak = jnp.max(logits, axis=-1, keepdims=True, initial=-jnp.inf)
    peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
    total = jnp.exp(logits - peak).sum(axis=-1, keepdims=True)
    lse = peak + jnp.log(jnp.where(total > 0, total, 1.0))
    return jnp.where(total > 0, lse, -jnp.inf)


def segment_mask(query_segment_ids, key_value_segment_ids, B: int):
    """``(B, 1, T, S)`` bool (or None): query t of row b attends key s when both lie in the
    same segment, ``query_segment_ids[b, t] == key_value_segment_ids[b, s]`` (packed
    sequences). Either may be None: it is then the other's (self-attention).
    """
    if query_segment_ids is None and key_value_segment_ids is None:
        return None
    query_ids = key_value_segment_ids if query_segment_ids is None else query_segment_ids
    key_ids = query_ids if key_value_segment_ids is None else key_value_segment_ids
    query_ids, key_ids = jnp.asarray(query_ids).reshape(B, -1), jnp.asarray(key_ids).reshape(B, -1)
    return (query_ids[:, None, :, None] == key_ids[:, None, None, :])
