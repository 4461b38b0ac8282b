"""The rows layout the kernels read, and the way back.

Each key/value head with its G query heads, query rows contiguous per chunk:
``q (B, K, Tp, G, H)``, ``k, v (B, K, Sp, H)``, a bias or mask ``(B|1, K|1, Tp|1, G|1, Sp|1)``,
padded to whole blocks (Tp, Sp multiples of the chunks); a block's logits are then one
``(B, K, qc * G, kc)`` matmul, the grouped query heads sharing their key/value head's keys
without copies. :func:`to_rows` goes there, :func:`from_rows` comes back, :func:`make_rows`
builds the per-row arrays (:class:`~.config.Rows`).
"""

import jax.numpy as jnp
from jax import lax

from ..._dtypes import operand_dtype
from ...dropout import rng_words
from .config import Operands, Rows


def to_rows(query, key, value, bias, mask, cfg):
    """``query (B, T, N, H)`` (already scaled), ``key, value (B, S, K, H)``, ``bias``/``mask``
    broadcastable to ``(B, N, T, S)`` or None, as :class:`~.config.Operands` in the rows layout;
    float16/bfloat16 stay the matmuls' operands (accumulated in float32)."""
    B, T, N, H = query.shape
    K, G = key.shape[2], cfg.G
    operand = operand_dtype(value.dtype)
    pad_T, pad_S = -T % cfg.query_chunk, -cfg.S % cfg.key_chunk
    q = query.astype(operand).reshape(B, T, K, G, H).transpose(0, 2, 1, 3, 4)                      # (B, K, T, G, H)
    q = jnp.pad(q, [(0, 0), (0, 0), (0, pad_T), (0, 0), (0, 0)])
    k, v = (jnp.pad(x.astype(operand).transpose(0, 2, 1, 3), [(0, 0), (0, 0), (0, pad_S), (0, 0)])  # (B, K, Sp, H)
            for x in (key, value))
    if bias is not None:
        bias = pairs_to_rows(jnp.asarray(bias).astype(cfg.compute), K, G, pad_T, pad_S, 0)
    if mask is not None:
        mask = pairs_to_rows(jnp.asarray(mask), K, G, pad_T, pad_S, False)
    return Operands(q, k, v, bias, mask)


def pairs_to_rows(x, K, G, pad_T, pad_S, fill):
    """A bias or mask broadcastable to ``(B, N, T, S)`` as ``(B|1, K|1, Tp|1, G|1, Sp|1)``, padded
    with ``fill``."""
    x = x.reshape((1,) * (4 - x.ndim) + x.shape)                                  # (B|1, N|1, T|1, S|1)
    b, n, t, s = x.shape
    x = x.reshape(b, K if n != 1 else 1, G if n != 1 else 1, t, s).transpose(0, 1, 3, 2, 4)
    pads = [(0, 0), (0, 0), (0, pad_T if t != 1 else 0), (0, 0), (0, pad_S if s != 1 else 0)]
    return jnp.pad(x, pads, constant_values=fill)


def from_rows(out, lse, T):
    """The kernels' ``out (B, K, Tp, G, H)`` and ``lse (B, K, Tp, G)`` back as ``(B, T, N, H)``
    and ``(B, T, N)``, the padded queries cut."""
    B, K, _, G, H = out.shape
    out = out[:, :, :T].transpose(0, 2, 1, 3, 4).reshape(B, T, K * G, H)
    return out, lse[:, :, :T].transpose(0, 2, 1, 3).reshape(B, T, K * G)


def make_rows(cfg, B, K, *, query_seq_lengths=None, key_value_seq_lengths=None, dropout_rng=None,
              query_segment_ids=None, key_value_segment_ids=None):
    """The per-row :class:`~.config.Rows`: lengths (T and S when not given), (b, k) indices, the
    dropout rng's words and the segment ids (padded to whole blocks with each row's last id,
    so a block's id range is its real tokens')."""
    def lengths(given, full):
        return jnp.full((B, 1), full, jnp.int32) if given is None else jnp.asarray(given).reshape(B, 1).astype(jnp.int32)

    index = jnp.stack(jnp.meshgrid(jnp.arange(B), jnp.arange(K), indexing="ij"), axis=-1).astype(jnp.int32)  # (B, K, 2)
    words = jnp.zeros((1, 1, 2), jnp.uint32)
    if cfg.dropout_rate > 0:
        words = jnp.stack(rng_words(dropout_rng)).reshape(1, 1, 2)
    rows = Rows(lengths(query_seq_lengths, cfg.T), lengths(key_value_seq_lengths, cfg.S), index, words)
    if not cfg.has_segments:
        return rows
    query_ids = key_value_segment_ids if query_segment_ids is None else query_segment_ids
    key_ids = query_ids if key_value_segment_ids is None else key_value_segment_ids

    def padded(ids, length, chunk):
        ids = jnp.asarray(ids).reshape(B, 1, length).astype(jnp.int32)
        return jnp.pad(ids, [(0, 0), (0, 0), (0, -length % chunk)], mode="edge")

    return rows._replace(qseg=padded(query_ids, cfg.T, cfg.query_chunk), kseg=padded(key_ids, cfg.S, cfg.key_chunk))


def block(x, start, size, axis):
    """``x[..., start:start + size, ...]`` along ``axis``, unless that axis broadcasts (size 1)."""
    if x.shape[axis] == 1:
        return x
    return lax.dynamic_slice_in_dim(x, start, size, axis)
