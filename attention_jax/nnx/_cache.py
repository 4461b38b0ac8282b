"""The decode cache of :class:`~.multi_head.MultiHeadAttention`: ``init_cache``, ``set_view``
(as Flax's) and the write of each new chunk at its row's own cache index, with the mask of the
positions each new token may see. A mixin, so the module's file keeps to the attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


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

    def init_cache(self, input_shape, dtype=jnp.float32):
        """The decode cache for inputs of ``input_shape (B..., L, E)``, as Flax's ``init_cache``:
        ``cached_key``/``cached_value (B..., L, K, H)``, ``nnx.Cache``, and ``cache_index``, one
        int32 position per batch row ``(B...,)`` (Flax keeps one for the whole batch), so
        prompts of different lengths decode together."""
        cache_shape = (*input_shape[:-1], self.num_kv_heads, self.head_dim)
        self.cached_key = nnx.Cache(jnp.zeros(cache_shape, dtype))
        self.cached_value = nnx.Cache(jnp.zeros(cache_shape, dtype))
        self.cache_index = nnx.Cache(jnp.zeros(tuple(input_shape[:-2]), dtype=jnp.int32))

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
