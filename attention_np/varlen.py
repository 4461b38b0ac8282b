"""Variable-length attention: sequences of different lengths packed one after another, sliced
by their cumulative lengths (the layout of FlashAttention's ``flash_attn_varlen_func``)."""

import numpy as np

from ._dtypes import compute_dtype
from ._validate import check_cu_seqlens, check_varlen
from .dot_product import scaled_dot_product_attention


def varlen_attention(query, key, value, cu_seqlens_q, cu_seqlens_k, *, is_causal=False, scale=None,
                     local_window_size=None, logits_soft_cap=None, sinks=None, return_residual=False):
    r"""Attention over a batch of sequences of different lengths, packed without padding.

    Sequence b's queries are the rows :math:`c^q_b \le t < c^q_{b+1}` of ``query``, its keys
    and values the rows :math:`c^k_b \le s < c^k_{b+1}` of ``key`` and ``value``
    (``c^q = cu_seqlens_q``, ``c^k = cu_seqlens_k``), so it has
    :math:`T_b = c^q_{b+1} - c^q_b` queries and :math:`S_b = c^k_{b+1} - c^k_b` keys. Each
    sequence attends to itself alone:

    .. math::
        \mathrm{out}[c^q_b : c^q_{b+1}] = \mathrm{Attention}\big(Q[c^q_b : c^q_{b+1}],\
        K[c^k_b : c^k_{b+1}],\ V[c^k_b : c^k_{b+1}]\big)

    with ``Attention`` as :func:`scaled_dot_product_attention` (scale, soft-cap, mask,
    softmax with the sink). With ``is_causal`` the mask is aligned to the bottom right, as in
    FlashAttention: query i of a sequence stands at key position :math:`p_i = i + S_b - T_b`
    and attends keys :math:`j \le p_i`, so the last query sees every key (decoding T_b new
    tokens after a cached prefix of S_b - T_b) and, when T_b > S_b, the first T_b - S_b
    queries see none. ``local_window_size=(left, right)`` is measured from the same
    :math:`p_i`: keys :math:`p_i - \mathrm{left} \le j \le p_i + \mathrm{right}`. When
    T_b = S_b both are :func:`scaled_dot_product_attention`'s own causal mask and window.

    Why pack: a batch padded to its longest sequence, ``query (B, max T_b, N, H)``, spends
    ``B * max(T_b) * max(S_b)`` work on attention, most of it on padding when lengths vary
    (serving: prompts of 5 and of 2000 tokens); packed, ``query (total_q, N, H)`` with
    :math:`\mathrm{total}_q = \sum_b T_b`, the work is :math:`\sum_b T_b S_b`. Dao 2023,
    "FlashAttention-2: faster attention with better parallelism and work partitioning", and
    its ``flash_attn_varlen_func`` (same arguments and conventions). This function is the
    readable definition: a loop over the sequences, each one cut out, given its mask, passed
    to :func:`scaled_dot_product_attention` and written back. ``attention_jax.varlen_attention``
    computes the same without a loop, block by block, skipping the blocks whose queries and
    keys belong to different sequences.

    Shapes: total_q and total_k the packed query and key rows, N query heads, K key/value
    heads (N % K == 0, grouped-query attention), H features per head, num_seqs sequences.

    Args:
      query: ``(total_q, N, H)``.
      key, value: ``(total_k, K, H)``, the dtype of ``query``.
      cu_seqlens_q: int ``(num_seqs + 1,)``: 0, then the running total of the query lengths,
        ending at total_q. Lengths may be 0.
      cu_seqlens_k: int ``(num_seqs + 1,)``: the same for the keys, ending at total_k.
      is_causal: the bottom-right causal mask above.
      scale: multiplies the logits; default ``1 / sqrt(H)``.
      local_window_size: optional ``(left, right)`` (or an int w for ``(w, w)``), from ``p_i``.
      logits_soft_cap: optional c > 0: logits become ``c * tanh(logits / c)`` after the scale.
      sinks: optional float ``(N,)``: per-head logits that join each row's normaliser and
        hold no value, as :func:`scaled_dot_product_attention`.
      return_residual: also return ``lse (total_q, N)``, the log-sum-exp of the logits a
        query attends and its sink (``-inf`` for a query that attends no key and has no sink).

    Returns:
      ``out (total_q, N, H)`` in the dtype of ``query`` (zeros for a query that attends no
      key), or ``(out, lse)`` with ``return_residual``, ``lse`` in float32 (float64 for
      float64 input). No weights, as ``chunked_attention`` and ``flex_attention``: sequence
      b's weights are ``(N, T_b, S_b)``, a ragged set that one array holds only padded to
      ``(N, total_q, total_k)``, mostly zeros: the quadratic memory that packing avoids. For
      one sequence's weights, call :func:`scaled_dot_product_attention` on its slice.

    Raises:
      ValueError: ``cu_seqlens_q`` or ``cu_seqlens_k`` not starting at 0, decreasing, not
        ending at total_q (total_k), or holding different numbers of sequences.

    Example: two sequences, of 1 query and 2 keys, and of 2 queries and 3 keys. Equal keys
    give equal weights, so each query's output is the mean of the values it sees. Causal
    from the bottom right: sequence 0's only query sees both of its keys (mean of 0 and 1);
    sequence 1's first query sees keys 0 and 1 (values 2 and 3), its second all three.

    >>> query, key = np.ones((3, 1, 1)), np.zeros((5, 1, 1))   # total_q=3, total_k=5, N=K=H=1
    >>> value = np.arange(5.0).reshape(5, 1, 1)                # values 0, 1 | 2, 3, 4
    >>> cu_seqlens_q, cu_seqlens_k = np.array([0, 1, 3]), np.array([0, 2, 5])
    >>> out, lse = varlen_attention(query, key, value, cu_seqlens_q, cu_seqlens_k, is_causal=True,
    ...                             return_residual=True)
    >>> out[:, 0, 0], lse[:, 0].round(4)                       # lse: log 2, log 2, log 3 (logits 0)
    (array([0.5, 2.5, 3. ]), array([0.6931, 0.6931, 1.0986]))
    """
    query, key, value = np.asarray(query), np.asarray(key), np.asarray(value)
    cu_seqlens_q, cu_seqlens_k = np.asarray(cu_seqlens_q), np.asarray(cu_seqlens_k)
    shapes, window, _ = check_varlen(query, key, value, cu_seqlens_q, cu_seqlens_k, scale, local_window_size,
                                     logits_soft_cap, sinks)
    check_cu_seqlens("cu_seqlens_q", cu_seqlens_q.tolist(), shapes["total_q"], "total_q")
    check_cu_seqlens("cu_seqlens_k", cu_seqlens_k.tolist(), shapes["total_k"], "total_k")
    out = np.zeros(query.shape, query.dtype)                                   # (total_q, N, H)
    lse = np.zeros((shapes["total_q"], shapes["N"]), compute_dtype(query.dtype))  # (total_q, N)
    for b in range(shapes["num_seqs"]):
        # 1. cut sequence b out of the packed rows
        q_start, q_end = cu_seqlens_q[b], cu_seqlens_q[b + 1]
        k_start, k_end = cu_seqlens_k[b], cu_seqlens_k[b + 1]
        T, S = q_end - q_start, k_end - k_start
        # 2. its mask, aligned to the bottom right: query i stands at key position i + S - T
        position = np.arange(T)[:, None] + (S - T)                            # (T, 1)
        j = np.arange(S)[None, :]                                              # (1, S)
        mask = np.ones((T, S), dtype=bool)                                     # (T, S)
        if is_causal:
            mask &= j <= position
        if window is not None:
            left, right = window
            mask &= (j >= position - left) & (j <= position + right)
        # 3. attention on this sequence alone, a batch of one
        seq_out, _, seq_lse = scaled_dot_product_attention(
            query[None, q_start:q_end], key[None, k_start:k_end], value[None, k_start:k_end],  # (1, T, N, H), (1, S, K, H)
            mask=mask, scale=scale, logits_soft_cap=logits_soft_cap, sinks=sinks, return_residual=True,
        )
        # 4. its rows back in place
        out[q_start:q_end] = seq_out[0]                                        # (T, N, H)
        lse[q_start:q_end] = seq_lse[0]                                        # (T, N)
    return (out, lse) if return_residual else out
