"""Additive (Bahdanau) attention: the tutorial's PyTorch ``Attention`` class (Step 1 of its Implementation)."""

import numpy as np

from ._dtypes import compute_dtype
from ._masking import masked_softmax
from ._validate import check_additive
from .scores import init_concat_params


def additive_attention(params, hidden, encoder_outputs, *, mask=None):
    r"""Additive (Bahdanau) attention: the formulation of the tutorial's PyTorch ``Attention``.

    The same parameters, concatenation order, shapes and order of operations as the class; it
    reproduces the notebook's seed-0 run (``python -m parity_tests tutorial``) within 1e-6.
    The class's ``bmm(v, energy.permute(0, 2, 1))`` is written here as ``energy @ v``.

    .. math::
        e_s = \tanh\big([h; \bar h_s]\, W + b\big)\, v, \quad a = \mathrm{softmax}(e), \quad
        c = \textstyle\sum_s a_s \bar h_s

    Vectors are rows, as in the code: :math:`[h; \bar h_s]` is the ``(2H,)`` concatenation
    (decoder state first), :math:`W` the ``(2H, H)`` kernel applied as ``x @ W``, :math:`v`
    the ``(H,)`` vector that turns each energy into one score.

    Bahdanau, Cho & Bengio 2015, "Neural machine translation by jointly learning to align
    and translate", eq. (6) and appendix A.1.2.

    Args:
      params: ``{"attn": {"kernel": (2H, H), "bias": (H,)}, "v": (H,)}``; the kernel is the
        transpose of PyTorch's ``attn.weight`` (see :func:`additive_params_from_torch`).
      hidden: decoder state, ``(B, H)``.
      encoder_outputs: ``(B, S, H)``.
      mask: optional bool ``(B, S)``, True = attend.

    Returns:
      ``(context, weights)``: ``(B, 1, H)`` and ``(B, S)``, in the dtype of ``encoder_outputs``.

    Example: with ``v = 0`` every score is 0, so the weights are uniform and the context is
    the mean of the encoder outputs; a mask removes the last step.

    >>> params = {"attn": {"kernel": np.ones((4, 2)), "bias": np.zeros(2)}, "v": np.zeros(2)}
    >>> hidden = np.array([[1.0, -1.0]])                                  # (B, H) = (1, 2)
    >>> encoder_outputs = np.array([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]])  # (B, S, H) = (1, 3, 2)
    >>> context, weights = additive_attention(params, hidden, encoder_outputs)
    >>> weights.round(4), context
    (array([[0.3333, 0.3333, 0.3333]]), array([[[1., 1.]]]))
    >>> context, weights = additive_attention(params, hidden, encoder_outputs, mask=np.array([[True, True, False]]))
    >>> weights, context
    (array([[0.5, 0.5, 0. ]]), array([[[0.5, 0.5]]]))
    """
    hidden, encoder_outputs = np.asarray(hidden), np.asarray(encoder_outputs)
    check_additive(params, hidden, encoder_outputs, mask)
    B, S, H = encoder_outputs.shape
    dtype, compute = encoder_outputs.dtype, compute_dtype(encoder_outputs.dtype)
    hidden, encoder_outputs = hidden.astype(compute), encoder_outputs.astype(compute)
    W, b, v = (np.asarray(p, compute) for p in (params["attn"]["kernel"], params["attn"]["bias"], params["v"]))
    if mask is not None:  # padding is zeroed first: even NaN there cannot reach the output or the gradients
        encoder_outputs = np.where(mask[:, :, None], encoder_outputs, 0)
    # 1. repeat the decoder state over the source steps
    hidden = np.repeat(hidden[:, None, :], S, axis=1)                      # (B, S, H)
    # 2. energy = tanh([h; h_s] W + b)
    x = np.concatenate([hidden, encoder_outputs], axis=-1)                 # (B, S, 2H)
    energy = np.tanh(x @ W + b)                                            # (B, S, H)
    # 3. one score per source step, then weights
    scores = energy @ v                                                    # (B, S)
    weights = masked_softmax(scores, mask)                                 # (B, S)
    # 4. context = weighted sum of encoder outputs
    context = weights[:, None, :] @ encoder_outputs                        # (B, 1, H)
    return context.astype(dtype), weights.astype(dtype)


def init_additive_params(rng, hidden_dim, *, dtype=np.float32):
    """Parameters distributed as PyTorch initialises the tutorial's class.

    ``attn`` is ``nn.Linear(2H, H)``: kernel and bias uniform in ``+-1/sqrt(2H)``;
    ``v = torch.rand(H)``: uniform in ``[0, 1)``.

    Args:
      rng: a ``numpy.random.Generator``.
      hidden_dim: H.

    Example: H = 8: the kernel is ``(2H, H) = (16, 8)``, its entries within
    ``1/sqrt(16) = 0.25``.

    >>> params = init_additive_params(np.random.default_rng(0), 8)
    >>> params["attn"]["kernel"].shape, params["attn"]["bias"].shape, params["v"].shape
    ((16, 8), (8,), (8,))
    >>> bool(np.abs(params["attn"]["kernel"]).max() <= 0.25), bool(0 <= params["v"].min())
    (True, True)
    """
    return init_concat_params(rng, hidden_dim, dtype=dtype)  # the tutorial's class: A = H


def _to_numpy(x):
    # torch tensors (even ones that require grad) without importing torch
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def additive_params_from_torch(module_or_state_dict):
    """Convert the tutorial module (or its ``state_dict()``) to the params dict of this package.

    ``{"attn.weight": (H, 2H), "attn.bias": (H,), "v": (H,)}`` (tensors or any array-likes)
    becomes ``{"attn": {"kernel": (2H, H), "bias": (H,)}, "v": (H,)}``: PyTorch's ``Linear``
    computes ``x @ weight.T``, Flax's ``x @ kernel``. A module gives its ``state_dict()``.

    Example: H = 2; the kernel is the transpose of ``attn.weight``.

    >>> state_dict = {"attn.weight": np.arange(8.0).reshape(2, 4), "attn.bias": np.zeros(2), "v": np.ones(2)}
    >>> additive_params_from_torch(state_dict)["attn"]["kernel"]    # (2H, H)
    array([[0., 4.],
           [1., 5.],
           [2., 6.],
           [3., 7.]])
    """
    state_dict = module_or_state_dict
    if hasattr(state_dict, "state_dict") and callable(state_dict.state_dict):  # a module: its own weights
        state_dict = state_dict.state_dict()
    missing = {"attn.weight", "attn.bias", "v"} - set(state_dict)
    if missing:
        raise ValueError(
            f"module_or_state_dict is missing {sorted(missing)}; expected keys ['attn.bias', 'attn.weight', 'v']"
        )
    return {
        "attn": {
            "kernel": _to_numpy(state_dict["attn.weight"]).T,
            "bias": _to_numpy(state_dict["attn.bias"]),
        },
        "v": _to_numpy(state_dict["v"]),
    }
