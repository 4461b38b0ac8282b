"""Self-attention: queries, keys and values all come from one sequence (Vaswani et al. 2017)."""

import jax.numpy as jnp

import attention_np as _np
from attention_np._validate import check_self_attention

from ._dtypes import cast_params, compute_dtype
from ._jit import jit
from ._masking import combine_masks
from ._random import init_from_numpy
from .scores import scaled_dot_scores
from .soft import soft_attention


@jit(static_argnames=("is_causal",))
def self_attention(params, x, *, mask=None, is_causal=False):
    r"""Single-head scaled dot-product self-attention.

    .. math::
        q = x W_q + b_q,\; k = x W_k + b_k,\; v = x W_v + b_v, \qquad
        \mathrm{out} = \mathrm{softmax}\big(q k^\top / \sqrt{H}\big)\, v

    Vaswani et al. 2017, "Attention is all you need", section 3.2.1 (one head).

    Args:
      params: ``{"query"|"key"|"value": {"kernel": (E, H), "bias": (H,)}}``.
      x: ``(B, T, E)``.
      mask: optional bool broadcastable to ``(B, T, T)``, True = attend.
      is_causal: if True, position t attends only to positions ``<= t``.

    Returns:
      ``(out, weights)``: ``(B, T, H)`` and ``(B, T, T)``, in the dtype of ``x``.
    """
    x = jnp.asarray(x)
    check_self_attention(params, x, mask)
    B, T, E = x.shape
    dtype, compute = x.dtype, compute_dtype(x.dtype)
    p, x = cast_params(params, compute), x.astype(compute)
    # 1. project the one sequence three ways
    query = x @ p["query"]["kernel"] + p["query"]["bias"]                  # (B, T, H)
    key = x @ p["key"]["kernel"] + p["key"]["bias"]                        # (B, T, H)
    value = x @ p["value"]["kernel"] + p["value"]["bias"]                  # (B, T, H)
    # 2. every position scores every position, then soft attention
    scores = scaled_dot_scores(query, key)                                 # (B, T, T)
    out, weights = soft_attention(scores, value, mask=combine_masks(mask, is_causal, T, T))
    return out.astype(dtype), weights.astype(dtype)


def init_self_attention_params(rng, in_features, hidden_dim, *, dtype=jnp.float32):
    """As ``attention_np.init_self_attention_params``, drawing from the JAX PRNG key ``rng``."""
    return init_from_numpy(_np.init_self_attention_params, rng, in_features, hidden_dim, dtype=dtype)
