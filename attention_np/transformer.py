"""The Transformer's layers, built from :func:`multi_head_attention` (Vaswani et al. 2017).

Vaswani et al. 2017, "Attention is all you need", section 3. A layer is attention plus
three small things around it:

- a residual connection and layer normalisation around each sub-layer, section 3.1:
  ``LayerNorm(x + Sublayer(x))``. This is the paper's *post-norm* order, also PyTorch's
  ``nn.TransformerEncoderLayer`` default (``norm_first=False``); many later models put the
  norm first (``x + Sublayer(LayerNorm(x))``), which trains more easily when deep;
- a position-wise feed-forward network, section 3.3: ``max(0, x W_1 + b_1) W_2 + b_2``,
  the same two dense layers applied to every position on its own;
- sinusoidal position encodings added to the embeddings, section 3.5: attention alone
  cannot tell "cat sat" from "sat cat", so each position gets its own pattern of waves.

The encoder layer is self-attention then the feed-forward network; the decoder layer is
causal self-attention (a position sees only itself and the ones before it), then
cross-attention over the encoder's outputs, then the feed-forward network.
"""

import numpy as np

from ._dtypes import cast_params, compute_dtype
from ._validate import BATCH, Shapes, batch_letters, check_broadcast, check_params, check_same_dtype
from .multi_head import init_multi_head_params, multi_head_attention

LAYER_NORM_EPSILON = 1e-5  # PyTorch's nn.LayerNorm and nn.TransformerEncoderLayer default

ENCODER_SPEC = {  # the shapes check_transformer_layer reads; the attention blocks check their own
    "self_attention": {"out": {"kernel": ("N", "H", "E")}},
    "norm_1": {"scale": ("E",), "bias": ("E",)},
    "feed_forward": {"hidden": {"kernel": ("E", "M"), "bias": ("M",)}, "out": {"kernel": ("M", "E"), "bias": ("E",)}},
    "norm_2": {"scale": ("E",), "bias": ("E",)},
}
DECODER_SPEC = {
    "self_attention": {"out": {"kernel": ("N", "H", "E")}},
    "norm_1": {"scale": ("E",), "bias": ("E",)},
    "cross_attention": {"out": {"kernel": ("N_x", "H_x", "E")}},
    "norm_2": {"scale": ("E",), "bias": ("E",)},
    "feed_forward": {"hidden": {"kernel": ("E", "M"), "bias": ("M",)}, "out": {"kernel": ("M", "E"), "bias": ("E",)}},
    "norm_3": {"scale": ("E",), "bias": ("E",)},
}


# --- the checks, shared by both halves -------------------------------------------------------------
def check_positions(length, features, base) -> None:
    """The arguments of :func:`sinusoidal_positions`."""
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"length must be an int >= 0 (the number of positions T); got {length!r}")
    if isinstance(features, bool) or not isinstance(features, (int, np.integer)) or features < 2 or features % 2:
        raise ValueError(f"features must be an even int >= 2 (one sin and one cos per frequency); got {features!r}")
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 1:
        raise ValueError(f"base must be a number greater than 1; got {base!r}")


def _check_layer_mask(name, mask, target, letters) -> None:
    """An optional bool mask (True = attend) broadcastable to the weights ``target``."""
    if mask is None:
        return
    dtype = str(getattr(mask, "dtype", type(mask).__name__))
    if dtype != "bool":
        raise TypeError(f"{name} must have a boolean dtype (True = attend); got {dtype}")
    check_broadcast(name, mask, target, letters)


def check_transformer_layer(params, x, mask, encoder_outputs=None, encoder_mask=None) -> Shapes:
    """``x (B..., T, E)``, ``encoder_outputs (B..., S, E)`` in the dtype of ``x`` (decoder),
    the layer norms and feed-forward network of ``params``, and the masks, each named; binds
    B..., T, E, M, N (and S, N_x). The attention blocks' own params are checked by
    ``multi_head_attention``."""
    shapes = Shapes()
    shapes.check("x", x, (BATCH, "T", "E"))
    if encoder_outputs is not None:
        shapes.check("encoder_outputs", encoder_outputs, (BATCH, "S", "E"))
        check_same_dtype("encoder_outputs", encoder_outputs, "x", x)
    check_params(params, ENCODER_SPEC if encoder_outputs is None else DECODER_SPEC, shapes)
    batch = shapes[BATCH]
    _check_layer_mask("mask", mask, batch + (shapes["N"], shapes["T"], shapes["T"]), batch_letters(batch, "NTT"))
    if encoder_outputs is not None:
        _check_layer_mask("encoder_mask", encoder_mask, batch + (shapes["N_x"], shapes["T"], shapes["S"]),
                          batch_letters(batch, "NTS"))
    return shapes


# --- the pieces ------------------------------------------------------------------------------------
def _layer_norm(x, norm):
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis (E): ``nn.LayerNorm(E)``."""
    mean = x.mean(axis=-1, keepdims=True)                    # (..., 1)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)     # (..., 1), the biased variance
    return (x - mean) / np.sqrt(var + LAYER_NORM_EPSILON) * norm["scale"] + norm["bias"]


def _feed_forward(x, ffn):
    """``max(0, x W_1 + b_1) W_2 + b_2`` at every position (section 3.3)."""
    hidden = np.maximum(0, x @ ffn["hidden"]["kernel"] + ffn["hidden"]["bias"])  # (..., M)
    return hidden @ ffn["out"]["kernel"] + ffn["out"]["bias"]                      # (..., E)


def sinusoidal_positions(length, features, *, base=10000.0, dtype=np.float32):
    r"""The sinusoidal position encodings of section 3.5, one row per position.

    .. math::
        PE_{(t, 2i)} = \sin\left(t / \text{base}^{2i/E}\right), \qquad
        PE_{(t, 2i+1)} = \cos\left(t / \text{base}^{2i/E}\right)

    Feature pair ``(2i, 2i + 1)`` is a wave of wavelength ``2 pi base^(2i/E)``: the first pair
    turns fastest, the last slowest. The paper's reason: for any offset k, ``PE[t + k]`` is a
    linear function (a rotation of each pair) of ``PE[t]``, so relative positions are easy
    to attend by. Added to the token embeddings ``(B, T, E)`` before the first layer.

    Vaswani et al. 2017, "Attention is all you need", section 3.5.

    Args:
      length: T, the number of positions (0, 1, ..., T - 1).
      features: E, the model width; even.
      base: the wavelength base (the paper's 10000), > 1.
      dtype: the dtype of the result (computed in float32, float64 for float64).

    Returns:
      ``(T, E)``, broadcastable against embeddings ``(B, T, E)``.

    Example: T = 2, E = 4, frequencies ``1`` and ``1 / 10000^(2/4) = 0.01``. Position 0 is
    ``[sin 0, cos 0, sin 0, cos 0] = [0, 1, 0, 1]``; position 1 is ``[sin 1, cos 1, sin 0.01,
    cos 0.01] = [0.8415, 0.5403, 0.01, 0.99995]``.

    >>> sinusoidal_positions(2, 4).round(4)
    array([[0.    , 1.    , 0.    , 1.    ],
           [0.8415, 0.5403, 0.01  , 1.    ]], dtype=float32)
    """
    check_positions(length, features, base)
    T, E = length, features
    compute = compute_dtype(dtype)
    # 1. one angle per (position, frequency): t / base^(2i/E)
    position = np.arange(T, dtype=compute)[:, None]                # (T, 1)
    frequency = base ** (-np.arange(0, E, 2, dtype=compute) / E)   # (E/2,)
    angle = position * frequency                                  # (T, E/2)
    # 2. sin on the even features, cos on the odd ones
    encoding = np.stack([np.sin(angle), np.cos(angle)], axis=-1)  # (T, E/2, 2)
    return encoding.reshape(T, E).astype(dtype)                   # (T, E)


def transformer_encoder_layer(params, x, *, mask=None):
    r"""One Transformer encoder layer: self-attention, then a feed-forward network, each
    wrapped in a residual connection and layer normalisation (post-norm, as the paper).

    .. math::
        z = \mathrm{LayerNorm}_1\big(x + \mathrm{MultiHead}(x, x, x)\big), \qquad
        \mathrm{out} = \mathrm{LayerNorm}_2\big(z + \max(0, z W_1 + b_1) W_2 + b_2\big)

    Vaswani et al. 2017, "Attention is all you need", sections 3.1 (the encoder), 3.2.2
    (multi-head attention) and 3.3 (the feed-forward network). The same computation as
    ``torch.nn.TransformerEncoderLayer(E, N, M, dropout=0, batch_first=True)`` (ReLU,
    ``norm_first=False``, ``layer_norm_eps=1e-5``) given the same weights.

    Args:
      params: ``{"self_attention": <multi_head_attention params>, "norm_1": {"scale": (E,),
        "bias": (E,)}, "feed_forward": {"hidden": {"kernel": (E, M), "bias": (M,)}, "out":
        {"kernel": (M, E), "bias": (E,)}}, "norm_2": {"scale": (E,), "bias": (E,)}}``, as
        :func:`init_transformer_encoder_params` makes them.
      x: ``(B, T, E)``, the embedded tokens (plus :func:`sinusoidal_positions`); ``B`` may be
        any number of batch axes ``B...``.
      mask: optional bool broadcastable to ``(B, N, T, T)``, True = attend; for padding,
        ``(B, 1, 1, T)`` with False at the padded keys.

    Returns:
      ``(out, weights)``: ``(B, T, E)`` in the dtype of ``x``, and the attention weights
      ``(B, N, T, T)``.

    Example: with the attention's and the feed-forward network's output kernels zero (and
    their biases zero, as at init) both sub-layers add nothing, and each position is just
    layer-normalised: ``[1, 3]`` has mean 2 and variance 1, so it becomes ``[-1, 1]``;
    ``[0, 4]`` (mean 2, variance 4) becomes ``[-1, 1]`` too.

    >>> params = init_transformer_encoder_params(np.random.default_rng(0), 2, 2, 8)
    >>> params["self_attention"]["out"]["kernel"][:] = 0
    >>> params["feed_forward"]["out"]["kernel"][:] = 0
    >>> x = np.array([[[1.0, 3.0], [0.0, 4.0]]])                 # (B, T, E) = (1, 2, 2)
    >>> out, weights = transformer_encoder_layer(params, x)
    >>> out.round(4)
    array([[[-1.,  1.],
            [-1.,  1.]]])
    >>> weights.shape, weights.sum(axis=-1).round(4)              # (B, N, T, T); each row sums to 1
    ((1, 2, 2, 2), array([[[1., 1.],
            [1., 1.]]]))
    """
    x = np.asarray(x)
    check_transformer_layer(params, x, mask)
    dtype, compute = x.dtype, compute_dtype(x.dtype)
    x, p = x.astype(compute), cast_params(params, compute)
    # 1. multi-head self-attention: every position attends to every position
    attended, weights = multi_head_attention(p["self_attention"], x, mask=mask)  # (B, T, E), (B, N, T, T)
    # 2. residual connection, then layer norm: LayerNorm(x + Sublayer(x))
    x = _layer_norm(x + attended, p["norm_1"])                                 # (B, T, E)
    # 3. position-wise feed-forward network, residual, layer norm
    x = _layer_norm(x + _feed_forward(x, p["feed_forward"]), p["norm_2"])      # (B, T, E)
    return x.astype(dtype), weights.astype(dtype)


def transformer_decoder_layer(params, x, encoder_outputs, *, mask=None, encoder_mask=None):
    r"""One Transformer decoder layer: causal self-attention, cross-attention over the
    encoder's outputs, a feed-forward network; each with a residual connection and layer
    normalisation (post-norm, as the paper).

    .. math::
        z_1 = \mathrm{LayerNorm}_1\big(x + \mathrm{MultiHead}_{\mathrm{causal}}(x, x, x)\big), \qquad
        z_2 = \mathrm{LayerNorm}_2\big(z_1 + \mathrm{MultiHead}(z_1, m, m)\big), \qquad
        \mathrm{out} = \mathrm{LayerNorm}_3\big(z_2 + \max(0, z_2 W_1 + b_1) W_2 + b_2\big)

    with ``m`` the encoder's outputs. Vaswani et al. 2017, section 3.1 (the decoder: "masking
    ... ensures that the predictions for position i can depend only on the known outputs at
    positions less than i") and 3.2.3. The same computation as
    ``torch.nn.TransformerDecoderLayer(E, N, M, dropout=0, batch_first=True)`` called with a
    causal ``tgt_mask``, given the same weights.

    Args:
      params: ``{"self_attention": ..., "norm_1": ..., "cross_attention": ..., "norm_2": ...,
        "feed_forward": ..., "norm_3": ...}``: two :func:`multi_head_attention` params, three
        layer norms ``{"scale": (E,), "bias": (E,)}`` and the feed-forward network of
        :func:`transformer_encoder_layer`, as :func:`init_transformer_decoder_params` makes them.
      x: ``(B, T, E)``, the embedded target tokens so far; ``B`` may be ``B...``.
      encoder_outputs: ``(B, S, E)``, the encoder's last layer, in the dtype of ``x``.
      mask: optional bool broadcastable to ``(B, N, T, T)``, True = attend, for the
        self-attention; combined with the causal mask.
      encoder_mask: optional bool broadcastable to ``(B, N, T, S)``, True = attend, for the
        cross-attention (``(B, 1, 1, S)`` for the source's padding).

    Returns:
      ``(out, (self_weights, cross_weights))``: ``(B, T, E)`` in the dtype of ``x``, and the
      weights ``(B, N, T, T)`` (zero above the diagonal) and ``(B, N, T, S)``.

    Example: position 0 may attend only to itself, so its self-attention weights are
    ``[1, 0]`` in every head; with the three sub-layers' output kernels zero each position is
    layer-normalised three times, ``[1, 3] -> [-1, 1]``.

    >>> params = init_transformer_decoder_params(np.random.default_rng(0), 2, 2, 8)
    >>> for block in ("self_attention", "cross_attention", "feed_forward"):
    ...     params[block]["out"]["kernel"][:] = 0
    >>> x, memory = np.array([[[1.0, 3.0], [0.0, 4.0]]]), np.ones((1, 3, 2))   # T = 2, S = 3
    >>> out, (self_weights, cross_weights) = transformer_decoder_layer(params, x, memory)
    >>> out.round(4)
    array([[[-1.,  1.],
            [-1.,  1.]]])
    >>> self_weights[0, :, 0]                                     # position 0, both heads
    array([[1., 0.],
           [1., 0.]])
    >>> cross_weights.shape                                       # (B, N, T, S)
    (1, 2, 2, 3)
    """
    x, encoder_outputs = np.asarray(x), np.asarray(encoder_outputs)
    check_transformer_layer(params, x, mask, encoder_outputs, encoder_mask)
    dtype, compute = x.dtype, compute_dtype(x.dtype)
    x, memory, p = x.astype(compute), encoder_outputs.astype(compute), cast_params(params, compute)
    # 1. causal self-attention: position t attends to positions <= t; residual, layer norm
    attended, self_weights = multi_head_attention(p["self_attention"], x, mask=mask, is_causal=True)  # (B, T, E)
    x = _layer_norm(x + attended, p["norm_1"])                                          # (B, T, E)
    # 2. cross-attention: queries from the decoder, keys and values from the encoder
    attended, cross_weights = multi_head_attention(p["cross_attention"], x, memory, mask=encoder_mask)  # (B, T, E)
    x = _layer_norm(x + attended, p["norm_2"])                                          # (B, T, E)
    # 3. position-wise feed-forward network, residual, layer norm
    x = _layer_norm(x + _feed_forward(x, p["feed_forward"]), p["norm_3"])               # (B, T, E)
    return x.astype(dtype), (self_weights.astype(dtype), cross_weights.astype(dtype))


# --- parameters ------------------------------------------------------------------------------------
def _check_sizes(features, num_heads, mlp_features):
    for name, size in (("features", features), ("num_heads", num_heads), ("mlp_features", mlp_features)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"{name} must be an int >= 1; got {size!r}")
    if features % num_heads:
        raise ValueError(f"features must be divisible by num_heads (H = E / N per head); "
                         f"got features={features}, num_heads={num_heads}")


def _dense(rng, fan_in, fan_out, dtype):
    """LeCun-normal kernel ``(fan_in, fan_out)``, zero bias: Flax's ``nnx.Linear`` init."""
    kernel = rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in)
    return {"kernel": kernel.astype(dtype), "bias": np.zeros((fan_out,), dtype)}


def _norm(features, dtype):
    return {"scale": np.ones((features,), dtype), "bias": np.zeros((features,), dtype)}


def init_transformer_encoder_params(rng, features, num_heads, mlp_features, *, dtype=np.float32):
    """Parameters of :func:`transformer_encoder_layer`: N heads of ``H = E / N`` features
    (:func:`init_multi_head_params`), unit layer-norm scales and zero biases, a LeCun-normal
    feed-forward network of M hidden features (the paper: E = 512, N = 8, M = 2048).

    Args:
      rng: a ``numpy.random.Generator``.
      features: E, the model width.
      num_heads: N; must divide E.
      mlp_features: M, the feed-forward network's hidden width.

    Example:

    >>> params = init_transformer_encoder_params(np.random.default_rng(0), 8, 2, 32)
    >>> sorted(params), params["self_attention"]["query"]["kernel"].shape   # (E, N, H)
    (['feed_forward', 'norm_1', 'norm_2', 'self_attention'], (8, 2, 4))
    """
    _check_sizes(features, num_heads, mlp_features)
    E, N, M = features, num_heads, mlp_features
    return {
        "self_attention": init_multi_head_params(rng, E, N, E // N, dtype=dtype),
        "norm_1": _norm(E, dtype),
        "feed_forward": {"hidden": _dense(rng, E, M, dtype), "out": _dense(rng, M, E, dtype)},
        "norm_2": _norm(E, dtype),
    }


def init_transformer_decoder_params(rng, features, num_heads, mlp_features, *, dtype=np.float32):
    """Parameters of :func:`transformer_decoder_layer`: those of
    :func:`init_transformer_encoder_params` plus a cross-attention block and a third layer norm.

    Args:
      rng: a ``numpy.random.Generator``.
      features: E, the model width (the encoder's too).
      num_heads: N; must divide E.
      mlp_features: M, the feed-forward network's hidden width.

    Example:

    >>> params = init_transformer_decoder_params(np.random.default_rng(0), 8, 2, 32)
    >>> list(params)
    ['self_attention', 'norm_1', 'cross_attention', 'norm_2', 'feed_forward', 'norm_3']
    """
    _check_sizes(features, num_heads, mlp_features)
    E, N, M = features, num_heads, mlp_features
    return {
        "self_attention": init_multi_head_params(rng, E, N, E // N, dtype=dtype),
        "norm_1": _norm(E, dtype),
        "cross_attention": init_multi_head_params(rng, E, N, E // N, dtype=dtype),
        "norm_2": _norm(E, dtype),
        "feed_forward": {"hidden": _dense(rng, E, M, dtype), "out": _dense(rng, M, E, dtype)},
        "norm_3": _norm(E, dtype),
    }
