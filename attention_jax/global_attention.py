"""Luong global attention: attend to every source position (Luong et al. 2015, section 3.1)."""

import jax.numpy as jnp

import attention_np as _np
from attention_np._validate import check_luong

from ._dtypes import cast_params, compute_dtype
from ._jit import jit
from ._random import init_from_numpy
from .location import location_scores
from .scores import concat_scores, dot_scores, general_scores
from .soft import soft_attention


def luong_scores(params, decoder_state, encoder_outputs, score):
    """Luong's score ``"dot"``, ``"general"``, ``"concat"`` or ``"location"`` of one decoder
    state ``(B, H)`` against ``encoder_outputs (B, S, H)``: ``(B, S)``."""
    if score == "location":
        return location_scores(params, decoder_state)                      # (B, S)
    query = decoder_state[:, None, :]                                      # (B, 1, H): T = 1
    if score == "dot":
        return dot_scores(query, encoder_outputs)[:, 0]                    # (B, S)
    score_fn = {"general": general_scores, "concat": concat_scores}[score]
    return score_fn(params, query, encoder_outputs)[:, 0]                  # (B, S)


def attentional_hidden_state(params, context, decoder_state):
    r""":math:`\tilde h_t = \tanh([c_t; h_t]\, W_c)`, context first, ``W_c`` the ``(2H, H)``
    kernel (Luong et al. 2015, eq. 5)."""
    x = jnp.concatenate([context, decoder_state], axis=-1)                  # (B, 2H)
    return jnp.tanh(x @ params["kernel"])                                   # (B, H)


@jit(static_argnames=("score",))
def global_attention(params, decoder_state, encoder_outputs, *, score="general", mask=None):
    r"""Luong global attention.

    .. math::
        a_t = \mathrm{softmax}(\mathrm{score}(h_t, \bar h_s)), \quad
        c_t = \textstyle\sum_s a_{ts} \bar h_s, \quad
        \tilde h_t = \tanh([c_t; h_t]\, W_c)

    Luong, Pham & Manning 2015, "Effective approaches to attention-based neural machine
    translation", section 3.1, eqs. (5), (7) and (8).

    Args:
      params: ``{"score": <the score's params: {} for "dot", {"kernel": (H, H)} for
        "general", concat_scores' params for "concat", {"kernel": (H, S)} for "location">,
        "combine": {"kernel": (2H, H)}}``.
      decoder_state: ``h_t``, ``(B, H)``.
      encoder_outputs: ``(B, S, H)``.
      score: ``"dot"``, ``"general"``, ``"concat"`` or ``"location"``.
      mask: optional bool ``(B, S)``, True = attend.

    Returns:
      ``(attentional_hidden, weights)``: ``(B, H)`` and ``(B, S)``, in the dtype of
      ``encoder_outputs``.
    """
    decoder_state, encoder_outputs = jnp.asarray(decoder_state), jnp.asarray(encoder_outputs)
    check_luong(params, decoder_state, encoder_outputs, score, mask)
    dtype, compute = encoder_outputs.dtype, compute_dtype(encoder_outputs.dtype)
    p = cast_params(params, compute)
    decoder_state, encoder_outputs = decoder_state.astype(compute), encoder_outputs.astype(compute)
    if mask is not None:  # padding is zeroed first: even NaN there cannot reach the output or the gradients
        encoder_outputs = jnp.where(mask[:, :, None], encoder_outputs, 0)
    # 1. score every source position
    scores = luong_scores(p["score"], decoder_state, encoder_outputs, score)  # (B, S)
    # 2. soft attention over all of them
    context, weights = soft_attention(scores[:, None, :], encoder_outputs, mask=None if mask is None else mask[:, None, :])
    context, weights = context[:, 0], weights[:, 0]                        # (B, H), (B, S)
    # 3. combine the context with the decoder state
    attentional_hidden = attentional_hidden_state(p["combine"], context, decoder_state)  # (B, H)
    return attentional_hidden.astype(dtype), weights.astype(dtype)


def init_global_params(rng, hidden_dim, *, score="general", source_length=None, dtype=jnp.float32):
    """As ``attention_np.init_global_params``, drawing from the JAX PRNG key ``rng``."""
    return init_from_numpy(_np.init_global_params, rng, hidden_dim, score=score, source_length=source_length, dtype=dtype)
