"""The checks of ``varlen_attention`` (both halves): the packed arrays, ``cu_seqlens_q`` and
``cu_seqlens_k`` (their dtype and shape always; their values when they are known), and the
options it shares with ``scaled_dot_product_attention``."""

from __future__ import annotations

from .dot_product import check_sinks, check_soft_cap, check_window
from .engine import Shapes, _dtype_name, check_heads, check_same_dtype, check_scale, dims

# A packed layout has no batch axis: the sequences lie one after another along the first axis.
PACKED_QUERY, PACKED_KEY = ("total_q", "N", "H"), ("total_k", "K", "H")


def check_varlen(query, key, value, cu_seqlens_q, cu_seqlens_k, scale, local_window_size, logits_soft_cap,
                 sinks):
    """Arguments of ``varlen_attention``: ``query (total_q, N, H)``, ``key``/``value
    (total_k, K, H)``, ``cu_seqlens_q``/``cu_seqlens_k (num_seqs + 1,)`` integers. Reads
    shapes and dtypes only (the values: :func:`check_cu_seqlens`). Returns ``(shapes, window,
    soft_cap)``: the bound sizes total_q, total_k, N, K, H and num_seqs, the window pair (or
    None) and the soft-cap (a float, or None)."""
    shapes = Shapes()
    shapes.check("query", query, PACKED_QUERY)
    shapes.check("key", key, PACKED_KEY)
    check_same_dtype("key", key, "query", query)
    shapes.check("value", value, PACKED_KEY)
    check_same_dtype("value", value, "query", query)
    check_heads(shapes)
    for name, cu_seqlens in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        dtype = _dtype_name(cu_seqlens)
        if not dtype.startswith(("int", "uint")):
            raise TypeError(f"{name} must have an integer dtype (cumulative sequence lengths, from 0); got {dtype}")
        if len(dims(cu_seqlens)) != 1 or dims(cu_seqlens)[0] < 1:
            raise ValueError(f"{name} must have shape (num_seqs + 1,): sequence b's rows are "
                             f"{name}[b]:{name}[b + 1]; got {dims(cu_seqlens)}")
    count_q, count_k = dims(cu_seqlens_q)[0], dims(cu_seqlens_k)[0]
    if count_k != count_q:
        raise ValueError(f"cu_seqlens_k must have shape (num_seqs + 1,) = ({count_q},) from cu_seqlens_q, the "
                         f"same number of sequences for queries and keys; got ({count_k},)")
    shapes.sizes["num_seqs"], shapes.origin["num_seqs"] = count_q - 1, "cu_seqlens_q"
    if scale is not None:
        check_scale(scale)
    check_sinks(sinks, shapes)
    return shapes, check_window(local_window_size), check_soft_cap(logits_soft_cap)


def check_cu_seqlens(name: str, values, total: int, letter: str) -> None:
    """The values of ``cu_seqlens_q`` (``cu_seqlens_k``), a list of Python ints: from 0,
    non-decreasing, ending at ``total`` (``letter``: "total_q" or "total_k", the rows of the
    packed array they slice). Called where the values are known; a ``ValueError`` names the
    first entry that breaks a rule.

    >>> check_cu_seqlens("cu_seqlens_q", [0, 3, 2, 5], 5, "total_q")
    Traceback (most recent call last):
      ...
    ValueError: cu_seqlens_q must be non-decreasing (sequence b's rows are cu_seqlens_q[b]:cu_seqlens_q[b + 1]); got cu_seqlens_q[2] = 2 < cu_seqlens_q[1] = 3
    """
    if values[0] != 0:
        raise ValueError(f"{name} must start at 0 (the first sequence's first row); got {name}[0] = {values[0]}")
    for b in range(1, len(values)):
        if values[b] < values[b - 1]:
            raise ValueError(f"{name} must be non-decreasing (sequence b's rows are {name}[b]:{name}[b + 1]); "
                             f"got {name}[{b}] = {values[b]} < {name}[{b - 1}] = {values[b - 1]}")
    if values[-1] != total:
        raise ValueError(f"{name} must end at {letter} = {total}, the number of packed rows; "
                         f"got {name}[-1] = {values[-1]}")
