"""Luong local-p attention: a Gaussian window around a predicted source position."""

import numpy as np

from ._dtypes import cast_params, compute_dtype
from ._masking import masked_softmax
from ._validate import check_local
from .global_attention import attentional_hidden_state, init_global_params, luong_scores


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

    Example: with ``v_p = 0`` the predicted position is ``p_t = S sigma(0) = 4 / 2 = 2``;
    the window ``D = 1`` keeps positions 1, 2 and 3. A zero decoder state gives every "dot"
    score 0, so ``align`` is 1/3 inside the window; the Gaussian (``sigma = 0.5``) multiplies
    it by ``exp(-2 (s - 2)^2)``: 1 at position 2, ``e^-2 = 0.1353`` at 1 and 3.

    >>> params = {"score": {}, "combine": {"kernel": np.array([[1.0], [0.0]])},     # (2H, H): h~ = tanh(c)
    ...           "position": {"kernel": np.ones((1, 1)), "v": np.zeros(1)}}       # (H, A), (A,)
    >>> encoder_outputs = np.array([[[1.0], [2.0], [3.0], [4.0]]])                 # (B, S, H) = (1, 4, 1)
    >>> attentional, weights = local_attention(params, np.zeros((1, 1)), encoder_outputs, window=1, score="dot")
    >>> weights.round(4)                          # [0, 0.1353, 1, 0.1353] / 3: they sum to less than 1
    array([[0.    , 0.0451, 0.3333, 0.0451]])
    >>> attentional.round(4)                      # tanh(0.0451 * 2 + 0.3333 * 3 + 0.0451 * 4) = tanh(1.2707)
    array([[0.854]])
    """
    decoder_state, encoder_outputs = np.asarray(decoder_state), np.asarray(encoder_outputs)
    check_local(params, decoder_state, encoder_outputs, window, score, mask)
    B, S, H = encoder_outputs.shape
    dtype, compute = encoder_outputs.dtype, compute_dtype(encoder_outputs.dtype)
    p = cast_params(params, compute)
    decoder_state, encoder_outputs = decoder_state.astype(compute), encoder_outputs.astype(compute)
    if mask is not None:  # padding is zeroed first: even NaN there cannot reach the output or the gradients
        encoder_outputs = np.where(mask[:, :, None], encoder_outputs, 0)
    # 1. predict the aligned source position p_t in [0, S]
    hidden = np.tanh(decoder_state @ p["position"]["kernel"])              # (B, A)
    position = S * (1 + np.tanh(hidden @ p["position"]["v"] / 2)) / 2     # (B,): S * sigmoid, overflow-free
    # 2. the window |s - p_t| <= D, combined with the caller's mask
    distance = np.arange(S, dtype=compute) - position[:, None]             # (B, S)
    in_window = np.abs(distance) <= window                                 # (B, S)
    mask = in_window if mask is None else np.logical_and(mask, in_window)
    # 3. align: softmax of the scores inside the window
    scores = luong_scores(p["score"], decoder_state, encoder_outputs, score)  # (B, S)
    align = masked_softmax(scores, mask)                                   # (B, S)
    # 4. favour positions near p_t with a Gaussian of sigma = D / 2
    sigma = window / 2
    weights = align * np.exp(-(distance**2) / (2 * sigma**2))              # (B, S)
    # 5. context and the attentional hidden state, as in global attention
    context = (weights[:, None, :] @ encoder_outputs)[:, 0]                # (B, H)
    attentional_hidden = attentional_hidden_state(p["combine"], context, decoder_state)  # (B, H)
    return attentional_hidden.astype(dtype), weights.astype(dtype)


def init_local_params(rng, hidden_dim, *, score="general", source_length=None, attention_dim=None, dtype=np.float32):
    """:func:`init_global_params` plus ``"position": {"kernel": (H, A), "v": (A,)}``, LeCun-normal.

    Example: H = 4, A = 3.

    >>> params = init_local_params(np.random.default_rng(0), 4, attention_dim=3)
    >>> params["position"]["kernel"].shape, params["position"]["v"].shape, params["combine"]["kernel"].shape
    ((4, 3), (3,), (8, 4))
    """
    A = hidden_dim if attention_dim is None else attention_dim
    params = init_global_params(rng, hidden_dim, score=score, source_length=source_length, dtype=dtype)
    params["position"] = {
        "kernel": (rng.normal(size=(hidden_dim, A)) / np.sqrt(hidden_dim)).astype(dtype),
        "v": (rng.normal(size=(A,)) / np.sqrt(A)).astype(dtype),
    }
    return params
