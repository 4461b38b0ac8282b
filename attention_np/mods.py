r"""Mods for :func:`flex_attention`, written once for both halves.

A ``score_mod(score, b, h, q_idx, kv_idx)`` rewrites a scaled logit; a ``mask_mod(b, h,
q_idx, kv_idx)`` says whether query ``q_idx`` of head ``h`` in batch row ``b`` may attend key
``kv_idx``. They are the signatures of PyTorch's FlexAttention (He et al. 2024, "FlexAttention:
the flexibility of PyTorch with the performance of FlashAttention").

A mod receives arrays that broadcast against each other: NumPy index arrays in
``attention_np`` (``b (B, 1, 1, 1)``, ``h (1, N, 1, 1)``, ``q_idx (1, 1, T, 1)``, ``kv_idx
(1, 1, 1, S)``), JAX ones in ``attention_jax`` (scalars there, under ``jax.vmap``). So a mod
written with array operators (``+``, ``*``, ``==``, ``&``, indexing) runs in both. One that
needs a function (``tanh``, ``where``) asks the arrays for their library,
:func:`array_namespace` (NumPy or ``jax.numpy``), as :func:`soft_cap` does. A mod may close
over arrays (a bias table, document ids): in ``attention_jax`` gradients reach the closed-over
float arrays, so a learnable table trains, and any of them may be a tracer (document ids
passed as an argument of the training step that JAX transforms). A NumPy array indexed by
JAX indices must first become a JAX array: :func:`asarray_like` converts it for whichever
half calls.

Example: the causal mask and a document mask, and both at once.

>>> import numpy as np
>>> ids = np.array([[0, 0, 1, 1]])                               # two documents of two tokens
>>> mask = and_masks(causal_mask, document_mask(ids))
>>> q, kv = np.arange(4)[:, None], np.arange(4)[None, :]
>>> mask(0, 0, q, kv).astype(int)                                # (T, S): causal within each document
array([[1, 0, 0, 0],
       [1, 1, 0, 0],
       [0, 0, 1, 0],
       [0, 0, 1, 1]])
"""

import math
import sys

import numpy as np

from ._validate import check_window


def array_namespace(x):
    """``jax.numpy`` for a JAX array (or tracer), else NumPy: the library a mod's functions
    come from, so that one mod serves both halves.

    >>> array_namespace(np.ones(2)).__name__
    'numpy'
    """
    jax = sys.modules.get("jax")  # never imported here: a NumPy caller has no JAX arrays
    if jax is not None and isinstance(x, jax.Array):
        return jax.numpy
    return np


def asarray_like(array, index):
    """``array`` in the library of ``index`` (NumPy or ``jax.numpy``), so that ``array[index]``
    works in both halves whatever ``array`` was made with.

    >>> asarray_like([10, 20, 30], np.arange(2))[np.arange(2)]
    array([10, 20])
    """
    return array_namespace(index).asarray(array)


def causal_mask(b, h, q_idx, kv_idx):
    """Query t attends keys ``s <= t``.

    >>> causal_mask(0, 0, 2, np.arange(4))
    array([ True,  True,  True, False])
    """
    return kv_idx <= q_idx


def sliding_window_mask(local_window_size):
    """Query t attends keys ``t - left <= s <= t + right`` (Beltagy et al. 2020, "Longformer"):
    ``local_window_size`` as ``jax.nn.dot_product_attention`` takes it, a pair ``(left, right)``
    or an int w for ``(w, w)``; a causal sliding window is ``(left, 0)``.

    >>> sliding_window_mask((1, 0))(0, 0, 2, np.arange(4))
    array([False,  True,  True, False])
    >>> sliding_window_mask(1)(0, 0, 2, np.arange(4))          # (1, 1)
    array([False,  True,  True,  True])
    """
    left, right = check_window(local_window_size)

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx >= q_idx - left) & (kv_idx <= q_idx + right)
    return mask_mod


def prefix_lm_mask(prefix_length):
    """Every query attends the first ``prefix_length`` keys, and causally after them (the
    prefix LM of Raffel et al. 2020, "T5"). ``prefix_length`` an int or an int array ``(B,)``.

    >>> prefix_lm_mask(3)(0, 0, 0, np.arange(5))
    array([ True,  True,  True, False, False])
    """
    def mask_mod(b, h, q_idx, kv_idx):
        prefix = asarray_like(prefix_length, kv_idx)
        prefix = prefix[b] if prefix.ndim else prefix
        return (kv_idx < prefix) | (kv_idx <= q_idx)
    return mask_mod


def document_mask(query_segment_ids, key_value_segment_ids=None):
    """A query attends only keys of its own segment: packed documents. Segment ids are ints
    ``(B, T)`` and ``(B, S)`` (default: the query's, self-attention).

    >>> document_mask(np.array([[0, 0, 1]]))(0, 0, 2, np.arange(3))
    array([False, False,  True])
    """
    kv_ids = query_segment_ids if key_value_segment_ids is None else key_value_segment_ids

    def mask_mod(b, h, q_idx, kv_idx):
        return asarray_like(query_segment_ids, q_idx)[b, q_idx] == asarray_like(kv_ids, kv_idx)[b, kv_idx]
    return mask_mod


def and_masks(*mask_mods):
    """A mask that attends where every one of ``mask_mods`` does (PyTorch's ``and_masks``).

    >>> and_masks(causal_mask, sliding_window_mask((1, 0)))(0, 0, 2, np.arange(4))
    array([False,  True,  True, False])
    """
    def mask_mod(b, h, q_idx, kv_idx):
        result = mask_mods[0](b, h, q_idx, kv_idx)
        for other in mask_mods[1:]:
            result = result & other(b, h, q_idx, kv_idx)
        return result
    return mask_mod


def or_masks(*mask_mods):
    """A mask that attends where any one of ``mask_mods`` does (PyTorch's ``or_masks``).

    >>> or_masks(causal_mask, prefix_lm_mask(3))(0, 0, 0, np.arange(5))   # the prefix LM again
    array([ True,  True,  True, False, False])
    """
    def mask_mod(b, h, q_idx, kv_idx):
        result = mask_mods[0](b, h, q_idx, kv_idx)
        for other in mask_mods[1:]:
            result = result | other(b, h, q_idx, kv_idx)
        return result
    return mask_mod


def noop_mask(b, h, q_idx, kv_idx):
    """Every query attends every key (PyTorch's ``noop_mask``): the mask of no mask.

    >>> bool(noop_mask(0, 0, 2, 3))
    True
    """
    return True


def soft_cap(cap):
    r"""Logits squashed into ``(-cap, cap)``: :math:`c \tanh(x / c)` (Gemma 2, Gemma Team 2024).

    >>> soft_cap(2.0)(np.array([0.0, 1.0, 100.0]), 0, 0, 0, 0).round(4)
    array([0.    , 0.9242, 2.    ])
    """
    def score_mod(score, b, h, q_idx, kv_idx):
        return cap * array_namespace(score).tanh(score / cap)
    return score_mod


def alibi(slopes):
    r"""ALiBi (Press et al. 2022, "Train short, test long"): head h adds ``slopes[h] * (s - t)``,
    a penalty growing with the distance to the key. ``slopes (N,)``, for example
    :math:`2^{-8 (h + 1) / N}`.

    >>> alibi(np.array([0.5]))(np.zeros(3), 0, 0, 2, np.arange(3))
    array([-1. , -0.5,  0. ])
    """
    def score_mod(score, b, h, q_idx, kv_idx):
        return score + asarray_like(slopes, h)[h] * (kv_idx - q_idx)
    return score_mod


def relative_position_bias(table, max_distance):
    """A learned bias per head and clipped distance (Shaw et al. 2018):
    ``score + table[h, clip(s - t, -D, D) + D]``, ``table (N, 2 D + 1)``. (Not T5's bias, which
    looks the distance up in log-spaced buckets: :func:`t5_relative_position_bias`.)

    >>> table = np.array([[-1.0, 0.0, 1.0]])                      # N = 1, D = 1
    >>> relative_position_bias(table, 1)(np.zeros(4), 0, 0, 1, np.arange(4))
    array([-1.,  0.,  1.,  1.])
    """
    def score_mod(score, b, h, q_idx, kv_idx):
        distance = array_namespace(score).clip(kv_idx - q_idx, -max_distance, max_distance)
        return score + asarray_like(table, h)[h, distance + max_distance]
    return score_mod


def t5_relative_position_bucket(relative_position, *, num_buckets, max_distance, bidirectional):
    r"""T5's bucket of each relative position ``s - t`` (Raffel et al. 2020), as Hugging Face's
    ``T5Attention._relative_position_bucket`` computes it: distances below ``e`` get a bucket
    each, the rest share log-spaced buckets up to ``max_distance``, and every distance beyond
    it the last bucket. Bidirectional (T5's encoder), half the buckets look forward
    (``s > t``) and half back; otherwise (its decoder) a key ahead of the query is distance 0.

    .. math::
        n = \mathrm{num\_buckets} \ (\text{halved when bidirectional}), \quad e = n / 2, \quad
        \mathrm{bucket}(d) = \begin{cases} d & d < e \\
        \min\big(n - 1,\ e + \lfloor \log(d / e) / \log(D / e) \cdot (n - e) \rfloor\big) & d \ge e \end{cases}

    with ``d = |s - t|`` (bidirectional, plus ``n`` when ``s > t``) or ``d = max(t - s, 0)``.
    The logarithm is taken in float32, as PyTorch takes it, so the boundary buckets are
    Hugging Face's exactly. Works on NumPy and JAX integer arrays, traced ones too.

    With T5's defaults (32 buckets, ``max_distance=128``, bidirectional): ``n = 16``, ``e = 8``,
    so ``bucket(d) = 8 + floor(2 log2(d / 8))`` from ``d = 8``, at most 15:

    >>> d = np.array([0, 1, 7, 8, 12, 16, 32, 64, 127, 128, 1000])
    >>> t5_relative_position_bucket(-d, num_buckets=32, max_distance=128, bidirectional=True)   # keys behind
    array([ 0,  1,  7,  8,  9, 10, 12, 14, 15, 15, 15])
    >>> t5_relative_position_bucket(d, num_buckets=32, max_distance=128, bidirectional=True)    # ahead: 16 more
    array([ 0, 17, 23, 24, 25, 26, 28, 30, 31, 31, 31])
    """
    half = _check_t5_buckets(num_buckets, max_distance, bidirectional)     # n: the buckets of one direction
    xp = array_namespace(relative_position)
    relative_position = xp.asarray(relative_position)
    # 1. the distance d, and the direction's first bucket
    if bidirectional:
        offset = (relative_position > 0) * half                     # keys ahead: the second half
        distance = xp.abs(relative_position)
    else:
        offset = 0
        distance = -xp.minimum(relative_position, 0)                # keys ahead: distance 0
    # 2. log-spaced buckets beyond the e exact ones, in float32 as in PyTorch
    #    (max(d, e): no log(0) in the branch that small distances do not take)
    exact = half // 2
    ratio = xp.maximum(distance, exact).astype(xp.float32) / xp.float32(exact)
    log_bucket = xp.log(ratio) / xp.float32(math.log(max_distance / exact)) * xp.float32(half - exact)
    large = xp.minimum(exact + log_bucket.astype(xp.int32), half - 1)
    # 3. a bucket per distance below e, the log-spaced one above
    return offset + xp.where(distance < exact, distance, large)


def t5_relative_position_bias(table, *, num_buckets, max_distance, bidirectional):
    """T5's relative position bias as a score_mod: ``score + table[bucket(s - t), h]``,
    :func:`t5_relative_position_bucket` of the distance to the key, ``table (num_buckets, N)``
    (Hugging Face's ``relative_attention_bias.weight``, an ``nn.Embedding``). T5 does not scale
    its logits: call ``flex_attention(..., scale=1.0)``. As a ``(1, N, T, S)`` bias array for
    ``bias=``: :func:`t5_position_bias`.

    Eight buckets, bidirectional: four a direction, ``e = 2`` exact, then ``2 + floor(log2(d / 2))``
    up to 3 (``max_distance=8``); keys ahead add 4.

    >>> table = np.arange(8.0)[:, None]                             # N = 1: bucket b adds b
    >>> mod = t5_relative_position_bias(table, num_buckets=8, max_distance=8, bidirectional=True)
    >>> mod(np.zeros(7), 0, 0, 3, np.arange(7))                      # query 3, keys 0..6: d = 3 2 1 0 1 2 3
    array([2., 2., 1., 0., 5., 6., 6.])
    """
    _check_t5_table(table, num_buckets)

    def score_mod(score, b, h, q_idx, kv_idx):
        bucket = t5_relative_position_bucket(kv_idx - q_idx, num_buckets=num_buckets, max_distance=max_distance,
                                             bidirectional=bidirectional)
        return score + asarray_like(table, h)[bucket, h]
    return score_mod


def t5_position_bias(table, query_length, key_length, *, num_buckets, max_distance, bidirectional):
    """T5's relative position bias as an array, ``(1, N, T, S)`` (Hugging Face's
    ``T5Attention.compute_bias``), to pass as ``bias=`` with ``scale=1.0``: entry ``[0, h,
    t, s]`` is ``table[bucket(s - t), h]``. In the library of ``table``: a JAX table gives a
    JAX array, differentiable in the table. For queries at positions ``p, p + 1, ...`` (a
    decoding step), take rows ``[:, :, p:]`` of the bias for ``p + T`` queries.

    >>> table = np.arange(8.0)[:, None]                             # N = 1: bucket b adds b
    >>> t5_position_bias(table, 2, 3, num_buckets=8, max_distance=8, bidirectional=True)
    array([[[[0., 5., 6.],
             [1., 0., 5.]]]])
    """
    _check_t5_table(table, num_buckets)
    xp = array_namespace(table)
    table = xp.asarray(table)
    query_position, key_position = xp.arange(query_length)[:, None], xp.arange(key_length)[None, :]
    bucket = t5_relative_position_bucket(key_position - query_position, num_buckets=num_buckets,     # (T, S)
                                         max_distance=max_distance, bidirectional=bidirectional)
    return table[bucket].transpose(2, 0, 1)[None]                                                   # (1, N, T, S)


def _check_t5_buckets(num_buckets, max_distance, bidirectional) -> int:
    """The buckets a direction has; refuses what would divide by zero (fewer than one exact
    bucket, or ``max_distance`` not beyond the exact ones)."""
    half = num_buckets // 2 if bidirectional else num_buckets
    if half // 2 < 1:
        raise ValueError(f"num_buckets must be at least {4 if bidirectional else 2} "
                         f"({'bidirectional' if bidirectional else 'one direction'}); got {num_buckets}")
    if max_distance <= half // 2:
        raise ValueError(f"max_distance must exceed the {half // 2} exact buckets of num_buckets={num_buckets} "
                         f"(bidirectional={bidirectional}); got {max_distance}")
    return half


def _check_t5_table(table, num_buckets) -> None:
    shape = tuple(np.shape(table))
    if len(shape) != 2 or shape[0] != num_buckets:
        raise ValueError(f"table must have shape (num_buckets, N) with num_buckets={num_buckets}; got {shape}")
