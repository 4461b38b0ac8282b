"""Multi-head attention with Flax ``nnx.MultiHeadAttention``'s parameters (Vaswani et al. 2017)."""

import jax
import jax.numpy as jnp

import attention_np as _np
from attention_np._validate import check_key_value, check_multi_head

from ._batch import fold_batch, fold_broadcast, unfold_batch
from ._dtypes import cast_params, compute_dtype
from ._jit import jit
from ._masking import attended_keys, combine_masks
from ._random import init_from_numpy
from ._sharding import head_sum_sharding
from .dot_product import scaled_dot_product_attention


@jit(static_argnames=("is_causal",))
def multi_head_attention(params, query, key=None, value=None, *, bias=None, mask=None, is_causal=False):
    r"""Multi-head attention, with grouped key/value heads when K < N.

    .. math::
        \mathrm{head}_n = \mathrm{Attention}(x_q W^Q_n, x_k W^K_{k(n)}, x_v W^V_{k(n)}), \qquad
        \mathrm{out} = \textstyle\sum_n \mathrm{head}_n W^O_n + b^O

    Vaswani et al. 2017, "Attention is all you need", section 3.2.2; grouped key/value heads
    ``k(n) = n // (N / K)`` after Ainslie et al. 2023 (GQA). Numerically the same as
    ``flax.nnx.MultiHeadAttention`` (no dropout, no qk-norm) given the same parameters,
    except that a query with every key masked gets a zero attention output (Flax: the mean).

    Args:
      params: ``{"query": {"kernel": (E, N, H), "bias": (N, H)}, "key"|"value": {"kernel":
        (E, K, H), "bias": (K, H)}, "out": {"kernel": (N, H, E), "bias": (E,)}}``, Flax's
        names and shapes; N, K and H are read from the kernels.
      query: ``(B, T, E)``; ``B`` may be any number of batch axes ``B...``, as in Flax.
      key: ``(B, S, E)``, the dtype of ``query``; defaults to ``query`` (self-attention).
      value: ``(B, S, E)``, the dtype of ``query``; defaults to ``key``. Passing ``value``
        without ``key`` is a ``ValueError``, as in Flax.
      bias: optional float, broadcastable to ``(B, N, T, S)``, added to the logits (ALiBi,
        relative positions), as in :func:`scaled_dot_product_attention`.
      mask: optional bool broadcastable to ``(B, N, T, S)``, True = attend.
      is_causal: if True, query t attends only to keys ``s <= t``.

    Returns:
      ``(out, weights)``: ``(B, T, E)`` and ``(B, N, T, S)``, in the dtype of ``query``.
      T = 0 gives empty arrays; S = 0 a zero ``out`` (no key to attend to, so no output bias).
    """
    check_key_value(key, value)
    query = jnp.asarray(query)
    key = query if key is None else jnp.asarray(key)
    value = key if value is None else jnp.asarray(value)
    shapes = check_multi_head(params, query, key, value, mask, bias)
    batch = shapes["B..."]  # the caller's batch axes, folded into one axis B here
    query, key, value = (fold_batch(x, batch) for x in (query, key, value))
    mask = None if mask is None else fold_broadcast(mask, batch, 3)
    bias = None if bias is None else fold_broadcast(bias, batch, 3)
    B, T, S, N = (shapes[c] for c in "BTSN")
    dtype, compute = query.dtype, compute_dtype(query.dtype)
    p = cast_params(params, compute)
    if mask is not None:  # padding is zeroed first: even NaN there cannot reach the output or the gradients
        keep = attended_keys(mask, (B, N, T, S)).any(axis=1)[..., None]    # (B, S, 1): any head
        key, value = jnp.where(keep, key, 0), jnp.where(keep, value, 0)
    # 1. project into heads: N query heads, K key/value heads of H features each
    q = jnp.einsum("BTE,ENH->BTNH", query.astype(compute), p["query"]["kernel"]) + p["query"]["bias"]  # (B, T, N, H)
    k = jnp.einsum("BSE,EKH->BSKH", key.astype(compute), p["key"]["kernel"]) + p["key"]["bias"]        # (B, S, K, H)
    v = jnp.einsum("BSE,EKH->BSKH", value.astype(compute), p["value"]["kernel"]) + p["value"]["bias"]  # (B, S, K, H)
    # 2. scaled dot-product attention in every head at once
    heads, weights = scaled_dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=is_causal)  # (B, T, N, H)
    # 3. mix the heads back to the model width
    out = jnp.einsum("BTNH,NHE->BTE", heads, p["out"]["kernel"], out_sharding=head_sum_sharding(heads)) + p["out"]["bias"]  # (B, T, E)
    # 4. a query with no key to attend to in any head gets a zero output (not the output bias)
    if S == 0:
        out = jnp.zeros_like(out)  # no key at all: every query has nothing to attend to
    if mask is not None:
        attends = jnp.broadcast_to(combine_masks(mask, is_causal, T, S), (B, N, T, S)).any(axis=(1, 3))  # (B, T)
        out = jnp.where(attends[..., None], out, 0)
    return unfold_batch(out.astype(dtype), batch), unfold_batch(weights.astype(dtype), batch)


def init_multi_head_params(rng, in_features, num_heads, head_dim, *, num_kv_heads=None, dtype=jnp.float32):
    """As ``attention_np.init_multi_head_params``, drawing from the JAX PRNG key ``rng``."""
    return init_from_numpy(_np.init_multi_head_params, rng, in_features, num_heads, head_dim, num_kv_heads=num_kv_heads, dtype=dtype)


def multi_head_params_from_flax(module_or_state):
    """The params dict of a ``flax.nnx.MultiHeadAttention``, for :func:`multi_head_attention`.

    Accepts the module itself, its ``nnx.state(module)``, or the pure dict
    ``nnx.to_pure_dict(nnx.state(module))``. The names and shapes are Flax's already, so
    this only selects the four projections and drops what the function does not use. A
    module with ``use_bias=False`` gets zero biases (the same function). ``normalize_qk``
    (its ``query_ln``/``key_ln``) and output or key/value widths that differ from the
    query's (``out_features``, ``in_kv_features``) are beyond ``multi_head_attention``: the
    ``ValueError`` names :class:`attention_jax.nnx.MultiHeadAttention`, which loads such a
    module with ``nnx.update(ours, nnx.state(flax_module, nnx.Param))``.
    """
    from flax import nnx  # Flax is a dependency of this half; imported late to keep import light

    beyond = "; attention_jax.nnx.MultiHeadAttention loads it (nnx.update(ours, nnx.state(flax_module, nnx.Param)))"
    state = module_or_state
    if isinstance(state, nnx.Module):
        state = nnx.state(state, nnx.Param)
    if isinstance(state, nnx.State):
        state = nnx.to_pure_dict(state)
    missing = [name for name in ("query", "key", "value", "out") if name not in state]
    if missing:
        raise ValueError(f"module_or_state has no {missing}; expected a flax.nnx.MultiHeadAttention or its state")
    if state.get("query_ln") is not None or state.get("key_ln") is not None:
        raise ValueError("multi_head_params_from_flax: normalize_qk=True (query_ln, key_ln) is beyond multi_head_attention" + beyond)
    params = {}
    for name in ("query", "key", "value", "out"):
        layer = state[name]
        kernel = jnp.asarray(layer["kernel"])
        bias = layer.get("bias")
        if bias is None:  # use_bias=False: a zero bias is the same layer
            bias = jnp.zeros(kernel.shape[1:] if name != "out" else kernel.shape[-1:], kernel.dtype)
        params[name] = {"kernel": kernel, "bias": jnp.asarray(bias)}
    width = params["query"]["kernel"].shape[0]
    if params["key"]["kernel"].shape[0] != width or params["out"]["kernel"].shape[-1] != width:
        raise ValueError(
            "multi_head_params_from_flax: in_kv_features or out_features differ from in_features "
            f"({params['key']['kernel'].shape[0]}, {params['out']['kernel'].shape[-1]} vs {width}), beyond "
            "multi_head_attention" + beyond
        )
    return params
