"""Score functions: how much each query matches each key, ``(B, T, S)``.

Luong, Pham & Manning 2015, "Effective approaches to attention-based neural machine
translation", section 3.1 (dot, general, concat); Vaswani et al. 2017 (scaled dot).
"""

import math

import jax
import jax.numpy as jnp

import attention_np as _np
from attention_np._validate import CONCAT_SPEC, GENERAL_SPEC, check_params, check_scale, check_scores

from ._dtypes import cast_params, compute_dtype
from ._jit import jit
from ._random import init_from_numpy


@jit
def dot_scores(query, keys):
    r"""Dot-product scores :math:`e_{ts} = q_t^\top k_s` (Luong "dot").

    Args:
      query: ``(B, T, H)``.
      keys: ``(B, S, H)``.

    Returns:
      scores ``(B, T, S)``, in the dtype of ``query``.
    """
    query, keys = jnp.asarray(query), jnp.asarray(keys)
    check_scores(query, keys)
    compute = compute_dtype(query.dtype)
    scores = jnp.einsum("BTH,BSH->BTS", query.astype(compute), keys.astype(compute))  # (B, T, S)
    return scores.astype(query.dtype)


@jit(static_argnames=("scale",))
def scaled_dot_scores(query, keys, *, scale=None):
    r"""Scaled dot-product scores :math:`e_{ts} = q_t^\top k_s / \sqrt{H}` (Vaswani et al. 2017).

    Args:
      query: ``(B, T, H)``.
      keys: ``(B, S, H)``.
      scale: multiplies the scores; default ``1 / sqrt(H)``.

    Returns:
      scores ``(B, T, S)``, in the dtype of ``query``.
    """
    query, keys = jnp.asarray(query), jnp.asarray(keys)
    check_scores(query, keys)
    if scale is not None:
        check_scale(scale)
    compute = compute_dtype(query.dtype)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = jnp.einsum("BTH,BSH->BTS", query.astype(compute), keys.astype(compute)) * scale  # (B, T, S)
    return scores.astype(query.dtype)


@jit
def general_scores(params, query, keys):
    r"""Luong's "general" scores :math:`e_{ts} = q_t^\top (W^\top k_s)`, i.e. ``q . (k @ W)``.

    Args:
      params: ``{"kernel": (H, H)}``.
      query: ``(B, T, H)``.
      keys: ``(B, S, H)``.

    Returns:
      scores ``(B, T, S)``, in the dtype of ``query``.
    """
    query, keys = jnp.asarray(query), jnp.asarray(keys)
    check_params(params, GENERAL_SPEC, check_scores(query, keys))
    compute = compute_dtype(query.dtype)
    W = cast_params(params, compute)["kernel"]
    projected = keys.astype(compute) @ W                                   # (B, S, H)
    scores = jnp.einsum("BTH,BSH->BTS", query.astype(compute), projected)    # (B, T, S)
    return scores.astype(query.dtype)


@jit
def concat_scores(params, query, keys):
    r"""Luong's "concat" scores, the tutorial's energy: :math:`e_{ts} = v^\top \tanh(W [q_t; k_s] + b)`.

    Bahdanau et al. 2015's additive score; the tutorial's class is this with T=1, A=H.
    Since :math:`W [q; k] = W_q q + W_k k`, the query and key halves of the kernel are applied
    once per query and once per key, not once per (query, key) pair.

    Args:
      params: ``{"attn": {"kernel": (2H, A), "bias": (A,)}, "v": (A,)}``; the first H rows
        of the kernel multiply the query, the last H the key.
      query: ``(B, T, H)``.
      keys: ``(B, S, H)``.

    Returns:
      scores ``(B, T, S)``, in the dtype of ``query``.
    """
    query, keys = jnp.asarray(query), jnp.asarray(keys)
    shapes = check_scores(query, keys)
    check_params(params, CONCAT_SPEC, shapes)
    H = shapes["H"]
    compute = compute_dtype(query.dtype)
    p = cast_params(params, compute)
    W_query, W_keys = p["attn"]["kernel"][:H], p["attn"]["kernel"][H:]     # (H, A) each
    # 1. W [q; k] + b = (q @ W_q) + (k @ W_k) + b, broadcast over every (t, s) pair
    query_part = query.astype(compute) @ W_query                           # (B, T, A)
    keys_part = keys.astype(compute) @ W_keys                              # (B, S, A)
    energy = jnp.tanh(query_part[:, :, None, :] + keys_part[:, None, :, :] + p["attn"]["bias"])  # (B, T, S, A)
    # 2. one score per pair
    scores = energy @ p["v"]                                               # (B, T, S)
    return scores.astype(query.dtype)


def init_general_params(rng, hidden_dim, *, dtype=jnp.float32):
    """As ``attention_np.init_general_params``, drawing from the JAX PRNG key ``rng``."""
    return init_from_numpy(_np.init_general_params, rng, hidden_dim, dtype=dtype)


def init_concat_params(rng, hidden_dim, attention_dim=None, *, dtype=jnp.float32):
    """As ``attention_np.init_concat_params``, drawing from the JAX PRNG key ``rng``."""
    return init_from_numpy(_np.init_concat_params, rng, hidden_dim, attention_dim, dtype=dtype)
