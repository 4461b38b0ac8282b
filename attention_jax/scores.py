"""Score functions: how much each query matches each key, ``(B, T, S)``.

Luong, Pham & Manning 2015, "Effective approaches to attention-based neural machine
translation", section 3.1 (dot, general, concat); Vaswani et al. 2017 (scaled dot);
Graves, Wayne & Danihelka 2014, "Neural Turing machines", section 3.3.1 (cosine, their
content-based addressing).
"""

import math
import numbers

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

    Example: the query matches the first key, is orthogonal to the second.

    >>> import numpy as np
    >>> query = np.array([[[1.0, 0.0]]], np.float32)                          # (B, T, H) = (1, 1, 2)
    >>> keys = np.array([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]], np.float32)  # (B, S, H) = (1, 3, 2)
    >>> np.asarray(dot_scores(query, keys)).round(4)
    array([[[1., 0., 2.]]], dtype=float32)
    """
    query, keys = jnp.asarray(query), jnp.asarray(keys)
    check_scores(query, keys)
    compute = compute_dtype(query.dtype)
    scores = jnp.einsum("BTH,BSH->BTS", query.astype(compute), keys.astype(compute))  # (B, T, S)
    return scores.astype(query.dtype)


@jit(static_argnames=("scale",))
def scaled_dot_scores(query, keys, *, scale=None):
    r"""Scaled dot-product scores :math:`e_{ts} = q_t^\top k_s / \sqrt{H}` (Vaswani et al. 2017).

    Why :math:`1/\sqrt{H}`: if the H entries of q and k are independent with mean 0 and
    variance 1, :math:`q^\top k` is a sum of H products of variance 1, so its variance is H;
    dividing by :math:`\sqrt{H}` brings it back to 1, so wide heads do not push the softmax
    into saturation, where it is nearly one-hot and its gradients vanish.

    Args:
      query: ``(B, T, H)``.
      keys: ``(B, S, H)``.
      scale: multiplies the scores; default ``1 / sqrt(H)``.

    Returns:
      scores ``(B, T, S)``, in the dtype of ``query``.

    Example: the dot products ``[1, 0, 2]`` divided by ``sqrt(2)``.

    >>> import numpy as np
    >>> query = np.array([[[1.0, 0.0]]], np.float32)                          # (B, T, H) = (1, 1, 2)
    >>> keys = np.array([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]], np.float32)  # (B, S, H) = (1, 3, 2)
    >>> np.asarray(scaled_dot_scores(query, keys)).round(4)
    array([[[0.7071, 0.    , 1.4142]]], dtype=float32)
    """
    query, keys = jnp.asarray(query), jnp.asarray(keys)
    check_scores(query, keys)
    if scale is not None:
        check_scale(scale)
    compute = compute_dtype(query.dtype)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = jnp.einsum("BTH,BSH->BTS", query.astype(compute), keys.astype(compute)) * scale  # (B, T, S)
    return scores.astype(query.dtype)


COSINE_EPSILON = 1e-8  # the smallest length a vector is divided by, as torch.nn.functional.cosine_similarity


@jit(static_argnames=("strength",))
def cosine_scores(query, keys, *, strength=1.0):
    r"""Cosine scores :math:`e_{ts} = \beta\, q_t k_s^\top / (\lVert q_t \rVert\, \lVert k_s \rVert)`:
    how well the directions match, whatever the lengths.

    Graves, Wayne & Danihelka 2014, "Neural Turing machines", section 3.3.1, eq. (5)-(6):
    the content-based addressing of a memory, ``softmax`` of these scores with the key
    strength :math:`\beta`, which sharpens (large) or flattens (small) the weights. Every
    score lies in ``[-beta, beta]``. A length below ``COSINE_EPSILON = 1e-8`` is replaced
    by it (as ``torch.nn.functional.cosine_similarity``), so a zero query or key scores 0
    against everything, never NaN, and its gradients stay finite.

    Args:
      query: ``(B, T, H)``.
      keys: ``(B, S, H)``.
      strength: the key strength beta, a finite number multiplying every score; default 1.
        Static under jit.

    Returns:
      scores ``(B, T, S)``, in the dtype of ``query``.

    Example: the first key points the query's way, the second is orthogonal, the third at
    45 degrees (``cos = 1 / sqrt(2) = 0.7071``, however long it is), the fourth is zero;
    with ``strength=2`` every score doubles.

    >>> import numpy as np
    >>> query = np.array([[[1.0, 0.0]]], np.float32)                                      # (B, T, H) = (1, 1, 2)
    >>> keys = np.array([[[3.0, 0.0], [0.0, 1.0], [2.0, 2.0], [0.0, 0.0]]], np.float32)  # (B, S, H) = (1, 4, 2)
    >>> np.asarray(cosine_scores(query, keys)).round(4)
    array([[[1.    , 0.    , 0.7071, 0.    ]]], dtype=float32)
    >>> np.asarray(cosine_scores(query, keys, strength=2)).round(4)
    array([[[2.    , 0.    , 1.4142, 0.    ]]], dtype=float32)
    """
    query, keys = jnp.asarray(query), jnp.asarray(keys)
    check_scores(query, keys)
    _check_strength(strength)
    dtype, compute = query.dtype, compute_dtype(query.dtype)
    query, keys = query.astype(compute), keys.astype(compute)
    # 1. unit vectors: each query and key divided by its length (at least COSINE_EPSILON)
    query = query / _length(query)                                         # (B, T, H)
    keys = keys / _length(keys)                                            # (B, S, H)
    # 2. their dot products are the cosines of the angles; times the key strength
    scores = jnp.einsum("BTH,BSH->BTS", query, keys) * strength             # (B, T, S)
    return scores.astype(dtype)


def _length(x):
    """Each vector's length over the last axis, at least ``COSINE_EPSILON``, ``(..., 1)``; the
    square root of the larger of ``|x|^2`` and ``eps^2``, so a zero vector has a finite gradient."""
    return jnp.sqrt(jnp.maximum((x * x).sum(axis=-1, keepdims=True), COSINE_EPSILON**2))


def _check_strength(strength):
    """The key strength is a finite real number (a Python or NumPy int or float, not a bool)."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
        raise TypeError(f"strength must be a finite real number (int or float); got {strength!r} "
                        f"({type(strength).__name__})")
    if not math.isfinite(strength):
        raise ValueError(f"strength must be a finite real number; got {strength!r}")


@jit
def general_scores(params, query, keys):
    r"""Luong's "general" scores :math:`e_{ts} = q_t \cdot (k_s W)`, i.e. ``q . (k @ W)``.

    Vectors are rows, as in the code: :math:`k_s W` is the key times the ``(H, H)`` kernel.

    Args:
      params: ``{"kernel": (H, H)}``.
      query: ``(B, T, H)``.
      keys: ``(B, S, H)``.

    Returns:
      scores ``(B, T, S)``, in the dtype of ``query``.

    Example: a kernel that swaps the two features makes the query match the second key.

    >>> import numpy as np
    >>> query = np.array([[[1.0, 0.0]]], np.float32)                          # (B, T, H) = (1, 1, 2)
    >>> keys = np.array([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]], np.float32)  # (B, S, H) = (1, 3, 2)
    >>> np.asarray(general_scores({"kernel": np.array([[0.0, 1.0], [1.0, 0.0]])}, query, keys)).round(4)
    array([[[0., 1., 2.]]], dtype=float32)
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
    r"""Luong's "concat" scores, the tutorial's energy: :math:`e_{ts} = \tanh([q_t; k_s]\, W + b)\, v`.

    Vectors are rows, as in the code: :math:`[q_t; k_s]` is the ``(2H,)`` concatenation,
    :math:`W` the ``(2H, A)`` kernel applied as ``x @ W``. Bahdanau et al. 2015's additive
    score; the tutorial's class is this with T=1, A=H. Since
    :math:`[q; k]\, W = q W_q + k W_k` (``W_q``, ``W_k``: the first and last H rows of the
    kernel), each half is applied once per query and once per key, not once per pair.

    Args:
      params: ``{"attn": {"kernel": (2H, A), "bias": (A,)}, "v": (A,)}``; the first H rows
        of the kernel multiply the query, the last H the key.
      query: ``(B, T, H)``.
      keys: ``(B, S, H)``.

    Returns:
      scores ``(B, T, S)``, in the dtype of ``query``.

    Example: with A = 1, a kernel that adds the first feature of query and key, and v = 1,
    the scores are ``tanh([2, 1, 3]) = [0.964, 0.7616, 0.9951]``.

    >>> import numpy as np
    >>> query = np.array([[[1.0, 0.0]]], np.float32)                          # (B, T, H) = (1, 1, 2)
    >>> keys = np.array([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]], np.float32)  # (B, S, H) = (1, 3, 2)
    >>> params = {"attn": {"kernel": np.array([[1.0], [0.0], [1.0], [0.0]]), "bias": np.zeros(1)}, "v": np.ones(1)}
    >>> np.asarray(concat_scores(params, query, keys)).round(4)
    array([[[0.964 , 0.7616, 0.9951]]], dtype=float32)
    """
    query, keys = jnp.asarray(query), jnp.asarray(keys)
    shapes = check_scores(query, keys)
    check_params(params, CONCAT_SPEC, shapes)
    H = shapes["H"]
    compute = compute_dtype(query.dtype)
    p = cast_params(params, compute)
    W_query, W_keys = p["attn"]["kernel"][:H], p["attn"]["kernel"][H:]     # (H, A) each
    # 1. [q; k] W + b = (q @ W_q) + (k @ W_k) + b, broadcast over every (t, s) pair
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
