"""Multi-head attention with Flax ``nnx.MultiHeadAttention``'s parameters (Vaswani et al. 2017)."""

import numpy as np

from ._batch import fold_batch, fold_broadcast, unfold_batch
from ._dtypes import cast_params, compute_dtype
from ._masking import attended_keys, combine_all_masks, length_mask, segment_mask
from ._validate import (
    Shapes,
    check_heads,
    check_key_value,
    check_multi_head,
    check_seq_lengths,
    check_window,
    multi_head_used,
)
from .dot_product import scaled_dot_product_attention

LAYER_NORM_EPSILON = 1e-6  # flax.nnx.LayerNorm's default, which normalize_qk uses


def _dense(subscripts, x, layer):
    """``x W + b`` of one of Flax's ``LinearGeneral`` layers; no ``b`` when it has none (``use_bias=False``)."""
    y = np.einsum(subscripts, x, layer["kernel"])
    return y + layer["bias"] if "bias" in layer else y


def _layer_norm(x, scale):
    """``(x - mean) / sqrt(var + eps) * scale`` over the last axis (H): Flax's ``LayerNorm(H, use_bias=False)``
    (``normalize_qk``; Dehghani et al. 2023, ViT-22B). Flax's variance is ``mean(x^2) - mean(x)^2``; here
    the two-pass ``mean((x - mean)^2)``, the same up to rounding, more accurate when the features are close."""
    mean = x.mean(axis=-1, keepdims=True)                    # (..., 1)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)     # (..., 1), the biased variance
    return (x - mean) / np.sqrt(var + LAYER_NORM_EPSILON) * scale


def multi_head_attention(params, query, key=None, value=None, *, bias=None, mask=None, is_causal=False, scale=None,
                         local_window_size=None, query_seq_lengths=None, key_value_seq_lengths=None,
                         dropout_rate=0.0, dropout_rng=None, broadcast_dropout=False, query_segment_ids=None,
                         key_value_segment_ids=None, logits_soft_cap=None):
    r"""Multi-head attention, with grouped key/value heads when K < N.

    .. math::
        q_n = x_q W^Q_n + b^Q_n, \quad k_j = x_k W^K_j + b^K_j, \quad v_j = x_v W^V_j + b^V_j, \qquad
        \mathrm{head}_n = \mathrm{Attention}(q_n, k_{j(n)}, v_{j(n)}), \qquad
        \mathrm{out} = \textstyle\sum_n \mathrm{head}_n W^O_n + b^O

    Vaswani et al. 2017, "Attention is all you need", section 3.2.2. The equation is steps
    1, 3 and 4 below: project into heads, attend in every head, mix the heads. The rest are
    options research code needs, each described on the research layer page: grouped
    key/value heads ``j(n) = n // (N / K)`` (Ainslie et al. 2023, GQA), the query/key
    normalisation of step 2 (Flax's ``normalize_qk``), and the options of
    :func:`scaled_dot_product_attention`. Numerically the same as
    ``flax.nnx.MultiHeadAttention`` (no dropout) given the same parameters, except that a
    query with every key masked gets a zero attention output (Flax: the mean).

    Args:
      params: Flax's names and shapes (``nnx.to_pure_dict(nnx.state(module, nnx.Param))``):
        ``{"query": {"kernel": (E, N, H), "bias": (N, H)}, "key": {"kernel": (E_kv, K, H),
        "bias": (K, H)}, "value": {"kernel": (E_v, K, H), "bias": (K, H)}, "out": {"kernel":
        (N, H, F), "bias": (F,)}}`` (E_v = E_kv in Flax; PyTorch's ``vdim`` may differ), and
        optionally ``"query_ln"|"key_ln": {"scale": (H,)}``. N, K, H and F are read from the
        kernels. A bias that is absent or None is no bias (Flax's ``use_bias=False``); a
        ``query_ln``/``key_ln`` that is absent or None is no normalisation. Other entries are
        ignored.
      query: ``(B, T, E)``; ``B`` may be any number of batch axes ``B...``, as in Flax.
      key: ``(B, S, E_kv)``, the dtype of ``query``; defaults to ``query`` (self-attention).
      value: ``(B, S, E_v)``, the dtype of ``query``; defaults to ``key``. Passing ``value``
        without ``key`` is a ``ValueError``, as in Flax.
      bias: optional float, broadcastable to ``(B, N, T, S)``, added to the logits (ALiBi,
        relative positions), as in :func:`scaled_dot_product_attention`.
      mask: optional bool broadcastable to ``(B, N, T, S)``, True = attend.
      is_causal: if True, query t attends only to keys ``s <= t``.
      scale: the logits' factor, default ``1 / sqrt(H)``, as :func:`scaled_dot_product_attention`
        (GPT-2's ``1 / (layer + 1)`` extra factor, T5's 1.0, Gemma's ``query_pre_attn_scalar``).
      local_window_size: optional ``(left, right)`` (or an int w for ``(w, w)``): query t
        attends only keys ``t - left <= s <= t + right``, as :func:`scaled_dot_product_attention`.
      query_seq_lengths, key_value_seq_lengths: optional int ``(B,)``: the real queries and keys
        of each row (the rest is padding), as :func:`scaled_dot_product_attention`.
      dropout_rate, dropout_rng, broadcast_dropout: attention dropout on the weights, as
        :func:`scaled_dot_product_attention` (the same keep-mask in both halves and on every path).
      query_segment_ids, key_value_segment_ids, logits_soft_cap: as
        :func:`scaled_dot_product_attention` (packed sequences; Gemma 2's soft-cap). An entry
        ``params["sinks"]`` ``(N,)`` gives every head a sink logit (attention sinks).

    Returns:
      ``(out, weights)``: ``(B, T, F)`` and ``(B, N, T, S)``, in the dtype of ``query``.
      T = 0 gives empty arrays; S = 0 a zero ``out`` (no key to attend to, so no output bias).

    Example: two heads of one feature (N = 2, H = 1, so the scale is 1); heads, features and
    positions are numbered from 0. Both heads read their values from feature 0
    (``v = [2, 6]``), and head n writes output feature n. Head 0 has zero query and key
    kernels: its scores are 0, its weights uniform, its output ``(2 + 6) / 2 = 4``
    everywhere. Head 1 matches feature 1: ``q = [1, 0]``, ``k = [ln 3, 0]``; position 0
    scores ``[ln 3, 0]``, weights ``[3, 1] / 4``, output ``0.75 * 2 + 0.25 * 6 = 3``;
    position 1 scores ``[0, 0]``, output 4.

    >>> ln3 = np.log(3)
    >>> params = {                                                # no biases, as use_bias=False
    ...     "query": {"kernel": np.array([[[0.0], [0.0]], [[0.0], [1.0]]])},  # (E, N, H) = (2, 2, 1)
    ...     "key": {"kernel": np.array([[[0.0], [0.0]], [[0.0], [ln3]]])},
    ...     "value": {"kernel": np.array([[[1.0], [1.0]], [[0.0], [0.0]]])},
    ...     "out": {"kernel": np.array([[[1.0, 0.0]], [[0.0, 1.0]]])}}        # (N, H, F) = (2, 1, 2)
    >>> x = np.array([[[2.0, 1.0], [6.0, 0.0]]])                  # (B, T, E) = (1, 2, 2)
    >>> out, weights = multi_head_attention(params, x)            # self-attention: key = value = x
    >>> weights                                                   # (B, N, T, S)
    array([[[[0.5 , 0.5 ],
             [0.5 , 0.5 ]],
    <BLANKLINE>
            [[0.75, 0.25],
             [0.5 , 0.5 ]]]])
    >>> out.round(4)                                              # (B, T, F): [head 0, head 1]
    array([[[4., 3.],
            [4., 4.]]])
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
    p = cast_params(multi_head_used(params), compute)  # the entries used; absent and None biases left out
    check_seq_lengths("query_seq_lengths", query_seq_lengths, shapes)
    check_seq_lengths("key_value_seq_lengths", key_value_seq_lengths, shapes)
    lengths = length_mask(query_seq_lengths, key_value_seq_lengths, B, T, S)  # (B, 1, T, S) or None
    visible = lengths if mask is None else mask if lengths is None else mask & lengths
    if visible is not None:  # padding is zeroed first: even NaN there cannot reach the output or the gradients
        keep = attended_keys(visible, (B, N, T, S)).any(axis=1)[..., None]  # (B, S, 1): any head
        key, value = np.where(keep, key, 0), np.where(keep, value, 0)
    # 1. project into heads: N query heads, K key/value heads of H features each (E is E_kv for key, E_v for value)
    q = _dense("BTE,ENH->BTNH", query.astype(compute), p["query"])  # (B, T, N, H)
    k = _dense("BSE,EKH->BSKH", key.astype(compute), p["key"])      # (B, S, K, H)
    v = _dense("BSE,EKH->BSKH", value.astype(compute), p["value"])  # (B, S, K, H)
    # 2. normalize_qk: layer-normalise every query and key vector over its H features
    if "query_ln" in p:
        q = _layer_norm(q, p["query_ln"]["scale"])  # (B, T, N, H)
    if "key_ln" in p:
        k = _layer_norm(k, p["key_ln"]["scale"])    # (B, S, K, H)
    # 3. scaled dot-product attention in every head at once
    heads, weights = scaled_dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=is_causal, sinks=p.get("sinks"),
                                                  scale=scale, local_window_size=local_window_size,
                                                  query_seq_lengths=query_seq_lengths,
                                                  key_value_seq_lengths=key_value_seq_lengths, dropout_rate=dropout_rate,
                                                  dropout_rng=dropout_rng, broadcast_dropout=broadcast_dropout,
                                                  query_segment_ids=query_segment_ids, logits_soft_cap=logits_soft_cap,
                                                  key_value_segment_ids=key_value_segment_ids)  # (B, T, N, H)
    # 4. mix the heads to the output width F
    out = _dense("BTNH,NHF->BTF", heads, p["out"])  # (B, T, F)
    # 5. a query with no key to attend to in any head gets a zero output (not the output bias)
    if S == 0:
        out = np.zeros_like(out)  # no key at all: every query has nothing to attend to
    segments = segment_mask(query_segment_ids, key_value_segment_ids, B)  # (B, 1, T, S) or None
    window = check_window(local_window_size)
    if visible is not None or segments is not None or window is not None:
        combined = combine_all_masks(mask, is_causal, window, lengths, T, S, segments)
        attends = np.broadcast_to(combined, (B, N, T, S)).any(axis=(1, 3))  # (B, T)
        out = np.where(attends[..., None], out, 0)
    return unfold_batch(out.astype(dtype), batch), unfold_batch(weights.astype(dtype), batch)


def init_multi_head_params(rng, in_features, num_heads, head_dim, *, num_kv_heads=None, in_kv_features=None,
                           out_features=None, use_bias=True, normalize_qk=False, dtype=np.float32):
    """Flax-layout parameters: LeCun-normal kernels (fan-in E or E_kv for the projections,
    N*H for the output), zero biases and unit ``query_ln``/``key_ln`` scales, as
    ``flax.nnx.MultiHeadAttention`` initialises them (the same tree as Flax's for the same
    options).

    Args:
      rng: a ``numpy.random.Generator``.
      in_features: E.
      num_heads: N.
      head_dim: H.
      num_kv_heads: K (default N).
      in_kv_features: E_kv, the key/value inputs' width (default E).
      out_features: F, the output width (default E).
      use_bias: if False, no biases (the layers have only kernels).
      normalize_qk: if True, ``query_ln``/``key_ln`` ``{"scale": (H,)}``, ones.

    Example: E = 8, N = 4 query heads of H = 2, K = 2 key/value heads.

    >>> params = init_multi_head_params(np.random.default_rng(0), 8, 4, 2, num_kv_heads=2)
    >>> {name: layer["kernel"].shape for name, layer in params.items()}
    {'query': (8, 4, 2), 'key': (8, 2, 2), 'value': (8, 2, 2), 'out': (4, 2, 8)}
    """
    E, N, H = in_features, num_heads, head_dim
    K = N if num_kv_heads is None else num_kv_heads
    E_kv = E if in_kv_features is None else in_kv_features
    F = E if out_features is None else out_features
    check_heads(Shapes(N=N, K=K))  # at init, not at the first call

    def dense(in_shape, out_shape):
        kernel = rng.normal(size=in_shape + out_shape) / np.sqrt(np.prod(in_shape))
        return {"kernel": kernel.astype(dtype)} | ({"bias": np.zeros(out_shape, dtype)} if use_bias else {})

    params = {
        "query": dense((E,), (N, H)),
        "key": dense((E_kv,), (K, H)),
        "value": dense((E_kv,), (K, H)),
        "out": dense((N, H), (F,)),
    }
    if normalize_qk:
        params |= {"query_ln": {"scale": np.ones((H,), dtype)}, "key_ln": {"scale": np.ones((H,), dtype)}}
    return params
