"""Programmable attention: line-by-line mirror of ``attention_np/flex.py``, the dense definition
(O(T S) memory). :func:`attention_jax.flex_attention` computes the same block by block
(:mod:`attention_jax.fast.chunked.flex`), skipping the blocks a block mask rules out."""

import math

import jax.numpy as jnp

from attention_np._validate import check_flex

from ._dtypes import compute_dtype
from ._masking import masked_softmax, zero_unattended


def flex_attention(query, key, value, *, score_mod=None, mask_mod=None, block_mask=None, scale=None,
                   sinks=None, return_residual=False):
    """:func:`attention_np.flex_attention` in ``jax.numpy``: the dense definition, every mod
    evaluated on index arrays over all (query, key) pairs. Not jit-compiled by itself (the
    mods are Python functions); :func:`attention_jax.flex_attention` is the compiled,
    blocked one.
    """
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    shapes = check_flex(query, key, value, score_mod, mask_mod, block_mask, scale, sinks)
    B, T, N, H, S, K = (shapes[c] for c in "BTNHSK")
    dtype, compute = query.dtype, compute_dtype(query.dtype)
    scale = 1.0 / math.sqrt(max(H, 1)) if scale is None else float(scale)
    mask_mod = block_mask.mask_mod if block_mask is not None else mask_mod
    # 1. heads first, (B, N, T, H); each key/value head serves N // K query heads
    query = query.astype(compute).transpose(0, 2, 1, 3)                              # (B, N, T, H)
    key = jnp.repeat(key.astype(compute), N // K, axis=2).transpose(0, 2, 1, 3)       # (B, N, S, H)
    value = jnp.repeat(value.astype(compute), N // K, axis=2).transpose(0, 2, 1, 3)   # (B, N, S, H)
    # 2. the indices the mods see, broadcasting to (B, N, T, S)
    b, h = jnp.arange(B).reshape(B, 1, 1, 1), jnp.arange(N).reshape(1, N, 1, 1)
    q_idx, kv_idx = jnp.arange(T).reshape(1, 1, T, 1), jnp.arange(S).reshape(1, 1, 1, S)
    # 3. the mask; keys no query may attend (padding) are zeroed: even NaN there cannot reach the output
    mask = jnp.ones((B, N, T, S), bool)
    if mask_mod is not None:
        mask = jnp.broadcast_to(jnp.asarray(mask_mod(b, h, q_idx, kv_idx), bool), (B, N, T, S))
    key, value = (zero_unattended(x, mask, (B, N, T, S)) for x in (key, value))     # (B, N, S, H)
    # 4. logits, scaled, then rewritten by score_mod
    logits = jnp.einsum("BNTH,BNSH->BNTS", query, key) * scale                       # (B, N, T, S)
    if score_mod is not None:
        logits = jnp.broadcast_to(score_mod(logits, b, h, q_idx, kv_idx), logits.shape).astype(compute)
    # 5. a sink is one more logit per head in each row's softmax, with no value
    if sinks is not None:
        sink = jnp.broadcast_to(jnp.asarray(sinks).astype(compute).reshape(1, N, 1, 1), (B, N, T, 1))
        logits = jnp.concatenate([logits, sink], axis=-1)                             # (B, N, T, S + 1)
        mask = jnp.concatenate([mask, jnp.ones((B, N, T, 1), bool)], axis=-1)
    # 6. weights: softmax over the keys a query may attend (and its sink), then the values
    weights = masked_softmax(logits, mask)[..., :S]                                  # (B, N, T, S)
    out = jnp.einsum("BNTS,BNSH->BNTH", weights, value).transpose(0, 2, 1, 3)         # (B, T, N, H)
    if not return_residual:
        return out.astype(dtype)
    return out.astype(dtype), _log_sum_exp(logits, mask).transpose(0, 2, 1)         # lse (B, T, N)


def _log_sum_exp(logits, mask):
    r""":math:`\log \sum_s [m_s] e^{x_s}` over the last axis: ``-inf`` where no entry is attended
    (its gradient there is 0, not NaN: the log never sees 0)."""
    logits = jnp.where(mask, logits, -jnp.inf)
    peak = logits.max(axis=-1, keepdims=True, initial=-jnp.inf)
    peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
    total = jnp.exp(logits - peak).sum(axis=-1, keepdims=True)
    lse = peak + jnp.log(jnp.where(total > 0, total, 1.0))
    return jnp.where(total > 0, lse, -jnp.inf)[..., 0]
