"""Cross-attention: queries from one sequence, keys and values from another (Vaswani et al. 2017)."""

import jax.numpy as jnp

from attention_np._validate import check_cross_attention

from ._dtypes import cast_params, compute_dtype
from ._jit import jit
from ._masking import attended_keys
from .scores import scaled_dot_scores
from .self_attention import init_self_attention_params
from .soft import soft_attention


@jit
def cross_attention(params, x, context, *, mask=None):
    r"""Single-head scaled dot-product cross-attention (encoder-decoder attention).

    .. math::
        q = x W_q + b_q,\; k = c W_k + b_k,\; v = c W_v + b_v, \qquad
        \mathrm{out} = \mathrm{softmax}\big(q k^\top / \sqrt{H}\big)\, v

    Vaswani et al. 2017, "Attention is all you need", section 3.2.3 ("encoder-decoder
    attention"): the decoder's positions query the encoder's outputs.

    Args:
      params: ``{"query"|"key"|"value": {"kernel": (E, H), "bias": (H,)}}``.
      x: the querying sequence, ``(B, T, E)``.
      context: the attended sequence, ``(B, S, E)``.
      mask: optional bool broadcastable to ``(B, T, S)``, True = attend.

    Returns:
      ``(out, weights)``: ``(B, T, H)`` and ``(B, T, S)``, in the dtype of ``x``.
    """
    x, context = jnp.asarray(x), jnp.asarray(context)
    check_cross_attention(params, x, context, mask)
    dtype, compute = x.dtype, compute_dtype(x.dtype)
    p, x, context = cast_params(params, compute), x.astype(compute), context.astype(compute)
    if mask is not None:  # padding is zeroed first: even NaN there cannot reach the output or the gradients
        context = jnp.where(attended_keys(mask, (x.shape[0], x.shape[1], context.shape[1]))[..., None], context, 0)
    # 1. queries from x, keys and values from the other sequence
    query = x @ p["query"]["kernel"] + p["query"]["bias"]                  # (B, T, H)
    key = context @ p["key"]["kernel"] + p["key"]["bias"]                  # (B, S, H)
    value = context @ p["value"]["kernel"] + p["value"]["bias"]            # (B, S, H)
    # 2. every query position scores every context position, then soft attention
    scores = scaled_dot_scores(query, key)                                 # (B, T, S)
    out, weights = soft_attention(scores, value, mask=mask)
    return out.astype(dtype), weights.astype(dtype)


init_cross_attention_params = init_self_attention_params
