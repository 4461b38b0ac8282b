"""A paged KV cache: the keys and values of every sequence in one pool of fixed-size pages, each
row of the batch reading its own pages through a page table (vLLM's PagedAttention).

A contiguous cache (:mod:`attention_np.kv_cache`) reserves ``max_length`` positions for every
row, so a batch of short and long requests holds ``B * max_length`` positions, most of them
empty. A paged cache holds one pool of P pages of ``page_size`` positions; a row takes pages
as it grows, in any order, and its page table lists them: logical page i of row b (its
positions ``i * page_size .. (i + 1) * page_size - 1``) is physical page ``page_table[b, i]``.
Position p of row b lives at slot ``p % page_size`` of page ``page_table[b, p // page_size]``.

Shape letters: P pages in the pool, page_size positions a page, B rows, max_pages the entries
of a row's page table, k new tokens a row, N query heads, K key/value heads (N % K == 0), H
features per head.
"""

import numpy as np

from ._validate import (
    check_paged_attention,
    check_paged_attention_values,
    check_paged_sizes,
    check_paged_write,
    check_paged_write_values,
)
from .dot_product import scaled_dot_product_attention


def init_paged_kv_cache(num_pages, page_size, num_kv_heads, head_dim, *, dtype=np.float32):
    """An empty pool of pages for :func:`paged_kv_write` and :func:`paged_attention`.

    Returns:
      ``{"key_pages": (P, page_size, K, H), "value_pages": (P, page_size, K, H)}``, zeros.
      Which page belongs to which row is not stored here: the caller's page table says.

    >>> cache = init_paged_kv_cache(3, 2, 1, 4)     # P=3 pages of 2 positions, K=1, H=4
    >>> cache["key_pages"].shape, cache["value_pages"].dtype
    ((3, 2, 1, 4), dtype('float32'))
    """
    check_paged_sizes(num_pages, page_size, num_kv_heads, head_dim)
    shape = (num_pages, page_size, num_kv_heads, head_dim)
    return {"key_pages": np.zeros(shape, dtype), "value_pages": np.zeros(shape, dtype)}


def paged_kv_write(cache, page_table, start, key, value):
    r"""Write ``k`` new keys and values of each row into its pages.

    New token j of row b goes to position :math:`p = \mathrm{start}_b + j` of the row, that
    is to slot :math:`p \bmod \mathrm{page\_size}` of physical page
    :math:`\mathrm{page\_table}[b, \lfloor p / \mathrm{page\_size} \rfloor]`.

    Args:
      cache: from :func:`init_paged_kv_cache` or a previous write.
      page_table: int ``(B, max_pages)``: logical page i of row b is physical page
        ``page_table[b, i]``. Entries of pages the write does not touch are never read.
      start: int ``(B,)``: the position of row b's first new token (the tokens it holds
        already, for decoding).
      key, value: ``(B, k, K, H)``, the dtype of the cache.

    Returns:
      the cache with the new keys and values written (new arrays; ``cache`` is not changed).
      Two rows that name the same page and slot write the same place: the later row wins
      (pages shared between rows, for a common prefix, are for reading).

    Raises:
      ValueError: a position past a row's pages (``start[b] + k > max_pages * page_size``),
        a negative ``start``, or a page the write touches outside the pool ``[0, P)``.

    Example: three tokens of one row, on pages 2 then 0 of a pool of 3 pages of 2 positions:
    positions 0 and 1 fill page 2, position 2 the first slot of page 0.

    >>> cache = init_paged_kv_cache(3, 2, 1, 1, dtype=np.float64)   # P=3, page_size=2, K=H=1
    >>> page_table = np.array([[2, 0]])                              # logical pages 0, 1 -> pages 2, 0
    >>> value = np.array([10.0, 20.0, 30.0]).reshape(1, 3, 1, 1)     # positions 0, 1, 2
    >>> cache = paged_kv_write(cache, page_table, np.array([0]), np.zeros((1, 3, 1, 1)), value)
    >>> cache["value_pages"][:, :, 0, 0]                             # one row a page, one column a slot
    array([[30.,  0.],
           [ 0.,  0.],
           [10., 20.]])
    """
    page_table, start, key, value = (np.asarray(x) for x in (page_table, start, key, value))
    shapes = check_paged_write(cache, page_table, start, key, value)
    check_paged_write_values(page_table.tolist(), start.tolist(), shapes["k"], shapes)
    B, k, page_size = shapes["B"], shapes["k"], shapes["page_size"]
    # 1. the positions of the new tokens in their rows: start[b] .. start[b] + k - 1
    positions = start[:, None] + np.arange(k)                              # (B, k)
    # 2. where each lives: slot p % page_size of physical page page_table[b, p // page_size]
    rows = np.arange(B)[:, None]                                           # (B, 1)
    pages = page_table[rows, positions // page_size]                       # (B, k)
    slots = positions % page_size                                          # (B, k)
    # 3. write them there, in copies of the pool
    key_pages, value_pages = (np.array(cache[name]) for name in ("key_pages", "value_pages"))  # (P, page_size, K, H)
    key_pages[pages, slots], value_pages[pages, slots] = key, value
    return {"key_pages": key_pages, "value_pages": value_pages}


def paged_attention(query, cache, page_table, lengths, *, scale=None, local_window_size=None, logits_soft_cap=None,
                    sinks=None):
    r"""Causal attention of each row's ``k`` newest tokens to the keys and values in its pages.

    Row b holds :math:`L_b = \mathrm{lengths}_b` tokens, the k new ones last, so new token j
    stands at position :math:`p_{bj} = L_b - k + j`. Gathering the row's pages in page-table
    order gives its logical sequence :math:`K_b, V_b` (position :math:`s` from slot
    :math:`s \bmod \mathrm{page\_size}` of page
    :math:`\mathrm{page\_table}[b, \lfloor s / \mathrm{page\_size} \rfloor]`), and

    .. math::
        \mathrm{out}_{bj} = \mathrm{Attention}\big(q_{bj};\ K_{b,s}, V_{b,s} \text{ for }
        p_{bj} - \mathrm{left} \le s \le p_{bj}\big)

    with ``Attention`` as :func:`scaled_dot_product_attention` (scale, soft-cap, softmax with
    the sink; grouped heads: key/value head ``n // (N // K)`` serves query head n), and
    ``left`` infinite without a window. So k = 1 is a decoding step and k > 1 a chunk of a
    prompt (chunked prefill), and writing a sequence's keys and values with
    :func:`paged_kv_write` and attending gives the causal attention of the contiguous
    sequence, whatever pages hold it.

    Kwon et al. 2023, "Efficient memory management for large language model serving with
    PagedAttention" (vLLM): pages and a page table from logical to physical pages, as an
    operating system's virtual memory, so a row wastes at most one partly filled page instead
    of ``max_length - L_b`` positions. This function is the readable definition: it gathers every
    row's pages into a padded ``(B, max_pages * page_size, K, H)`` sequence and masks it, the
    memory paging avoids.

    Args:
      query: ``(B, k, N, H)``, each row's k newest tokens (k = 1: decoding).
      cache: ``{"key_pages", "value_pages": (P, page_size, K, H)}``, the dtype of ``query``,
        with the keys and values of every row's ``lengths[b]`` tokens written (the new ones
        included: :func:`paged_kv_write` first).
      page_table: int ``(B, max_pages)``: logical page i of row b is physical page
        ``page_table[b, i]``. Only row b's first ``ceil(lengths[b] / page_size)`` entries are
        read; the others may hold anything (-1, say).
      lengths: int ``(B,)``: the tokens in row b's cache, the k new ones included.
      scale: multiplies the logits; default ``1 / sqrt(H)``.
      local_window_size: optional ``(left, right)`` (or an int w for ``(w, w)``): token j of
        row b attends positions ``p_bj - left .. p_bj`` (``right`` looks ahead, where the
        causal mask sees nothing). Sliding-window models decode with ``(w, 0)``.
      logits_soft_cap: optional c > 0: logits become ``c * tanh(logits / c)`` after the scale.
      sinks: optional float ``(N,)``: per-head logits that join each query's normaliser and
        hold no value, as :func:`scaled_dot_product_attention`.

    Returns:
      ``out (B, k, N, H)`` in the dtype of ``query``; zeros for a query that sees no key.
      Positions past a row's length (the rest of its last page, its unused page-table
      entries, other rows' pages) are never read into an output, whatever they hold.

    Raises:
      ValueError: ``lengths[b] < k`` or ``lengths[b] > max_pages * page_size``, or a page a
        row uses outside the pool ``[0, P)``.

    Example: the row of :func:`paged_kv_write`'s example (values 10, 20, 30 at positions 0,
    1, 2, on pages 2 then 0) and its two newest tokens, at positions 1 and 2. Equal (zero)
    keys get equal weights, so each output is the mean of the values up to its position.

    >>> cache = init_paged_kv_cache(3, 2, 1, 1, dtype=np.float64)
    >>> page_table = np.array([[2, 0]])
    >>> value = np.array([10.0, 20.0, 30.0]).reshape(1, 3, 1, 1)
    >>> cache = paged_kv_write(cache, page_table, np.array([0]), np.zeros((1, 3, 1, 1)), value)
    >>> query = np.ones((1, 2, 1, 1))                                # B=1, k=2, N=H=1
    >>> paged_attention(query, cache, page_table, np.array([3]))[0, :, 0, 0]   # means of 10, 20 | 10, 20, 30
    array([15., 20.])
    """
    query, page_table, lengths = np.asarray(query), np.asarray(page_table), np.asarray(lengths)
    shapes, window, logits_soft_cap = check_paged_attention(query, cache, page_table, lengths, scale,
                                                            local_window_size, logits_soft_cap, sinks)
    check_paged_attention_values(page_table.tolist(), lengths.tolist(), shapes["k"], shapes)
    B, k, K, H = shapes["B"], shapes["k"], shapes["K"], shapes["H"]
    max_pages, page_size = shapes["max_pages"], shapes["page_size"]
    S = max_pages * page_size                                              # the positions a page table holds
    lengths = lengths.astype(np.int32)                                     # signed: positions below count back from it
    # 1. the pages each row uses: its first ceil(lengths[b] / page_size) entries; the others
    #    may name no page at all, so page 0 is read in their place (and masked below)
    used = np.arange(max_pages) * page_size < lengths[:, None]             # (B, max_pages)
    pages = np.where(used, page_table, 0)                                  # (B, max_pages)
    # 2. gather row b's pages in page-table order: its logical sequence, position
    #    i * page_size + slot from slot `slot` of page pages[b, i]
    key = np.asarray(cache["key_pages"])[pages].reshape(B, S, K, H)       # (B, max_pages, page_size, K, H) -> (B, S, K, H)
    value = np.asarray(cache["value_pages"])[pages].reshape(B, S, K, H)   # (B, S, K, H)
    # 3. the mask: new token j of row b stands at lengths[b] - k + j and sees every position up
    #    to its own (so none past the row's length), no further back than `left`
    positions = lengths[:, None] - k + np.arange(k)                        # (B, k)
    mask = np.arange(S) <= positions[:, :, None]                           # (B, k, S)
    if window is not None:
        mask &= np.arange(S) >= positions[:, :, None] - window[0]
    # 4. attention on the logical sequences; it zeroes the keys and values no query sees, so
    #    whatever lies past a row's length (NaN included) never reaches an output
    out, _ = scaled_dot_product_attention(query, key, value, mask=mask[:, None], scale=scale,
                                          logits_soft_cap=logits_soft_cap, sinks=sinks)  # (B, k, N, H)
    return out
