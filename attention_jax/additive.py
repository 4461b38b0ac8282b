"""Additive (Bahdanau) attention, the tutorial's class: mirror of ``attention_np/additive.py``."""

import jax
import jax.numpy as jnp

from attention_np import additive as _np_additive
from attention_np._validate import check_additive

from ._dtypes import compute_dtype
from ._jit import jit
from ._masking import masked_softmax
from ._random import init_from_numpy


@jit
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

    >>> import numpy as np
    >>> params = {"attn": {"kernel": np.ones((4, 2)), "bias": np.zeros(2)}, "v": np.zeros(2)}
    >>> hidden = np.array([[1.0, -1.0]], np.float32)                                  # (B, H) = (1, 2)
    >>> encoder_outputs = np.array([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]], np.float32)  # (B, S, H) = (1, 3, 2)
    >>> context, weights = additive_attention(params, hidden, encoder_outputs)
    >>> np.asarray(weights).round(4), np.asarray(context)
    (array([[0.3333, 0.3333, 0.3333]], dtype=float32), array([[[1., 1.]]], dtype=float32))
    >>> context, weights = additive_attention(params, hidden, encoder_outputs, mask=np.array([[True, True, False]]))
    >>> np.asarray(weights), np.asarray(context)
    (array([[0.5, 0.5, 0. ]], dtype=float32), array([[[0.5, 0.5]]], dtype=float32))
    """
    hidden, encoder_outputs = jnp.asarray(hidden), jnp.asarray(encoder_outputs)
    check_additive(params, hidden, encoder_outputs, mask)
    B, S, H = encoder_outputs.shape
    dtype, compute = encoder_outputs.dtype, compute_dtype(encoder_outputs.dtype)
    hidden, encoder_outputs = hidden.astype(compute), encoder_outputs.astype(compute)
    W, b, v = (jnp.asarray(p, compute) for p in (params["attn"]["kernel"], params["attn"]["bias"], params["v"]))
    if mask is not None:  # padding is zeroed first: even NaN there cannot reach the output or the gradients
        encoder_outputs = jnp.where(mask[:, :, None], encoder_outputs, 0)
    # 1. repeat the decoder state over the source steps
    hidden = jnp.repeat(hidden[:, None, :], S, axis=1)                     # (B, S, H)
    # 2. energy = tanh([h; h_s] W + b)
    x = jnp.concatenate([hidden, encoder_outputs], axis=-1)                # (B, S, 2H)
    energy = jnp.tanh(x @ W + b)                                           # (B, S, H)
    # 3. one score per source step, then weights
    scores = energy @ v                                                    # (B, S)
    weights = masked_softmax(scores, mask)                                 # (B, S)
    # 4. context = weighted sum of encoder outputs
    context = weights[:, None, :] @ encoder_outputs                        # (B, 1, H)
    return context.astype(dtype), weights.astype(dtype)


def init_additive_params(rng, hidden_dim, *, dtype=jnp.float32):
    """As ``attention_np_additive.init_additive_params``, drawing from the JAX PRNG key ``rng``."""
    return init_from_numpy(_np_additive.init_additive_params, rng, hidden_dim, dtype=dtype)


def additive_params_from_torch(module_or_state_dict):
    """Convert the tutorial module (or its ``state_dict()``) to the params dict of this package.

    ``{"attn.weight": (H, 2H), "attn.bias": (H,), "v": (H,)}`` (tensors or any array-likes)
    becomes ``{"attn": {"kernel": (2H, H), "bias": (H,)}, "v": (H,)}`` of JAX arrays.
    """
    return jax.tree.map(jnp.asarray, _np_additive.additive_params_from_torch(module_or_state_dict))
