"""Soft attention: a differentiable weighted average (Bahdanau et al. 2015; Xu et al. 2015)."""

import numpy as np

from ._dtypes import compute_dtype
from ._masking import masked_softmax, zero_unattended
from ._validate import check_soft


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

    Example: scores ``ln 1`` and ``ln 3`` exponentiate to 1 and 3, so the weights are
    ``[1, 3] / 4``, and the context is ``0.25 [0, 4] + 0.75 [4, 0]``.

    >>> scores = np.log([[[1.0, 3.0]]])                  # (B, T, S) = (1, 1, 2)
    >>> values = np.array([[[0.0, 4.0], [4.0, 0.0]]])    # (B, S, H) = (1, 2, 2)
    >>> context, weights = soft_attention(scores, values)
    >>> weights.round(4), context.round(4)
    (array([[[0.25, 0.75]]]), array([[[3., 1.]]]))

    A masked position gets weight 0, however large its score:

    >>> values = np.array([[[0.0, 4.0], [4.0, 0.0], [9.0, 9.0]]])  # (1, 3, 2)
    >>> scores = np.log([[[1.0, 3.0, 100.0]]])                     # (1, 1, 3)
    >>> context, weights = soft_attention(scores, values, mask=np.array([True, True, False]))
    >>> weights.round(4), context.round(4)
    (array([[[0.25, 0.75, 0.  ]]]), array([[[3., 1.]]]))
    """
    scores, values = np.asarray(scores), np.asarray(values)
    check_soft(scores, values, mask)
    dtype, compute = values.dtype, compute_dtype(values.dtype)
    # 1. weights = softmax(scores), over the source positions a query may attend to
    weights = masked_softmax(scores, mask)                                 # (B, T, S)
    # 2. context = weights @ values, the weighted average (masked values zeroed: 0 * NaN cannot leak)
    context = weights @ zero_unattended(values.astype(compute), mask, weights.shape)  # (B, T, H)
    return context.astype(dtype), weights.astype(dtype)
