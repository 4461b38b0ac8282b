"""A paged KV cache (vLLM's PagedAttention): mirror of ``attention_np/paged.py``.

The pool is a pytree ``{"key_pages", "value_pages": (P, page_size, K, H)}`` updated
functionally (a scatter through the page table), and the page table, ``start`` and
``lengths`` are ordinary arrays, so under ``jax.jit`` one compiled program serves every page
table and every mix of lengths of the same shapes. This mirror gathers each row's pages into
a padded sequence, as the NumPy definition does; :mod:`attention_jax.fast.paged` reads only
the pages a row uses.

Shape letters: P pages in the pool, page_size positions a page, B rows, max_pages the entries
of a row's page table, k new tokens a row, N query heads, K key/value heads (N % K == 0), H
features per head.
"""

import jax
import jax.numpy as jnp

from attention_np._validate import (
    check_paged_attention,
    check_paged_attention_values,
    check_paged_sizes,
    check_paged_write,
    check_paged_write_values,
)

from .dot_product import scaled_dot_product_attention


def init_paged_kv_cache(num_pages, page_size, num_kv_heads, head_dim, *, dtype=jnp.float32):
    """An empty pool of pages for :func:`paged_kv_write` and :func:`paged_attention`.

    Returns:
      ``{"key_pages": (P, page_size, K, H), "value_pages": (P, page_size, K, H)}``, zeros.
      Which page belongs to which row is not stored here: the caller's page table says.
    """
    check_paged_sizes(num_pages, page_size, num_kv_heads, head_dim)
    shape = (num_pages, page_size, num_kv_heads, head_dim)
    return {"key_pages": jnp.zeros(shape, dtype), "value_pages": jnp.zeros(shape, dtype)}


def _concrete(*arrays):
    """The arrays as Python lists when all are known (a call outside ``jit``), else None."""
    if any(isinstance(x, jax.core.Tracer) for x in arrays):
        return None
    return [jax.device_get(x).tolist() for x in arrays]


def paged_kv_write(cache, page_table, start, key, value):
    r"""Write ``k`` new keys and values of each row into its pages.

    New token j of row b goes to position :math:`p = \mathrm{start}_b + j` of the row, that
    is to slot :math:`p \bmod \mathrm{page\_size}` of physical page
    :math:`\mathrm{page\_table}[b, \lfloor p / \mathrm{page\_size} \rfloor]`.

    Args:
      cache: from :func:`init_paged_kv_cache` or a previous write.
      page_table: int ``(B, max_pages)``; may be traced. Entries of pages the write does not
        touch are never read.
      start: int ``(B,)``: the position of row b's first new token; may be traced.
      key, value: ``(B, k, K, H)``, the dtype of the cache (k is static).

    Returns:
      the cache with the new keys and values written. Two rows that name the same page and
      slot write the same place, in an unspecified order (pages shared between rows are for
      reading).

    Raises:
      ValueError: when ``page_table`` and ``start`` are concrete (a call outside ``jit``): a
        position past a row's pages, a negative ``start``, or a page the write touches outside
        the pool ``[0, P)``. Inside ``jit`` the values are not known: a token whose position
        or page is out of range is dropped (nothing is written for it, no other page changes).
        Check before a traced loop, or wrap the step in ``jax.experimental.checkify``.
    """
    shapes = check_paged_write(cache, page_table, start, key, value)
    values = _concrete(page_table, start)  # outside jit; traced values cannot be read
    if values is not None:
        check_paged_write_values(*values, shapes["k"], shapes)
    B, k, page_size = shapes["B"], shapes["k"], shapes["page_size"]
    # 1. the positions of the new tokens in their rows: start[b] .. start[b] + k - 1
    positions = jnp.asarray(start)[:, None] + jnp.arange(k)                # (B, k)
    # 2. where each lives: slot p % page_size of physical page page_table[b, p // page_size]
    rows = jnp.arange(B)[:, None]                                          # (B, 1)
    fits = (positions >= 0) & (positions < shapes["max_pages"] * page_size)  # (B, k); unchecked under jit
    pages = jnp.asarray(page_table)[rows, jnp.where(fits, positions // page_size, 0)]  # (B, k)
    pages = jnp.where(fits & (pages >= 0) & (pages < shapes["P"]), pages, shapes["P"])  # out of range: P, dropped
    slots = positions % page_size                                          # (B, k)
    # 3. write them there (a functional update: new arrays)
    key_pages, value_pages = (jnp.asarray(cache[name]) for name in ("key_pages", "value_pages"))  # (P, page_size, K, H)
    key_pages = key_pages.at[pages, slots].set(key, mode="drop")
    value_pages = value_pages.at[pages, slots].set(value, mode="drop")
    return {"key_pages": key_pages, "value_pages": value_pages}


def paged_attention(query, cache, page_table, lengths, *, scale=None, local_window_size=None, logits_soft_cap=None,
                    sinks=None):
    r"""Causal attention of each row's ``k`` newest tokens to the keys and values in its pages.

    .. math::
        \mathrm{out}_{bj} = \mathrm{Attention}\big(q_{bj};\ K_{b,s}, V_{b,s} \text{ for }
        p_{bj} - \mathrm{left} \le s \le p_{bj}\big), \quad p_{bj} = \mathrm{lengths}_b - k + j

    where :math:`K_b, V_b` is row b's logical sequence (position s from slot
    :math:`s \bmod \mathrm{page\_size}` of page
    :math:`\mathrm{page\_table}[b, \lfloor s / \mathrm{page\_size} \rfloor]`): the numbers of
    :func:`attention_np.paged_attention` (Kwon et al. 2023, vLLM's PagedAttention), with
    grouped heads, soft-cap and sinks as :func:`scaled_dot_product_attention`. This mirror
    gathers every row's pages into a padded ``(B, max_pages * page_size, K, H)`` sequence;
    :func:`attention_jax.fast.paged.paged_attention` has the same numbers and reads only the
    pages each row uses.

    Args:
      query: ``(B, k, N, H)``, each row's k newest tokens (k = 1: decoding; k static).
      cache: ``{"key_pages", "value_pages": (P, page_size, K, H)}``, the dtype of ``query``.
      page_table: int ``(B, max_pages)``; may be traced. Only row b's first
        ``ceil(lengths[b] / page_size)`` entries are read.
      lengths: int ``(B,)``: the tokens in row b's cache, the k new ones included; may be traced.
      scale: multiplies the logits; default ``1 / sqrt(H)``; a 0-d float array is traced.
      local_window_size: optional ``(left, right)`` or an int; token j of row b attends
        positions ``p_bj - left .. p_bj``. Static.
      logits_soft_cap: optional c > 0 (static): logits become ``c * tanh(logits / c)``.
      sinks: optional float ``(N,)``, per-head sink logits; they receive gradients.

    Returns:
      ``out (B, k, N, H)`` in the dtype of ``query``; zeros for a query that sees no key.
      Positions past a row's length are never read into an output or a gradient.

    Raises:
      ValueError: when ``page_table`` and ``lengths`` are concrete (a call outside ``jit``):
        ``lengths[b] < k`` or ``lengths[b] > max_pages * page_size``, or a page a row uses
        outside the pool ``[0, P)``. Inside ``jit`` they are not checked: a query at a
        negative position (``lengths[b] < k``) sees no key and gets zeros; positions past
        ``max_pages * page_size`` do not exist, so a row that claims more sees only those;
        a used entry outside the pool reads some page of the pool (JAX's indexing: negative
        entries count from the end, larger ones are clamped). Check before a traced loop,
        or wrap the step in ``jax.experimental.checkify``.
    """
    shapes, window, logits_soft_cap = check_paged_attention(query, cache, page_table, lengths, scale,
                                                            local_window_size, logits_soft_cap, sinks)
    values = _concrete(page_table, lengths)  # outside jit; traced values cannot be read
    if values is not None:
        check_paged_attention_values(*values, shapes["k"], shapes)
    B, k, K, H = shapes["B"], shapes["k"], shapes["K"], shapes["H"]
    max_pages, page_size = shapes["max_pages"], shapes["page_size"]
    S = max_pages * page_size                                              # the positions a page table holds
    lengths = jnp.asarray(lengths).astype(jnp.int32)                       # signed: positions below count back from it
    # 1. the pages each row uses: its first ceil(lengths[b] / page_size) entries; the others
    #    may name no page at all, so page 0 is read in their place (and masked below)
    used = jnp.arange(max_pages) * page_size < lengths[:, None]            # (B, max_pages)
    pages = jnp.where(used, page_table, 0)                                 # (B, max_pages)
    # 2. gather row b's pages in page-table order: its logical sequence, position
    #    i * page_size + slot from slot `slot` of page pages[b, i]
    key = jnp.asarray(cache["key_pages"])[pages].reshape(B, S, K, H)       # (B, max_pages, page_size, K, H) -> (B, S, K, H)
    value = jnp.asarray(cache["value_pages"])[pages].reshape(B, S, K, H)   # (B, S, K, H)
    # 3. the mask: new token j of row b stands at lengths[b] - k + j and sees every position up
    #    to its own (so none past the row's length), no further back than `left`
    positions = lengths[:, None] - k + jnp.arange(k)                       # (B, k)
    mask = jnp.arange(S) <= positions[:, :, None]                          # (B, k, S)
    if window is not None:
        mask &= jnp.arange(S) >= positions[:, :, None] - window[0]
    # 4. attention on the logical sequences; it zeroes the keys and values no query sees, so
    #    whatever lies past a row's length (NaN included) never reaches an output or a gradient
    out, _ = scaled_dot_product_attention(query, key, value, mask=mask[:, None], scale=scale,
                                          logits_soft_cap=logits_soft_cap, sinks=sinks)  # (B, k, N, H)
    return out
