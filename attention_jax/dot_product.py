"""Scaled dot-product attention (Vaswani et al. 2017): mirror of ``attention_np/dot_product.py``."""

import math

import jax
import jax.numpy as jnp

from attention_np._validate import check_sdpa

from ._batch import fold_batch, fold_broadcast, unfold_batch
from ._dtypes import compute_dtype
from ._jit import jit
from ._masking import attended_keys, combine_masks, masked_softmax


@jit(static_argnames=("is_causal", "scale"))
def scaled_dot_product_attention(
    query, key, value, *, bias=None, mask=None, is_causal=False, scale=None
):
    r"""Scaled dot-product attention, with grouped key/value heads.

    .. math::
        \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\Big(\frac{Q K^\top}{\sqrt{H}} + \text{bias}\Big) V

    Vaswani et al. 2017, "Attention is all you need", eq. (1); grouped-query heads after
    Ainslie et al. 2023 (GQA). Same semantics as ``jax.nn.dot_product_attention``, except
    that a query with every key masked gets zero weights, a zero output and zero gradients
    (``jax.nn`` returns the mean of the values).

    Shapes: B batch, T query length, S key length, N query heads, K key/value heads
    (N % K == 0), H features per head. ``B`` may be any number of batch axes ``B...``
    (none, as ``jax.nn``'s ``(T, N, H)``, or several, as Flax's), shared by all three inputs.

    Args:
      query: ``(B, T, N, H)``.
      key: ``(B, S, K, H)``, the dtype of ``query``.
      value: ``(B, S, K, H)``, the dtype of ``query``.
      bias: optional float array broadcastable to ``(B, N, T, S)``, added to the scaled logits.
      mask: optional bool array broadcastable to ``(B, N, T, S)``, True = attend.
      is_causal: if True, query t attends only to keys ``s <= t``. Static under jit.
      scale: multiplies the logits, any finite number; default ``1 / sqrt(H)``. A Python
        number, static under jit.

    Returns:
      ``(out, weights)``: ``(B, T, N, H)`` and ``(B, N, T, S)``, in the dtype of ``query``.
      T = 0 gives empty arrays; S = 0 a zero ``out`` (no key to attend to).
    """
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    shapes = check_sdpa(query, key, value, bias, mask, scale)
    batch = shapes["B..."]  # the caller's batch axes, folded into one axis B here
    query, key, value = (fold_batch(x, batch) for x in (query, key, value))
    bias, mask = (None if x is None else fold_broadcast(x, batch, 3) for x in (bias, mask))
    B, T, N, H = query.shape
    S, K = shapes["S"], shapes["K"]
    dtype, compute = query.dtype, compute_dtype(query.dtype)
    scale = 1.0 / math.sqrt(max(H, 1)) if scale is None else float(scale)  # H = 0: the logits are empty sums, 0
    # 1. heads first, (B, N, T, H): every head is one batched matmul; with grouped-query
    #    attention each key/value head serves N // K consecutive query heads
    query = query.astype(compute).transpose(0, 2, 1, 3)                   # (B, N, T, H)
    key = jnp.repeat(key.astype(compute), N // K, axis=2).transpose(0, 2, 1, 3)    # (B, N, S, H)
    value = jnp.repeat(value.astype(compute), N // K, axis=2).transpose(0, 2, 1, 3)  # (B, N, S, H)
    mask = combine_masks(mask, is_causal, T, S)
    if mask is not None:
        # keys no query may attend to (padding) are zeroed: whatever they hold, even NaN,
        # cannot reach the output or the gradients
        keep = attended_keys(mask, (B, N, T, S))[..., None]                 # (B, N, S, 1)
        key, value = jnp.where(keep, key, 0), jnp.where(keep, value, 0)
    # 2. logits: one score per (query, key) pair, scaled, plus the optional bias
    logits = jnp.einsum("BNTH,BNSH->BNTS", query, key) * scale             # (B, N, T, S)
    if bias is not None:
        logits = logits + jnp.asarray(bias).astype(compute)
    # 3. weights: softmax over the keys a query may attend to
    weights = masked_softmax(logits, mask)                                 # (B, N, T, S)
    # 4. out: the weighted average of the values, back to (B, T, N, H)
    out = jnp.einsum("BNTS,BNSH->BNTH", weights, value).transpose(0, 2, 1, 3)  # (B, T, N, H)
    return unfold_batch(out.astype(dtype), batch), unfold_batch(weights.astype(dtype), batch)
