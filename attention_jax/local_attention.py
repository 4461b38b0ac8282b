"""Luong local-p attention: a Gaussian window around a predicted source position."""

import jax.numpy as jnp

import attention_np as _np
from attention_np._validate import check_local

from ._dtypes import cast_params, compute_dtype
from ._jit import jit
from ._masking import masked_softmax
from ._random import init_from_numpy
from .global_attention import attentional_hidden_state, luong_scores


@jit(static_argnames=("window", "score"))
def local_attention(params, decoder_state, encoder_outputs, *, window, score="general", mask=None):
    r"""Luong local-p attention (predictive alignment).

    .. math::
        p_t = S \cdot \sigma\big(\tanh(h_t W_p)\, v_p\big), \quad
        a_{ts} = \mathrm{align}(h_t, \bar h_s) \exp\Big(-\frac{(s - p_t)^2}{2\sigma^2}\Big), \quad
        \sigma = D / 2

    where ``align`` is the softmax of the scores over the window ``|s - p_t| <= D`` (0 outside
    it); then :math:`c_t = \sum_s a_{ts} \bar h_s` and :math:`\tilde h_t = \tanh([c_t; h_t]\, W_c)`.
    The Gaussian makes the weights sum to less than 1, as in the paper. Luong, Pham &
    Manning 2015, section 3.2, eqs. (9) and (10).

    Args:
      params: as :func:`global_attention` plus ``"position": {"kernel": (H, A), "v": (A,)}``.
      decoder_state: ``h_t``, ``(B, H)``.
      encoder_outputs: ``(B, S, H)``.
      window: D, the half-width of the window, a positive int.
      score: ``"dot"``, ``"general"``, ``"concat"`` or ``"location"``.
      mask: optional bool ``(B, S)``, True = attend.

    Returns:
      ``(attentional_hidden, weights)``: ``(B, H)`` and ``(B, S)``, in the dtype of
      ``encoder_outputs``.
    """
    decoder_state, encoder_outputs = jnp.asarray(decoder_state), jnp.asarray(encoder_outputs)
    check_local(params, decoder_state, encoder_outputs, window, score, mask)
    B, S, H = encoder_outputs.shape
    dtype, compute = encoder_outputs.dtype, compute_dtype(encoder_outputs.dtype)
    p = cast_params(params, compute)
    decoder_state, encoder_outputs = decoder_state.astype(compute), encoder_outputs.astype(compute)
    if mask is not None:  # padding is zeroed first: even NaN there cannot reach the output or the gradients
        encoder_outputs = jnp.where(mask[:, :, None], encoder_outputs, 0)
    # 1. predict the aligned source position p_t in [0, S]
    hidden = jnp.tanh(decoder_state @ p["position"]["kernel"])              # (B, A)
    position = S * (1 + jnp.tanh(hidden @ p["position"]["v"] / 2)) / 2     # (B,): S * sigmoid, overflow-free
    # 2. the window |s - p_t| <= D, combined with the caller's mask
    distance = jnp.arange(S, dtype=compute) - position[:, None]             # (B, S)
    in_window = jnp.abs(distance) <= window                                 # (B, S)
    mask = in_window if mask is None else jnp.logical_and(mask, in_window)
    # 3. align: softmax of the scores inside the window
    scores = luong_scores(p["score"], decoder_state, encoder_outputs, score)  # (B, S)
    align = masked_softmax(scores, mask)                                   # (B, S)
    # 4. favour positions near p_t with a Gaussian of sigma = D / 2
    sigma = window / 2
    weights = align * jnp.exp(-(distance**2) / (2 * sigma**2))              # (B, S)
    # 5. context and the attentional hidden state, as in global attention
    context = (weights[:, None, :] @ encoder_outputs)[:, 0]                # (B, H)
    attentional_hidden = attentional_hidden_state(p["combine"], context, decoder_state)  # (B, H)
    return attentional_hidden.astype(dtype), weights.astype(dtype)


def init_local_params(rng, hidden_dim, *, score="general", source_length=None, attention_dim=None, dtype=jnp.float32):
    """As ``attention_np.init_local_params``, drawing from the JAX PRNG key ``rng``."""
    return init_from_numpy(_np.init_local_params, rng, hidden_dim, score=score, source_length=source_length, attention_dim=attention_dim, dtype=dtype)
