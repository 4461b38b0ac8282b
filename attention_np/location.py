"""Location-based attention: where to look from the decoder state alone (Luong et al. 2015),
and location-*sensitive* attention that also sees where it looked before (Chorowski et al. 2015).
"""

import numpy as np

from ._dtypes import cast_params, compute_dtype
from ._validate import LOCATION_SPEC, Shapes, check_location_sensitive, check_params
from .soft import soft_attention


def location_scores(params, decoder_state):
    r"""Luong's location-based scores :math:`e_t = h_t W_a`: one score per source position,
    computed from the decoder state only (Luong et al. 2015, eq. 8).

    Args:
      params: ``{"kernel": (H, S)}``; S, the source length, is fixed by the kernel.
      decoder_state: ``(B, H)``.

    Returns:
      scores ``(B, S)``, in the dtype of ``decoder_state``.

    Example: the decoder state ``[1, 2]`` times a ``(2, 3)`` kernel; the words at the
    positions play no part.

    >>> params = {"kernel": np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])}   # (H, S) = (2, 3)
    >>> location_scores(params, np.array([[1.0, 2.0]]))                    # (B, H) = (1, 2)
    array([[1., 2., 3.]])
    """
    decoder_state = np.asarray(decoder_state)
    shapes = Shapes()
    shapes.check("decoder_state", decoder_state, "BH")
    check_params(params, LOCATION_SPEC, shapes)
    compute = compute_dtype(decoder_state.dtype)
    scores = decoder_state.astype(compute) @ cast_params(params, compute)["kernel"]  # (B, S)
    return scores.astype(decoder_state.dtype)


def conv1d_same(x, kernel):
    """Cross-correlation of ``x (B, S)`` with ``kernel (r, 1, C)``, zero "SAME" padding, odd r:
    ``out[b, s, c] = sum_j x[b, s + j - r // 2] * kernel[j, 0, c]``, shape ``(B, S, C)``
    (as ``jax.lax.conv_general_dilated`` and Flax ``nn.Conv``).

    Example: the filter ``[1, 0, 0]`` reads the position before, so it shifts right by one.

    >>> conv1d_same(np.array([[1.0, 2.0, 3.0]]), np.array([1.0, 0.0, 0.0]).reshape(3, 1, 1))[..., 0]
    array([[0., 1., 2.]])
    """
    r, S = kernel.shape[0], x.shape[1]
    padded = np.pad(x, ((0, 0), (r // 2, r // 2)))                         # (B, S + r - 1)
    windows = np.stack([padded[:, j : j + S] for j in range(r)], axis=-1)  # (B, S, r)
    return windows @ kernel[:, 0, :]                                       # (B, S, C)


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

    Example: the location term alone (``W = V = 0``). The filter ``[1, 0, 0]`` moves the
    previous weights one position to the right, ``f = [0, 1, 0]``; with ``U = 1``, ``b = 0``
    and ``v = 8`` the scores are ``8 tanh(f) = [0, 6.093, 0]``, and the weight on position 1
    is ``e^6.093 / (e^6.093 + 2) = 0.9955``: the attention moves on by one.

    >>> params = {"query": {"kernel": np.zeros((1, 1))}, "keys": {"kernel": np.zeros((1, 1))},
    ...           "conv": {"kernel": np.array([1.0, 0.0, 0.0]).reshape(3, 1, 1)},  # (r, 1, C) = (3, 1, 1)
    ...           "location": {"kernel": np.ones((1, 1))}, "bias": np.zeros(1), "v": np.array([8.0])}
    >>> encoder_outputs = np.array([[[10.0], [20.0], [30.0]]])    # (B, S, H) = (1, 3, 1)
    >>> prev_weights = np.array([[1.0, 0.0, 0.0]])                # (B, S): last step looked at 0
    >>> context, weights = location_sensitive_attention(params, np.zeros((1, 1)), encoder_outputs, prev_weights)
    >>> weights.round(4), context.round(2)
    (array([[0.0022, 0.9955, 0.0022]]), array([[20.]]))
    """
    query, encoder_outputs, prev_weights = np.asarray(query), np.asarray(encoder_outputs), np.asarray(prev_weights)
    check_location_sensitive(params, query, encoder_outputs, prev_weights, mask)
    dtype, compute = encoder_outputs.dtype, compute_dtype(encoder_outputs.dtype)
    p = cast_params(params, compute)
    query, encoder_outputs, prev_weights = (x.astype(compute) for x in (query, encoder_outputs, prev_weights))
    if mask is not None:  # padding is zeroed first: even NaN there cannot reach the output or the gradients
        encoder_outputs = np.where(mask[:, :, None], encoder_outputs, 0)
    # 1. location features: r-wide filters over the previous weights, C channels
    features = conv1d_same(prev_weights, p["conv"]["kernel"])              # (B, S, C)
    # 2. one additive score per source position, from what, where, and where before
    energy = np.tanh(
        (query @ p["query"]["kernel"])[:, None, :]                         # (B, 1, A)
        + encoder_outputs @ p["keys"]["kernel"]                            # (B, S, A)
        + features @ p["location"]["kernel"]                               # (B, S, A)
        + p["bias"]
    )                                                                      # (B, S, A)
    scores = energy @ p["v"]                                               # (B, S)
    # 3. soft attention over the source
    context, weights = soft_attention(scores[:, None, :], encoder_outputs, mask=None if mask is None else mask[:, None, :])
    return context[:, 0].astype(dtype), weights[:, 0].astype(dtype)        # (B, H), (B, S)


def init_location_sensitive_params(rng, query_dim, hidden_dim, attention_dim, *, filters=8, width=5, dtype=np.float32):
    """LeCun-normal kernels, zero bias, ``v`` LeCun-normal (fan-in A).

    Args:
      rng: a ``numpy.random.Generator``.
      query_dim: Q. hidden_dim: H. attention_dim: A. filters: C. width: r (odd).

    Example: Q = 3, H = 4, A = 5, C = 2 filters of width r = 3.

    >>> params = init_location_sensitive_params(np.random.default_rng(0), 3, 4, 5, filters=2, width=3)
    >>> {name: params[name]["kernel"].shape for name in ("query", "keys", "conv", "location")}
    {'query': (3, 5), 'keys': (4, 5), 'conv': (3, 1, 2), 'location': (2, 5)}
    >>> params["bias"], params["v"].shape
    (array([0., 0., 0., 0., 0.], dtype=float32), (5,))
    """
    Q, H, A, C, r = query_dim, hidden_dim, attention_dim, filters, width

    def lecun(shape, fan_in):
        return (rng.normal(size=shape) / np.sqrt(fan_in)).astype(dtype)

    return {
        "query": {"kernel": lecun((Q, A), Q)},
        "keys": {"kernel": lecun((H, A), H)},
        "conv": {"kernel": lecun((r, 1, C), r)},
        "location": {"kernel": lecun((C, A), C)},
        "bias": np.zeros(A, dtype),
        "v": lecun((A,), A),
    }
