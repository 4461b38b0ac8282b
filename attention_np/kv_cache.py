"""Incremental decoding: multi-head attention one chunk of new tokens at a time, with a KV cache.

A decoder that generates token by token would recompute every key and value of the prefix
at every step (O(L^2) work a step); the cache keeps them, so a step projects only its new
tokens and attends to what is stored. The cache is a plain dict (a pytree in JAX), with a
length per batch row, so prompts of different lengths decode in one batch.

Shape letters: B batch, L max_length (the cache's capacity), k new tokens in this step,
N query heads, K key/value heads, H features per head, E model width.
"""

import numpy as np

from ._dtypes import cast_params, compute_dtype
from ._validate import check_kv_cache_step, check_soft_cap, check_window, multi_head_used
from .dot_product import scaled_dot_product_attention
from .multi_head import _layer_norm


def init_kv_cache(batch, max_length, num_kv_heads, head_dim, *, dtype=np.float32):
    """An empty cache for :func:`multi_head_attention_step`.

    Returns:
      ``{"key": (B, L, K, H), "value": (B, L, K, H), "length": (B,) int32}``, zeros: row b
      holds ``length[b]`` tokens, in positions ``0 .. length[b] - 1``.
    """
    shape = (batch, max_length, num_kv_heads, head_dim)
    return {"key": np.zeros(shape, dtype), "value": np.zeros(shape, dtype), "length": np.zeros(batch, np.int32)}


def check_capacity(length, k, max_length):
    """A ``ValueError`` if ``k`` new tokens do not fit in a row of the cache (it reads the
    values of ``length``, so the JAX half can call it only when they are concrete)."""
    longest = int(length.max()) if length.size else 0
    if longest + k > max_length:
        raise ValueError(
            f"the cache has no room: a row holds {longest} of max_length={max_length} tokens, so k={k} new tokens do not fit"
        )


def multi_head_attention_step(params, x_new, cache, *, local_window_size=None, logits_soft_cap=None):
    r"""Causal multi-head self-attention for ``k`` new tokens, against the cache and each other.

    New token j of row b sits at position :math:`p = \mathrm{length}_b + j`; its key and value
    are written there, and it attends to every position :math:`s \le p` (with a window
    ``(left, right)``, to :math:`p - \mathrm{left} \le s \le p`):

    .. math::
        \mathrm{out}_{bj} = \mathrm{MHA}(x_{bj};\ K_{b,0..p}, V_{b,0..p})

    so stepping through a sequence in any chunking gives the causal ``multi_head_attention``
    of the whole sequence (Vaswani et al. 2017, section 3.2.3: "preventing leftward
    information flow"; the cache is how autoregressive Transformers decode).

    Args:
      params: the parameters of :func:`multi_head_attention` (Flax's names and shapes), with
        every bias, and ``query_ln``/``key_ln`` for Flax's ``normalize_qk``.
      x_new: ``(B, k, E)``, k >= 1 new tokens per row (one token, or a chunk: a prompt's
        prefill, a speculative draft).
      cache: from :func:`init_kv_cache` or a previous step, with K and H of ``params``.
      local_window_size: optional ``(left, right)`` (or an int w for ``(w, w)``), as in
        :func:`multi_head_attention`: measured between cache positions, so stepping equals
        the causal full pass with the same window (``right`` looks ahead, where the cache
        holds nothing yet). Sliding-window models (Mistral, Gemma 2) decode with ``(w, 0)``.
      logits_soft_cap: optional float, as in :func:`multi_head_attention`. An entry
        ``params["sinks"]`` ``(N,)`` gives every head a sink logit, as there.

    Returns:
      ``(out, weights, cache)``: ``(B, k, E)``, ``(B, N, k, L)`` (zero past each token's
      position), and the cache with the new keys and values written and ``length + k``.
      Writing past ``max_length`` is a ``ValueError``.
    """
    x_new = np.asarray(x_new)
    shapes = check_kv_cache_step(params, x_new, cache)
    window, logits_soft_cap = check_window(local_window_size), check_soft_cap(logits_soft_cap)
    check_capacity(np.asarray(cache["length"]), shapes["k"], shapes["L"])
    B, k, L = shapes["B"], shapes["k"], shapes["L"]
    dtype, compute = x_new.dtype, compute_dtype(x_new.dtype)
    p = cast_params(multi_head_used(params), compute)
    x = x_new.astype(compute)
    length = np.asarray(cache["length"])
    # 1. project the new tokens only: the cache holds every earlier key and value
    q = np.einsum("BkE,ENH->BkNH", x, p["query"]["kernel"]) + p["query"]["bias"]      # (B, k, N, H)
    new_key = np.einsum("BkE,EKH->BkKH", x, p["key"]["kernel"]) + p["key"]["bias"]    # (B, k, K, H)
    new_value = np.einsum("BkE,EKH->BkKH", x, p["value"]["kernel"]) + p["value"]["bias"]  # (B, k, K, H)
    if "query_ln" in p:  # normalize_qk: the same layer norm as multi_head_attention
        q = _layer_norm(q, p["query_ln"]["scale"])                                  # (B, k, N, H)
    if "key_ln" in p:
        new_key = _layer_norm(new_key, p["key_ln"]["scale"])                        # (B, k, K, H)
    # 2. write them at positions length .. length + k - 1 of each row
    positions = length[:, None] + np.arange(k)                             # (B, k)
    rows = np.arange(B)[:, None]                                           # (B, 1)
    key, value = (np.asarray(cache[name]).astype(compute) for name in ("key", "value"))  # (B, L, K, H), copies
    key[rows, positions], value[rows, positions] = new_key, new_value
    # 3. each new token attends to every position up to its own
    mask = np.arange(L) <= positions[:, :, None]                           # (B, k, L)
    if window is not None:  # and no further back than `left`, counted in cache positions
        mask &= np.arange(L) >= positions[:, :, None] - window[0]
    heads, weights = scaled_dot_product_attention(q, key, value, mask=mask[:, None], sinks=p.get("sinks"),
                                                  logits_soft_cap=logits_soft_cap)  # (B, k, N, H), (B, N, k, L)
    # 4. mix the heads back to the model width
    out = np.einsum("BkNH,NHE->BkE", heads, p["out"]["kernel"]) + p["out"]["bias"]  # (B, k, E)
    cache_dtype = np.asarray(cache["key"]).dtype
    new_cache = {"key": key.astype(cache_dtype), "value": value.astype(cache_dtype), "length": (length + k).astype(np.int32)}
    return out.astype(dtype), weights.astype(dtype), new_cache
