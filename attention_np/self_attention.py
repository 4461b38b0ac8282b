"""Self-attention: queries, keys and values all come from one sequence (Vaswani et al. 2017)."""

import numpy as np

from ._dtypes import cast_params, compute_dtype
from ._masking import combine_masks
from ._validate import check_self_attention
from .scores import scaled_dot_scores
from .soft import soft_attention


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

    Example: identity projections (``q = k = v = x``) and two orthogonal positions. The
    scores are ``x x^T / sqrt(2)``, 0.7071 on the diagonal and 0 off it, so each position
    keeps ``e^0.7071 / (e^0.7071 + 1) = 0.6698`` of its weight for itself:

    >>> identity = {"kernel": np.eye(2), "bias": np.zeros(2)}       # (E, H) = (2, 2)
    >>> params = {"query": identity, "key": identity, "value": identity}
    >>> x = np.array([[[1.0, 0.0], [0.0, 1.0]]])                    # (B, T, E) = (1, 2, 2)
    >>> out, weights = self_attention(params, x)
    >>> weights.round(4)
    array([[[0.6698, 0.3302],
            [0.3302, 0.6698]]])
    >>> out.round(4)                                                # weights @ v, and v = x
    array([[[0.6698, 0.3302],
            [0.3302, 0.6698]]])

    Causal: the first position sees only itself, so its weight on itself is 1.

    >>> self_attention(params, x, is_causal=True)[1].round(4)
    array([[[1.    , 0.    ],
            [0.3302, 0.6698]]])
    """
    x = np.asarray(x)
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


def init_self_attention_params(rng, in_features, hidden_dim, *, dtype=np.float32):
    """``{"query"|"key"|"value": {"kernel": (E, H), "bias": (H,)}}``: LeCun-normal kernels
    and zero biases, as ``flax.nnx.Linear``.

    Example: E = 6 features in, H = 4 out.

    >>> params = init_self_attention_params(np.random.default_rng(0), 6, 4)
    >>> {name: (layer["kernel"].shape, layer["bias"].shape) for name, layer in params.items()}
    {'query': ((6, 4), (4,)), 'key': ((6, 4), (4,)), 'value': ((6, 4), (4,))}
    """
    return {
        name: {
            "kernel": (rng.normal(size=(in_features, hidden_dim)) / np.sqrt(in_features)).astype(dtype),
            "bias": np.zeros(hidden_dim, dtype),
        }
        for name in ("query", "key", "value")
    }
