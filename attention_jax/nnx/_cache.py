"""The decode cache of :class:`~.multi_head.MultiHeadAttention`: ``init_cache``, ``set_view``
(as Flax's) and the write of each new chunk at its row's own cache index, with the mask of the
positions each new token may see; or, with ``init_cache(..., page_size=...)``, a pool of pages
and a page table (:mod:`attention_jax.paged`) read by the paged fast path. A mixin, so the
module's file keeps to the attention."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ..fast.paged import paged_attention
from ..paged import init_paged_kv_cache, paged_kv_write


class DecodeCache:
    """``cached_key``/``cached_value (B..., L, K, H)`` and ``cache_index (B...,)``, one position
    per batch row (Flax keeps one for the whole batch), so prompts of different lengths
    prefill in one call and decode together."""

    def _update_cache(self, key, value, mask, lengths=None, window=None):
        """Write ``key``/``value (B..., k, K, H)`` at each row's ``cache_index`` and return the
        whole cache with the mask of the positions each new token may see: ``s <= index[b] + j``
        (with ``window = (left, right)`` also ``s >= index[b] + j - left``: the window counted
        in cache positions, as the full pass counts it), and with ``lengths`` only the first
        ``lengths[b]`` new tokens of row b are real (the rest are padding: they see nothing, and
        the next call overwrites them)."""
        if self.cached_key is None or self.cached_value is None or self.cache_index is None:
            raise ValueError("Autoregressive cache not initialized, call ``init_cache`` first.")
        *batch, max_length, num_kv_heads, head_dim = self.cached_key.shape
        k = key.shape[-3]
        expected = tuple(batch) + (k, num_kv_heads, head_dim)
        if tuple(key.shape) != expected or k < 1:
            raise ValueError(f"Autoregressive cache shape error, expected key shape {expected} instead got {key.shape}.")
        index = jnp.broadcast_to(self.cache_index[...], tuple(batch))                 # (B...,): one position a row
        if not isinstance(index, jax.core.Tracer) and int(index.max(initial=0)) + k > max_length:
            raise ValueError(f"the decode cache holds {max_length} positions; {int(index.max())} are used and {k} more "
                             f"do not fit (init_cache with a longer input_shape)")
        if lengths is None:
            lengths = jnp.full(tuple(batch), k, index.dtype)
        lengths = jnp.broadcast_to(jnp.asarray(lengths).astype(index.dtype), tuple(batch))

        def write(cache, new, start):                                                   # one batch row
            zero = jnp.zeros_like(start)
            return jax.lax.dynamic_update_slice(cache, new.astype(cache.dtype), (start, zero, zero))

        fold = lambda x: x.reshape((-1,) + x.shape[len(batch):])                       # (B, ...)
        key, value = (jax.vmap(write)(fold(c[...]), fold(x), fold(index)).reshape(c.shape)
                      for c, x in ((self.cached_key, key), (self.cached_value, value)))
        self.cached_key[...] = key
        self.cached_value[...] = value
        self.cache_index[...] = index + lengths
        s, j = jnp.arange(max_length), jnp.arange(k)[:, None]
        start, count = index[..., None, None, None], lengths[..., None, None, None]     # (B..., 1, 1, 1)
        visible = (s <= start + j) & (s < start + count) & (j < count)                  # (B..., 1, k, L)
        if window is not None:
            visible &= s >= start + j - window[0]
        mask = visible if mask is None else jnp.logical_and(mask, visible)
        return key, value, mask

    def init_cache(self, input_shape, dtype=jnp.float32, *, page_size=None, num_pages=None):
        """The decode cache for inputs of ``input_shape (B..., L, E)``, as Flax's ``init_cache``:
        ``cached_key``/``cached_value (B..., L, K, H)``, ``nnx.Cache``, and ``cache_index``, one
        int32 position per batch row ``(B...,)`` (Flax keeps one for the whole batch), so
        prompts of different lengths decode together.

        With ``page_size`` (one batch axis B): a paged cache instead (vLLM's PagedAttention),
        ``key_pages``/``value_pages (num_pages, page_size, K, H)`` and ``page_table (B,
        ceil(L / page_size))``: logical page i of row b is physical page ``page_table[b, i]``.
        By default ``num_pages = B ceil(L / page_size)`` and row b owns pages ``b ceil(L /
        page_size) ..``; a server sets ``module.page_table[...]`` to its own allocation (pages
        in any order, shared prefixes). Decoding reads only the pages each row uses
        (:func:`attention_jax.fast.paged.paged_attention`), with the numbers of the contiguous
        cache."""
        self.cache_index = nnx.Cache(jnp.zeros(tuple(input_shape[:-2]), dtype=jnp.int32))
        if page_size is None:
            cache_shape = (*input_shape[:-1], self.num_kv_heads, self.head_dim)
            self.cached_key = nnx.Cache(jnp.zeros(cache_shape, dtype))
            self.cached_value = nnx.Cache(jnp.zeros(cache_shape, dtype))
            return
        if len(input_shape) != 3:
            raise ValueError(f"a paged cache takes input_shape (B, L, E), one batch axis; got {tuple(input_shape)}")
        B, L = input_shape[0], input_shape[1]
        pages_a_row = math.ceil(L / page_size) if isinstance(page_size, int) and page_size > 0 else 0
        pool = init_paged_kv_cache(B * pages_a_row if num_pages is None else num_pages, page_size, self.num_kv_heads,
                                   self.head_dim, dtype=dtype)
        self.key_pages, self.value_pages = nnx.Cache(pool["key_pages"]), nnx.Cache(pool["value_pages"])
        self.page_table = nnx.Cache(jnp.arange(B * pages_a_row, dtype=jnp.int32).reshape(B, pages_a_row))
        self.cached_key = self.cached_value = nnx.data(None)

    @property
    def paged(self):
        """Whether the decode cache is paged (``init_cache(..., page_size=...)``)."""
        return getattr(self, "key_pages", None) is not None

    def _paged_step(self, query, key, value, lengths=None, window=None):
        """Write the new ``key``/``value (B, k, K, H)`` into each row's pages at its
        ``cache_index`` and attend ``query (B, k, N, H)`` to the row's pages: ``(heads (B, k, N,
        H), real (B, k))``, ``real`` False for the padding tokens past ``lengths[b]`` (whose
        heads are then zeros; the next call overwrites what they wrote)."""
        B, k = key.shape[0], key.shape[1]
        index = jnp.broadcast_to(self.cache_index[...], (B,))
        lengths = jnp.full((B,), k, index.dtype) if lengths is None else jnp.asarray(lengths).astype(index.dtype)
        cache = {"key_pages": self.key_pages[...], "value_pages": self.value_pages[...]}
        cache = paged_kv_write(cache, self.page_table[...], index, key.astype(cache["key_pages"].dtype),
                               value.astype(cache["value_pages"].dtype))
        self.key_pages[...], self.value_pages[...] = cache["key_pages"], cache["value_pages"]
        self.cache_index[...] = index + lengths
        cache = jax.tree.map(lambda x: x.astype(query.dtype), cache)                   # a cache kept in another dtype
        heads = paged_attention(query, cache, self.page_table[...], index + k, scale=self.scale,
                                local_window_size=window, logits_soft_cap=self.logits_soft_cap,
                                sinks=None if self.sinks is None else self.sinks[...])
        real = jnp.arange(k) < lengths[:, None]                                         # (B, k)
        return jnp.where(real[..., None, None], heads, 0), real

    def set_view(self, deterministic: bool | None = None, decode: bool | None = None,
                 batch_size=None, max_length: int | None = None):
        """Used by ``nnx.view``, as Flax's: set ``deterministic``/``decode``; a cache of
        ``(batch_size..., max_length)`` is made when decoding starts without one."""
        if deterministic is not None:
            self.deterministic = deterministic
        if decode is not None:
            self.decode = decode
            if decode and self.cached_key is None:
                if batch_size is None or max_length is None:
                    raise TypeError("'batch_size' and 'max_length' must be provided when initializing cache.")
                batch_size = (batch_size,) if isinstance(batch_size, int) else tuple(batch_size)
                self.init_cache((*batch_size, max_length, self.in_features), self.dtype or jnp.float32)
