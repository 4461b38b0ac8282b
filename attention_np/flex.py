"""Programmable attention: scaled dot-product attention whose logits and mask are functions."""

import math

import numpy as np

from ._dtypes import compute_dtype
from ._masking import masked_softmax, zero_unattended
from ._validate import check_flex


def flex_attention(query, key, value, *, score_mod=None, mask_mod=None, block_mask=None, scale=None,
                   sinks=None, return_residual=False):
    r"""Scaled dot-product attention with a ``score_mod`` on the logits and a ``mask_mod`` for
    the mask, and optional attention sinks.

    .. math::
        x_{bhts} = \mathrm{score\_mod}\big(\mathrm{scale}\; q_{bht} \cdot k_{bhs},\; b, h, t, s\big), \qquad
        w_{bhts} = \frac{[\mathrm{mask\_mod}(b, h, t, s)]\, e^{x_{bhts}}}
                        {e^{\sigma_h} + \sum_{s'} [\mathrm{mask\_mod}(b, h, t, s')]\, e^{x_{bhts'}}}, \qquad
        o_{bht} = \textstyle\sum_s w_{bhts} v_{bhs}

    with :math:`e^{\sigma_h} = 0` without ``sinks``. The mods' signatures are PyTorch's
    FlexAttention (He et al. 2024); attention sinks are per-head logits that join each row's
    normaliser and hold no value (Xiao et al. 2024, "Efficient streaming language models with
    attention sinks"; the learned sinks of gpt-oss, OpenAI 2025). Ready-made mods (causal,
    sliding window, documents, prefix LM, soft-cap, ALiBi, relative positions) are in
    :mod:`attention_np.mods`, written once for both halves.

    This is the readable definition: the mods are evaluated on index arrays over every
    (query, key) pair, ``b (B, 1, 1, 1)``, ``h (1, N, 1, 1)``, ``q_idx (1, 1, T, 1)``,
    ``kv_idx (1, 1, 1, S)``. ``attention_jax.flex_attention`` computes the same block by
    block and skips the blocks a ``block_mask`` rules out; here a ``block_mask`` is used for
    its ``mask_mod`` alone. A key that ``mask_mod`` hides from every query of a head is
    padding: its key and value are zeroed before the products, so NaN or inf stored there
    reaches no output and no gradient, whatever the blocks (NaN in a key some query attends
    propagates).

    Shapes: B batch (one axis: the ``b`` the mods receive), T query length, S key length,
    N query heads, K key/value heads (N % K == 0, grouped-query attention), H features.

    Args:
      query: ``(B, T, N, H)``.
      key, value: ``(B, S, K, H)``, the dtype of ``query``.
      score_mod: optional ``(score, b, h, q_idx, kv_idx) -> score`` on the scaled logits.
      mask_mod: optional ``(b, h, q_idx, kv_idx) -> bool``, True = attend.
      block_mask: optional block mask (``attention_jax.create_block_mask``); its mask_mod
        is applied.
      scale: multiplies the logits before ``score_mod``; default ``1 / sqrt(H)``.
      sinks: optional float ``(N,)``, one sink logit per query head.
      return_residual: also return the log-sum-exp of the (modified, masked) logits and the
        sink, ``(B, T, N)`` as ``jax.nn.dot_product_attention``'s residual; ``-inf`` for a
        query that attends no key and has no sink.

    Returns:
      ``out (B, T, N, H)`` in the dtype of ``query`` (a query that attends no key gets
      zeros), or ``(out, lse)`` with ``return_residual``.

    Example: soft-capping at 1 squashes logits ``[0, 10]`` to ``[0, tanh(10)] = [0, 1]``, so
    the weights are ``[1, e] / (1 + e) = [0.269, 0.731]``; a sink of logit 0 adds ``e^0``
    to the normaliser, ``[1, e] / (2 + e) = [0.212, 0.576]``.

    >>> from attention_np.mods import soft_cap
    >>> query = np.ones((1, 1, 1, 1))                               # B = T = N = H = 1
    >>> key = np.array([0.0, 10.0]).reshape(1, 2, 1, 1)             # logits [0, 10]
    >>> value = np.array([0.0, 1.0]).reshape(1, 2, 1, 1)            # out = the second weight
    >>> flex_attention(query, key, value, score_mod=soft_cap(1.0))[0, 0, 0].round(3)
    array([0.731])
    >>> out, lse = flex_attention(query, key, value, score_mod=soft_cap(1.0), sinks=np.zeros(1),
    ...                           return_residual=True)
    >>> out[0, 0, 0].round(3), lse.round(3)                          # lse = log(2 + e)
    (array([0.576]), array([[[1.551]]]))
    """
    query, key, value = np.asarray(query), np.asarray(key), np.asarray(value)
    shapes = check_flex(query, key, value, score_mod, mask_mod, block_mask, scale, sinks)
    B, T, N, H, S, K = (shapes[c] for c in "BTNHSK")
    dtype, compute = query.dtype, compute_dtype(query.dtype)
    scale = 1.0 / math.sqrt(max(H, 1)) if scale is None else float(scale)
    mask_mod = block_mask.mask_mod if block_mask is not None else mask_mod
    # 1. heads first, (B, N, T, H); each key/value head serves N // K query heads
    query = query.astype(compute).transpose(0, 2, 1, 3)                              # (B, N, T, H)
    key = np.repeat(key.astype(compute), N // K, axis=2).transpose(0, 2, 1, 3)       # (B, N, S, H)
    value = np.repeat(value.astype(compute), N // K, axis=2).transpose(0, 2, 1, 3)   # (B, N, S, H)
    # 2. the indices the mods see, broadcasting to (B, N, T, S)
    b, h = np.arange(B).reshape(B, 1, 1, 1), np.arange(N).reshape(1, N, 1, 1)
    q_idx, kv_idx = np.arange(T).reshape(1, 1, T, 1), np.arange(S).reshape(1, 1, 1, S)
    # 3. the mask; keys no query may attend (padding) are zeroed: even NaN there cannot reach the output
    mask = np.ones((B, N, T, S), bool)
    if mask_mod is not None:
        mask = np.broadcast_to(np.asarray(mask_mod(b, h, q_idx, kv_idx), bool), (B, N, T, S))
    key, value = (zero_unattended(x, mask, (B, N, T, S)) for x in (key, value))     # (B, N, S, H)
    # 4. logits, scaled, then rewritten by score_mod
    logits = np.einsum("BNTH,BNSH->BNTS", query, key) * scale                       # (B, N, T, S)
    if score_mod is not None:
        logits = np.broadcast_to(score_mod(logits, b, h, q_idx, kv_idx), logits.shape).astype(compute)
    # 5. a sink is one more logit per head in each row's softmax, with no value
    if sinks is not None:
        sink = np.broadcast_to(np.asarray(sinks).astype(compute).reshape(1, N, 1, 1), (B, N, T, 1))
        logits = np.concatenate([logits, sink], axis=-1)                             # (B, N, T, S + 1)
        mask = np.concatenate([mask, np.ones((B, N, T, 1), bool)], axis=-1)
    # 6. weights: softmax over the keys a query may attend (and its sink), then the values
    weights = masked_softmax(logits, mask)[..., :S]                                  # (B, N, T, S)
    out = np.einsum("BNTS,BNSH->BNTH", weights, value).transpose(0, 2, 1, 3)         # (B, T, N, H)
    if not return_residual:
        return out.astype(dtype)
    return out.astype(dtype), _log_sum_exp(logits, mask).transpose(0, 2, 1)         # lse (B, T, N)


def _log_sum_exp(logits, mask):
    r""":math:`\log \sum_s [m_s] e^{x_s}` over the last axis: ``-inf`` where no entry is attended
    (its gradient there is 0, not NaN: the log never sees 0)."""
    logits = np.where(mask, logits, -np.inf)
    peak = logits.max(axis=-1, keepdims=True, initial=-np.inf)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    total = np.exp(logits - peak).sum(axis=-1, keepdims=True)
    lse = peak + np.log(np.where(total > 0, total, 1.0))
    return np.where(total > 0, lse, -np.inf)[..., 0]
