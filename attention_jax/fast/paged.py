"""Paged attention that reads only the pages a row uses: the numbers of
``attention_jax.paged_attention`` (the mirror of ``attention_np/paged.py``), without gathering
every row's pages into a padded sequence.

Each row runs an online softmax (:mod:`.online_softmax`) over its own pages, one page a step,
in a ``lax.fori_loop`` from the first page its window reaches to ``ceil(lengths[b] /
page_size)``, both traced; the rows run side by side (``jax.vmap``). Besides the pool, the
forward pass holds one page and the running max, normaliser and output of each row's k
queries, so its memory does not grow with ``max_pages``. Derivatives come from a
``jax.custom_jvp`` that differentiates the mirror (O(B max_pages page_size) memory there),
forward and reverse: the loop's traced bounds make it a ``while_loop``, which JAX cannot
reverse.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from attention_np._validate import check_paged_attention, check_paged_attention_values

from .._dtypes import compute_dtype, operand_dtype
from .._jit import logits_scale, split_scale
from ..paged import _concrete
from ..paged import paged_attention as paged_attention_mirror
from . import online_softmax


def paged_attention(query, cache, page_table, lengths, *, scale=None, local_window_size=None, logits_soft_cap=None,
                    sinks=None):
    r"""Causal attention of each row's ``k`` newest tokens to the keys and values in its pages,
    reading only the pages the row uses.

    .. math::
        \mathrm{out}_{bj} = \mathrm{Attention}\big(q_{bj};\ K_{b,s}, V_{b,s} \text{ for }
        p_{bj} - \mathrm{left} \le s \le p_{bj}\big), \quad p_{bj} = \mathrm{lengths}_b - k + j

    the numbers of :func:`attention_jax.paged_attention` (same arguments, checks and
    behaviour under ``jit``: see there), computed page by page: row b visits pages
    :math:`\lfloor \max(0, \mathrm{lengths}_b - k - \mathrm{left}) / \mathrm{page\_size}
    \rfloor` to :math:`\lceil \mathrm{lengths}_b / \mathrm{page\_size} \rceil - 1` of its
    page table, loading one page ``(page_size, K, H)`` a step and folding its logits into
    a running max, normaliser and output (FlashAttention's recurrence; vLLM's PagedAttention
    kernel walks the pages the same way). Within a page, slots that no query of the row sees
    (past its length, before its window) are zeroed before the products, so what they hold
    never reaches an output.

    Cost: the rows run side by side, so each runs as many steps as the row with the most
    pages to visit; the work is B x (those steps) x page_size per query, and the memory,
    beside the pool, O(B k N (H + page_size)). Derivatives (``jax.grad``, ``jax.jvp``)
    differentiate the mirror, which gathers the padded sequences.

    Args:
      query: ``(B, k, N, H)``, each row's k newest tokens (k static).
      cache: ``{"key_pages", "value_pages": (P, page_size, K, H)}``, the dtype of ``query``.
      page_table: int ``(B, max_pages)``; may be traced.
      lengths: int ``(B,)``: the tokens in row b's cache, the k new ones included; may be traced.
      scale, local_window_size, logits_soft_cap, sinks: as :func:`attention_jax.paged_attention`.

    Returns:
      ``out (B, k, N, H)`` in the dtype of ``query``; zeros for a query that sees no key.
    """
    shapes, window, logits_soft_cap = check_paged_attention(query, cache, page_table, lengths, scale,
                                                            local_window_size, logits_soft_cap, sinks)
    values = _concrete(page_table, lengths)  # outside jit; traced values cannot be read
    if values is not None:
        check_paged_attention_values(*values, shapes["k"], shapes)
    scale, scale_value = split_scale(scale)
    return _paged_attention(query, cache["key_pages"], cache["value_pages"], page_table, lengths, sinks, scale_value,
                            scale, window, logits_soft_cap)


@functools.partial(jax.custom_jvp, nondiff_argnums=(7, 8, 9))
def _paged_attention(query, key_pages, value_pages, page_table, lengths, sinks, scale_value, scale, window,
                     logits_soft_cap):
    return _forward(query, key_pages, value_pages, page_table, lengths, sinks, scale_value, scale, window,
                    logits_soft_cap)


@functools.partial(jax.jit, static_argnums=(7, 8, 9))
def _forward(query, key_pages, value_pages, page_table, lengths, sinks, scale_value, scale, window, logits_soft_cap):
    B, k, N, H = query.shape
    K = key_pages.shape[2]
    dtype, compute, operand = query.dtype, compute_dtype(query.dtype), operand_dtype(query.dtype)
    scale = logits_scale(scale, scale_value, H, compute)
    # query head n is served by key/value head n // G: heads as (K, G), queries after them
    q = query.astype(operand).reshape(B, k, K, N // K, H).transpose(0, 2, 3, 1, 4)  # (B, K, G, k, H)
    sink = None if sinks is None else jnp.asarray(sinks).astype(compute).reshape(K, N // K)
    row = functools.partial(_row, key_pages, value_pages, sink=sink, scale=scale, window=window,
                            soft_cap=logits_soft_cap, compute=compute)
    out = jax.vmap(row)(q, page_table, jnp.asarray(lengths).astype(jnp.int32))  # (B, K, G, k, H)
    return out.transpose(0, 3, 1, 2, 4).reshape(B, k, N, H).astype(dtype)


def _row(key_pages, value_pages, q, pages, length, *, sink, scale, window, soft_cap, compute):
    """One row: ``q (K, G, k, H)`` against the pages ``pages (max_pages,)`` lists, of which
    the first ``ceil(length / page_size)`` hold its ``length`` tokens. Returns ``(K, G, k, H)``
    in the ``compute`` dtype."""
    K, G, k, H = q.shape
    page_size = key_pages.shape[1]
    positions = length - k + jnp.arange(k, dtype=length.dtype)             # (k,) the new tokens' positions
    lowest = 0 if window is None else jnp.maximum(length - k - window[0], 0)  # the first position any query sees
    slots = jnp.arange(page_size)                                          # (page_size,)

    def visit(i, carry):
        m, l, acc = carry
        # 1. load logical page i of the row; zero the slots no query sees (past the length, before the window)
        s = i * page_size + slots                                          # (page_size,) positions
        seen = s[None, :] <= positions[:, None]                           # (k, page_size)
        if window is not None:
            seen &= s[None, :] >= positions[:, None] - window[0]
        read = seen.any(0)[:, None, None]                                  # (page_size, 1, 1)
        key = jnp.where(read, key_pages[pages[i]], 0).astype(q.dtype)      # (page_size, K, H)
        value = jnp.where(read, value_pages[pages[i]], 0).astype(q.dtype)  # (page_size, K, H)
        # 2. logits of the page, scaled, soft-capped, masked
        logits = jnp.einsum("KGkH,SKH->KGkS", q, key, preferred_element_type=compute) * scale  # (K, G, k, page_size)
        if soft_cap is not None:
            logits = soft_cap * jnp.tanh(logits / soft_cap)
        logits = jnp.where(seen, logits, jnp.finfo(compute).min)
        # 3. fold them into the running max, normaliser and output
        m, l, p, correction = online_softmax.update(m, l, logits, seen)
        acc = acc * correction[..., None] + jnp.einsum("KGkS,SKH->KGkH", p.astype(value.dtype), value,
                                                       preferred_element_type=compute)
        return m, l, acc

    m = online_softmax.initial_max((K, G, k), compute)
    l, acc = jnp.zeros((K, G, k), compute), jnp.zeros((K, G, k, H), compute)
    if sink is not None:  # a sink is a key seen first: logit the sink, weight e^0, no value
        m, l = jnp.broadcast_to(sink[:, :, None], (K, G, k)), jnp.ones((K, G, k), compute)
    first, end = (jnp.asarray(x, length.dtype) for x in (lowest // page_size, -(-length // page_size)))
    m, l, acc = lax.fori_loop(first, end, visit, (m, l, acc))                 # the pages that hold a position seen
    out, _ = online_softmax.finish(m, l, acc)
    return out


@_paged_attention.defjvp
def _paged_attention_jvp(scale, window, logits_soft_cap, primals, tangents):
    """The output from the page loop, its tangent from the mirror's (``jax.jvp``), which JAX
    also transposes for reverse mode: the loop's traced bounds make it a ``while_loop``, which
    JAX can run forward but not reverse."""
    query, key_pages, value_pages, page_table, lengths, sinks, scale_value = primals
    d_query, d_key_pages, d_value_pages, _, _, d_sinks, d_scale_value = tangents

    def mirror(query, key_pages, value_pages, sinks, scale_value):
        return paged_attention_mirror(query, {"key_pages": key_pages, "value_pages": value_pages}, page_table,
                                      lengths, scale=scale if scale_value is None else scale_value,
                                      local_window_size=window, logits_soft_cap=logits_soft_cap, sinks=sinks)

    _, d_out = jax.jvp(mirror, (query, key_pages, value_pages, sinks, scale_value),
                       (d_query, d_key_pages, d_value_pages, d_sinks, d_scale_value))
    return _forward(*primals, scale, window, logits_soft_cap), d_out
