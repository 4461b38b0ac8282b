"""``chunked_attention``: the public function and its checks, then the kernels."""

import jax.numpy as jnp

from attention_np._validate import check_sdpa, check_sdpa_extras, check_sdpa_options

from ..._batch import fold_batch, fold_broadcast, unfold_batch
from ..._dtypes import compute_dtype
from ..._jit import jit, logits_scale, reverse_mode_only, split_scale, static_rng
from ..._sharding import match_varying
from .blocks import check_block_sizes, chunk_fields
from .config import Config, Mods, Operands
from .layout import from_rows, make_rows, to_rows
from .masks import zero_unattended
from .vjp import flash


def chunked_attention(
    query, key, value, *, bias=None, mask=None, is_causal=False, scale=None,
    block_sizes=None, query_seq_lengths=None, key_value_seq_lengths=None,
    local_window_size=None, dropout_rate=0.0, dropout_rng=None, broadcast_dropout=False,
    query_segment_ids=None, key_value_segment_ids=None, logits_soft_cap=None, sinks=None, return_residual=False,
):
    r"""Memory-efficient scaled dot-product attention: the same result as
    :func:`scaled_dot_product_attention`, without its ``(B, N, T, S)`` weights.

    .. math::
        m_t \leftarrow \max(m_t, \max_s x_{ts}), \quad
        \ell_t \leftarrow \ell_t e^{m_t^{old} - m_t} + \textstyle\sum_s e^{x_{ts} - m_t}, \quad
        o_t \leftarrow o_t e^{m_t^{old} - m_t} + \textstyle\sum_s e^{x_{ts} - m_t} v_s

    over key chunks, then :math:`o_t / \ell_t`. Rabe & Staats 2021, "Self-attention does not
    need O(n^2) memory"; Dao 2023, "FlashAttention-2", algorithms 1 (forward) and 2
    (backward, recomputing each block from the saved log-sum-exp, via ``jax.custom_vjp``).
    Activation memory is O(T + S) in forward and backward (plus one score block); with
    ``is_causal`` the key chunks above the diagonal are never computed. Semantics as
    :func:`scaled_dot_product_attention`, including zeros for fully masked queries, batch
    axes ``B...``, T = 0 and S = 0; a full ``(B, N, T, S)`` bias or mask is read block by
    block, its own size aside. Reverse-mode only: forward-mode autodiff (``jax.jvp``,
    ``jax.jacfwd``) is a ``TypeError`` that names the alternatives.

    Shapes: B batch (any number of axes), T query length, S key length, N query heads,
    K key/value heads (N % K == 0), H features per head.

    Args:
      query: ``(B, T, N, H)``.
      key: ``(B, S, K, H)``, the dtype of ``query``.
      value: ``(B, S, K, H)``, the dtype of ``query``.
      bias: optional float array broadcastable to ``(B, N, T, S)``; gradients flow to it.
      mask: optional bool array broadcastable to ``(B, N, T, S)``, True = attend.
      is_causal: if True, query t attends only to keys ``s <= t``.
      scale: multiplies the logits, any finite number; default ``1 / sqrt(H)``.
      block_sizes: ``(query rows, key rows)`` per block, as :func:`create_block_mask` takes
        them (None, or None in a place: the default of that axis); defaults tuned
        per backend (:class:`BlockSizes`; CPU: 2048 x 1024, causal 1024 x 1024 and 512 x 512 up to L = 2048,
        and 512 x 512 in the backward pass; GPU: 512 x 512), as upper bounds: a length is
        split into as many equal blocks as these need, rounded up to 128 rows (1536 keys:
        two blocks of 768). Sizes given here are used exactly, in both passes. Lengths that
        are not multiples are padded (and the padding masked).
        With the defaults on CPU, the causal mask alone (no bias, mask, lengths, window or
        dropout), 256 < max(T, S) <= 1024, H <= 64 and B * N >= 16, a call without
        autodiff computes the output as a static grid of fused 256 x 256 tiles instead
        (1.3x faster at 4x8x512x64; the backward pass needs the loop's log-sum-exp).
      query_seq_lengths, key_value_seq_lengths: optional int ``(B,)``, as
        :func:`scaled_dot_product_attention` (built per block from the lengths: no
        ``(T, S)`` mask exists).
      local_window_size: optional ``(left, right)`` or an int: query t attends keys
        ``t - left <= s <= t + right``; key chunks wholly outside the band are skipped, in
        forward and backward, so time grows as O(L * window), not O(L^2).
      dropout_rate, dropout_rng, broadcast_dropout: attention dropout, as
        :func:`scaled_dot_product_attention`: the keep-mask is computed per block from the
        global (b, n, t, s), so every chunking (and the backward pass) drops the same
        weights as the dense path and the NumPy half.

      query_segment_ids, key_value_segment_ids: optional int ``(B, T)``, ``(B, S)`` (either
        alone serves both when T = S): a query attends only keys of its own segment (packed
        sequences). Blocks whose query and key ids cannot meet are skipped, forward and
        backward, and blocks of one segment need no mask: packing D documents of L / D
        tokens costs about 1 / D of the dense work.
      logits_soft_cap: optional c > 0: logits become ``c * tanh(logits / c)`` after the
        scale and the bias, before the mask (Gemma 2).
      sinks: optional float ``(N,)``: per-head logits that join each row's normaliser and
        hold no value (attention sinks); they receive gradients.
      return_residual: also return ``lse (B, T, N)``, the log-sum-exp of the attended
        logits and the sink (``jax.nn.dot_product_attention``'s residual; ``-inf`` for a
        query that attends nothing and has no sink), in the compute dtype (float32 for
        float16/bfloat16 inputs; ``jax.nn``'s is in the inputs' dtype) and differentiable
        (``jax.nn``'s carries no gradient).

    Precision: float16/bfloat16 inputs keep their dtype as the block matmuls' operands,
    accumulated in float32 (``preferred_element_type``); the running max, normaliser and
    output accumulator are float32.

    Returns:
      ``out``: ``(B, T, N, H)`` in the dtype of ``query``; ``(out, lse)`` with ``return_residual``.
    """
    scale, scale_value = split_scale(scale)
    with reverse_mode_only("chunked_attention", "scaled_dot_product_attention"):
        return _chunked_attention(
            query, key, value, bias=bias, mask=mask, is_causal=is_causal, scale=scale, scale_value=scale_value,
            block_sizes=check_block_sizes(block_sizes),
            query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
            local_window_size=local_window_size, dropout_rate=dropout_rate,
            dropout_rng=static_rng(dropout_rng, dropout_rate), broadcast_dropout=broadcast_dropout,
            query_segment_ids=query_segment_ids, key_value_segment_ids=key_value_segment_ids,
            logits_soft_cap=logits_soft_cap, sinks=sinks, return_residual=bool(return_residual),
        )


@jit(static_argnames=("is_causal", "scale", "block_sizes", "local_window_size",
                      "dropout_rate", "broadcast_dropout", "logits_soft_cap", "return_residual"))
def _chunked_attention(
    query, key, value, *, bias, mask, is_causal, scale, scale_value, block_sizes,
    query_seq_lengths, key_value_seq_lengths, local_window_size, dropout_rate, dropout_rng, broadcast_dropout,
    query_segment_ids, key_value_segment_ids, logits_soft_cap, sinks, return_residual,
):
    """:func:`chunked_attention`, jit-compiled (the public function adds the forward-mode message)."""
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    shapes = check_sdpa(query, key, value, bias, mask, scale)
    window, dropout_rate = check_sdpa_options(
        shapes, query_seq_lengths, key_value_seq_lengths, local_window_size, dropout_rate, dropout_rng
    )
    soft_cap = check_sdpa_extras(shapes, query_segment_ids, key_value_segment_ids, logits_soft_cap, sinks)
    batch = shapes["B..."]  # the caller's batch axes, folded into one axis B here
    T, S, N, H, K = (shapes[c] for c in "TSNHK")
    dtype, compute = query.dtype, compute_dtype(query.dtype)
    if T == 0 or S == 0:  # no query, or nothing to attend to: empty, or zeros (as the dense path)
        out = jnp.zeros(query.shape, dtype)
        if not return_residual:
            return out
        sink = jnp.full(N, -jnp.inf, compute) if sinks is None else jnp.asarray(sinks).astype(compute)
        return out, jnp.broadcast_to(sink, query.shape[:-1])
    query, key, value = (fold_batch(x, batch) for x in (query, key, value))
    bias, mask = (None if x is None else fold_broadcast(x, batch, 3) for x in (bias, mask))
    B = query.shape[0]
    has_lengths = query_seq_lengths is not None or key_value_seq_lengths is not None
    has_segments = query_segment_ids is not None or key_value_segment_ids is not None
    plain = (bias is None and mask is None and not has_lengths and window is None and not dropout_rate
             and not has_segments and soft_cap is None and sinks is None and not return_residual)
    chunks = chunk_fields(block_sizes, is_causal=bool(is_causal), T=T, S=S, H=H, rows=B * N,
                          segments=has_segments, plain=plain)
    cfg = Config(is_causal=bool(is_causal), T=T, S=S, G=N // K, window=window, has_lengths=has_lengths,
                 has_segments=has_segments, dropout_rate=dropout_rate, broadcast_dropout=bool(broadcast_dropout),
                 compute=compute, soft_cap=soft_cap, **chunks)
    ops = to_rows(query.astype(compute) * logits_scale(scale, scale_value, H, compute), key, value, bias, mask, cfg)
    rows = make_rows(cfg, B, K, query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
                     dropout_rng=dropout_rng, query_segment_ids=query_segment_ids,
                     key_value_segment_ids=key_value_segment_ids)
    ops = zero_unattended(ops, rows, cfg, key_value_seq_lengths is not None)
    # inside shard_map: every input of the custom VJP varies over the same manual axes
    *arrays, qlen, kvlen = match_varying(*ops, rows.qlen, rows.kvlen)
    sinks = None if sinks is None else jnp.asarray(sinks).astype(compute).reshape(1, K, N // K)
    out, lse = flash(Operands(*arrays), rows._replace(qlen=qlen, kvlen=kvlen), Mods(sinks=sinks), cfg)
    out, lse = from_rows(out, lse, T)                                             # (B, T, N, H), (B, T, N)
    out = unfold_batch(out.astype(dtype), batch)
    return (out, unfold_batch(lse, batch)) if return_residual else out
