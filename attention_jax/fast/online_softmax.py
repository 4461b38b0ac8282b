"""The online softmax: a softmax over keys that arrive one block at a time.

Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"; the recurrence of
FlashAttention-2 (Dao 2023, algorithm 1). Per query row a running max ``m``, a running
normaliser ``l`` and an output accumulator ``acc`` are kept; a new block of logits ``s``
updates them as

.. math::
    m' = \\max(m, \\max_s x_s), \\quad c = e^{m - m'}, \\quad
    \\ell' = c\\,\\ell + \\textstyle\\sum_s e^{x_s - m'}, \\quad
    o' = c\\,o + \\textstyle\\sum_s e^{x_s - m'} v_s

and the output is ``o / l``. :func:`attention_jax.chunked_attention` (blocks on one device) and
:func:`attention_jax.paged_attention` use it; :func:`merge` combines two finished softmaxes by
their log-sum-exp (:func:`attention_jax.ring_attention`: one per key block that travels round a
ring of devices).

One convention for masked logits: replaced by ``finfo.min`` (never ``-inf``, so no
``-inf - (-inf)``), ``m`` starts at ``finfo.min``, and a row that has seen no key has
``l == 0``: its output is 0 and its log-sum-exp 0.
"""

import jax.numpy as jnp


def initial_max(shape, dtype):
    """``m`` before any block: ``finfo.min``, the value masked logits are replaced by."""
    return jnp.full(shape, jnp.finfo(dtype).min, dtype)


def update(m, l, s, valid=None):
    """One block: ``m (...)``, ``l (...)``, logits ``s (..., S)`` with masked entries already
    ``finfo.min``, and ``valid`` (broadcastable to ``s``) where a row may have no valid key
    yet (its ``exp(finfo.min - finfo.min) = 1`` is zeroed), or None when every row of the
    block sees a key. Returns ``(m', l', p, c)``: the caller adds ``p @ v`` to its
    accumulator after scaling it by ``c``."""
    m_new = jnp.maximum(m, s.max(-1))
    p = jnp.exp(s - m_new[..., None])
    if valid is not None:
        p = jnp.where(valid, p, 0)
    correction = jnp.exp(m - m_new)
    return m_new, l * correction + p.sum(-1), p, correction


def finish(m, l, acc, dead_lse=0.0):
    """``(out, lse)`` from the final ``m (...)``, ``l (...)`` and ``acc (..., H)``: a row that
    saw no key gets 0 and log-sum-exp ``dead_lse``. Tested as ``l == 0``, not ``l > 0``: a NaN in the
    inputs makes ``l`` NaN, and it must reach the output, not be replaced by 0."""
    empty = l == 0
    safe = jnp.where(empty, 1, l)
    out = jnp.where(empty[..., None], 0, acc / safe[..., None])
    lse = jnp.where(empty, dead_lse, m + jnp.log(safe))
    return out, lse


def merge(out, lse, out_b, lse_b):
    """Two softmaxes over disjoint sets of keys, ``(out (..., H), lse (...))`` each, as the one
    softmax over their union: weights ``e^(lse - lse')`` and ``e^(lse_b - lse')``,
    ``lse' = log(e^lse + e^lse_b)``. A side that saw no key has ``lse = -inf`` and weight 0;
    when neither did, the output stays 0 and ``lse'`` ``-inf``."""
    new = jnp.logaddexp(lse, lse_b)
    safe = jnp.where(new == -jnp.inf, 0, new)
    return out * jnp.exp(lse - safe)[..., None] + out_b * jnp.exp(lse_b - safe)[..., None], new
