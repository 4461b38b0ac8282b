"""Scaled dot-product attention (Vaswani et al. 2017): mirror of ``attention_np/dot_product.py``."""

import math

import jax
import jax.numpy as jnp

from attention_np._validate import check_scale, check_sdpa, check_sdpa_options, is_scalar_array

from ._batch import fold_batch, fold_broadcast, unfold_batch
from ._dtypes import compute_dtype, operand_dtype
from ._jit import jit
from ._masking import attended_keys, combine_all_masks, length_mask, softmax_parts
from ._sharding import explicit_sharding, explicit_spec
from .dropout import dropout_weights, rng_words


def split_scale(scale):
    """A scale as ``(static, traced)``: a Python/NumPy number is static (checked here, so a
    bad one names itself before ``jit`` sees it); a 0-d float array (a learnable temperature,
    possibly a tracer) is passed to the compiled function as an argument."""
    if scale is not None and is_scalar_array(scale) and not isinstance(scale, (int, float)):
        return None, scale
    if scale is not None:
        check_scale(scale)
    return scale, None


def static_rng(dropout_rng, dropout_rate):
    """``dropout_rng`` ready for ``jit``: None without dropout; a Python int as its two uint32
    words (so that the NumPy half's reading of the same int is used)."""
    if dropout_rng is None or not (isinstance(dropout_rate, (int, float)) and dropout_rate > 0):
        return None
    if isinstance(dropout_rng, int) and not isinstance(dropout_rng, bool):
        value = dropout_rng % 2**64
        return jnp.asarray([value & 0xFFFFFFFF, value >> 32], jnp.uint32)
    return dropout_rng


def scaled_dot_product_attention(
    query, key, value, *, bias=None, mask=None, is_causal=False, scale=None,
    query_seq_lengths=None, key_value_seq_lengths=None, local_window_size=None,
    dropout_rate=0.0, dropout_rng=None, broadcast_dropout=False,
):
    r"""Scaled dot-product attention, with grouped key/value heads.

    .. math::
        \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\Big(\frac{Q K^\top}{\sqrt{H}} + \text{bias}\Big) V

    Vaswani et al. 2017, "Attention is all you need", eq. (1); grouped-query heads after
    Ainslie et al. 2023 (GQA). Same semantics as ``jax.nn.dot_product_attention``, except
    that a query with every key masked gets zero weights, a zero output and zero gradients
    (``jax.nn`` returns the mean of the values).

    Shapes: B batch, T query length, S key length, N query heads, K key/value heads
    (N % K == 0), H features per head. ``B`` may be any number of batch axes ``B...``
    (none, as ``jax.nn``'s ``(T, N, H)``, or several, as Flax's), shared by all three inputs.

    Precision: float16/bfloat16 inputs run both matmuls with float16/bfloat16 operands and
    float32 accumulation (``preferred_element_type``), the softmax in float32, as Flax and
    cuDNN do; float32 and float64 inputs compute in their own dtype.

    Args:
      query: ``(B, T, N, H)``.
      key: ``(B, S, K, H)``, the dtype of ``query``.
      value: ``(B, S, K, H)``, the dtype of ``query``.
      bias: optional float array broadcastable to ``(B, N, T, S)``, added to the scaled logits.
      mask: optional bool array broadcastable to ``(B, N, T, S)``, True = attend.
      is_causal: if True, query t attends only to keys ``s <= t``. Static under jit.
      scale: multiplies the logits, any finite number; default ``1 / sqrt(H)``. A Python
        number is static under jit; a 0-d float array (e.g. a learnable temperature, traced)
        is an ordinary argument and receives gradients.
      query_seq_lengths: optional int ``(B,)``: queries ``t >= query_seq_lengths[b]`` are
        padding (zero weights, zero output), as ``jax.nn.dot_product_attention``.
      key_value_seq_lengths: optional int ``(B,)``: keys ``s >= key_value_seq_lengths[b]``
        are padding.
      local_window_size: optional ``(left, right)`` (or an int w for ``(w, w)``): query t
        attends only keys ``t - left <= s <= t + right`` (Beltagy et al. 2020,
        "Longformer"), as ``jax.nn``. Static.
      dropout_rate: probability of dropping an attention weight (after the softmax); kept
        weights are scaled by ``1 / (1 - rate)``. Static. The keep-mask is a hash of
        ``(dropout_rng, b, n, t, s)`` (:mod:`attention_jax.dropout`), identical in the NumPy
        half and in :func:`chunked_attention`.
      dropout_rng: a JAX key (new-style or ``PRNGKey``), its ``key_data``, or an int.
      broadcast_dropout: one dropout mask for every batch row and head (Flax's default in
        its modules). Static.

    Returns:
      ``(out, weights)``: ``(B, T, N, H)`` and ``(B, N, T, S)``, in the dtype of ``query``.
      ``weights`` are the softmax probabilities before dropout (what Flax sows); ``out``
      uses the dropped ones. T = 0 gives empty arrays; S = 0 a zero ``out``.
    """
    scale, scale_value = split_scale(scale)
    return _scaled_dot_product_attention(
        query, key, value, bias=bias, mask=mask, is_causal=is_causal, scale=scale, scale_value=scale_value,
        query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
        local_window_size=local_window_size, dropout_rate=dropout_rate,
        dropout_rng=static_rng(dropout_rng, dropout_rate), broadcast_dropout=broadcast_dropout,
    )


@jit(static_argnames=("is_causal", "scale", "local_window_size", "dropout_rate", "broadcast_dropout"))
def _scaled_dot_product_attention(
    query, key, value, *, bias, mask, is_causal, scale, scale_value, query_seq_lengths,
    key_value_seq_lengths, local_window_size, dropout_rate, dropout_rng, broadcast_dropout,
):
    """:func:`scaled_dot_product_attention`, jit-compiled."""
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    shapes = check_sdpa(query, key, value, bias, mask, scale)
    window, dropout_rate = check_sdpa_options(
        shapes, query_seq_lengths, key_value_seq_lengths, local_window_size, dropout_rate, dropout_rng
    )
    batch = shapes["B..."]  # the caller's batch axes, folded into one axis B here
    query, key, value = (fold_batch(x, batch) for x in (query, key, value))
    bias, mask = (None if x is None else fold_broadcast(x, batch, 3) for x in (bias, mask))
    B, T, N, H = query.shape
    S, K = shapes["S"], shapes["K"]
    dtype, compute, operand = query.dtype, compute_dtype(query.dtype), operand_dtype(query.dtype)
    if scale_value is not None:
        scale = jnp.asarray(scale_value).astype(compute)
    else:
        scale = 1.0 / math.sqrt(max(H, 1)) if scale is None else float(scale)  # H = 0: the logits are empty sums, 0
    # 1. heads first, (B, N, T, H): every head is one batched matmul; with grouped-query
    #    attention each key/value head serves N // K consecutive query heads
    query = query.astype(operand).transpose(0, 2, 1, 3)                   # (B, N, T, H)
    key, value = (_repeat_heads(x.astype(operand), N // K).transpose(0, 2, 1, 3) for x in (key, value))  # (B, N, S, H)
    lengths = length_mask(query_seq_lengths, key_value_seq_lengths, B, T, S)   # (B, 1, T, S) or None
    causal_only = is_causal and mask is None and window is None and lengths is None
    mask = combine_all_masks(mask, is_causal, window, lengths, T, S)
    # keys no query may attend to (padding) are zeroed: whatever they hold, even NaN, cannot
    # reach the output or the gradients. The causal mask alone leaves out keys s >= T only.
    if causal_only:
        keep = None if S <= T else (jnp.arange(S) < T)[:, None]            # (S, 1)
    else:
        keep = None if mask is None else attended_keys(mask, (B, N, T, S))[..., None]  # (B, N, S, 1)
    if keep is not None:
        key, value = jnp.where(keep, key, 0), jnp.where(keep, value, 0)
    # 2. logits: one score per (query, key) pair, scaled, plus the optional bias
    logits = jnp.einsum("BNTH,BNSH->BNTS", query, key, preferred_element_type=compute) * scale  # (B, N, T, S)
    if bias is not None:
        logits = logits + jnp.asarray(bias).astype(compute)
    # 3. weights: softmax over the keys a query may attend to
    # (without a bias that could be -inf, and with no mask or the causal mask alone, every
    # query sees a key)
    empty_rows = bias is not None or (mask is not None and not causal_only)
    unnormalized, total = softmax_parts(logits, mask, empty_rows=empty_rows)  # (B, N, T, S), (B, N, T, 1)
    weights = unnormalized / total                                         # (B, N, T, S)
    dropped = dropout_weights(unnormalized, _words(dropout_rng, dropout_rate), dropout_rate, broadcast=broadcast_dropout)
    # 4. out: the weighted average of the values, back to (B, T, N, H). The sums divide the
    #    (T, H) product, not the (T, S) weights: the same numbers, one (T, S) pass fewer
    #    (1.2-1.4x faster forward at 8x8x128 on CPU), and the weights are computed only when used
    out = jnp.einsum("BNTS,BNSH->BNTH", dropped.astype(operand), value, preferred_element_type=compute) / total
    out = out.transpose(0, 2, 1, 3)                                        # (B, T, N, H)
    return unfold_batch(out.astype(dtype), batch), unfold_batch(weights.astype(dtype), batch)


def _words(dropout_rng, dropout_rate):
    return rng_words(dropout_rng) if dropout_rate > 0 else None


def _repeat_heads(x, G):
    """``(B, S, K, H)`` -> ``(B, S, K * G, H)``: each key/value head for its G query heads. On an
    Explicit mesh with the heads sharded, the repeated axis keeps the heads' sharding (device d
    holds the query heads its key/value heads serve), which ``jnp.repeat`` will not guess."""
    if G == 1:
        return x
    spec = explicit_spec(x)
    repeated = jnp.repeat(x, G, axis=2, out_sharding=None if spec is None else explicit_sharding(x, spec))
    # XLA's CPU backend (jax 0.10.2) got the gradients wrong at B = 1, K = 1 under jax.grad
    # without an outer jit (100% error; right without its YNNPACK reduce fusions): the
    # barrier keeps the repeated heads an array of their own
    return jax.lax.optimization_barrier(repeated)
