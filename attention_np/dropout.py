"""Dropout on attention weights with a keep-mask that is a pure function of its position.

Srivastava et al. 2014, "Dropout"; applied to the attention weights as in Vaswani et al.
2017, section 5.4. The mask is not drawn from a stateful generator: whether weight
``(b, n, t, s)`` is kept is a counter-based integer hash of ``(rng, b, n, t, s)``
(Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"), written identically
in ``attention_jax/dropout.py``. So the dense path, ``chunked_attention`` with any chunk
sizes, its backward pass and this NumPy half drop exactly the same weights for the same
``rng``, and no ``(B, N, T, S)`` random array needs to exist.

The hash absorbs one 32-bit word at a time, each through Wellons' "lowbias32" finaliser
(``x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16``); the top
24 bits of the result are a uniform integer ``u`` in ``[0, 2^24)`` and the weight is kept
when ``u >= round(rate * 2^24)``. Kept weights are scaled by ``1 / (1 - rate)``.
"""

import numpy as np

_GOLDEN = np.uint32(0x9E3779B9)
_THRESHOLD_BITS = 24


def rng_words(dropout_rng):
    """``dropout_rng`` as two uint32 words: an int (its low and high 32 bits), or a key's
    data (``numpy.asarray(jax.random.key_data(key))``, uint32; its first two words)."""
    if isinstance(dropout_rng, (int, np.integer)) and not isinstance(dropout_rng, bool):
        value = int(dropout_rng) % 2**64
        return np.uint32(value & 0xFFFFFFFF), np.uint32(value >> 32)
    words = np.asarray(dropout_rng).astype(np.uint32).reshape(-1)
    if words.size == 0:
        raise ValueError("dropout_rng must be an int or a key's data (uint32 words); got an empty array")
    return words[0], (words[1] if words.size > 1 else np.uint32(0))


def _mix(x):
    """Wellons' lowbias32: a bijection of uint32 with good avalanche."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def keep_mask(dropout_rng, rate, batch, head, query, key):
    r"""True where the attention weight at ``(batch, head, query, key)`` is kept.

    .. math::
        h = \mathrm{mix}(\cdots \mathrm{mix}(\mathrm{mix}(r_0 \oplus r_1 + c) \oplus b + c) \cdots \oplus s + c),
        \qquad \mathrm{keep} = \lfloor h / 2^8 \rfloor \ge \mathrm{round}(\mathrm{rate} \cdot 2^{24})

    Args:
      dropout_rng: an int or a key's data (see :func:`rng_words`).
      rate: the probability of dropping a weight, in [0, 1).
      batch, head, query, key: integer index arrays that broadcast against each other
        (e.g. ``(B, 1, 1, 1)``, ``(1, N, 1, 1)``, ``(1, 1, T, 1)``, ``(1, 1, 1, S)``).

    Returns:
      bool array of the broadcast shape.
    """
    seed0, seed1 = rng_words(dropout_rng)
    threshold = np.uint32(round(rate * 2**_THRESHOLD_BITS))
    with np.errstate(over="ignore"):
        h = _mix(np.asarray(seed0 ^ seed1, np.uint32) + _GOLDEN)
        h = _mix((h ^ seed1) + _GOLDEN)
        for index in (batch, head, query, key):
            h = _mix((h ^ np.asarray(index).astype(np.uint32)) + _GOLDEN)
    return (h >> np.uint32(32 - _THRESHOLD_BITS)) >= threshold


def dropout_weights(weights, dropout_rng, rate, *, broadcast=False):
    """``weights (B, N, T, S)`` with the dropped entries zeroed and the kept ones scaled by
    ``1 / (1 - rate)``. ``broadcast``: one mask for every batch row and head (Flax's
    ``broadcast_dropout``), i.e. the hash sees b = n = 0."""
    if rate == 0:
        return weights
    B, N, T, S = weights.shape
    b = np.arange(B).reshape(B, 1, 1, 1) * (not broadcast)
    n = np.arange(N).reshape(1, N, 1, 1) * (not broadcast)
    keep = keep_mask(dropout_rng, rate, b, n, np.arange(T).reshape(1, 1, T, 1), np.arange(S).reshape(1, 1, 1, S))
    return np.where(keep, weights / np.asarray(1 - rate, weights.dtype), 0).astype(weights.dtype)
