"""Multi-head attention with Flax ``nnx.MultiHeadAttention``'s parameters (Vaswani et al. 2017)."""

import numpy as np

from ._batch import fold_batch, fold_broadcast, unfold_batch
from ._dtypes import cast_params, compute_dtype
from ._masking import attended_keys, combine_masks
from ._validate import Shapes, check_heads, check_key_value, check_multi_head
from .dot_product import scaled_dot_product_attention


def multi_head_attention(params, query, key=None, value=None, *, bias=None, mask=None, is_causal=False):
    r"""Multi-head attention, with grouped key/value heads when K < N.

    .. math::
        \mathrm{head}_n = \mathrm{Attention}(x_q W^Q_n, x_k W^K_{k(n)}, x_v W^V_{k(n)}), \qquad
        \mathrm{out} = \textstyle\sum_n \mathrm{head}_n W^O_n + b^O

    Vaswani et al. 2017, "Attention is all you need", section 3.2.2; grouped key/value heads
    ``k(n) = n // (N / K)`` after Ainslie et al. 2023 (GQA). Numerically the same as
    ``flax.nnx.MultiHeadAttention`` (no dropout, no qk-norm) given the same parameters,
    except that a query with every key masked gets a zero attention output (Flax: the mean).

    Args:
      params: ``{"query": {"kernel": (E, N, H), "bias": (N, H)}, "key"|"value": {"kernel":
        (E, K, H), "bias": (K, H)}, "out": {"kernel": (N, H, E), "bias": (E,)}}``, Flax's
        names and shapes; N, K and H are read from the kernels.
      query: ``(B, T, E)``; ``B`` may be any number of batch axes ``B...``, as in Flax.
      key: ``(B, S, E)``, the dtype of ``query``; defaults to ``query`` (self-attention).
      value: ``(B, S, E)``, the dtype of ``query``; defaults to ``key``. Passing ``value``
        without ``key`` is a ``ValueError``, as in Flax.
      bias: optional float, broadcastable to ``(B, N, T, S)``, added to the logits (ALiBi,
        relative positions), as in :func:`scaled_dot_product_attention`.
      mask: optional bool broadcastable to ``(B, N, T, S)``, True = attend.
      is_causal: if True, query t attends only to keys ``s <= t``.

    Returns:
      ``(out, weights)``: ``(B, T, E)`` and ``(B, N, T, S)``, in the dtype of ``query``.
      T = 0 gives empty arrays; S = 0 a zero ``out`` (no key to attend to, so no output bias).
    """
    check_key_value(key, value)
    query = np.asarray(query)
    key = query if key is None else np.asarray(key)
    value = key if value is None else np.asarray(value)
    shapes = check_multi_head(params, query, key, value, mask, bias)
    batch = shapes["B..."]  # the caller's batch axes, folded into one axis B here
    query, key, value = (fold_batch(x, batch) for x in (query, key, value))
    mask = None if mask is None else fold_broadcast(mask, batch, 3)
    bias = None if bias is None else fold_broadcast(bias, batch, 3)
    B, T, S, N = (shapes[c] for c in "BTSN")
    dtype, compute = query.dtype, compute_dtype(query.dtype)
    p = cast_params(params, compute)
    if mask is not None:  # padding is zeroed first: even NaN there cannot reach the output or the gradients
        keep = attended_keys(mask, (B, N, T, S)).any(axis=1)[..., None]    # (B, S, 1): any head
        key, value = np.where(keep, key, 0), np.where(keep, value, 0)
    # 1. project into heads: N query heads, K key/value heads of H features each
    q = np.einsum("BTE,ENH->BTNH", query.astype(compute), p["query"]["kernel"]) + p["query"]["bias"]  # (B, T, N, H)
    k = np.einsum("BSE,EKH->BSKH", key.astype(compute), p["key"]["kernel"]) + p["key"]["bias"]        # (B, S, K, H)
    v = np.einsum("BSE,EKH->BSKH", value.astype(compute), p["value"]["kernel"]) + p["value"]["bias"]  # (B, S, K, H)
    # 2. scaled dot-product attention in every head at once
    heads, weights = scaled_dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=is_causal)  # (B, T, N, H)
    # 3. mix the heads back to the model width
    out = np.einsum("BTNH,NHE->BTE", heads, p["out"]["kernel"]) + p["out"]["bias"]  # (B, T, E)
    # 4. a query with no key to attend to in any head gets a zero output (not the output bias)
    if S == 0:
        out = np.zeros_like(out)  # no key at all: every query has nothing to attend to
    if mask is not None:
        attends = np.broadcast_to(combine_masks(mask, is_causal, T, S), (B, N, T, S)).any(axis=(1, 3))  # (B, T)
        out = np.where(attends[..., None], out, 0)
    return unfold_batch(out.astype(dtype), batch), unfold_batch(weights.astype(dtype), batch)


def init_multi_head_params(rng, in_features, num_heads, head_dim, *, num_kv_heads=None, dtype=np.float32):
    """Flax-layout parameters: LeCun-normal kernels (fan-in E for the projections, N*H for
    the output), zero biases, as ``flax.nnx.MultiHeadAttention`` initialises them.

    Args:
      rng: a ``numpy.random.Generator``.
      in_features: E.
      num_heads: N.
      head_dim: H.
      num_kv_heads: K (default N).
    """
    E, N, H = in_features, num_heads, head_dim
    K = N if num_kv_heads is None else num_kv_heads
    check_heads(Shapes(N=N, K=K))  # at init, not at the first call

    def dense(in_shape, out_shape):
        kernel = rng.normal(size=in_shape + out_shape) / np.sqrt(np.prod(in_shape))
        return {"kernel": kernel.astype(dtype), "bias": np.zeros(out_shape, dtype)}

    return {
        "query": dense((E,), (N, H)),
        "key": dense((E,), (K, H)),
        "value": dense((E,), (K, H)),
        "out": dense((N, H), (E,)),
    }
