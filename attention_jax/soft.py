"""Soft attention: a differentiable weighted average (Bahdanau et al. 2015; Xu et al. 2015)."""

import jax.numpy as jnp

from attention_np._validate import check_soft

from ._dtypes import compute_dtype
from ._jit import jit
from ._masking import masked_softmax, zero_unattended


@jit
def soft_attention(scores, values, *, mask=None):
    r"""Soft attention: softmax weights over the source, then the weighted average of the values.

    .. math::
        a_{ts} = \frac{\exp e_{ts}}{\sum_{s'} \exp e_{ts'}}, \qquad c_t = \sum_s a_{ts} v_s

    Xu et al. 2015, "Show, attend and tell", section 4.2 ("deterministic soft attention").

    Args:
      scores: ``(B, T, S)``, from any score function.
      values: ``(B, S, H)``.
      mask: optional bool broadcastable to ``(B, T, S)``, True = attend.

    Returns:
      ``(context, weights)``: ``(B, T, H)`` and ``(B, T, S)``, in the dtype of ``values``.
    """
    scores, values = jnp.asarray(scores), jnp.asarray(values)
    check_soft(scores, values, mask)
    dtype, compute = values.dtype, compute_dtype(values.dtype)
    # 1. weights = softmax(scores), over the source positions a query may attend to
    weights = masked_softmax(scores, mask)                                 # (B, T, S)
    # 2. context = weights @ values, the weighted average (masked values zeroed: 0 * NaN cannot leak)
    context = weights @ zero_unattended(values.astype(compute), mask, weights.shape)  # (B, T, H)
    return context.astype(dtype), weights.astype(dtype)
