"""Incremental decoding with a KV cache: mirror of ``attention_np/kv_cache.py``.

The cache is a pytree ``{"key", "value": (B, L, K, H), "length": (B,) int32}`` updated
functionally (a scatter at each row's own length), so a step runs under ``jit`` and as the
body of ``lax.scan`` with a fixed ``max_length``.

Shape letters: B batch, L max_length, k new tokens in this step, N query heads, K key/value
heads, H features per head, E model width.
"""


import functools

import jax
import jax.numpy as jnp

from attention_np._validate import check_kv_cache_step, check_soft_cap, check_window, multi_head_used
from attention_np.kv_cache import check_capacity

from ._dtypes import cast_params, compute_dtype
from .dot_product import scaled_dot_product_attention
from .multi_head import _layer_norm


def init_kv_cache(batch, max_length, num_kv_heads, head_dim, *, dtype=jnp.float32):
    """An empty cache for :func:`multi_head_attention_step`.

    Returns:
      ``{"key": (B, L, K, H), "value": (B, L, K, H), "length": (B,) int32}``, zeros: row b
      holds ``length[b]`` tokens, in positions ``0 .. length[b] - 1``.
    """
    shape = (batch, max_length, num_kv_heads, head_dim)
    return {"key": jnp.zeros(shape, dtype), "value": jnp.zeros(shape, dtype), "length": jnp.zeros(batch, jnp.int32)}


def multi_head_attention_step(params, x_new, cache, *, local_window_size=None, logits_soft_cap=None):
    r"""Causal multi-head self-attention for ``k`` new tokens, against the cache and each other.

    New token j of row b sits at position :math:`p = \mathrm{length}_b + j`; its key and value
    are written there, and it attends to every position :math:`s \le p` (with a window
    ``(left, right)``, to :math:`p - \mathrm{left} \le s \le p`):

    .. math::
        \mathrm{out}_{bj} = \mathrm{MHA}(x_{bj};\ K_{b,0..p}, V_{b,0..p})

    so stepping through a sequence in any chunking gives the causal ``multi_head_attention``
    of the whole sequence (Vaswani et al. 2017, section 3.2.3).

    Args:
      params: the parameters of :func:`multi_head_attention` (Flax's names and shapes), with
        every bias, and ``query_ln``/``key_ln`` for Flax's ``normalize_qk``.
      x_new: ``(B, k, E)``, k >= 1 new tokens per row (k is static: one compilation per k).
      cache: from :func:`init_kv_cache` or a previous step, with K and H of ``params``.
      local_window_size, logits_soft_cap: as :func:`attention_np.multi_head_attention_step`
        (the window counted in cache positions); ``params["sinks"]`` ``(N,)`` sink logits.

    Returns:
      ``(out, weights, cache)``: ``(B, k, E)``, ``(B, N, k, L)`` (zero past each token's
      position), and the cache with the new keys and values written and ``length + k``.
      Writing past ``max_length`` is a ``ValueError`` when ``length`` is a concrete array (a
      call outside ``jit``); inside ``jit`` or ``lax.scan`` the values are not known, so
      positions past ``max_length`` are dropped (never written over earlier ones), the
      returned ``length`` is capped at ``max_length``, and the tokens that did not fit attend to
      the whole cache. Wrap the step in ``jax.experimental.checkify`` or check
      ``cache["length"] + k <= max_length`` before the loop when that matters.
    """
    x_new = jnp.asarray(x_new)
    shapes = check_kv_cache_step(params, x_new, cache)
    if not isinstance(cache["length"], jax.core.Tracer):
        check_capacity(jax.device_get(cache["length"]), shapes["k"], shapes["L"])
    return _step(params, x_new, cache, check_window(local_window_size), check_soft_cap(logits_soft_cap))


@functools.partial(jax.jit, static_argnums=(3, 4))
def _step(params, x_new, cache, window, logits_soft_cap):
    B, k, _ = x_new.shape
    L = cache["key"].shape[1]
    dtype, compute = x_new.dtype, compute_dtype(x_new.dtype)
    p = cast_params(multi_head_used(params), compute)
    x = x_new.astype(compute)
    length = jnp.asarray(cache["length"])
    # 1. project the new tokens only: the cache holds every earlier key and value
    q = jnp.einsum("BkE,ENH->BkNH", x, p["query"]["kernel"]) + p["query"]["bias"]      # (B, k, N, H)
    new_key = jnp.einsum("BkE,EKH->BkKH", x, p["key"]["kernel"]) + p["key"]["bias"]    # (B, k, K, H)
    new_value = jnp.einsum("BkE,EKH->BkKH", x, p["value"]["kernel"]) + p["value"]["bias"]  # (B, k, K, H)
    if "query_ln" in p:  # normalize_qk: the same layer norm as multi_head_attention
        q = _layer_norm(q, p["query_ln"]["scale"])                                  # (B, k, N, H)
    if "key_ln" in p:
        new_key = _layer_norm(new_key, p["key_ln"]["scale"])                        # (B, k, K, H)
    # 2. write them at positions length .. length + k - 1 of each row
    positions = length[:, None] + jnp.arange(k)                            # (B, k)
    rows = jnp.arange(B)[:, None]                                          # (B, 1)
    key, value = (jnp.asarray(cache[name]).astype(compute) for name in ("key", "value"))  # (B, L, K, H)
    key = key.at[rows, positions].set(new_key, mode="drop")               # past max_length: dropped
    value = value.at[rows, positions].set(new_value, mode="drop")
    # 3. each new token attends to every position up to its own
    mask = jnp.arange(L) <= positions[:, :, None]                          # (B, k, L)
    if window is not None:  # and no further back than `left`, counted in cache positions
        mask &= jnp.arange(L) >= positions[:, :, None] - window[0]
    heads, weights = scaled_dot_product_attention(q, key, value, mask=mask[:, None], sinks=p.get("sinks"),
                                                  logits_soft_cap=logits_soft_cap)  # (B, k, N, H), (B, N, k, L)
    # 4. mix the heads back to the model width
    out = jnp.einsum("BkNH,NHE->BkE", heads, p["out"]["kernel"]) + p["out"]["bias"]  # (B, k, E)
    cache_dtype = cache["key"].dtype
    new_cache = {"key": key.astype(cache_dtype), "value": value.astype(cache_dtype),
                 "length": jnp.minimum(length + k, L).astype(jnp.int32)}
    return out.astype(dtype), weights.astype(dtype), new_cache
