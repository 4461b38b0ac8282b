"""Flax NNX modules: thin owners of the functional core's parameters.

Each module holds exactly the parameter dict of its functional twin, one ``nnx.Param`` a
leaf, under the same names, so::

    nnx.to_pure_dict(nnx.state(module, nnx.Param)) == params      # the functional dict

and its ``__call__`` is the functional function on that dict. To write a dict back::

    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(module, state)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .additive import additive_attention, additive_params_from_torch, init_additive_params
from .seq2seq import greedy_decode, init_seq2seq_params, seq2seq_forward


class ParamTree(nnx.Module):
    """A nested dict of arrays as attributes: sub-dicts become ``ParamTree``s, arrays
    ``nnx.Param``s, so the module's state has the dict's structure and names."""

    def __init__(self, params: dict):
        for name, value in params.items():
            setattr(self, name, ParamTree(value) if isinstance(value, dict) else nnx.Param(jnp.asarray(value)))

    def params(self) -> dict:
        """The functional parameter dict (the current values)."""
        return {
            name: value.params() if isinstance(value, ParamTree) else value[...]
            for name, value in vars(self).items()
            if isinstance(value, (ParamTree, nnx.Param))
        }


class AdditiveAttention(ParamTree):
    """The tutorial's PyTorch ``Attention(hidden_dim)`` as a Flax NNX module.

    ``module(hidden, encoder_outputs) -> (context, weights)``, with ``hidden (B, H)``,
    ``encoder_outputs (B, S, H)``, ``context (B, 1, H)``, ``weights (B, S)``: the functional
    :func:`attention_jax.additive_attention` on the module's ``attn`` (``{"kernel": (2H, H),
    "bias": (H,)}``) and ``v`` ``(H,)``, initialised as PyTorch initialises the class.
    Bahdanau et al. 2015.

    >>> import numpy as np
    >>> module = AdditiveAttention(8, rngs=nnx.Rngs(0))
    >>> hidden, encoder_outputs = np.ones((1, 8), np.float32), np.ones((1, 4, 8), np.float32)
    >>> context, weights = module(hidden, encoder_outputs)
    >>> context.shape, weights.shape
    ((1, 1, 8), (1, 4))
    >>> np.asarray(weights)                        # four equal encoder outputs: uniform weights
    array([[0.25, 0.25, 0.25, 0.25]], dtype=float32)

    The tutorial's weights load from its ``state_dict()`` (PyTorch tensors, or any
    array-likes in PyTorch's layout; importing torch is not needed):

    >>> state_dict = {"attn.weight": np.zeros((8, 16), np.float32), "attn.bias": np.zeros(8, np.float32),
    ...               "v": np.ones(8, np.float32)}
    >>> AdditiveAttention.from_torch(state_dict).attn.kernel[...].shape   # Flax layout: the transpose
    (16, 8)
    """

    def __init__(self, hidden_dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        super().__init__(init_additive_params(rngs.params(), hidden_dim, dtype=dtype))

    @classmethod
    def from_torch(cls, state_dict) -> AdditiveAttention:
        """A module holding the PyTorch class's weights (``additive_params_from_torch``)."""
        params = additive_params_from_torch(state_dict)
        module = cls(params["v"].shape[0], rngs=nnx.Rngs(0), dtype=params["v"].dtype)
        state = nnx.state(module, nnx.Param)
        nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
        nnx.update(module, state)
        return module

    def __call__(self, hidden, encoder_outputs, *, mask=None):
        return additive_attention(self.params(), hidden, encoder_outputs, mask=mask)


class Seq2Seq(ParamTree):
    """The encoder - attention - decoder (:mod:`attention_jax.seq2seq`) as a Flax NNX module.

    ``module(source_ids, target_in_ids, *, source_mask) -> (logits (B, T, V), weights (B, T, S))``
    (teacher forcing) and ``module.generate(source_ids, *, bos_id, max_len, source_mask) ->
    (ids (B, max_len), weights (B, max_len, S))`` (greedy). Its state is the dict of
    :func:`attention_jax.init_seq2seq_params`: ``source_embed``, ``target_embed``,
    ``encoder``, ``decoder``, ``attention`` (``{attention: ...}``), ``out``.
    """

    def __init__(self, source_vocab: int, target_vocab: int, embed: int, hidden: int, *,
                 attention: str = "additive", rngs: nnx.Rngs, dtype=jnp.float32):
        super().__init__(init_seq2seq_params(
            rngs.params(), source_vocab=source_vocab, target_vocab=target_vocab, embed=embed,
            hidden=hidden, attention=attention, dtype=dtype,
        ))

    def __call__(self, source_ids, target_in_ids, *, source_mask=None):
        return seq2seq_forward(self.params(), source_ids, target_in_ids, source_mask=source_mask)

    def generate(self, source_ids, *, bos_id: int, max_len: int, source_mask=None):
        return greedy_decode(self.params(), source_ids, bos_id=bos_id, max_len=max_len, source_mask=source_mask)
