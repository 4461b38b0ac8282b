"""The tutorial's mechanisms as Flax NNX modules: thin owners of the functional core's parameters.

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

from ..additive import additive_attention, additive_params_from_torch, init_additive_params
from ..cross_attention import cross_attention, init_cross_attention_params
from ..global_attention import global_attention, init_global_params
from ..local_attention import init_local_params, local_attention
from ..location import init_location_sensitive_params, location_sensitive_attention
from ..self_attention import init_self_attention_params, self_attention
from ..seq2seq import greedy_decode, init_seq2seq_params, seq2seq_forward


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

    The tutorial's weights load from the PyTorch module or its ``state_dict()`` (PyTorch
    tensors, or any array-likes in PyTorch's layout; importing torch is not needed):

    >>> state_dict = {"attn.weight": np.zeros((8, 16), np.float32), "attn.bias": np.zeros(8, np.float32),
    ...               "v": np.ones(8, np.float32)}
    >>> AdditiveAttention.from_torch(state_dict).attn.kernel[...].shape   # Flax layout: the transpose
    (16, 8)
    """

    def __init__(self, hidden_dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        super().__init__(init_additive_params(rngs.params(), hidden_dim, dtype=dtype))

    @classmethod
    def from_torch(cls, module_or_state_dict) -> AdditiveAttention:
        """A module holding the PyTorch class's weights (``additive_params_from_torch``): the
        module itself or its ``state_dict()``."""
        params = additive_params_from_torch(module_or_state_dict)
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
    (teacher forcing) and ``module.generate(source_ids, *, bos_id, max_length, source_mask) ->
    (ids (B, max_length), weights (B, max_length, S))`` (greedy). Its state is the dict of
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

    def generate(self, source_ids, *, bos_id: int, max_length: int, source_mask=None):
        return greedy_decode(self.params(), source_ids, bos_id=bos_id, max_length=max_length, source_mask=source_mask)



# --- the other mechanisms, one module each --------------------------------------------------------
class SelfAttention(ParamTree):
    """:func:`attention_jax.self_attention` as a module: ``module(x, *, mask, is_causal) ->
    (out (B, T, H), weights (B, T, T))`` for ``x (B, T, E)``; params ``query``, ``key``,
    ``value`` ``{"kernel": (E, H), "bias": (H,)}``. Vaswani et al. 2017."""

    def __init__(self, in_features: int, hidden_dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        super().__init__(init_self_attention_params(rngs.params(), in_features, hidden_dim, dtype=dtype))

    def __call__(self, x, *, mask=None, is_causal=False):
        return self_attention(self.params(), x, mask=mask, is_causal=is_causal)


class CrossAttention(ParamTree):
    """:func:`attention_jax.cross_attention` as a module: ``module(x, context, *, mask) ->
    (out (B, T, H), weights (B, T, S))`` for ``x (B, T, E)``, ``context (B, S, E)``.
    Vaswani et al. 2017, section 3.2.3."""

    def __init__(self, in_features: int, hidden_dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        super().__init__(init_cross_attention_params(rngs.params(), in_features, hidden_dim, dtype=dtype))

    def __call__(self, x, context, *, mask=None):
        return cross_attention(self.params(), x, context, mask=mask)


class GlobalAttention(ParamTree):
    """Luong global attention (:func:`attention_jax.global_attention`) as a module:
    ``module(decoder_state (B, H), encoder_outputs (B, S, H), *, mask) -> (h~ (B, H),
    weights (B, S))``; ``score`` is fixed at construction. Luong et al. 2015, section 3.1."""

    def __init__(self, hidden_dim: int, *, score: str = "general", source_length: int | None = None,
                 rngs: nnx.Rngs, dtype=jnp.float32):
        super().__init__(init_global_params(rngs.params(), hidden_dim, score=score, source_length=source_length, dtype=dtype))
        self.score_kind = score  # static, a Python string ("score" itself holds the score's parameters)

    def __call__(self, decoder_state, encoder_outputs, *, mask=None):
        return global_attention(self.params(), decoder_state, encoder_outputs, score=self.score_kind, mask=mask)


class LocalAttention(ParamTree):
    """Luong local-p attention (:func:`attention_jax.local_attention`) as a module:
    ``module(decoder_state, encoder_outputs, *, mask) -> (h~ (B, H), weights (B, S))``;
    ``window`` (D) and ``score`` are fixed at construction. Luong et al. 2015, section 3.2."""

    def __init__(self, hidden_dim: int, *, window: int, score: str = "general", source_length: int | None = None,
                 attention_dim: int | None = None, rngs: nnx.Rngs, dtype=jnp.float32):
        super().__init__(init_local_params(rngs.params(), hidden_dim, score=score, source_length=source_length,
                                           attention_dim=attention_dim, dtype=dtype))
        self.window, self.score_kind = window, score  # static ("score" holds the score's parameters)

    def __call__(self, decoder_state, encoder_outputs, *, mask=None):
        return local_attention(self.params(), decoder_state, encoder_outputs, window=self.window, score=self.score_kind, mask=mask)


class LocationSensitiveAttention(ParamTree):
    """Chorowski et al. 2015's location-sensitive attention
    (:func:`attention_jax.location_sensitive_attention`) as a module: ``module(query (B, Q),
    encoder_outputs (B, S, H), prev_weights (B, S), *, mask) -> (context (B, H), weights (B, S))``."""

    def __init__(self, query_dim: int, hidden_dim: int, attention_dim: int, *, filters: int = 8, width: int = 5,
                 rngs: nnx.Rngs, dtype=jnp.float32):
        super().__init__(init_location_sensitive_params(rngs.params(), query_dim, hidden_dim, attention_dim,
                                                        filters=filters, width=width, dtype=dtype))

    def __call__(self, query, encoder_outputs, prev_weights, *, mask=None):
        return location_sensitive_attention(self.params(), query, encoder_outputs, prev_weights, mask=mask)


# --- multi-head attention: a drop-in for flax.nnx.MultiHeadAttention ------------------------------
