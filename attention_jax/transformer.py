"""The Transformer's layers (Vaswani et al. 2017): mirror of ``attention_np/transformer.py``.

Post-norm, as the paper and PyTorch's ``nn.TransformerEncoderLayer`` default:
``LayerNorm(x + Sublayer(x))`` around self-attention, cross-attention (decoder) and the
position-wise feed-forward network ``max(0, x W_1 + b_1) W_2 + b_2``.
"""

import jax.numpy as jnp

import attention_np as _np
from attention_np.transformer import LAYER_NORM_EPSILON, check_positions, check_transformer_layer

from ._dtypes import cast_params, compute_dtype
from ._jit import jit
from ._random import init_from_numpy
from .multi_head import multi_head_attention


def _layer_norm(x, norm):
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis (E): ``nn.LayerNorm(E)``."""
    mean = x.mean(axis=-1, keepdims=True)                    # (..., 1)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)     # (..., 1), the biased variance
    return (x - mean) / jnp.sqrt(var + LAYER_NORM_EPSILON) * norm["scale"] + norm["bias"]


def _feed_forward(x, ffn):
    """``max(0, x W_1 + b_1) W_2 + b_2`` at every position (section 3.3)."""
    hidden = jnp.maximum(0, x @ ffn["hidden"]["kernel"] + ffn["hidden"]["bias"])  # (..., M)
    return hidden @ ffn["out"]["kernel"] + ffn["out"]["bias"]                       # (..., E)


@jit(static_argnames=("length", "features", "base", "dtype"))
def sinusoidal_positions(length, features, *, base=10000.0, dtype=jnp.float32):
    r"""The sinusoidal position encodings of section 3.5, one row per position.

    .. math::
        PE_{(t, 2i)} = \sin\left(t / \text{base}^{2i/E}\right), \qquad
        PE_{(t, 2i+1)} = \cos\left(t / \text{base}^{2i/E}\right)

    Vaswani et al. 2017, "Attention is all you need", section 3.5.

    Args:
      length: T, the number of positions. Static.
      features: E, the model width; even. Static.
      base: the wavelength base (the paper's 10000), > 1. Static.
      dtype: the dtype of the result (computed in float32, float64 for float64). Static.

    Returns:
      ``(T, E)``, broadcastable against embeddings ``(B, T, E)``.
    """
    check_positions(length, features, base)
    T, E = length, features
    compute = compute_dtype(dtype)
    # 1. one angle per (position, frequency): t / base^(2i/E)
    position = jnp.arange(T, dtype=compute)[:, None]                # (T, 1)
    frequency = base ** (-jnp.arange(0, E, 2, dtype=compute) / E)   # (E/2,)
    angle = position * frequency                                   # (T, E/2)
    # 2. sin on the even features, cos on the odd ones
    encoding = jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1)  # (T, E/2, 2)
    return encoding.reshape(T, E).astype(dtype)                      # (T, E)


@jit
def transformer_encoder_layer(params, x, *, mask=None):
    r"""One Transformer encoder layer: self-attention, then a feed-forward network, each
    wrapped in a residual connection and layer normalisation (post-norm, as the paper).

    .. math::
        z = \mathrm{LayerNorm}_1\big(x + \mathrm{MultiHead}(x, x, x)\big), \qquad
        \mathrm{out} = \mathrm{LayerNorm}_2\big(z + \max(0, z W_1 + b_1) W_2 + b_2\big)

    Vaswani et al. 2017, sections 3.1, 3.2.2 and 3.3; the same computation as
    ``torch.nn.TransformerEncoderLayer(E, N, M, dropout=0, batch_first=True)``.

    Args:
      params: as ``attention_np.transformer_encoder_layer`` (:func:`init_transformer_encoder_params`).
      x: ``(B, T, E)``; ``B`` may be any number of batch axes ``B...``.
      mask: optional bool broadcastable to ``(B, N, T, T)``, True = attend.

    Returns:
      ``(out, weights)``: ``(B, T, E)`` in the dtype of ``x``, and ``(B, N, T, T)``.
    """
    x = jnp.asarray(x)
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


@jit
def transformer_decoder_layer(params, x, encoder_outputs, *, mask=None, encoder_mask=None):
    r"""One Transformer decoder layer: causal self-attention, cross-attention over the
    encoder's outputs, a feed-forward network; each with a residual connection and layer
    normalisation (post-norm, as the paper).

    .. math::
        z_1 = \mathrm{LayerNorm}_1\big(x + \mathrm{MultiHead}_{\mathrm{causal}}(x, x, x)\big), \qquad
        z_2 = \mathrm{LayerNorm}_2\big(z_1 + \mathrm{MultiHead}(z_1, m, m)\big), \qquad
        \mathrm{out} = \mathrm{LayerNorm}_3\big(z_2 + \max(0, z_2 W_1 + b_1) W_2 + b_2\big)

    Vaswani et al. 2017, sections 3.1 and 3.2.3; the same computation as
    ``torch.nn.TransformerDecoderLayer(E, N, M, dropout=0, batch_first=True)`` with a causal
    ``tgt_mask``.

    Args:
      params: as ``attention_np.transformer_decoder_layer`` (:func:`init_transformer_decoder_params`).
      x: ``(B, T, E)``; ``B`` may be ``B...``.
      encoder_outputs: ``(B, S, E)``, in the dtype of ``x``.
      mask: optional bool broadcastable to ``(B, N, T, T)``, True = attend; combined with the
        causal mask.
      encoder_mask: optional bool broadcastable to ``(B, N, T, S)``, True = attend.

    Returns:
      ``(out, (self_weights, cross_weights))``: ``(B, T, E)``, ``(B, N, T, T)`` and ``(B, N, T, S)``.
    """
    x, encoder_outputs = jnp.asarray(x), jnp.asarray(encoder_outputs)
    check_transformer_layer(params, x, mask, encoder_outputs, encoder_mask)
    dtype, compute = x.dtype, compute_dtype(x.dtype)
    x, memory, p = x.astype(compute), encoder_outputs.astype(compute), cast_params(params, compute)
    # 1. causal self-attention: position t attends to positions <= t; residual, layer norm
    attended, self_weights = multi_head_attention(p["self_attention"], x, mask=mask, is_causal=True)  # (B, T, E)
    x = _layer_norm(x + attended, p["norm_1"])                                           # (B, T, E)
    # 2. cross-attention: queries from the decoder, keys and values from the encoder
    attended, cross_weights = multi_head_attention(p["cross_attention"], x, memory, mask=encoder_mask)  # (B, T, E)
    x = _layer_norm(x + attended, p["norm_2"])                                           # (B, T, E)
    # 3. position-wise feed-forward network, residual, layer norm
    x = _layer_norm(x + _feed_forward(x, p["feed_forward"]), p["norm_3"])                # (B, T, E)
    return x.astype(dtype), (self_weights.astype(dtype), cross_weights.astype(dtype))


def init_transformer_encoder_params(rng, features, num_heads, mlp_features, *, dtype=jnp.float32):
    """As ``attention_np.init_transformer_encoder_params``, drawing from the JAX PRNG key ``rng``."""
    return init_from_numpy(_np.init_transformer_encoder_params, rng, features, num_heads, mlp_features, dtype=dtype)


def init_transformer_decoder_params(rng, features, num_heads, mlp_features, *, dtype=jnp.float32):
    """As ``attention_np.init_transformer_decoder_params``, drawing from the JAX PRNG key ``rng``."""
    return init_from_numpy(_np.init_transformer_decoder_params, rng, features, num_heads, mlp_features, dtype=dtype)
