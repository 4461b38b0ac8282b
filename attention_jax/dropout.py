"""Dropout on attention weights with a positional keep-mask: mirror of ``attention_np/dropout.py``.

The keep-mask is a counter-based hash of ``(rng, b, n, t, s)`` in uint32 arithmetic, the
same operations as the NumPy half, so every path (dense, chunked with any chunk sizes,
its backward pass) and the NumPy half drop the same weights for the same ``rng``.
"""

import jax
import jax.numpy as jnp

_GOLDEN = 0x9E3779B9
_THRESHOLD_BITS = 24


def rng_words(dropout_rng):
    """``dropout_rng`` as two uint32 words: a JAX key (new-style or a raw ``uint32[2]``
    ``PRNGKey``), its ``key_data``, or a Python int (low and high 32 bits)."""
    if isinstance(dropout_rng, int) and not isinstance(dropout_rng, bool):
        value = dropout_rng % 2**64
        return jnp.uint32(value & 0xFFFFFFFF), jnp.uint32(value >> 32)
    dropout_rng = jnp.asarray(dropout_rng)
    if jax.dtypes.issubdtype(dropout_rng.dtype, jax.dtypes.prng_key):
        dropout_rng = jax.random.key_data(dropout_rng)
    words = dropout_rng.astype(jnp.uint32).reshape(-1)
    if words.size == 0:
        raise ValueError("dropout_rng must be an int or a key's data (uint32 words); got an empty array")
    return words[0], (words[1] if words.size > 1 else jnp.uint32(0))


def _mix(x):
    """Wellons' lowbias32: a bijection of uint32 with good avalanche."""
    x = x ^ (x >> jnp.uint32(16))
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> jnp.uint32(15))
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> jnp.uint32(16))


def keep_mask(dropout_rng, rate, batch, head, query, key):
    """True where the attention weight at ``(batch, head, query, key)`` is kept; ``dropout_rng``
    a JAX key, its data or an int (:func:`rng_words`); the index arrays broadcast against each
    other."""
    seed0, seed1 = rng_words(dropout_rng)
    threshold = jnp.uint32(round(rate * 2**_THRESHOLD_BITS))
    h = _mix(jnp.asarray(seed0 ^ seed1, jnp.uint32) + jnp.uint32(_GOLDEN))
    h = _mix((h ^ seed1) + jnp.uint32(_GOLDEN))
    for index in (batch, head, query, key):
        h = _mix((h ^ jnp.asarray(index).astype(jnp.uint32)) + jnp.uint32(_GOLDEN))
    return (h >> jnp.uint32(32 - _THRESHOLD_BITS)) >= threshold


def dropout_weights(weights, dropout_rng, rate, *, broadcast=False):
    """``weights (B, N, T, S)`` with the dropped entries zeroed and the kept ones scaled by
    ``1 / (1 - rate)``; ``broadcast``: one mask for every batch row and head (b = n = 0)."""
    if rate == 0:
        return weights
    B, N, T, S = weights.shape
    b = jnp.arange(B).reshape(B, 1, 1, 1) * (not broadcast)
    n = jnp.arange(N).reshape(1, N, 1, 1) * (not broadcast)
    keep = keep_mask(dropout_rng, rate, b, n, jnp.arange(T).reshape(1, 1, T, 1), jnp.arange(S).reshape(1, 1, 1, S))
    return jnp.where(keep, weights / jnp.asarray(1 - rate, weights.dtype), 0).astype(weights.dtype)
