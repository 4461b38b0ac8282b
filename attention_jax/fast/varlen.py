"""Variable-length attention (FlashAttention's ``flash_attn_varlen_func`` layout): the numbers
of ``attention_np/varlen.py``, without its loop over the sequences. The cumulative lengths
become a segment id and an aligned key position per packed row (:class:`Packing`), and the
packed rows run through the blocked kernels as one sequence, skipping every block whose
queries and keys belong to different sequences."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from attention_np._validate import check_cu_seqlens, check_varlen
from attention_np.mods import soft_cap as soft_cap_mod

from .._jit import jit, reverse_mode_only, split_scale
from .chunked import BlockMask, chunked_attention, flex_attention
from .chunked.sparse import EMPTY, FULL, PARTIAL, default_blocks


def varlen_attention(query, key, value, cu_seqlens_q, cu_seqlens_k, *, is_causal=False, scale=None,
                     local_window_size=None, logits_soft_cap=None, sinks=None, return_residual=False):
    r"""Attention over a batch of sequences of different lengths, packed without padding.

    .. math::
        \mathrm{out}[c^q_b : c^q_{b+1}] = \mathrm{Attention}\big(Q[c^q_b : c^q_{b+1}],\
        K[c^k_b : c^k_{b+1}],\ V[c^k_b : c^k_{b+1}]\big)

    for each sequence b, ``c^q = cu_seqlens_q``, ``c^k = cu_seqlens_k``: the numbers of
    :func:`attention_np.varlen_attention` (the readable definition, a loop over the
    sequences), with FlashAttention-2's conventions (Dao 2023; ``flash_attn_varlen_func``):
    with ``is_causal`` query i of a sequence of T_b queries and S_b keys stands at key
    position :math:`p_i = i + S_b - T_b` (aligned to the bottom right) and attends keys
    :math:`j \le p_i`; a window ``(left, right)`` is measured from the same :math:`p_i`.

    How: each packed row gets its sequence's number as a segment id and its aligned key
    position (:class:`Packing`), and the whole packed batch is one sequence for the blocked
    kernels of :func:`chunked_attention`, in O(total_q + total_k) memory, forward and
    backward. A block whose query rows and key rows belong to different sequences is
    skipped, so the work grows as :math:`\sum_b T_b S_b` (up to the blocks cut by sequence
    boundaries), not as total_q x total_k. Without ``is_causal`` and a window, or when the
    query and key lengths agree (``cu_seqlens_k`` the very object ``cu_seqlens_q``, or both
    concrete and equal), the segment ids go to :func:`chunked_attention`, whose causal mask and
    window are then each sequence's own; otherwise to :func:`flex_attention` with a
    ``mask_mod`` reading the ids and positions and a block mask built from them
    (:func:`packed_block_mask`). Reverse-mode autodiff only (the kernels' ``jax.custom_vjp``).

    Under ``jit`` the cumulative lengths may be traced: total_q, total_k and the number of
    sequences are shapes (one compilation each), the lengths are values (one compilation
    serves every packing). Their values are checked (``ValueError``) when they are concrete,
    in a call outside ``jit``; traced, they are not: rows outside
    ``cu_seqlens[0]:cu_seqlens[-1]`` then belong to no sequence (their queries get zeros,
    their keys are never read), and a decreasing ``cu_seqlens`` gives unspecified rows.
    Check the values before a traced loop, or wrap the step in ``jax.experimental.checkify``.

    Shapes: total_q and total_k the packed query and key rows, N query heads, K key/value
    heads (N % K == 0), H features per head, num_seqs sequences (the B of a padded
    batch ``(B, T, N, H)``).

    Args:
      query: ``(total_q, N, H)``.
      key, value: ``(total_k, K, H)``, the dtype of ``query``.
      cu_seqlens_q: int ``(num_seqs + 1,)``: 0, then the running total of the query lengths,
        ending at total_q; lengths may be 0. May be traced.
      cu_seqlens_k: int ``(num_seqs + 1,)``: the same for the keys. May be traced.
      is_causal: the bottom-right causal mask. Static.
      scale: multiplies the logits; default ``1 / sqrt(H)``; a 0-d float array is traced.
      local_window_size: optional ``(left, right)`` or an int, from ``p_i``. Static.
      logits_soft_cap: optional c > 0: logits become ``c * tanh(logits / c)`` after the scale.
      sinks: optional float ``(N,)``, per-head sink logits; they receive gradients.
      return_residual: also return ``lse (total_q, N)``, the log-sum-exp of the attended
        logits and the sink (``-inf`` for a query that attends no key and has no sink).

    Returns:
      ``out (total_q, N, H)`` in the dtype of ``query`` (zeros for a query that attends no
      key), or ``(out, lse)``. No weights: see :func:`attention_np.varlen_attention`.

    Example: against the NumPy definition, on three sequences (one of them empty).

    >>> import attention_np
    >>> x = np.random.default_rng(0).normal(size=(6, 2, 4)).astype(np.float32)
    >>> cu_seqlens_q, cu_seqlens_k = np.array([0, 2, 2, 3]), np.array([0, 3, 4, 6])
    >>> out = varlen_attention(x[:3], x, x, cu_seqlens_q, cu_seqlens_k, is_causal=True)
    >>> expected = attention_np.varlen_attention(x[:3], x, x, cu_seqlens_q, cu_seqlens_k, is_causal=True)
    >>> out.shape, bool(np.abs(np.asarray(out) - expected).max() < 1e-6)
    ((3, 2, 4), True)
    """
    same_lengths = cu_seqlens_k is cu_seqlens_q  # one array for both: the lengths agree, even traced
    # checked as given (an int64 array named int64, not the int32 JAX would make of it without x64)
    query, key, value = (_as_given(x, jnp) for x in (query, key, value))
    cu_seqlens_q, cu_seqlens_k = _as_given(cu_seqlens_q, np), _as_given(cu_seqlens_k, np)
    shapes, window, soft_cap = check_varlen(query, key, value, cu_seqlens_q, cu_seqlens_k, scale, local_window_size,
                                            logits_soft_cap, sinks)
    known = {}  # the values of the cumulative lengths that are concrete (not traced)
    for name, cu_seqlens, letter in (("cu_seqlens_q", cu_seqlens_q, "total_q"), ("cu_seqlens_k", cu_seqlens_k, "total_k")):
        if not isinstance(cu_seqlens, jax.core.Tracer):
            known[name] = np.asarray(jax.device_get(cu_seqlens)).tolist()
            check_cu_seqlens(name, known[name], shapes[letter], letter)
    same_lengths = same_lengths or (len(known) == 2 and known["cu_seqlens_q"] == known["cu_seqlens_k"])
    aligned = same_lengths or (not is_causal and window is None)
    scale, scale_value = split_scale(scale)
    with reverse_mode_only("varlen_attention", "attention_jax.scaled_dot_product_attention on each sequence's slice"):
        return _varlen_attention(query, key, value, jnp.asarray(cu_seqlens_q), jnp.asarray(cu_seqlens_k), sinks,
                                 scale_value, is_causal=bool(is_causal), scale=scale, window=window,
                                 soft_cap=soft_cap, aligned=aligned, return_residual=bool(return_residual))


def _as_given(x, library):
    """An array as the caller gave it (its dtype kept for the checks); anything else (a list)
    through ``library.asarray``."""
    return x if hasattr(x, "shape") and hasattr(x, "dtype") else library.asarray(x)


@jit(static_argnames=("is_causal", "scale", "window", "soft_cap", "aligned", "return_residual"))
def _varlen_attention(query, key, value, cu_seqlens_q, cu_seqlens_k, sinks, scale_value, *, is_causal, scale, window,
                      soft_cap, aligned, return_residual):
    """:func:`varlen_attention`, compiled: ``aligned`` picks :func:`chunked_attention` (each
    sequence's causal mask and window are the global ones) over :func:`flex_attention`."""
    total_q, total_k = query.shape[0], key.shape[0]
    scale = scale if scale_value is None else scale_value
    packing = pack(cu_seqlens_q, cu_seqlens_k, total_q, total_k)
    # the packed rows as one sequence, a batch of one
    query, key, value = query[None], key[None], value[None]                    # (1, total_q, N, H), (1, total_k, K, H)
    if aligned or total_q == 0 or total_k == 0:
        result = chunked_attention(query, key, value, is_causal=is_causal, scale=scale, local_window_size=window,
                                   query_segment_ids=packing.query_ids[None],
                                   key_value_segment_ids=packing.key_ids[None], logits_soft_cap=soft_cap,
                                   sinks=sinks, return_residual=return_residual)
    else:
        block_mask = packed_block_mask(packing, is_causal, window)
        score_mod = None if soft_cap is None else soft_cap_mod(soft_cap)
        result = flex_attention(query, key, value, score_mod=score_mod, block_mask=block_mask, scale=scale,
                                sinks=sinks, return_residual=return_residual)
    if return_residual:
        out, lse = result
        return out[0], lse[0]                                                  # (total_q, N, H), (total_q, N)
    return result[0]                                                           # (total_q, N, H)


class Packing(NamedTuple):
    """The packing of :func:`varlen_attention`, per packed row (int32, possibly traced).

    Attributes:
      query_ids: ``(total_q,)``: the sequence of each query row; -1 before ``cu_seqlens_q[0]``
        and num_seqs from ``cu_seqlens_q[-1]`` on (no sequence).
      key_ids: ``(total_k,)``: the sequence of each key row; outside ``cu_seqlens_k`` -2 and
        num_seqs + 1, ids no query has. Both are sorted, as packed segment ids.
      query_positions: ``(total_q,)``: query row t of sequence b stands at key row
        ``t + cu_seqlens_k[b + 1] - cu_seqlens_q[b + 1]`` (the key position ``i + S_b - T_b``
        of its query index i, as a row of the packed keys): query t attends key row s
        causally when ``s <= query_positions[t]``, and in a window ``(left, right)`` when
        ``query_positions[t] - left <= s <= query_positions[t] + right``.
      cu_seqlens_q, cu_seqlens_k: the cumulative lengths, int32.
    """

    query_ids: jax.Array
    key_ids: jax.Array
    query_positions: jax.Array
    cu_seqlens_q: jax.Array
    cu_seqlens_k: jax.Array


def pack(cu_seqlens_q, cu_seqlens_k, total_q, total_k) -> Packing:
    """The :class:`Packing` of these cumulative lengths: O(total_q + total_k) work, traced
    lengths welcome.

    >>> packing = pack(jnp.array([0, 1, 3]), jnp.array([0, 2, 5]), 3, 5)
    >>> packing.query_ids, packing.key_ids, packing.query_positions
    (Array([0, 1, 1], dtype=int32), Array([0, 0, 1, 1, 1], dtype=int32), Array([1, 3, 4], dtype=int32))
    """
    cu_seqlens_q, cu_seqlens_k = (jnp.asarray(x).astype(jnp.int32) for x in (cu_seqlens_q, cu_seqlens_k))
    num_seqs = cu_seqlens_q.shape[0] - 1

    def sequence(cu_seqlens, total):  # row r lies in sequence b when cu_seqlens[b] <= r < cu_seqlens[b + 1]
        rows = jnp.arange(total, dtype=jnp.int32)
        return (jnp.searchsorted(cu_seqlens, rows, side="right") - 1).astype(jnp.int32)  # -1 .. num_seqs

    query_ids = sequence(cu_seqlens_q, total_q)                                 # (total_q,)
    key_ids = sequence(cu_seqlens_k, total_k)                                   # (total_k,)
    key_ids = jnp.where(key_ids < 0, -2, jnp.where(key_ids >= num_seqs, num_seqs + 1, key_ids))  # no query's ids
    end = jnp.clip(query_ids + 1, 0, num_seqs)                                  # b + 1, in range for rows outside
    query_positions = jnp.arange(total_q, dtype=jnp.int32) + cu_seqlens_k[end] - cu_seqlens_q[end]
    return Packing(query_ids, key_ids, query_positions, cu_seqlens_q, cu_seqlens_k)


def packed_mask_mod(packing, is_causal, window):
    """The ``mask_mod(b, h, q_idx, kv_idx)`` of a packing: same sequence, and the bottom-right
    causal mask and window from :attr:`Packing.query_positions`."""
    def mask_mod(b, h, q_idx, kv_idx):
        attend = packing.query_ids[q_idx] == packing.key_ids[kv_idx]
        position = packing.query_positions[q_idx]
        if is_causal:
            attend = attend & (kv_idx <= position)
        if window is not None:
            attend = attend & (kv_idx >= position - window[0]) & (kv_idx <= position + window[1])
        return attend
    return mask_mod


def packed_block_mask(packing, is_causal, window, block_sizes=None) -> BlockMask:
    """The :class:`BlockMask` of :func:`packed_mask_mod`, from each block's range of sequence
    ids and aligned positions (O(number of blocks + total_q + total_k), never a (total_q,
    total_k) mask): empty when the ranges of ids do not meet or every key lies past the
    causal bound or outside the window of every query, full when one sequence fills it and
    every key is within every query's bounds, partial otherwise (exact for the ids; a safe
    over-approximation for the positions). ``attended``: a key of sequence b is read when b
    has a query and the key is not left of the first query's window.

    >>> packing = pack(jnp.array([0, 2, 4]), jnp.array([0, 2, 4]), 4, 4)    # two sequences of 2
    >>> packed_block_mask(packing, True, None, block_sizes=(2, 2)).states[0, 0]
    Array([[1, 0],
           [0, 1]], dtype=int8)
    """
    total_q, total_k = packing.query_ids.shape[0], packing.key_ids.shape[0]
    qc, kc = block_sizes or default_blocks(total_q, total_k)
    nq, nk = -(-total_q // qc), -(-total_k // kc)

    def blocks(x, chunk, n):  # (n, chunk): padded with the last row, so each block's range is its real rows'
        return jnp.pad(x, (0, n * chunk - x.shape[0]), mode="edge").reshape(n, chunk)

    query_ids, positions = blocks(packing.query_ids, qc, nq), blocks(packing.query_positions, qc, nq)
    key_ids = blocks(packing.key_ids, kc, nk)
    qmin, qmax = query_ids.min(1)[:, None], query_ids.max(1)[:, None]            # (nq, 1)
    kmin, kmax = key_ids.min(1)[None, :], key_ids.max(1)[None, :]                # (1, nk)
    pmin, pmax = positions.min(1)[:, None], positions.max(1)[:, None]            # (nq, 1)
    j = jnp.arange(nk)[None, :]
    u0, u1 = j * kc, jnp.minimum((j + 1) * kc, total_k) - 1                       # first, last real key
    empty = (qmax < kmin) | (kmax < qmin)
    full = (qmin == qmax) & (kmin == kmax) & (qmin == kmin) & ((j + 1) * kc <= total_k)
    if is_causal:
        empty, full = empty | (u0 > pmax), full & (u1 <= pmin)
    if window is not None:
        left, right = window
        empty = empty | (u0 > pmax + right) | (u1 < pmin - left)
        full = full & (u0 >= pmax - left) & (u1 <= pmin + right)
    states = jnp.where(empty, EMPTY, jnp.where(full, FULL, PARTIAL)).astype(jnp.int8)[None, None]  # (1, 1, nq, nk)
    # the keys some query attends: those of a sequence with queries, not left of its first query's window
    num_seqs = packing.cu_seqlens_q.shape[0] - 1
    lengths_q = jnp.append(jnp.diff(packing.cu_seqlens_q), 0)                   # (num_seqs + 1,): last, no sequence
    in_sequence = (packing.key_ids >= 0) & (packing.key_ids < num_seqs)
    b = jnp.where(in_sequence, packing.key_ids, num_seqs)                         # (total_k,)
    attended = lengths_q[b] > 0
    if window is not None:
        first = packing.cu_seqlens_k[jnp.minimum(b + 1, num_seqs)] - lengths_q[b]  # the first query's key row
        attended = attended & (jnp.arange(total_k) >= first - window[0])
    mask_mod = packed_mask_mod(packing, is_causal, window)
    return BlockMask(states, (1, None, total_q, total_k), (qc, kc), mask_mod, attended[None, None])  # (1, 1, total_k)
