"""``MultiHeadAttention``: a drop-in for ``flax.nnx.MultiHeadAttention`` (same arguments, names,
parameter shapes and rng use), whose attention is :func:`attention_jax.dot_product_attention`."""

from __future__ import annotations

import functools
from types import MappingProxyType

import jax.numpy as jnp
from flax import nnx
from flax.nnx import rnglib as _rnglib
from flax.nnx.module import first_from as _first_from
from flax.nnx.nn import initializers as _initializers
from flax.nnx.nn.dtypes import promote_dtype as _promote_dtype
from flax.nnx.nn.linear import default_kernel_init as _default_kernel_init

from attention_np._validate import check_mask_dtype, check_scale, check_soft_cap, check_window
from attention_np.rotary import rotary_features, rotary_options

from .._sharding import head_sum_sharding
from ..dot_product import scaled_dot_product_attention
from ..fast.dense import dense_attention
from ..fast.dispatch import dot_product_attention
from ..rotary import apply_rotary
from ._cache import DecodeCache


class MultiHeadAttention(DecodeCache, nnx.Module):
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
    than one token may be fed per call (a prefill), with one cache position per batch row.
    Every argument of Flax's constructor and call is accepted with Flax's meaning (the
    ``*_metadata`` reach the ``nnx.Param``s, ``attention_fn`` replaces this module's attention
    as in Flax, ``qkv_sharding``/``out_sharding`` go to the projections). Additions:
    ``rotary``, ``rotary_base``, ``rotary_fraction``, ``rotary_scaling`` (Hugging Face's rope
    parameters: linear, Llama 3.1, YaRN), ``rotary_interleaved`` (rotary position embeddings,
    :func:`attention_jax.apply_rotary`), ``scale`` (the logits' factor, default ``1/sqrt(H)``),
    ``use_sinks`` (a learnable ``sinks`` parameter ``(N,)``, zeros: attention sinks) and
    ``logits_soft_cap`` (Gemma 2) in the constructor; ``bias``, ``local_window_size``,
    ``query_seq_lengths``, ``key_value_seq_lengths``, ``query_segment_ids``,
    ``key_value_segment_ids``, ``positions`` and ``implementation`` in the call. A float
    ``mask`` is a ``TypeError``, as in
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
        bias_init=_initializers.zeros_init(),  # noqa: B008 (flax.nnx.MultiHeadAttention's default)
        out_bias_init=None,
        use_bias: bool = True,
        attention_fn=None,
        decode: bool | None = None,
        normalize_qk: bool = False,
        qkv_promote_dtype=_promote_dtype,
        out_promote_dtype=_promote_dtype,
        ln_promote_dtype=_promote_dtype,
        qkv_dot_general=None,
        out_dot_general=None,
        qkv_dot_general_cls=None,
        out_dot_general_cls=None,
        rngs: nnx.Rngs,
        keep_rngs: bool = True,
        kernel_metadata=MappingProxyType({}),
        out_kernel_metadata=MappingProxyType({}),
        bias_metadata=MappingProxyType({}),
        out_bias_metadata=MappingProxyType({}),
        query_ln_scale_metadata=MappingProxyType({}),
        key_ln_scale_metadata=MappingProxyType({}),
        rotary: bool = False,
        rotary_base: float = 10000.0,
        rotary_fraction: float = 1.0,
        rotary_scaling: dict | None = None,
        rotary_interleaved: bool = False,
        use_sinks: bool = False,
        logits_soft_cap: float | None = None,
        scale: float | None = None,
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
        self.attention_fn = attention_fn
        self.head_dim = self.qkv_features // self.num_heads
        self.rotary, self.rotary_base, self.rotary_fraction = rotary, rotary_base, rotary_fraction
        # the scaling dict as its sorted items: nnx's graph definition (and jit) must hash it
        self.rotary_scaling = rotary_options(rotary_scaling, rotary_interleaved)
        self.rotary_interleaved = rotary_interleaved
        if rotary:
            rotary_features(self.head_dim, rotary_fraction)  # a ValueError now, not at the first call
        elif rotary_scaling is not None or rotary_interleaved:
            raise ValueError("rotary_scaling and rotary_interleaved shape the rotary embeddings: they need rotary=True")
        if scale is not None:
            check_scale(scale)
            scale = float(scale)  # a 0-d array as its number: static, as the attention takes it
            check_scale(scale)
            if attention_fn is not None:
                raise ValueError("scale cannot be combined with attention_fn (Flax calls it without a scale); pass "
                                 "the scale to attention_fn itself, e.g. with functools.partial")
        self.scale = scale
        linear = dict(dtype=dtype, param_dtype=param_dtype, kernel_init=kernel_init, bias_init=bias_init,
                      use_bias=use_bias, precision=precision, promote_dtype=qkv_promote_dtype,
                      dot_general=qkv_dot_general, dot_general_cls=qkv_dot_general_cls,
                      kernel_metadata=kernel_metadata, bias_metadata=bias_metadata, rngs=rngs)
        # the parameters, created in Flax's order (so the same rngs give the same weights)
        self.query = nnx.LinearGeneral(self.in_features, out_features=(self.num_heads, self.head_dim), **linear)
        self.key = nnx.LinearGeneral(self.in_kv_features, out_features=(self.num_kv_heads, self.head_dim), **linear)
        self.value = nnx.LinearGeneral(self.in_kv_features, out_features=(self.num_kv_heads, self.head_dim), **linear)
        if normalize_qk:
            ln = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, promote_dtype=ln_promote_dtype, rngs=rngs)
            self.query_ln = nnx.LayerNorm(self.head_dim, scale_metadata=query_ln_scale_metadata, **ln)
            self.key_ln = nnx.LayerNorm(self.head_dim, scale_metadata=key_ln_scale_metadata, **ln)
        else:
            self.query_ln = nnx.data(None)
            self.key_ln = nnx.data(None)
        self.out = nnx.LinearGeneral(
            in_features=(self.num_heads, self.head_dim), out_features=self.out_features, axis=(-2, -1),
            kernel_init=out_kernel_init or kernel_init, bias_init=out_bias_init or bias_init,
            use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, precision=precision,
            promote_dtype=out_promote_dtype, dot_general=out_dot_general, dot_general_cls=out_dot_general_cls,
            kernel_metadata=out_kernel_metadata or kernel_metadata, bias_metadata=out_bias_metadata or bias_metadata,
            rngs=rngs,
        )
        # attention sinks: one learnable logit per head in each row's normaliser (zeros: e^0 = one extra key's worth)
        self.sinks = nnx.Param(jnp.zeros((num_heads,), param_dtype)) if use_sinks else nnx.data(None)
        self.logits_soft_cap = check_soft_cap(logits_soft_cap)
        self.rngs = rngs.dropout.fork() if keep_rngs and dropout_rate > 0 else None
        self.cached_key = nnx.data(None)
        self.cached_value = nnx.data(None)
        self.cache_index = nnx.data(None)
        self.key_pages = self.value_pages = self.page_table = nnx.data(None)  # init_cache(..., page_size=...)

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
        query_seq_lengths=None,
        key_value_seq_lengths=None,
        positions=None,
        implementation=None,
        out_sharding=None,
        qkv_sharding=None,
        query_segment_ids=None,
        key_value_segment_ids=None,
        input_positions=None,
    ):
        """Multi-head attention of ``inputs_q (B..., T, E)`` over ``inputs_k``/``inputs_v``
        ``(B..., S, E_kv)`` (default: ``inputs_q``, then ``inputs_k``), as Flax's ``__call__``.

        Args beyond Flax's: ``bias`` (float, broadcastable to ``(B..., N, T, S)``: ALiBi,
        relative positions), ``local_window_size`` (``(left, right)`` or an int),
        ``query_seq_lengths`` and ``key_value_seq_lengths`` (int ``(B,)``, one batch axis: the
        queries ``t >= query_seq_lengths[b]`` and keys ``s >= key_value_seq_lengths[b]`` are
        padding, as in ``jax.nn.dot_product_attention``; padded queries give zeros; with
        ``decode``, ``query_seq_lengths[b]`` is the number of real new tokens of row b, so a
        right-padded batch of prompts of different lengths is prefilled in one call and
        decoded together) and ``implementation`` (None, "dense", "chunked": see
        :mod:`attention_jax.fast.dispatch`), ``query_segment_ids``/``key_value_segment_ids`` (int
        ``(B, T)``/``(B, S)``: packed sequences, each query attends its own segment; the
        chunked path skips the blocks where no id meets). With ``rotary``: ``positions`` (int, broadcastable to
        ``(B..., T)``; queries and keys, T == S) for the rotary embeddings, default ``0..T-1``
        for queries and ``0..S-1`` for keys, and while decoding the cache's position onwards.
        ``input_positions`` is Flax's name for ``positions`` (newer Flax releases pass it on to
        ``attention_fn``; so does this module, when it is given).

        Example: a padded batch without building a mask::

            out = module(x, query_seq_lengths=lengths, key_value_seq_lengths=lengths)  # x (B, T, E)

        Returns:
          ``(B..., T, out_features)``.
        """
        if input_positions is not None:
            if positions is not None:
                raise ValueError("positions and input_positions are the same argument (input_positions is Flax's "
                                 "name); pass one of them")
            positions = input_positions
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
        query = self.query(inputs_q, out_sharding=qkv_sharding)
        key = self.key(inputs_k, out_sharding=qkv_sharding)
        value = self.value(inputs_v, out_sharding=qkv_sharding)
        if self.normalize_qk:
            query, key = self.query_ln(query), self.key_ln(key)
        decode = _first_from(decode, self.decode, error_msg="No `decode` argument was provided to MultiHeadAttention "
                             "as either a __call__ argument, class attribute, or nnx.flag.")
        if self.rotary:  # positions into queries and keys, after the projection (and norm)
            query, key = self._rotate(query, key, positions, decode)
        if mask is not None:
            check_mask_dtype(mask, has_bias=True)
        # 2. autoregressive decoding: write the new keys and values at cache_index
        if decode and (query_segment_ids is not None or key_value_segment_ids is not None):
            raise ValueError("query_segment_ids and key_value_segment_ids are not supported with decode: the cache "
                             "keeps no segment ids; decode each packed sequence as its own batch row")
        if decode and key_value_seq_lengths is not None:
            raise ValueError("key_value_seq_lengths is not supported with decode: the cache masks the keys not yet "
                             "written; query_seq_lengths gives each row's number of new tokens")
        if decode and self.paged:
            training = self.dropout_rate > 0 and (deterministic if deterministic is not None else self.deterministic) is False
            refused = [name for name, given in (("mask", mask is not None), ("bias", bias is not None),
                                                ("attention_fn", self.attention_fn is not None),
                                                ("sow_weights", sow_weights), ("dropout", training)) if given]
            if refused:
                raise ValueError(f"a paged cache decodes with the paged kernel, which takes no {', '.join(refused)}: "
                                 f"use the contiguous cache (init_cache without page_size)")
            heads, real = self._paged_step(query, key, value, query_seq_lengths, check_window(local_window_size))
            out = self.out(heads, out_sharding=out_sharding)
            return jnp.where(real[..., None], out, 0).astype(out.dtype)
        if decode:
            key, value, mask = self._update_cache(key, value, mask, query_seq_lengths, check_window(local_window_size))
            query_seq_lengths = local_window_size = None  # in the cache mask now, in cache positions
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
        # 4. attention in every head: a user's attention_fn is called as Flax calls it
        if self.attention_fn is not None:
            return self._call_attention_fn(query, key, value, mask, dropout_rng, deterministic, sow_weights,
                                           is_causal, out_sharding, input_positions, bias=bias, local_window_size=local_window_size,
                                           query_seq_lengths=query_seq_lengths, positions=positions,
                                           key_value_seq_lengths=key_value_seq_lengths, implementation=implementation,
                                           query_segment_ids=query_segment_ids,
                                           key_value_segment_ids=key_value_segment_ids)
        options = dict(bias=bias, mask=mask, is_causal=is_causal, scale=self.scale,
                       local_window_size=local_window_size, query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
                       dropout_rate=rate, dropout_rng=dropout_rng, broadcast_dropout=self.broadcast_dropout)
        extras = dict(query_segment_ids=query_segment_ids, key_value_segment_ids=key_value_segment_ids,
                      logits_soft_cap=self.logits_soft_cap, sinks=None if self.sinks is None else self.sinks[...])
        extra = any(x is not None for x in extras.values())
        if extra:
            options |= extras
        # a query may be left with no key: the attention's lse then says which (-inf, or the sink's logit)
        may_empty = key.shape[-3] == 0 or any(x is not None for x in (
            mask, local_window_size, query_seq_lengths, key_value_seq_lengths, query_segment_ids, key_value_segment_ids))
        if sow_weights:  # the weights: the tuned dense path, or the mirror for the options it lacks
            attend = scaled_dot_product_attention if extra else dense_attention
            heads, weights, *lse = attend(query, key, value, **options, return_residual=may_empty)
            self.sow(nnx.Intermediate, "attention_weights", weights)
        else:
            result = dot_product_attention(query, key, value, implementation=implementation, **options,
                                           return_residual=may_empty)
            heads, *lse = result if may_empty else (result,)
        # 5. mix the heads back to out_features; a query with no key in any head gets zeros
        out = self.out(heads, out_sharding=out_sharding if out_sharding is not None else head_sum_sharding(heads))
        if not lse:
            return out
        return jnp.where(saw_a_key(lse[0], extras["sinks"])[..., None], out, 0).astype(out.dtype)

    def _call_attention_fn(self, query, key, value, mask, dropout_rng, deterministic, sow_weights, is_causal,
                           out_sharding, input_positions, **ours):
        """Flax's step 4 and 5 with the user's ``attention_fn`` in place of ours: called with
        Flax's arguments, its output projected as Flax does (no zeroing of queries that see no
        key: the function decides). Our own call options have no meaning for it."""
        forwarded = {} if input_positions is None else {"input_positions": input_positions}  # as newer Flax does
        given = sorted(name for name, value in ours.items() if value is not None and name != "positions")
        if given:
            raise ValueError(f"{', '.join(given)} cannot be combined with attention_fn (the function replaces "
                             f"this module's attention); pass them to attention_fn itself, e.g. with functools.partial")
        heads = self.attention_fn(
            query, key, value, mask=mask, dropout_rng=dropout_rng, dropout_rate=self.dropout_rate,
            broadcast_dropout=self.broadcast_dropout, deterministic=deterministic if self.dropout_rate > 0 else True,
            dtype=self.dtype, precision=self.precision, module=self if sow_weights else None, is_causal=is_causal,
            **forwarded)
        return self.out(heads, out_sharding=out_sharding)

    @classmethod
    def from_torch(cls, module, *, rngs=None, **module_options):
        """This module with the weights of a PyTorch attention layer, through
        :func:`attention_jax.multi_head_params_from_torch`: ``torch.nn.MultiheadAttention``
        (``batch_first`` or not: the weights are the same), the ``q_proj``/``k_proj``/``v_proj``/
        ``o_proj`` of Llama, Mistral, Qwen2 and gpt-oss (grouped key/value heads, gpt-oss's
        ``sinks``), BART's ``out_proj``, BERT's ``BertAttention`` (without its
        ``output.LayerNorm``, which follows the attention) and GPT-2's ``Conv1D`` ``c_attn``/``c_proj``.

        The sizes come from the weights: ``num_kv_heads`` (K), ``qkv_features`` (N H),
        ``in_features``, ``in_kv_features`` and ``out_features``; ``num_heads`` from the module
        (or ``module_options``, which a state dict needs), ``use_bias`` from the biases and
        ``use_sinks`` from ``sinks``. What one module cannot hold is a ``ValueError`` that
        points to :func:`attention_jax.multi_head_attention` with
        :func:`attention_jax.multi_head_params_from_torch`, which take each case: keys and
        values of different widths (``kdim != vdim``; Flax's module has one
        ``in_kv_features``), biases on some projections only (one ``use_bias``: Qwen2's
        output projection has none, Whisper's key projection has none). The logits' factor
        comes over as ``scale`` when it is not ``1/sqrt(H)`` (T5's 1.0, a module's own
        ``scaling``, GPT-2's options). Only the weights and the scale come over: what the
        source model does around the layer (rotary embeddings, windows, masks, T5's relative
        position bias) is the caller's, and PyTorch's masks turn around here:
        ``key_padding_mask`` True = ignore, ``mask`` True = attend. ``module_options`` go to
        the constructor (``decode``, ``dtype``, ``rotary=True``, ...).

        Example::

            torch_mha = torch.nn.MultiheadAttention(64, 8, batch_first=True)
            ours = MultiHeadAttention.from_torch(torch_mha, decode=False)
            y = ours(x, mask=~key_padding_mask[:, None, None, :])   # torch_mha(x, x, x, key_padding_mask=...)[0]
        """
        from ._from_torch import from_torch  # torch is never imported unasked

        return from_torch(cls, module, rngs, module_options)

    def _rotate(self, query, key, positions, decode):
        """Rotary embeddings on ``query (B..., T, N, H)`` and ``key (B..., S, K, H)``: at
        ``positions``, at ``0..T-1`` and ``0..S-1``, or while decoding at the cache's next
        positions (the keys are cached rotated)."""
        T, S = query.shape[-3], key.shape[-3]
        if decode and positions is None:
            if self.cache_index is None:
                raise ValueError("Autoregressive cache not initialized, call ``init_cache`` first.")
            positions = self.cache_index[...][..., None] + jnp.arange(T)                  # (B..., T)
        if positions is not None and T != S:
            raise ValueError(f"positions are shared by queries and keys, so T must equal S; got T={T}, S={S}")
        rotate = functools.partial(apply_rotary, base=self.rotary_base, fraction=self.rotary_fraction,
                                   scaling=self.rotary_scaling, interleaved=self.rotary_interleaved)
        if positions is not None:
            return rotate(query, positions), rotate(key, positions)
        return rotate(query, jnp.arange(T)), rotate(key, jnp.arange(S))


def saw_a_key(lse, sinks=None):
    """``(B..., T)`` bool: True where a query attended some key in some head, read off the
    attention's ``lse (B..., T, N)``: ``-inf`` where a head's query attends no key, and with
    sinks exactly the sink's logit (its normaliser is ``e^sink`` alone). A query whose keys
    together weigh less than the float's resolution beside its sink counts as seeing none:
    its heads' output is then below rounding anyway."""
    floor = -jnp.inf if sinks is None else jnp.asarray(sinks).astype(lse.dtype)  # (N,)
    return (lse > floor).any(axis=-1)
