"""``chunked_attention``: the public function, its checks, and the rows layout the kernels read."""

import jax.numpy as jnp
from jax import lax

from attention_np._validate import check_sdpa, check_sdpa_extras, check_sdpa_options

from ..._batch import fold_batch, fold_broadcast, unfold_batch
from ..._dtypes import compute_dtype, operand_dtype
from ..._jit import jit, logits_scale, reverse_mode_only, split_scale, static_rng
from ..._sharding import match_varying
from ...dropout import rng_words
from .blocks import BlockSizes, check_chunk
from .config import Config, Mods, Rows
from .masks import attended_keys, segment_attended_keys, to_rows_layout
from .vjp import flash


def chunked_attention(
    query, key, value, *, bias=None, mask=None, is_causal=False, scale=None,
    query_chunk_size=None, key_chunk_size=None, query_seq_lengths=None, key_value_seq_lengths=None,
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
      query_chunk_size, key_chunk_size: rows of queries and keys per block; defaults tuned
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
        query that attends nothing and has no sink); differentiable.

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
            query_chunk_size=query_chunk_size, key_chunk_size=key_chunk_size,
            query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
            local_window_size=local_window_size, dropout_rate=dropout_rate,
            dropout_rng=static_rng(dropout_rng, dropout_rate), broadcast_dropout=broadcast_dropout,
            query_segment_ids=query_segment_ids, key_value_segment_ids=key_value_segment_ids,
            logits_soft_cap=logits_soft_cap, sinks=sinks, return_residual=bool(return_residual),
        )


@jit(static_argnames=("is_causal", "scale", "query_chunk_size", "key_chunk_size", "local_window_size",
                      "dropout_rate", "broadcast_dropout", "logits_soft_cap", "return_residual"))
def _chunked_attention(
    query, key, value, *, bias, mask, is_causal, scale, scale_value, query_chunk_size, key_chunk_size,
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
    check_chunk("query_chunk_size", query_chunk_size)
    check_chunk("key_chunk_size", key_chunk_size)
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
    lengths = query_seq_lengths is not None or key_value_seq_lengths is not None
    segments = query_segment_ids is not None or key_value_segment_ids is not None
    plain = (bias is None and mask is None and not lengths and window is None and not dropout_rate and not segments
             and soft_cap is None and sinks is None and not return_residual)
    cfg = _config(query_chunk_size, key_chunk_size, bool(is_causal), T, S, N // K, H, B * N, window, lengths,
                  dropout_rate, bool(broadcast_dropout), compute, plain, segments)
    cfg = cfg._replace(soft_cap=soft_cap, segments=segments, sparse=segments)
    q, k, v, bias, mask = _to_rows(query.astype(compute) * logits_scale(scale, scale_value, H, compute),
                                   key, value, bias, mask, cfg)
    rows = _rows(query_seq_lengths, key_value_seq_lengths, dropout_rng, cfg, B, K, query_segment_ids,
                 key_value_segment_ids)
    k, v = _zero_padding(k, v, mask, rows, key_value_seq_lengths is not None, cfg)
    # inside shard_map: every input of the custom VJP varies over the same manual axes
    q, k, v, bias, mask, qlen, kvlen = match_varying(q, k, v, bias, mask, rows.qlen, rows.kvlen)
    sinks = None if sinks is None else jnp.asarray(sinks).astype(compute).reshape(1, K, N // K)
    out, lse = flash(q, k, v, bias, mask, rows._replace(qlen=qlen, kvlen=kvlen), Mods(sinks=sinks), cfg)  # (B, K, Tp, G, ...)
    out = unfold_batch(out[:, :, :T].transpose(0, 2, 1, 3, 4).reshape(B, T, N, H).astype(dtype), batch)
    if not return_residual:
        return out
    return out, unfold_batch(lse[:, :, :T].transpose(0, 2, 1, 3).reshape(B, T, N), batch)


def _config(query_chunk_size, key_chunk_size, is_causal, T, S, G, H, heads, window, lengths, dropout_rate,
            broadcast_dropout, compute, plain, sparse=False):
    """The static :class:`Config`: the caller's block sizes, used exactly in both passes, or
    the tuned defaults of :class:`BlockSizes` (with the backward pass's own blocks and the
    tiles)."""
    sizes = BlockSizes.get_default()
    default_q, default_k = sizes.blocks(is_causal, T, S, sparse)
    qc = min(query_chunk_size or default_q, T)
    kc = min(key_chunk_size or default_k, S)
    cfg = Config(is_causal, qc, kc, T, S, G, window, lengths, dropout_rate, broadcast_dropout, compute)
    if query_chunk_size is None and key_chunk_size is None:
        cfg = cfg._replace(backward_chunks=sizes.backward_blocks(qc, kc),
                           tiles=sizes.tiles(is_causal, plain, T, S, H, heads))
    return cfg


def _to_rows(query, key, value, bias, mask, cfg):
    """The inputs in the rows layout, padded to whole blocks: each key/value head with its G
    query heads, query rows contiguous per chunk; float16/bfloat16 stay the matmul operands
    (accumulated in float32). ``query`` is already scaled."""
    B, T, N, H = query.shape
    K, G = key.shape[2], cfg.G
    operand = operand_dtype(value.dtype)
    pad_T, pad_S = -T % cfg.query_chunk, -cfg.S % cfg.key_chunk
    q = query.astype(operand).reshape(B, T, K, G, H).transpose(0, 2, 1, 3, 4)                      # (B, K, T, G, H)
    q = jnp.pad(q, [(0, 0), (0, 0), (0, pad_T), (0, 0), (0, 0)])
    k, v = (jnp.pad(x.astype(operand).transpose(0, 2, 1, 3), [(0, 0), (0, 0), (0, pad_S), (0, 0)])  # (B, K, Sp, H)
            for x in (key, value))
    if bias is not None:
        bias = to_rows_layout(jnp.asarray(bias).astype(cfg.compute), B, K, G, T, cfg.S, pad_T, pad_S, 0)
    if mask is not None:
        mask = to_rows_layout(jnp.asarray(mask), B, K, G, T, cfg.S, pad_T, pad_S, False)
    return q, k, v, bias, mask


def _rows(query_seq_lengths, key_value_seq_lengths, dropout_rng, cfg, B, K, query_segment_ids=None,
          key_value_segment_ids=None):
    """The per-row :class:`Rows`: lengths (T and S when not given), (b, k) indices, the
    dropout rng's words and the segment ids (padded to whole blocks with each row's last id,
    so a block's id range is its real tokens')."""
    def lengths(given, full):
        return jnp.full((B, 1), full, jnp.int32) if given is None else jnp.asarray(given).reshape(B, 1).astype(jnp.int32)

    index = jnp.stack(jnp.meshgrid(jnp.arange(B), jnp.arange(K), indexing="ij"), axis=-1).astype(jnp.int32)  # (B, K, 2)
    words = jnp.zeros((1, 1, 2), jnp.uint32)
    if cfg.dropout_rate > 0:
        words = jnp.stack(rng_words(dropout_rng)).reshape(1, 1, 2)
    rows = Rows(lengths(query_seq_lengths, cfg.T), lengths(key_value_seq_lengths, cfg.S), index, words)
    if not cfg.segments:
        return rows
    query_ids = key_value_segment_ids if query_segment_ids is None else query_segment_ids
    key_ids = query_ids if key_value_segment_ids is None else key_value_segment_ids

    def padded(ids, length, chunk):
        ids = jnp.asarray(ids).reshape(B, 1, length).astype(jnp.int32)
        return jnp.pad(ids, [(0, 0), (0, 0), (0, -length % chunk)], mode="edge")

    return rows._replace(qseg=padded(query_ids, cfg.T, cfg.query_chunk), kseg=padded(key_ids, cfg.S, cfg.key_chunk))


def _zero_padding(k, v, mask, rows, has_kv_lengths, cfg):
    """Keys no query attends (the mask's, the causal mask's, past a row's length, of a segment no
    query has) zeroed before the loops, as in the dense path: NaN or inf stored there cannot
    reach the output or the gradients."""
    keep = attended_keys(mask, cfg, k.shape[2])                                   # (B|1, K|1, Sp|1)
    if cfg.segments:
        in_segment = segment_attended_keys(rows, cfg, k.shape[2])                  # (B, 1, Sp)
        keep = in_segment if keep is None else keep & in_segment
    if has_kv_lengths:
        in_length = lax.broadcasted_iota(jnp.int32, (1, 1, k.shape[2]), 2) < rows.kvlen[:, :, None]  # (B, 1, Sp)
        keep = in_length if keep is None else keep & in_length
    if keep is None:
        return k, v
    return jnp.where(keep[..., None], k, 0), jnp.where(keep[..., None], v, 0)
