"""Hard attention: attend to exactly one source position (Xu et al. 2015)."""

import numpy as np

from ._dtypes import compute_dtype
from ._validate import check_hard


def hard_attention(scores, values, *, mask=None, gumbel_noise=None, rng=None):
    r"""Hard attention: one-hot weights at the best (or a sampled) source position.

    .. math::
        s^*_t = \arg\max_s \,(e_{ts} + g_{ts}), \qquad a_{ts} = [s = s^*_t], \qquad c_t = v_{s^*_t}

    With ``g = 0`` this is the deterministic argmax (ties go to the lowest index); with
    Gumbel noise ``g`` it is an exact sample from ``softmax(e)`` (the Gumbel-max trick;
    Xu et al. 2015, "Show, attend and tell", section 4.1, "stochastic hard attention").
    Masked positions are never chosen; a query with every position masked gets zero
    weights and a zero context.

    Args:
      scores: ``(B, T, S)``.
      values: ``(B, S, H)``.
      mask: optional bool broadcastable to ``(B, T, S)``, True = attend.
      gumbel_noise: optional ``(B, T, S)`` noise added to the scores before the argmax.
      rng: optional ``numpy.random.Generator`` that draws standard Gumbel noise (not with
        ``gumbel_noise``).

    Returns:
      ``(context, weights)``: ``(B, T, H)`` and one-hot ``(B, T, S)``, in the dtype of ``values``.

    Example: the best score is at position 1, so the context is that value, 20; masked,
    position 1 cannot be chosen and the next best, position 2, is; noise of 3 at position
    0 makes it the best.

    >>> scores = np.array([[[0.1, 2.0, 0.5]]])           # (B, T, S) = (1, 1, 3)
    >>> values = np.array([[[10.0], [20.0], [30.0]]])    # (B, S, H) = (1, 3, 1)
    >>> hard_attention(scores, values)
    (array([[[20.]]]), array([[[0., 1., 0.]]]))
    >>> hard_attention(scores, values, mask=np.array([True, False, True]))
    (array([[[30.]]]), array([[[0., 0., 1.]]]))
    >>> hard_attention(scores, values, gumbel_noise=np.array([[[3.0, 0.0, 0.0]]]))
    (array([[[10.]]]), array([[[1., 0., 0.]]]))
    """
    scores, values = np.asarray(scores), np.asarray(values)
    check_hard(scores, values, mask, gumbel_noise, rng)
    dtype, compute = values.dtype, compute_dtype(values.dtype)
    B, T, S = scores.shape
    if S == 0:  # nothing to attend to: a zero context, as for a query whose every position is masked
        return np.zeros((B, T, values.shape[-1]), dtype), np.zeros((B, T, 0), dtype)
    logits = scores.astype(compute)
    if rng is not None:
        gumbel_noise = rng.gumbel(size=(B, T, S))
    # 1. perturb (or not), then choose the best unmasked position
    if gumbel_noise is not None:
        logits = logits + np.asarray(gumbel_noise).astype(compute)
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)                           # never chosen
    index = logits.argmax(axis=-1)                                         # (B, T)
    # 2. one-hot weights; queries with nothing to attend to get none
    weights = (np.arange(S) == index[..., None]).astype(compute)           # (B, T, S)
    context = np.take_along_axis(values.astype(compute), index[..., None], axis=1)  # (B, T, H)
    if mask is not None:
        anything = np.broadcast_to(mask, (B, T, S)).any(axis=-1, keepdims=True)  # (B, T, 1)
        weights, context = weights * anything, np.where(anything, context, 0)
    return context.astype(dtype), weights.astype(dtype)
