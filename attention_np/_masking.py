"""Softmax with a boolean mask, and the causal mask: the numerics every mechanism shares.

The rules (docs/design.md, section 4): masked logits are *replaced* (``where``), never
added to ``-inf``, so no NaN can appear; a row with every key masked gets all-zero weights;
softmax runs in float32 (float64 for float64 input).
"""

import numpy as np

from ._dtypes import compute_dtype


def masked_softmax(logits, mask=None, sinks=None):
    r"""Softmax over the last axis that gives masked entries exactly zero weight.

    .. math::
        w_s = \frac{m_s \exp(x_s - \max_{s'} x_{s'})}{\sum_{s'} m_{s'} \exp(x_{s'} - \max_{s''} x_{s''})}

    with ``0 / 0 := 0``, so a row whose entries are all masked (or all ``-inf``) gets
    all-zero weights.

    Args:
      logits: float array ``(..., S)``.
      mask: optional bool array broadcastable to ``logits``, True = attend.
      sinks: optional float array broadcastable to ``logits[..., :1]``: one more logit per
        row, never masked, that joins the normaliser and whose weight is dropped (attention
        sinks: the weights of a row then sum to less than 1).

    Returns:
      weights, same shape as ``logits``, in float32 (float64 for float64 ``logits``).

    Example: the masked entry gets exactly zero and the others share the rest,
    ``e / (1 + e) = 0.7311`` and ``1 / (1 + e) = 0.2689``; a fully masked row is all zeros.

    >>> masked_softmax(np.array([1.0, 2.0, 3.0]), np.array([True, True, False])).round(4)
    array([0.2689, 0.7311, 0.    ])
    >>> masked_softmax(np.array([1.0, 2.0, 3.0]), np.array([False, False, False]))
    array([0., 0., 0.])
    """
    logits = logits.astype(compute_dtype(logits.dtype))
    if sinks is not None:  # the sink as one more column, always attended; its weight dropped
        logits, mask = _with_sinks(logits, mask, sinks)
        return masked_softmax(logits, mask)[..., :-1]
    if mask is not None:
        # replace, not add -inf: masked NaN/inf logits vanish and exp never sees inf - inf
        logits = np.where(mask, logits, np.finfo(logits.dtype).min)
    unnormalized = np.exp(logits - _row_max(logits))
    if mask is not None:
        unnormalized = np.where(mask, unnormalized, 0.0)  # exactly zero, even in all-masked rows
    total = unnormalized.sum(axis=-1, keepdims=True)
    return unnormalized / _nonzero(total)


def _row_max(logits):
    """Each row's largest logit ``(..., 1)``, subtracted before ``exp`` for stability; 0 for a
    row with no logit above ``-inf`` (every bias ``-inf``, or S = 0), so that ``exp`` sees
    ``-inf - 0``, not ``-inf - (-inf) = NaN``."""
    peak = logits.max(axis=-1, keepdims=True, initial=-np.inf)
    return np.where(peak == -np.inf, 0.0, peak)


def _nonzero(total):
    """Row sums with 0 replaced by 1. A row that sees a key has ``total >= 1`` (its max
    contributes ``exp(0)``); a row that sees none (all masked, or every logit ``-inf``) has
    ``total = 0`` and numerator 0, and gets ``0 / 1 = 0``. Dividing by 1, not by a tiny
    number, keeps its gradients finite whatever the upstream gradient."""
    return np.where(total == 0, 1.0, total).astype(total.dtype)


def causal_matrix(T: int, S: int):
    """``(T, S)`` bool, True where key ``s <= t``: query t sees keys 0..t (top-left aligned,
    as ``jax.nn.dot_product_attention`` and PyTorch's ``is_causal``).

    >>> causal_matrix(3, 4)                  # row t: the keys query t may see
    array([[ True, False, False, False],
           [ True,  True, False, False],
           [ True,  True,  True, False]])
    """
    return np.tril(np.ones((T, S), dtype=bool))


def combine_masks(mask, is_causal: bool, T: int, S: int):
    """``mask & causal`` where both are given; either one alone; or None.

    >>> combine_masks(np.array([False, True, True]), True, 3, 3)   # key 0 masked out, and causal
    array([[False, False, False],
           [False,  True, False],
           [False,  True,  True]])
    """
    if not is_causal:
        return mask
    causal = causal_matrix(T, S)
    return causal if mask is None else np.logical_and(mask, causal)


def attended_keys(mask, shape):
    """True where any query may attend key s: ``mask`` broadcast to the weights' ``shape``
    ``(B, [N,] T, S)``, reduced over T to ``(B, [N,] S)``.

    Values of keys nobody attends to are zeroed before the weighted sum, so ``0 * NaN``
    from a masked (padding) position cannot leak into the output.

    >>> attended_keys(causal_matrix(2, 3), (1, 2, 3))              # key 2 is seen by no query
    array([[ True,  True, False]])
    """
    return np.broadcast_to(mask, shape).any(axis=-2)


def zero_unattended(x, mask, shape):
    """``x (..., S, F)`` with the rows of keys no query attends (:func:`attended_keys` of
    ``mask`` broadcast to ``shape (..., T, S)``) set to 0, so that ``0 * NaN`` from a masked
    (padding) position cannot reach an output or a gradient; ``x`` itself without a mask.

    >>> zero_unattended(np.array([[1.0], [np.nan]]), np.array([True, False]), (1, 2))   # key 1 is never attended
    array([[1.],
           [0.]])
    """
    if mask is None:
        return x
    return np.where(attended_keys(mask, shape)[..., None], x, 0)


def window_mask(T: int, S: int, window):
    """``(T, S)`` bool, True where ``t - left <= s <= t + right`` for ``window = (left, right)``
    (``jax.nn.dot_product_attention``'s ``local_window_size``).

    >>> window_mask(4, 4, (1, 0))          # each query sees itself and the key before it
    array([[ True, False, False, False],
           [ True,  True, False, False],
           [False,  True,  True, False],
           [False, False,  True,  True]])
    """
    left, right = window
    t = np.arange(T)[:, None]
    s = np.arange(S)[None, :]
    return (s >= t - left) & (s <= t + right)


def length_mask(query_seq_lengths, key_value_seq_lengths, B: int, T: int, S: int):
    """``(B, 1, T, S)`` bool (or None): query t of row b is valid when
    ``t < query_seq_lengths[b]``, key s when ``s < key_value_seq_lengths[b]``.

    >>> length_mask(None, np.array([1, 3]), 2, 1, 3)[:, 0, 0]   # row 0 has 1 real key, row 1 has 3
    array([[ True, False, False],
           [ True,  True,  True]])
    """
    if query_seq_lengths is None and key_value_seq_lengths is None:
        return None
    mask = np.ones((B, 1, T, S), dtype=bool)
    if query_seq_lengths is not None:
        lengths = np.asarray(query_seq_lengths).reshape(B, 1, 1, 1)
        mask = mask & (np.arange(T).reshape(1, 1, T, 1) < lengths)
    if key_value_seq_lengths is not None:
        lengths = np.asarray(key_value_seq_lengths).reshape(B, 1, 1, 1)
        mask = mask & (np.arange(S).reshape(1, 1, 1, S) < lengths)
    return mask


def combine_all_masks(mask, is_causal: bool, window, lengths, T: int, S: int, segments=None):
    """The caller's ``mask``, the causal mask, the local window, the sequence-length mask and the
    segment mask, combined with ``and``; None when there is none of them.

    >>> combine_all_masks(None, True, (1, 0), None, 3, 3)          # causal and a window of one key back
    array([[ True, False, False],
           [ True,  True, False],
           [False,  True,  True]])
    >>> combine_all_masks(None, False, None, None, 3, 3) is None
    True
    """
    mask = combine_masks(mask, is_causal, T, S)
    for extra in (None if window is None else window_mask(T, S, window), lengths, segments):
        if extra is not None:
            mask = extra if mask is None else np.logical_and(mask, extra)
    return mask


def _with_sinks(logits, mask, sinks):
    """``logits (..., S)`` and ``mask`` with the sink logits as column S, attended."""
    sink = np.broadcast_to(np.asarray(sinks).astype(logits.dtype), logits.shape[:-1] + (1,))
    attend = np.ones(logits.shape, bool) if mask is None else np.broadcast_to(mask, logits.shape)
    return np.concatenate([logits, sink], axis=-1), np.concatenate([attend, np.ones(sink.shape, bool)], axis=-1)


def log_sum_exp(logits, mask=None, sinks=None):
    r""":math:`\log (e^{\sigma} + \sum_s [m_s] e^{x_s})` over the last axis, keeping it: the
    log of the softmax's normaliser (``jax.nn.dot_product_attention``'s residual). ``-inf`` for
    a row that attends nothing and has no sink (its gradient there is 0, not NaN: the log
    never sees 0).

    >>> log_sum_exp(np.log(np.array([1.0, 3.0, 4.0])), np.array([True, True, False]))   # log(1 + 3)
    array([1.38629436])
    >>> log_sum_exp(np.zeros(2), np.zeros(2, bool))
    array([-inf])
    """
    logits = logits.astype(compute_dtype(logits.dtype))
    if sinks is not None:
        logits, mask = _with_sinks(logits, mask, sinks)
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
    peak = np.max(logits, axis=-1, keepdims=True, initial=-np.inf)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    total = np.exp(logits - peak).sum(axis=-1, keepdims=True)
    lse = peak + np.log(np.where(total > 0, total, 1.0))
    return np.where(total > 0, lse, -np.inf)


def segment_mask(query_segment_ids, key_value_segment_ids, B: int):
    """``(B, 1, T, S)`` bool (or None): query t of row b attends key s when both lie in the
    same segment, ``query_segment_ids[b, t] == key_value_segment_ids[b, s]`` (packed
    sequences). Either may be None: it is then the other's (self-attention).

    >>> segment_mask(np.array([[0, 0, 1]]), None, 1)[0, 0].astype(int)   # two documents packed in one row
    array([[1, 1, 0],
           [1, 1, 0],
           [0, 0, 1]])
    """
    if query_segment_ids is None and key_value_segment_ids is None:
        return None
    query_ids = key_value_segment_ids if query_segment_ids is None else query_segment_ids
    key_ids = query_ids if key_value_segment_ids is None else key_value_segment_ids
    query_ids, key_ids = np.asarray(query_ids).reshape(B, -1), np.asarray(key_ids).reshape(B, -1)
    return (query_ids[:, None, :, None] == key_ids[:, None, None, :])
