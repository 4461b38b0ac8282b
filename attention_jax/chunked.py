"""Memory-efficient attention: online softmax over key chunks, with its own backward pass.

Rabe & Staats 2021, "Self-attention does not need O(n^2) memory"; the forward and
backward recurrences of FlashAttention-2 (Dao 2023, algorithms 1 and 2). The (T, S) score
matrix is never materialised: queries are processed in chunks of ``query_chunk_size``
rows, keys in chunks of ``key_chunk_size``, and only a running max ``m``, a running
normaliser ``l`` and an output accumulator are kept per query row. The backward pass
recomputes each score block from the saved log-sum-exp instead of storing the weights,
so forward and backward both need O(T + S) memory besides one score block.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from attention_np._validate import check_sdpa, check_sdpa_options

from ._batch import fold_batch, fold_broadcast, unfold_batch
from ._dtypes import compute_dtype, operand_dtype
from ._jit import jit
from ._masking import replace_masked
from ._sharding import full_like_leading, leading_sharded, match_varying, reshard_like
from .dot_product import split_scale, static_rng
from .dropout import keep_mask, rng_words

# Chosen by benchmarks/attention.py on 2-core x86 CPUs (float32): larger blocks amortise the
# loop and feed bigger matmuls; beyond 2048 x 1024 nothing improved (H=64, L=8192). Causal
# attention uses square blocks so that the blocks above the diagonal are skipped: 1024, and
# 512 up to L = 2048 (1.2x faster forward than 1024 at 2x4x2048 and 1x8x1024x128; smaller
# blocks, or splitting L = 512, lost more to the loop than they saved).
_DEFAULT_CHUNKS = {"cpu": (2048, 1024), "cpu causal": (1024, 1024), "gpu": (512, 512), "gpu causal": (512, 512)}
_SHORT_CAUSAL = (2048, (512, 512))  # CPU, causal, max(T, S) up to 2048: these blocks
# All of these are upper bounds, split evenly by _even_block.
# The backward pass (five block matmuls, not two) is faster with smaller blocks on CPU:
# forward+backward 1.84x -> 1.35x torch's time at 2x4x2048x64, 1.41x -> 1.25x at L=8192,
# 1.39x -> 1.09x at L=8192 causal (forward blocks 2048 x 1024 or 1024 x 1024).
_BACKWARD_CHUNKS = {"cpu": (512, 512), "gpu": None}
# CPU, the causal mask alone, 256 < max(T, S) <= 1024, H <= 64 and at least 16 (batch, head)
# rows: the forward pass as a static grid of 256 x 256 tiles (_forward_tiles). At 4x8x512x64
# causal 0.94-1.06x torch's forward time against 1.3-1.45x for the block loop; 1.0-1.2x
# against 1.7-2.9x at 8x8x512, 4x8x768 and 4x8x1024. It lost at H = 128 (2.35 vs 1.83x,
# 2x8x1024x128), with 8 rows (1.36 vs 1.23x, 1x8x1024x64) and without the causal mask
# (within noise): benchmarks/results/experiments.md.
_TILES = {"tile": 256, "max_length": 1024, "max_features": 64, "min_rows": 16}


class _Config(NamedTuple):
    """The static part of a call: block sizes, true lengths and what needs masking."""

    is_causal: bool
    query_chunk: int
    key_chunk: int
    T: int  # true query length (the arrays are padded to a multiple of query_chunk)
    S: int  # true key length (padded to a multiple of key_chunk)
    G: int  # query heads per key/value head
    window: tuple | None = None  # (left, right): query t sees keys t - left .. t + right
    lengths: bool = False  # per-row query/key lengths are given (every block is masked)
    dropout_rate: float = 0.0
    broadcast_dropout: bool = False  # one dropout mask for every batch row and head
    compute: object = jnp.float32  # softmax / accumulation dtype (operands may be bf16/f16)
    backward_chunks: tuple | None = None  # (query, key) blocks of the backward pass; None: the forward's
    tiles: int | None = None  # without autodiff, the forward as a static grid of tiles this size (_forward_tiles)

    @property
    def banded(self):
        """Every block needs the iota mask (windows, lengths): no block is known to be full."""
        return self.window is not None or self.lengths


def _check_chunk(name, size):
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"{name} must be a positive int or None; got {size!r}")


def _default_chunks(is_causal, T, S):
    """Default ``(query_chunk, key_chunk)`` for this backend, mask and length."""
    backend = "cpu" if jax.default_backend() == "cpu" else "gpu"
    if backend == "cpu" and is_causal and max(T, S) <= _SHORT_CAUSAL[0]:
        qc, kc = _SHORT_CAUSAL[1]
    else:
        qc, kc = _DEFAULT_CHUNKS[backend + (" causal" if is_causal else "")]
    return _even_block(T, qc), _even_block(S, kc)


def _even_block(L, block, align=128):
    """The block for length ``L``: as many blocks as ``block`` rows need, of equal size
    rounded up to a multiple of ``align``, so that a length just past a multiple of
    ``block`` is not padded to nearly twice its work (L = 1536 non-causal: keys in blocks of
    768, not 1024 padded to 2048, forward 2.11x -> 1.19x torch's time; L = 768 causal:
    384, not 512 padded to 1024, forward+backward 2.68x -> 1.55x). ``block`` when L fits."""
    if L <= block:
        return block
    n = -(-L // block)
    return min(block, -(-L // (n * align)) * align)


def _use_tiles(is_causal, plain, T, S, H, rows):
    """Whether the forward pass runs as :func:`_forward_tiles` (the rule at ``_TILES``):
    ``plain`` means no bias, mask, lengths, window or dropout; ``rows`` is B * N."""
    return (jax.default_backend() == "cpu" and is_causal and plain
            and _TILES["tile"] < max(T, S) <= _TILES["max_length"]
            and H <= _TILES["max_features"] and rows >= _TILES["min_rows"])


def _backward_chunks(qc, kc):
    """Default blocks of the backward pass: on each axis the largest divisor of the
    forward's block (so that the padded lengths fit both passes) that is at most
    ``_BACKWARD_CHUNKS`` and a multiple of 8, else the forward's own block."""
    b = _BACKWARD_CHUNKS["cpu" if jax.default_backend() == "cpu" else "gpu"]
    if b is None:
        return qc, kc
    return _divisor_block(qc, b[0]), _divisor_block(kc, b[1])


def _divisor_block(block, most):
    """The largest divisor of ``block`` that is at most ``most`` and a multiple of 8 (at
    least 128 rows), or ``block`` itself when it is at most ``most`` or has none."""
    if block <= most:
        return block
    for n in range(-(-block // most), block // 128 + 1):
        if block % n == 0 and (block // n) % 8 == 0:
            return block // n
    return block


def _block(x, start, size, axis):
    """``x[..., start:start + size, ...]`` along ``axis``, unless that axis broadcasts (size 1)."""
    if x.shape[axis] == 1:
        return x
    return lax.dynamic_slice_in_dim(x, start, size, axis)


def _scores(q, k, bias, mask, aux, i, j, cfg, edge, cap=False):
    """Logits and validity of block (query chunk i, key chunk j).

    q: rows layout ``(B, K, Tp, G, H)``, already scaled; k: ``(B, K, Sp, H)``; bias/mask in
    the rows layout ``(B|1, K|1, Tp|1, G|1, Sp|1)`` or None; ``aux`` the per-row lengths
    and indices (:func:`_aux`). ``edge``: this block may hold keys above the diagonal,
    outside the window, past S or past a row's length, so that mask is built.
    ``cap``: the mask is the causal/padding one alone (no ``mask``, not ``banded``), applied
    as a minimum (:func:`replace_masked`), which keeps a tile one fused kernel on CPU.
    Returns ``s (B, K, qc * G, kc)`` (in the compute dtype) and ``valid`` broadcastable to
    it, or None when all are valid.
    """
    qc, kc = cfg.query_chunk, cfg.key_chunk
    B, K, _, G, H = q.shape
    qi = lax.dynamic_slice_in_dim(q, i * qc, qc, axis=2).reshape(B, K, qc * G, H)   # (B, K, R, H)
    kj = lax.dynamic_slice_in_dim(k, j * kc, kc, axis=2)                            # (B, K, kc, H)
    s = jnp.einsum("BKRH,BKSH->BKRS", qi, kj, preferred_element_type=cfg.compute)  # (B, K, R, kc)
    shape5 = (B, K, qc, G, kc)
    if bias is not None:
        b = _block(_block(bias, i * qc, qc, 2), j * kc, kc, 4)
        s = s + jnp.broadcast_to(b, shape5).reshape(s.shape).astype(s.dtype)
    valid = None
    if mask is not None:
        m = _block(_block(mask, i * qc, qc, 2), j * kc, kc, 4)
        valid = jnp.broadcast_to(m, shape5).reshape(s.shape)
    if edge:
        t = i * qc + lax.broadcasted_iota(jnp.int32, (qc, G, kc), 0)               # query index
        u = j * kc + lax.broadcasted_iota(jnp.int32, (qc, G, kc), 2)               # key index
        ok = u < cfg.S
        if cfg.is_causal:
            ok = ok & (u <= t)
        if cfg.window is not None:
            left, right = cfg.window
            ok = ok & (u >= t - left) & (u <= t + right)
        ok = ok.reshape(qc * G, kc)
        if cfg.lengths:
            qlen, kvlen = aux[0][:, :, None, None], aux[1][:, :, None, None]       # (B, 1, 1, 1)
            ok = ok & (t.reshape(qc * G, kc) < qlen) & (u.reshape(qc * G, kc) < kvlen)  # (B, 1, R, kc)
        valid = ok if valid is None else valid & ok
    if valid is not None and cap:
        s = replace_masked(s, valid)
    elif valid is not None:
        s = jnp.where(valid, s, jnp.finfo(s.dtype).min)  # replaced, never -inf: no NaN
    return s, valid


def _dropout_scale(aux, i, j, cfg, shape):
    """``keep / (1 - rate)`` of block (i, j), ``shape (B, K, R, kc)``: the keep-mask of
    :mod:`attention_jax.dropout` at the block's global (b, n, t, s), so any chunking drops
    the same weights as the dense path and the NumPy half."""
    qc, kc, G = cfg.query_chunk, cfg.key_chunk, cfg.G
    index, words = aux[2], aux[3]
    r = lax.broadcasted_iota(jnp.int32, (1, 1, qc * G, 1), 2)                     # row = t * G + g
    b = index[..., 0][:, :, None, None]                                            # (B, K, 1, 1)
    n = index[..., 1][:, :, None, None] * G + r % G                                # (B, K, R, 1)
    if cfg.broadcast_dropout:
        b, n = b * 0, n * 0
    t = i * qc + r // G
    u = j * kc + lax.broadcasted_iota(jnp.int32, (1, 1, 1, kc), 3)
    keep = keep_mask((words.reshape(-1)[0], words.reshape(-1)[1]), cfg.dropout_rate, b, n, t, u)
    return jnp.broadcast_to(jnp.where(keep, 1 / (1 - cfg.dropout_rate), 0).astype(cfg.compute), shape)


def _key_range(i, cfg, nk):
    """Key chunks [start, full) need no causal/padding mask for query chunk i; [full, end) do;
    the others lie entirely above the diagonal or outside the window and are skipped."""
    qc, kc = cfg.query_chunk, cfg.key_chunk
    padded = nk * kc != cfg.S
    if cfg.banded:
        last = cfg.S - 1                                          # last key any query of chunk i sees
        if cfg.is_causal:
            last = jnp.minimum(last, (i + 1) * qc - 1)
        start = 0
        if cfg.window is not None:
            left, right = cfg.window
            last = jnp.minimum(last, (i + 1) * qc - 1 + right)
            start = jnp.maximum(i * qc - left, 0) // kc
        end = jnp.minimum(nk, last // kc + 1)
        return start, start, jnp.maximum(end, start)
    if cfg.is_causal:
        end = jnp.minimum(nk, ((i + 1) * qc - 1) // kc + 1)   # last key a query of chunk i sees
        full = jnp.minimum((i * qc + 1) // kc, end)           # chunks wholly at or below the diagonal
    else:
        end, full = nk, nk
    if padded:
        full = jnp.minimum(full, nk - 1)
    return 0, full, end


def _query_range(j, cfg, nq):
    """Query chunks ``[start, edge_end)`` see key chunk j through a causal/padding/window mask,
    ``[edge_end, stop)`` without one (the backward pass's loop bounds)."""
    qc, kc = cfg.query_chunk, cfg.key_chunk
    nk = -(-cfg.S // kc)
    if cfg.banded:
        first = j * kc                                            # first key of chunk j
        lowest = first if cfg.is_causal else 0                    # lowest query that sees it
        stop = nq
        if cfg.window is not None:
            left, right = cfg.window
            lowest = jnp.maximum(lowest, first - right)
            stop = jnp.minimum(nq, ((j + 1) * kc - 1 + left) // qc + 1)
        start = jnp.maximum(lowest, 0) // qc
        stop = jnp.maximum(stop, start)
        return start, stop, stop
    start = (j * kc) // qc if cfg.is_causal else 0
    padded = nk * kc != cfg.S
    if cfg.is_causal:
        edge_end = jnp.minimum(nq, ((j + 1) * kc - 1) // qc + 1)  # past it, every query sees all of chunk j
    else:
        edge_end = start
    if padded:
        edge_end = jnp.where(j == nk - 1, nq, edge_end)
    return start, jnp.maximum(edge_end, start), nq


def _forward(q, k, v, bias, mask, *aux, cfg):
    """Online-softmax forward: ``out (B, K, Tp, G, H)`` and ``lse (B, K, Tp, G)``, in the
    compute dtype (``q``, ``k``, ``v`` may be float16/bfloat16 operands)."""
    B, K, Tp, G, H = q.shape
    qc, kc = cfg.query_chunk, cfg.key_chunk
    nq, nk = Tp // qc, k.shape[2] // kc
    R = qc * G
    low = jnp.finfo(cfg.compute).min
    # rows with no valid key in the first block processed need their exp(0) = 1 zeroed:
    # never the case for causal and padding masks alone (key 0 is valid for every row)
    zero_invalid = mask is not None or cfg.banded

    def query_chunk(i):
        def step(edge):
            def body(j, carry):
                m, l, acc = carry                                                  # (B, K, R), (B, K, R), (B, K, R, H)
                s, valid = _scores(q, k, bias, mask, aux, i, j, cfg, edge)         # (B, K, R, kc)
                vj = lax.dynamic_slice_in_dim(v, j * kc, kc, axis=2)               # (B, K, kc, H)
                m_new = jnp.maximum(m, s.max(-1))
                p = jnp.exp(s - m_new[..., None])
                if zero_invalid and valid is not None:
                    # a row with no valid key yet has m_new = s = finfo.min and exp(0) = 1: zero it
                    p = jnp.where(valid, p, 0)
                correction = jnp.exp(m - m_new)
                kept = p * _dropout_scale(aux, i, j, cfg, p.shape) if cfg.dropout_rate > 0 else p
                acc = acc * correction[..., None] + jnp.einsum(
                    "BKRS,BKSH->BKRH", kept.astype(vj.dtype), vj, preferred_element_type=cfg.compute)
                return m_new, l * correction + p.sum(-1), acc
            return body

        c = cfg.compute
        # typed like q (its batch/head sharding, its shard_map axes): the carry the body returns
        init = (full_like_leading(q, (B, K, R), low, c), full_like_leading(q, (B, K, R), 0, c),
                full_like_leading(q, (B, K, R, H), 0, c))
        start, full, end = _key_range(i, cfg, nk)
        carry = lax.fori_loop(start, full, step(False), init)
        m, l, acc = lax.fori_loop(full, end, step(True), carry)
        # every key masked: 0 (and lse 0). Tested as l == 0, not l > 0: a NaN in the
        # inputs makes l NaN, and must reach the output, not be replaced by 0
        empty = l == 0
        safe = jnp.where(empty, 1, l)
        out = jnp.where(empty[..., None], 0, acc / safe[..., None])
        lse = jnp.where(empty, 0, m + jnp.log(safe))
        return out.reshape(B, K, qc, G, H), lse.reshape(B, K, qc, G)

    out, lse = lax.map(query_chunk, jnp.arange(nq))                              # (nq, B, K, qc, G, ...)
    out = jnp.moveaxis(out, 0, 2).reshape(B, K, Tp, G, H)
    lse = jnp.moveaxis(lse, 0, 2).reshape(B, K, Tp, G)
    return out, lse


def _forward_tiles(q, k, v, cfg):
    """The output of :func:`_forward` (not ``lse``) for the causal mask alone at short
    lengths (``_use_tiles``), as a static grid of ``cfg.tiles``-square tiles: each tile's
    scores, max, exp, row sums and weighted values are one fused XLA kernel batched over
    all (batch, head) rows, and the tiles of a query block are combined by their maxima
    (the online softmax in another order). XLA's CPU backend fuses a tile only outside a
    loop, up to about 256 x 256 scores, and only when its max and sums are not outputs
    too, hence the unrolled grid (at most 10 tiles, ``_TILES["max_length"]``) and the
    primal alone: under autodiff :func:`_forward` runs, for the ``lse`` the backward pass
    needs. Tiles above the diagonal are never computed; every row has key 0, none is empty."""
    B, K, Tp, G, H = q.shape
    t = cfg.tiles
    cfg = cfg._replace(query_chunk=t, key_chunk=t)
    nq, nk = -(-cfg.T // t), -(-cfg.S // t)
    q, k, v = (_resize_rows(x, n * t) for x, n in ((q, nq), (k, nk), (v, nk)))   # rows past T, S are never seen
    outs = []
    for i in range(nq):
        tiles = []                                                                # (m, l, acc) of each key tile
        for j in range(min(nk, i + 1)):                                           # up to the diagonal
            edge = j == i or (j + 1) * t > cfg.S                                  # a key above the diagonal or past S
            s, _ = _scores(q, k, None, None, (), i, j, cfg, edge, cap=True)      # (B, K, R, t)
            vj = v[:, :, j * t:(j + 1) * t]                                       # (B, K, t, H)
            m = s.max(-1)
            p = jnp.exp(s - m[..., None])
            tiles.append((m, p.sum(-1), jnp.einsum(
                "BKRS,BKSH->BKRH", p.astype(vj.dtype), vj, preferred_element_type=cfg.compute)))
        m, l, acc = tiles[0]
        if len(tiles) > 1:
            m = functools.reduce(jnp.maximum, [tile[0] for tile in tiles])
            scales = [jnp.exp(tile[0] - m) for tile in tiles]
            l = sum(c * tile[1] for c, tile in zip(scales, tiles))
            acc = sum(c[..., None] * tile[2] for c, tile in zip(scales, tiles))
        outs.append((acc / l[..., None]).reshape(B, K, t, G, H))
    return _resize_rows(jnp.concatenate(outs, axis=2), Tp)


def _resize_rows(x, n):
    """``x`` with ``n`` rows along axis 2: cut, or padded with zeros."""
    return x[:, :, :n] if x.shape[2] >= n else jnp.pad(x, [(0, 0), (0, 0), (0, n - x.shape[2])] + [(0, 0)] * (x.ndim - 3))


def _backward(q, k, v, bias, mask, out, lse, dout, *aux, cfg):
    """FlashAttention-2 backward: recompute each block's weights from ``lse``; with dropout
    ``d logits = p (z dp - delta)``, z the block's keep / (1 - rate)."""
    B, K, Tp, G, H = q.shape
    qc, kc = cfg.query_chunk, cfg.key_chunk
    nq, nk = Tp // qc, k.shape[2] // kc
    R = qc * G
    c = cfg.compute
    delta = jnp.sum(dout * out, axis=-1)                                          # (B, K, Tp, G)
    do_operand = dout.astype(q.dtype)

    def rows(x, i):  # (B, K, Tp, G, ...) -> chunk i as (B, K, R, ...)
        x = lax.dynamic_slice_in_dim(x, i * qc, qc, axis=2)
        return x.reshape((B, K, R) + x.shape[4:])

    def key_chunk(j, grads):
        dq, dk, dv, dbias = grads
        kj = lax.dynamic_slice_in_dim(k, j * kc, kc, axis=2)                      # (B, K, kc, H)
        vj = lax.dynamic_slice_in_dim(v, j * kc, kc, axis=2)

        def step(edge):
            def body(i, carry):
                dq, dk_j, dv_j, dbias = carry
                s, _ = _scores(q, k, bias, mask, aux, i, j, cfg, edge)             # (B, K, R, kc)
                # the forward's weights; masked logits are finfo.min and lse is finite
                # (0 for fully masked rows), so they come out exactly 0
                p = jnp.exp(s - rows(lse, i)[..., None])
                do_i = rows(do_operand, i)                                         # (B, K, R, H)
                dp = jnp.einsum("BKRH,BKSH->BKRS", do_i, vj, preferred_element_type=c)
                if cfg.dropout_rate > 0:
                    z = _dropout_scale(aux, i, j, cfg, p.shape)
                    kept, dp = p * z, dp * z
                else:
                    kept = p
                dv_j = dv_j + jnp.einsum("BKRS,BKRH->BKSH", kept.astype(q.dtype), do_i, preferred_element_type=c)
                ds = p * (dp - rows(delta, i)[..., None])                          # d logits
                dq_i = jnp.einsum("BKRS,BKSH->BKRH", ds.astype(q.dtype), kj, preferred_element_type=c)
                dq_i = dq_i.reshape(B, K, qc, G, H)
                dq = lax.dynamic_update_slice_in_dim(dq, lax.dynamic_slice_in_dim(dq, i * qc, qc, 2) + dq_i, i * qc, 2)
                dk_j = dk_j + jnp.einsum("BKRS,BKRH->BKSH", ds.astype(q.dtype), rows(q, i), preferred_element_type=c)
                if dbias is not None:
                    dbias = _add_bias_block(dbias, ds.reshape(B, K, qc, G, kc), i * qc, j * kc)
                return dq, dk_j, dv_j, dbias
            return body

        zeros = full_like_leading(k, (B, K, kc, H), 0, c)
        start, edge_end, stop = _query_range(j, cfg, nq)
        carry = lax.fori_loop(start, edge_end, step(True), (dq, zeros, zeros, dbias))
        dq, dk_j, dv_j, dbias = lax.fori_loop(edge_end, stop, step(False), carry)
        dk = lax.dynamic_update_slice_in_dim(dk, dk_j, j * kc, axis=2)
        dv = lax.dynamic_update_slice_in_dim(dv, dv_j, j * kc, axis=2)
        return dq, dk, dv, dbias

    # typed as the inputs (their sharding, their shard_map axes): bias's, and (the blocks added
    # into it are computed from q) q's mesh and manual axes even when bias has neither
    dbias = None if bias is None else jnp.zeros_like(bias, c) + full_like_leading(q, bias.shape, 0, c, axes=0)
    init = (jnp.zeros_like(q, c), jnp.zeros_like(k, c), jnp.zeros_like(v, c), dbias)
    dq, dk, dv, dbias = lax.fori_loop(0, nk, key_chunk, init)
    return dq, dk, dv, dbias  # d/d(scaled q): the scale's own factor is autodiff's, outside


def _add_bias_block(dbias, ds, t0, s0):
    """Add the block's ``d logits (B, K, qc, G, kc)`` into ``dbias``, summing over the axes
    along which the bias broadcasts."""
    axes = tuple(a for a in range(5) if dbias.shape[a] == 1 and ds.shape[a] != 1)
    ds = ds.sum(axis=axes, keepdims=True)
    t0 = t0 if dbias.shape[2] != 1 else 0
    s0 = s0 if dbias.shape[4] != 1 else 0
    start = (0, 0, t0, 0, s0)
    return lax.dynamic_update_slice(dbias, lax.dynamic_slice(dbias, start, ds.shape) + ds.astype(dbias.dtype), start)


def _each_head(fn, cfg, *arrays):
    """``fn`` on one (batch, key/value head) slice at a time, outputs stacked back to (B, K, ...).

    One head at a time makes every block product a plain 2-D matmul, which XLA's CPU
    backend spreads over all cores; batched block products ran about 1.5x slower
    (benchmarks/attention.py, B=2, N=4, L=2048). Tiny blocks (below 256 x 256) stay
    batched: there the loop's overhead outweighs it, and so do arrays that are (or, on a mesh
    with Auto axes, may be) sharded over batch or heads: each device then runs its own rows
    batched, where slicing one row of a sharded axis would gather it across devices.
    """
    B, K = arrays[0].shape[:2]
    if B * K == 1 or cfg.query_chunk * cfg.key_chunk < 2**16 or leading_sharded(arrays[0]):
        return fn(*arrays)  # batch or heads sharded over devices: each device runs its own, batched

    def one(bk):
        b, h = bk // K, bk % K
        return fn(*(None if x is None else _block(_block(x, b, 1, 0), h, 1, 1) for x in arrays))

    stacked = lax.map(one, jnp.arange(B * K))                                    # (B * K, 1, 1, ...)
    return jax.tree.map(lambda x: x.reshape((B, K) + x.shape[3:]), stacked)


@functools.partial(jax.custom_vjp, nondiff_argnums=(9,))
def _flash(q, k, v, bias, mask, qlen, kvlen, index, words, cfg):
    if cfg.tiles:  # the primal alone (no autodiff): lse is not needed, and would break the fused tiles
        return _forward_tiles(q, k, v, cfg)
    return _flash_fwd(q, k, v, bias, mask, qlen, kvlen, index, words, cfg)[0]


def _flash_fwd(q, k, v, bias, mask, qlen, kvlen, index, words, cfg):
    aux = (qlen, kvlen, index, words)
    out, lse = _each_head(lambda q, k, v, bias, mask, *aux: _forward(q, k, v, bias, mask, *aux, cfg=cfg),
                          cfg, q, k, v, bias, mask, *aux)
    return out, (q, k, v, bias, mask, out, lse, aux)


def _flash_bwd(cfg, residuals, dout):
    q, k, v, bias, mask, out, lse, aux = residuals
    if cfg.backward_chunks is not None:  # the padded lengths are multiples of these too
        cfg = cfg._replace(query_chunk=cfg.backward_chunks[0], key_chunk=cfg.backward_chunks[1])
    dout = reshard_like(dout.astype(cfg.compute), out)  # a replicated cotangent: sliced here, not gathered into
    dq, dk, dv, dbias = _each_head(
        lambda q, k, v, bias, mask, out, lse, dout, *aux: _backward(q, k, v, bias, mask, out, lse, dout, *aux, cfg=cfg),
        cfg, q, k, v, bias, mask, out, lse, dout, *aux)
    if dbias is not None:  # per-head slices of a broadcast bias: sum back to its shape
        axes = tuple(a for a in (0, 1) if bias.shape[a] == 1 and dbias.shape[a] != 1)
        dbias = dbias.sum(axis=axes, keepdims=True).astype(bias.dtype)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dbias, None, None, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _to_rows_layout(x, B, K, G, T, S, pad_T, pad_S, fill):
    """A bias or mask broadcastable to ``(B, N, T, S)`` as ``(B|1, K|1, Tp|1, G|1, Sp|1)``, padded."""
    x = x.reshape((1,) * (4 - x.ndim) + x.shape)                                  # (B|1, N|1, T|1, S|1)
    b, n, t, s = x.shape
    x = x.reshape(b, K if n != 1 else 1, G if n != 1 else 1, t, s).transpose(0, 1, 3, 2, 4)
    pads = [(0, 0), (0, 0), (0, pad_T if t != 1 else 0), (0, 0), (0, pad_S if s != 1 else 0)]
    return jnp.pad(x, pads, constant_values=fill)


def _attended_keys(mask, cfg, Sp):
    """``(B|1, K|1, Sp|1)``: True where a query of some head of the key/value head may attend
    key s (the caller's mask in rows layout, and the causal mask). Keys no query attends
    (padding) are zeroed before the loops, as in the dense path, so NaN or inf stored there
    cannot reach the output or the gradients; None when every key is attended."""
    s = lax.broadcasted_iota(jnp.int32, (1, 1, Sp), 2)                            # key index
    if mask is None:
        return s < cfg.T if cfg.is_causal else None                               # query T-1 sees keys <= T-1
    if not cfg.is_causal:
        return mask.any(axis=(2, 3))
    if mask.shape[2] == 1:                                                        # the same for every query
        return mask.any(axis=(2, 3)) & (s < cfg.T)
    t = lax.broadcasted_iota(jnp.int32, (1, 1, mask.shape[2], 1, 1), 2)           # query index
    if mask.shape[4] == 1:                                                        # the same for every key
        last = jnp.where(mask, t, -1).max(axis=(2, 3))                            # last query that attends at all
        return s <= last
    return (mask & (lax.broadcasted_iota(jnp.int32, (1, 1, 1, 1, Sp), 4) <= t)).any(axis=(2, 3))


_NO_FORWARD_MODE = (
    "chunked_attention does not support forward-mode autodiff (jax.jvp, jax.jacfwd, "
    "jax.linearize): its memory-efficient backward pass is a jax.custom_vjp, which JAX "
    "cannot differentiate forward. Use scaled_dot_product_attention (the same numbers, "
    "O(T S) memory) for forward mode, or reverse mode (jax.grad, jax.vjp, jax.jacrev)."
)


def chunked_attention(
    query, key, value, *, bias=None, mask=None, is_causal=False, scale=None,
    query_chunk_size=None, key_chunk_size=None, query_seq_lengths=None, key_value_seq_lengths=None,
    local_window_size=None, dropout_rate=0.0, dropout_rng=None, broadcast_dropout=False,
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
        per backend (CPU: 2048 x 1024, causal 1024 x 1024 and 512 x 512 up to L = 2048,
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

    Precision: float16/bfloat16 inputs keep their dtype as the block matmuls' operands,
    accumulated in float32 (``preferred_element_type``); the running max, normaliser and
    output accumulator are float32.

    Returns:
      ``out``: ``(B, T, N, H)`` in the dtype of ``query``.
    """
    scale, scale_value = split_scale(scale)
    try:
        return _chunked_attention(
            query, key, value, bias=bias, mask=mask, is_causal=is_causal, scale=scale, scale_value=scale_value,
            query_chunk_size=query_chunk_size, key_chunk_size=key_chunk_size,
            query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
            local_window_size=local_window_size, dropout_rate=dropout_rate,
            dropout_rng=static_rng(dropout_rng, dropout_rate), broadcast_dropout=broadcast_dropout,
        )
    except TypeError as error:
        if "forward-mode autodiff" in str(error) and "custom_vjp" in str(error):
            raise TypeError(_NO_FORWARD_MODE) from None
        raise


@jit(static_argnames=("is_causal", "scale", "query_chunk_size", "key_chunk_size", "local_window_size",
                      "dropout_rate", "broadcast_dropout"))
def _chunked_attention(
    query, key, value, *, bias, mask, is_causal, scale, scale_value, query_chunk_size, key_chunk_size,
    query_seq_lengths, key_value_seq_lengths, local_window_size, dropout_rate, dropout_rng, broadcast_dropout,
):
    """:func:`chunked_attention`, jit-compiled (the public function adds the forward-mode message)."""
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    shapes = check_sdpa(query, key, value, bias, mask, scale)
    window, dropout_rate = check_sdpa_options(
        shapes, query_seq_lengths, key_value_seq_lengths, local_window_size, dropout_rate, dropout_rng
    )
    _check_chunk("query_chunk_size", query_chunk_size)
    _check_chunk("key_chunk_size", key_chunk_size)
    batch = shapes["B..."]  # the caller's batch axes, folded into one axis B here
    T, S, N, H, K = (shapes[c] for c in "TSNHK")
    dtype, compute, operand = query.dtype, compute_dtype(query.dtype), operand_dtype(query.dtype)
    if T == 0 or S == 0:  # no query, or nothing to attend to: empty, or zeros (as the dense path)
        return jnp.zeros(query.shape, dtype)
    query, key, value = (fold_batch(x, batch) for x in (query, key, value))
    bias, mask = (None if x is None else fold_broadcast(x, batch, 3) for x in (bias, mask))
    B, G = query.shape[0], N // K
    if scale_value is not None:
        scale = jnp.asarray(scale_value).astype(compute)
    else:
        scale = 1.0 / math.sqrt(max(H, 1)) if scale is None else float(scale)  # H = 0: the logits are empty sums, 0
    default_q, default_k = _default_chunks(is_causal, T, S)
    qc = min(query_chunk_size or default_q, T)
    kc = min(key_chunk_size or default_k, S)
    pad_T, pad_S = -T % qc, -S % kc
    lengths = query_seq_lengths is not None or key_value_seq_lengths is not None
    cfg = _Config(bool(is_causal), qc, kc, T, S, G, window, lengths, dropout_rate, bool(broadcast_dropout), compute)
    if query_chunk_size is None and key_chunk_size is None:
        plain = bias is None and mask is None and not lengths and window is None and not dropout_rate
        cfg = cfg._replace(backward_chunks=_backward_chunks(qc, kc),
                           tiles=_TILES["tile"] if _use_tiles(is_causal, plain, T, S, H, B * N) else None)
    # rows layout: each key/value head with its G query heads, query rows contiguous per chunk;
    # float16/bfloat16 stay the matmul operands (accumulated in float32)
    q = (query.astype(compute) * scale).astype(operand).reshape(B, T, K, G, H).transpose(0, 2, 1, 3, 4)  # (B, K, T, G, H)
    q = jnp.pad(q, [(0, 0), (0, 0), (0, pad_T), (0, 0), (0, 0)])
    k = jnp.pad(key.astype(operand).transpose(0, 2, 1, 3), [(0, 0), (0, 0), (0, pad_S), (0, 0)])    # (B, K, Sp, H)
    v = jnp.pad(value.astype(operand).transpose(0, 2, 1, 3), [(0, 0), (0, 0), (0, pad_S), (0, 0)])  # (B, K, Sp, H)
    if bias is not None:
        bias = _to_rows_layout(jnp.asarray(bias).astype(compute), B, K, G, T, S, pad_T, pad_S, 0)
    if mask is not None:
        mask = _to_rows_layout(jnp.asarray(mask), B, K, G, T, S, pad_T, pad_S, False)
    qlen = jnp.full((B, 1), T, jnp.int32) if query_seq_lengths is None else jnp.asarray(query_seq_lengths).reshape(B, 1).astype(jnp.int32)
    kvlen = jnp.full((B, 1), S, jnp.int32) if key_value_seq_lengths is None else jnp.asarray(key_value_seq_lengths).reshape(B, 1).astype(jnp.int32)
    keep = _attended_keys(mask, cfg, k.shape[2])                                  # (B|1, K|1, Sp|1)
    if key_value_seq_lengths is not None:                                         # keys past a row's length: padding
        in_length = lax.broadcasted_iota(jnp.int32, (1, 1, k.shape[2]), 2) < kvlen[:, :, None]  # (B, 1, Sp)
        keep = in_length if keep is None else keep & in_length
    if keep is not None:
        k, v = jnp.where(keep[..., None], k, 0), jnp.where(keep[..., None], v, 0)
    index = jnp.stack(jnp.meshgrid(jnp.arange(B), jnp.arange(K), indexing="ij"), axis=-1).astype(jnp.int32)  # (B, K, 2): b, k
    words = jnp.zeros((1, 1, 2), jnp.uint32)
    if dropout_rate > 0:
        words = jnp.stack(rng_words(dropout_rng)).reshape(1, 1, 2)
    # inside shard_map: every input of the custom VJP varies over the same manual axes
    q, k, v, bias, mask, qlen, kvlen = match_varying(q, k, v, bias, mask, qlen, kvlen)
    out = _flash(q, k, v, bias, mask, qlen, kvlen, index, words, cfg)              # (B, K, Tp, G, H)
    out = out[:, :, :T].transpose(0, 2, 1, 3, 4).reshape(B, T, N, H)
    return unfold_batch(out.astype(dtype), batch)
