"""Location-based attention: where to look from the decoder state alone (Luong et al. 2015),
and location-*sensitive* attention that also sees where it looked before (Chorowski et al. 2015).
"""

import jax.numpy as jnp

import attention_np as _np
from attention_np._validate import LOCATION_SPEC, Shapes, check_location_sensitive, check_params

from ._dtypes import cast_params, compute_dtype
from ._jit import jit
from ._random import init_from_numpy
from .soft import soft_attention


@jit
def location_scores(params, decoder_state):
    r"""Luong's location-based scores :math:`e_t = h_t W_a`: one score per source position,
    computed from the decoder state only (Luong et al. 2015, eq. 8).

    Args:
      params: ``{"kernel": (H, S)}``; S, the source length, is fixed by the kernel.
      decoder_state: ``(B, H)``.

    Returns:
      scores ``(B, S)``, in the dtype of ``decoder_state``.
    """
    decoder_state = jnp.asarray(decoder_state)
    shapes = Shapes()
    shapes.check("decoder_state", decoder_state, "BH")
    check_params(params, LOCATION_SPEC, shapes)
    compute = compute_dtype(decoder_state.dtype)
    scores = decoder_state.astype(compute) @ cast_params(params, compute)["kernel"]  # (B, S)
    return scores.astype(decoder_state.dtype)


def conv1d_same(x, kernel):
    """Cross-correlation of ``x (B, S)`` with ``kernel (r, 1, C)``, zero "SAME" padding, odd r:
    ``out[b, s, c] = sum_j x[b, s + j - r // 2] * kernel[j, 0, c]``, shape ``(B, S, C)``
    (as ``jax.lax.conv_general_dilated`` and Flax ``nn.Conv``)."""
    r, S = kernel.shape[0], x.shape[1]
    padded = jnp.pad(x, ((0, 0), (r // 2, r // 2)))                         # (B, S + r - 1)
    windows = jnp.stack([padded[:, j : j + S] for j in range(r)], axis=-1)  # (B, S, r)
    return windows @ kernel[:, 0, :]                                       # (B, S, C)


@jit
def location_sensitive_attention(params, query, encoder_outputs, prev_weights, *, mask=None):
    r"""Location-sensitive attention: additive scores that also see the previous alignment.

    .. math::
        f = F * a_{i-1}, \qquad
        e_{i,s} = \tanh(q_i W + h_s V + f_s U + b)\, v, \qquad
        a_i = \mathrm{softmax}(e_i), \qquad c_i = \textstyle\sum_s a_{i,s} h_s

    Chorowski et al. 2015, "Attention-based models for speech recognition", eqs. (5)-(9):
    convolving the previous weights lets the model move forward along the input.

    Args:
      params: ``{"query": {"kernel": (Q, A)}, "keys": {"kernel": (H, A)}, "conv": {"kernel":
        (r, 1, C)}, "location": {"kernel": (C, A)}, "bias": (A,), "v": (A,)}``, r odd.
      query: decoder state, ``(B, Q)``.
      encoder_outputs: ``(B, S, H)``.
      prev_weights: the previous step's weights, ``(B, S)``.
      mask: optional bool ``(B, S)``, True = attend.

    Returns:
      ``(context, weights)``: ``(B, H)`` and ``(B, S)``, in the dtype of ``encoder_outputs``.
    """
    query, encoder_outputs, prev_weights = jnp.asarray(query), jnp.asarray(encoder_outputs), jnp.asarray(prev_weights)
    check_location_sensitive(params, query, encoder_outputs, prev_weights, mask)
    dtype, compute = encoder_outputs.dtype, compute_dtype(encoder_outputs.dtype)
    p = cast_params(params, compute)
    query, encoder_outputs, prev_weights = (x.astype(compute) for x in (query, encoder_outputs, prev_weights))
    if mask is not None:  # padding is zeroed first: even NaN there cannot reach the output or the gradients
        encoder_outputs = jnp.where(mask[:, :, None], encoder_outputs, 0)
    # 1. location features: r-wide filters over the previous weights, C channels
    features = conv1d_same(prev_weights, p["conv"]["kernel"])              # (B, S, C)
    # 2. one additive score per source position, from what, where, and where before
    energy = jnp.tanh(
        (query @ p["query"]["kernel"])[:, None, :]                         # (B, 1, A)
        + encoder_outputs @ p["keys"]["kernel"]                            # (B, S, A)
        + features @ p["location"]["kernel"]                               # (B, S, A)
        + p["bias"]
    )                                                                      # (B, S, A)
    scores = energy @ p["v"]                                               # (B, S)
    # 3. soft attention over the source
    context, weights = soft_attention(scores[:, None, :], encoder_outputs, mask=None if mask is None else mask[:, None, :])
    return context[:, 0].astype(dtype), weights[:, 0].astype(dtype)        # (B, H), (B, S)


def init_location_sensitive_params(rng, query_dim, hidden_dim, attention_dim, *, filters=8, width=5, dtype=jnp.float32):
    """As ``attention_np.init_location_sensitive_params``, drawing from the JAX PRNG key ``rng``."""
    return init_from_numpy(_np.init_location_sensitive_params, rng, query_dim, hidden_dim, attention_dim, filters=filters, width=width, dtype=dtype)
