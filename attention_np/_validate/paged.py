"""The checks of the paged KV cache (both halves): ``init_paged_kv_cache``, ``paged_kv_write``
and ``paged_attention``. Shapes and dtypes always (:func:`check_paged_write`,
:func:`check_paged_attention`); the values of the page table, ``start`` and ``lengths`` where
they are known (:func:`check_paged_write_values`, :func:`check_paged_attention_values`, given
Python lists).

Shape letters: P pages in the pool, page_size positions a page, max_pages the length of a
row of the page table, B rows, k new tokens a row, N query heads, K key/value heads, H
features per head."""

from __future__ import annotations

import numbers
from collections.abc import Mapping

from .dot_product import check_sinks, check_soft_cap, check_window
from .engine import Shapes, _dtype_name, check_heads, check_same_dtype, check_scale

PAGES = ("P", "page_size", "K", "H")
CACHE_KEYS = ("key_pages", "value_pages")


def check_paged_sizes(num_pages, page_size, num_kv_heads, head_dim) -> None:
    """The sizes of ``init_paged_kv_cache``: ints >= 1."""
    for name, size in (("num_pages", num_pages), ("page_size", page_size), ("num_kv_heads", num_kv_heads),
                       ("head_dim", head_dim)):
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ValueError(f"{name} must be an int >= 1; got {size!r}")


def _check_cache(cache, shapes: Shapes) -> None:
    """``cache = {"key_pages", "value_pages": (P, page_size, K, H)}``, one dtype."""
    if not isinstance(cache, Mapping):
        raise TypeError(f"cache must be a dict from init_paged_kv_cache; got {type(cache).__name__}")
    missing = set(CACHE_KEYS) - set(cache)
    if missing:
        raise ValueError(f"cache is missing {sorted(missing)}; expected keys ['key_pages', 'value_pages'] "
                         "(from init_paged_kv_cache)")
    shapes.check("cache['key_pages']", cache["key_pages"], PAGES)
    shapes.check("cache['value_pages']", cache["value_pages"], PAGES)
    check_same_dtype("cache['value_pages']", cache["value_pages"], "cache['key_pages']", cache["key_pages"])
    if shapes["P"] == 0 or shapes["page_size"] == 0:
        raise ValueError(f"cache['key_pages'] must hold at least one page of at least one position (P >= 1, "
                         f"page_size >= 1); got {tuple(cache['key_pages'].shape)}")


def _check_ints(name: str, x, letters, shapes: Shapes, meaning: str) -> None:
    dtype = _dtype_name(x)
    if not dtype.startswith(("int", "uint")):
        raise TypeError(f"{name} must have an integer dtype ({meaning}); got {dtype}")
    shapes.check(name, x, letters, floating=False)


def check_paged_write(cache, page_table, start, key, value) -> Shapes:
    """Arguments of ``paged_kv_write``: the cache, ``page_table (B, max_pages)`` and
    ``start (B,)`` integers, ``key``/``value (B, k, K, H)`` in the cache's dtype. Returns the
    bound sizes."""
    shapes = Shapes()
    _check_cache(cache, shapes)
    shapes.check("key", key, ("B", "k", "K", "H"))
    check_same_dtype("key", key, "cache['key_pages']", cache["key_pages"])
    shapes.check("value", value, ("B", "k", "K", "H"))
    check_same_dtype("value", value, "cache['key_pages']", cache["key_pages"])
    _check_ints("page_table", page_table, ("B", "max_pages"), shapes, "physical page numbers")
    _check_ints("start", start, ("B",), shapes, "the position of each row's first new token")
    return shapes


def check_paged_attention(query, cache, page_table, lengths, scale, local_window_size, logits_soft_cap, sinks):
    """Arguments of ``paged_attention``: ``query (B, k, N, H)``, the cache in the dtype of
    ``query``, ``page_table (B, max_pages)`` and ``lengths (B,)`` integers, and the options
    it shares with ``scaled_dot_product_attention``. Returns ``(shapes, window, soft_cap)``."""
    shapes = Shapes()
    shapes.check("query", query, ("B", "k", "N", "H"))
    _check_cache(cache, shapes)
    check_same_dtype("cache['key_pages']", cache["key_pages"], "query", query)
    check_heads(shapes)
    _check_ints("page_table", page_table, ("B", "max_pages"), shapes, "physical page numbers")
    _check_ints("lengths", lengths, ("B",), shapes, "the tokens in each row's cache, the new ones included")
    if scale is not None:
        check_scale(scale)
    check_sinks(sinks, shapes)
    return shapes, check_window(local_window_size), check_soft_cap(logits_soft_cap)


def _check_pages(page_table: list, first: list, last: list, num_pages: int) -> None:
    """Row b's entries ``first[b] .. last[b] - 1`` (the logical pages it uses) name pages of
    the pool; the other entries are never read, and may hold anything (-1, say)."""
    for b, row in enumerate(page_table):
        for i in range(first[b], last[b]):
            if not 0 <= row[i] < num_pages:
                raise ValueError(f"page_table must hold page numbers in [0, P) = [0, {num_pages}) where a row "
                                 f"uses a page; got page_table[{b}, {i}] = {row[i]}")


def check_paged_write_values(page_table: list, start: list, k: int, shapes: Shapes) -> None:
    """The values of ``paged_kv_write`` (Python lists): each row's k positions ``start[b] ..
    start[b] + k - 1`` lie within its ``max_pages * page_size`` positions, on pages of the pool.

    >>> shapes = Shapes(P=4, page_size=2, max_pages=3)
    >>> check_paged_write_values([[0, 1, 2], [3, 2, -1]], [4, 5], 2, shapes)
    Traceback (most recent call last):
      ...
    ValueError: start must be at most max_pages * page_size - k = 4 (a row's 2 new tokens within the 6 positions its page table holds); got start[1] = 5
    """
    capacity = shapes["max_pages"] * shapes["page_size"]
    for b, s in enumerate(start):
        if s < 0:
            raise ValueError(f"start must be >= 0 (a position in the row); got start[{b}] = {s}")
        if s + k > capacity:
            raise ValueError(f"start must be at most max_pages * page_size - k = {capacity - k} (a row's {k} new "
                             f"tokens within the {capacity} positions its page table holds); got start[{b}] = {s}")
    page_size = shapes["page_size"]
    first = [s // page_size for s in start]
    last = [-(-(s + k) // page_size) if k else f for s, f in zip(start, first)]  # k = 0 writes nothing
    _check_pages(page_table, first, last, shapes["P"])


def check_paged_attention_values(page_table: list, lengths: list, k: int, shapes: Shapes) -> None:
    """The values of ``paged_attention`` (Python lists): ``k <= lengths[b] <= max_pages *
    page_size``, and the ``ceil(lengths[b] / page_size)`` pages row b uses are pages of the pool.

    >>> shapes = Shapes(P=4, page_size=2, max_pages=3)
    >>> check_paged_attention_values([[0, 1, 2], [3, 4, -1]], [6, 3], 1, shapes)
    Traceback (most recent call last):
      ...
    ValueError: page_table must hold page numbers in [0, P) = [0, 4) where a row uses a page; got page_table[1, 1] = 4
    """
    capacity = shapes["max_pages"] * shapes["page_size"]
    for b, length in enumerate(lengths):
        if length < k:
            raise ValueError(f"lengths must be at least k = {k} (the new tokens are the last k of a row's "
                             f"tokens); got lengths[{b}] = {length}")
        if length > capacity:
            raise ValueError(f"lengths must be at most max_pages * page_size = {capacity} (the positions a row's "
                             f"page table holds); got lengths[{b}] = {length}")
    page_size = shapes["page_size"]
    _check_pages(page_table, [0] * len(lengths), [-(-length // page_size) for length in lengths], shapes["P"])
