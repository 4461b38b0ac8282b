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
from .cross_attention import cross_attention, init_cross_attention_params
from .global_attention import global_attention, init_global_params
from .local_attention import init_local_params, local_attention
from .location import init_location_sensitive_params, location_sensitive_attention
from .self_attention import init_self_attention_params, self_attention
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
from flax.nnx import rnglib as _rnglib  # noqa: E402
from flax.nnx.module import first_from as _first_from  # noqa: E402
from flax.nnx.nn import initializers as _initializers  # noqa: E402
from flax.nnx.nn.linear import default_kernel_init as _default_kernel_init  # noqa: E402

from attention_np._validate import check_mask_dtype  # noqa: E402
from attention_np._validate import check_window as _check_window  # noqa: E402

from ._masking import combine_all_masks as _combine_all_masks  # noqa: E402
from ._sharding import head_sum_sharding  # noqa: E402
from .dispatch import dot_product_attention  # noqa: E402
from .dot_product import scaled_dot_product_attention as _sdpa  # noqa: E402


def _project(x, layer, dtype, precision, n_in_axes=1):
    """``x W + b`` of a ``LinearGeneral``'s parameters, in Flax's dtype rule (``dtype`` if
    given, else the promoted dtype of the input and the parameters)."""
    kernel = layer.kernel[...]
    bias = None if layer.bias is None else layer.bias[...]
    dtype = dtype or jnp.result_type(x, kernel, *(() if bias is None else (bias,)))
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if n_in_axes == 1:                                                    # (B..., L, E) @ (E, N, H)
        y = jnp.einsum("...E,ENH->...NH", x, kernel, precision=precision)
    else:                                                                 # (B..., T, N, H) @ (N, H, F)
        y = jnp.einsum("...NH,NHF->...F", x, kernel, precision=precision, out_sharding=head_sum_sharding(x))
    return y if bias is None else y + bias.astype(dtype)


class MultiHeadAttention(nnx.Module):
    r"""Multi-head attention, a drop-in for ``flax.nnx.MultiHeadAttention``.

    .. math::
        \mathrm{head}_n = \mathrm{Attention}(x_q W^Q_n, x_k W^K_{k(n)}, x_v W^V_{k(n)}), \qquad
        \mathrm{out} = \textstyle\sum_n \mathrm{head}_n W^O_n + b^O

    Vaswani et al. 2017, section 3.2.2; grouped key/value heads (Ainslie et al. 2023); QK
    layer-norm (Dehghani et al. 2023, ViT-22B). The same constructor arguments, call
    arguments and parameter tree as Flax's module (``query``/``key``/``value``/``out``
    ``LinearGeneral`` s, ``query_ln``/``key_ln`` with ``normalize_qk``), initialised in the
    same order, so ``nnx.update(ours, nnx.state(flax_module, nnx.Param))`` loads a Flax
    model and gives its outputs. The attention itself is :func:`attention_jax.dot_product_attention`.

    Differences from Flax: a query whose keys are all masked gets a zero output row (Flax:
    the mean of the values, projected); dropout draws its keep-mask from the positional
    hash of :mod:`attention_jax.dropout` (Flax: ``jax.random.bernoulli``), so the dropped
    weights differ from Flax's for the same rng; with ``decode``, ``is_causal`` is ignored
    (the cache is causal already; Flax would mask all but the first cached key) and more
    than one token may be fed per call (a prefill). Additions to the call: ``bias``,
    ``local_window_size`` and ``implementation``. A float ``mask`` is a ``TypeError``, as in
    every function here (Flax reads it as nonzero = attend, PyTorch as an additive 0/-inf
    bias: the two habits disagree, so neither is guessed; pass float values as ``bias``).

    Shapes: inputs ``(B..., T, E)`` and ``(B..., S, E_kv)``, output ``(B..., T, F)``; N heads,
    K key/value heads, H = qkv_features / N.
    """

    def __init__(
        self,
        num_heads: int,
        in_features: int,
        qkv_features: int | None = None,
        out_features: int | None = None,
        num_kv_heads: int | None = None,
        in_kv_features: int | None = None,
        *,
        dtype=None,
        param_dtype=jnp.float32,
        broadcast_dropout: bool = True,
        dropout_rate: float = 0.0,
        deterministic: bool | None = None,
        precision=None,
        kernel_init=_default_kernel_init,
        out_kernel_init=None,
        bias_init=_initializers.zeros_init(),
        out_bias_init=None,
        use_bias: bool = True,
        decode: bool | None = None,
        normalize_qk: bool = False,
        rngs: nnx.Rngs,
        keep_rngs: bool = True,
    ):
        self.num_heads = num_heads
        self.in_features = in_features
        self.qkv_features = qkv_features if qkv_features is not None else in_features
        self.out_features = out_features if out_features is not None else in_features
        self.in_kv_features = in_kv_features if in_kv_features is not None else in_features
        self.num_kv_heads = num_kv_heads if num_kv_heads is not None else num_heads
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads}).")
        if self.qkv_features % self.num_heads != 0:
            raise ValueError(
                f"Memory dimension ({self.qkv_features}) must be divisible by 'num_heads' heads ({self.num_heads})."
            )
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.broadcast_dropout = broadcast_dropout
        self.dropout_rate = dropout_rate
        self.deterministic = deterministic
        self.precision = precision
        self.use_bias = use_bias
        self.decode = decode
        self.normalize_qk = normalize_qk
        self.head_dim = self.qkv_features // self.num_heads
        linear = dict(dtype=dtype, param_dtype=param_dtype, kernel_init=kernel_init, bias_init=bias_init,
                      use_bias=use_bias, precision=precision, rngs=rngs)
        # the parameters, created in Flax's order (so the same rngs give the same weights)
        self.query = nnx.LinearGeneral(self.in_features, out_features=(self.num_heads, self.head_dim), **linear)
        self.key = nnx.LinearGeneral(self.in_kv_features, out_features=(self.num_kv_heads, self.head_dim), **linear)
        self.value = nnx.LinearGeneral(self.in_kv_features, out_features=(self.num_kv_heads, self.head_dim), **linear)
        if normalize_qk:
            ln = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            self.query_ln = nnx.LayerNorm(self.head_dim, **ln)
            self.key_ln = nnx.LayerNorm(self.head_dim, **ln)
        else:
            self.query_ln = nnx.data(None)
            self.key_ln = nnx.data(None)
        self.out = nnx.LinearGeneral(
            in_features=(self.num_heads, self.head_dim), out_features=self.out_features, axis=(-2, -1),
            kernel_init=out_kernel_init or kernel_init, bias_init=out_bias_init or bias_init,
            use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs,
        )
        self.rngs = rngs.dropout.fork() if keep_rngs and dropout_rate > 0 else None
        self.cached_key = nnx.data(None)
        self.cached_value = nnx.data(None)
        self.cache_index = nnx.data(None)

    def __call__(
        self,
        inputs_q,
        inputs_k=None,
        inputs_v=None,
        *,
        mask=None,
        deterministic: bool | None = None,
        rngs=None,
        sow_weights: bool = False,
        decode: bool | None = None,
        is_causal: bool = False,
        bias=None,
        local_window_size=None,
        implementation=None,
    ):
        """Multi-head attention of ``inputs_q (B..., T, E)`` over ``inputs_k``/``inputs_v``
        ``(B..., S, E_kv)`` (default: ``inputs_q``, then ``inputs_k``), as Flax's ``__call__``.

        Args beyond Flax's: ``bias`` (float, broadcastable to ``(B..., N, T, S)``: ALiBi,
        relative positions), ``local_window_size`` (``(left, right)`` or an int) and
        ``implementation`` (None, "dense", "chunked": see :mod:`attention_jax.dispatch`).

        Returns:
          ``(B..., T, out_features)``.
        """
        if rngs is None:
            rngs = self.rngs
        elif isinstance(rngs, _rnglib.Rngs):
            rngs = rngs.dropout
        if inputs_k is None:
            if inputs_v is not None:
                raise ValueError(
                    "`inputs_k` cannot be None if `inputs_v` is not None. To have both `inputs_k` and "
                    "`inputs_v` be the same value, pass in the value to `inputs_k` and leave `inputs_v` as None."
                )
            inputs_k = inputs_q
        if inputs_v is None:
            inputs_v = inputs_k
        if inputs_q.shape[-1] != self.in_features:
            raise ValueError(
                f"Incompatible input dimension, got {inputs_q.shape[-1]} but module expects {self.in_features}."
            )
        # 1. project into heads: (B..., T, N, H) and (B..., S, K, H)
        query = _project(inputs_q, self.query, self.dtype, self.precision)
        key = _project(inputs_k, self.key, self.dtype, self.precision)
        value = _project(inputs_v, self.value, self.dtype, self.precision)
        if self.normalize_qk:
            query, key = self.query_ln(query), self.key_ln(key)
        if mask is not None:
            check_mask_dtype(mask, has_bias=True)
        # 2. autoregressive decoding: write the new keys and values at cache_index
        decode = _first_from(decode, self.decode, error_msg="No `decode` argument was provided to MultiHeadAttention "
                             "as either a __call__ argument, class attribute, or nnx.flag.")
        if decode:
            key, value, mask = self._update_cache(key, value, mask)
            key, value = key.astype(query.dtype), value.astype(query.dtype)  # a cache kept in another dtype
            is_causal = False  # the cache mask is causal already
        # 3. dropout, Flax's rule for `deterministic`
        dropout_rng = None
        if self.dropout_rate > 0.0:
            deterministic = _first_from(deterministic, self.deterministic, error_msg="No `deterministic` argument "
                                        "was provided to MultiHeadAttention as either a __call__ argument, class "
                                        "attribute, or nnx.flag.")
            if not deterministic:
                if rngs is None:
                    raise ValueError("'rngs' must be provided to __call__ method if MultiHeadAttention instance "
                                     "is defined with keep_rngs=False.")
                dropout_rng = rngs()
        rate = self.dropout_rate if dropout_rng is not None else 0.0
        # 4. attention in every head
        options = dict(bias=bias, mask=mask, is_causal=is_causal, local_window_size=local_window_size,
                       dropout_rate=rate, dropout_rng=dropout_rng, broadcast_dropout=self.broadcast_dropout)
        if sow_weights:
            heads, weights = _sdpa(query, key, value, **options)
            self.sow(nnx.Intermediate, "attention_weights", weights)
        else:
            heads = dot_product_attention(query, key, value, implementation=implementation, **options)
        # 5. mix the heads back to out_features; a query with no key in any head gets zeros
        out = _project(heads, self.out, self.dtype, self.precision, n_in_axes=2)
        attends = self._attends(mask, is_causal, local_window_size, query.shape, key.shape[-3])
        return out if attends is None else jnp.where(attends[..., None], out, 0).astype(out.dtype)

    @staticmethod
    def _attends(mask, is_causal, local_window_size, query_shape, S):
        """``(B..., T)`` bool: True where a query has some key to attend to in some head, or
        None when every query has one (no mask and no window). A mask without a query axis
        (key padding, ``(B..., N|1, 1, S)``) is reduced through prefix sums, so long
        sequences never build a ``(T, S)`` array here."""
        window = _check_window(local_window_size)
        if mask is None and window is None:
            return None
        batch, T = tuple(query_shape[:-3]), query_shape[-3]
        mask = None if mask is None else jnp.asarray(mask)
        if mask is not None and mask.ndim >= 2 and mask.shape[-2] != 1:  # per query: reduce the mask itself
            combined = _combine_all_masks(mask, is_causal, window, None, T, S)
            return jnp.broadcast_to(combined, (*batch, 1, T, S) if combined.ndim < 3 else
                                    (*batch, combined.shape[-3], T, S)).any(axis=(-3, -1))
        if mask is None:
            keys = jnp.ones((1, S), bool)                                              # (1, S)
        else:
            m = mask.reshape((1,) * (len(batch) + 3 - mask.ndim) + mask.shape)         # (B...|1, N|1, 1, S|1)
            keys = jnp.broadcast_to(m, m.shape[:-1] + (S,)).any(axis=-3)[..., 0, :]    # (B...|1, S)
        counts = jnp.cumsum(keys, axis=-1, dtype=jnp.int32)                              # (B...|1, S)
        # zeros_like, not zeros: sharded like the counts on an Explicit mesh, as concatenate needs
        prefix = jnp.concatenate([jnp.zeros_like(counts[..., :1]), counts], axis=-1)      # (B...|1, S + 1)
        t = jnp.arange(T)
        low, high = jnp.zeros_like(t), jnp.full_like(t, S - 1)                          # keys row t may see
        if is_causal:
            high = jnp.minimum(high, t)
        if window is not None:
            low, high = jnp.maximum(low, t - window[0]), jnp.minimum(high, t + window[1])
        count = jnp.take(prefix, jnp.clip(high + 1, 0, S), axis=-1) - jnp.take(prefix, jnp.clip(low, 0, S), axis=-1)
        attends = (count > 0) & (low <= high)                                           # (B...|1, T)
        return jnp.broadcast_to(attends, (*batch, T))

    def _update_cache(self, key, value, mask):
        """Write ``key``/``value (B..., k, K, H)`` at ``cache_index`` and return the whole cache
        with the mask of the positions each new token may see (``s <= index + j``)."""
        if self.cached_key is None or self.cached_value is None or self.cache_index is None:
            raise ValueError("Autoregressive cache not initialized, call ``init_cache`` first.")
        *batch, max_length, num_kv_heads, head_dim = self.cached_key.shape
        k = key.shape[-3]
        expected = tuple(batch) + (k, num_kv_heads, head_dim)
        if tuple(key.shape) != expected or k < 1:
            raise ValueError(f"Autoregressive cache shape error, expected key shape {expected} instead got {key.shape}.")
        index = self.cache_index[...]
        if not isinstance(index, jax.core.Tracer) and int(index) + k > max_length:
            raise ValueError(f"the decode cache holds {max_length} positions; {int(index)} are used and {k} more "
                             f"do not fit (init_cache with a longer input_shape)")
        zero = jnp.array(0, dtype=index.dtype)
        start = (zero,) * len(batch) + (index, zero, zero)
        key = jax.lax.dynamic_update_slice(self.cached_key[...], key.astype(self.cached_key.dtype), start)
        value = jax.lax.dynamic_update_slice(self.cached_value[...], value.astype(self.cached_value.dtype), start)
        self.cached_key[...] = key
        self.cached_value[...] = value
        self.cache_index[...] = index + k
        visible = jnp.arange(max_length)[None, :] <= index + jnp.arange(k)[:, None]      # (k, L)
        visible = jnp.broadcast_to(visible, tuple(batch) + (1, k, max_length))
        mask = visible if mask is None else jnp.logical_and(mask, visible)
        return key, value, mask

    def init_cache(self, input_shape, dtype=jnp.float32):
        """The decode cache for inputs of ``input_shape (B..., L, E)``, as Flax's ``init_cache``:
        ``cached_key``/``cached_value (B..., L, K, H)`` and ``cache_index`` (int32 0), ``nnx.Cache``."""
        cache_shape = (*input_shape[:-1], self.num_kv_heads, self.head_dim)
        self.cached_key = nnx.Cache(jnp.zeros(cache_shape, dtype))
        self.cached_value = nnx.Cache(jnp.zeros(cache_shape, dtype))
        self.cache_index = nnx.Cache(jnp.array(0, dtype=jnp.int32))

    def set_view(self, deterministic: bool | None = None, decode: bool | None = None,
                 batch_size=None, max_length: int | None = None):
        """Used by ``nnx.view``, as Flax's: set ``deterministic``/``decode``; a cache of
        ``(batch_size..., max_length)`` is made when decoding starts without one."""
        if deterministic is not None:
            self.deterministic = deterministic
        if decode is not None:
            self.decode = decode
            if decode and self.cached_key is None:
                if batch_size is None or max_length is None:
                    raise TypeError("'batch_size' and 'max_length' must be provided when initializing cache.")
                batch_size = (batch_size,) if isinstance(batch_size, int) else tuple(batch_size)
                self.init_cache((*batch_size, max_length, self.in_features), self.dtype or jnp.float32)
