"""Luong global attention: attend to every source position (Luong et al. 2015, section 3.1)."""

import numpy as np

from ._dtypes import cast_params, compute_dtype
from ._validate import SCORES, check_choice, check_luong
from .location import location_scores
from .scores import concat_scores, dot_scores, general_scores, init_concat_params, init_general_params
from .soft import soft_attention


def luong_scores(params, decoder_state, encoder_outputs, score):
    """Luong's score ``"dot"``, ``"general"``, ``"concat"`` or ``"location"`` of one decoder
    state ``(B, H)`` against ``encoder_outputs (B, S, H)``: ``(B, S)``.

    >>> encoder_outputs = np.array([[[1.0, 0.0], [0.0, 1.0]]])    # (B, S, H) = (1, 2, 2)
    >>> luong_scores({}, np.array([[3.0, 4.0]]), encoder_outputs, "dot")
    array([[3., 4.]])
    """
    if score == "location":
        return location_scores(params, decoder_state)                      # (B, S)
    query = decoder_state[:, None, :]                                      # (B, 1, H): T = 1
    if score == "dot":
        return dot_scores(query, encoder_outputs)[:, 0]                    # (B, S)
    score_fn = {"general": general_scores, "concat": concat_scores}[score]
    return score_fn(params, query, encoder_outputs)[:, 0]                  # (B, S)


def attentional_hidden_state(params, context, decoder_state):
    r""":math:`\tilde h_t = \tanh([c_t; h_t]\, W_c)`, context first, ``W_c`` the ``(2H, H)``
    kernel (Luong et al. 2015, eq. 5).

    >>> W_c = np.array([[1.0], [1.0]])                            # (2H, H) = (2, 1): c + h
    >>> attentional_hidden_state({"kernel": W_c}, np.array([[0.5]]), np.array([[-0.5]]))   # tanh(0)
    array([[0.]])
    """
    x = np.concatenate([context, decoder_state], axis=-1)                  # (B, 2H)
    return np.tanh(x @ params["kernel"])                                   # (B, H)


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

    Example: the "dot" score of ``h = [1, 0]`` against ``[0, 0]`` and ``[ln 3, 4]`` is
    ``[0, ln 3]``, so the weights are ``[1, 3] / 4`` and the context is ``0.75 [ln 3, 4] =
    [0.824, 3]``. ``W_c`` here picks the context's second feature and the state's first, so
    the attentional state is ``tanh([3, 1]) = [0.9951, 0.7616]``.

    >>> encoder_outputs = np.array([[[0.0, 0.0], [np.log(3), 4.0]]])   # (B, S, H) = (1, 2, 2)
    >>> combine = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # (2H, H): [c; h] -> [c_1, h_0]
    >>> params = {"score": {}, "combine": {"kernel": combine}}
    >>> attentional, weights = global_attention(params, np.array([[1.0, 0.0]]), encoder_outputs, score="dot")
    >>> weights.round(4), attentional.round(4)
    (array([[0.25, 0.75]]), array([[0.9951, 0.7616]]))
    """
    decoder_state, encoder_outputs = np.asarray(decoder_state), np.asarray(encoder_outputs)
    check_luong(params, decoder_state, encoder_outputs, score, mask)
    dtype, compute = encoder_outputs.dtype, compute_dtype(encoder_outputs.dtype)
    p = cast_params(params, compute)
    decoder_state, encoder_outputs = decoder_state.astype(compute), encoder_outputs.astype(compute)
    if mask is not None:  # padding is zeroed first: even NaN there cannot reach the output or the gradients
        encoder_outputs = np.where(mask[:, :, None], encoder_outputs, 0)
    # 1. score every source position
    scores = luong_scores(p["score"], decoder_state, encoder_outputs, score)  # (B, S)
    # 2. soft attention over all of them
    context, weights = soft_attention(scores[:, None, :], encoder_outputs, mask=None if mask is None else mask[:, None, :])
    context, weights = context[:, 0], weights[:, 0]                        # (B, H), (B, S)
    # 3. combine the context with the decoder state
    attentional_hidden = attentional_hidden_state(p["combine"], context, decoder_state)  # (B, H)
    return attentional_hidden.astype(dtype), weights.astype(dtype)


def _init_luong_score_params(rng, hidden_dim, score, *, source_length=None, dtype=np.float32):
    """The ``params["score"]`` of a Luong score; ``"location"`` needs ``source_length`` (S)."""
    check_choice("score", score, SCORES)
    if score == "dot":
        return {}
    if score == "general":
        return init_general_params(rng, hidden_dim, dtype=dtype)
    if score == "concat":
        return init_concat_params(rng, hidden_dim, dtype=dtype)
    if source_length is None:
        raise ValueError("score='location' needs source_length (S, the kernel is (H, S))")
    return {"kernel": (rng.normal(size=(hidden_dim, source_length)) / np.sqrt(hidden_dim)).astype(dtype)}


def init_global_params(rng, hidden_dim, *, score="general", source_length=None, dtype=np.float32):
    """``{"score": ..., "combine": {"kernel": (2H, H)}}``, LeCun-normal kernels.

    Example: H = 4; "dot" has no score parameters, "general" a ``(H, H)`` kernel.

    >>> init_global_params(np.random.default_rng(0), 4, score="dot")["score"]
    {}
    >>> params = init_global_params(np.random.default_rng(0), 4)
    >>> params["score"]["kernel"].shape, params["combine"]["kernel"].shape
    ((4, 4), (8, 4))
    """
    return {
        "score": _init_luong_score_params(rng, hidden_dim, score, source_length=source_length, dtype=dtype),
        "combine": {"kernel": (rng.normal(size=(2 * hidden_dim, hidden_dim)) / np.sqrt(2 * hidden_dim)).astype(dtype)},
    }
