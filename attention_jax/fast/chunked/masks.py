"""Which entries of a block are attended, and which blocks are visited: the causal, window,
padding and length masks built per block from iota (no ``(T, S)`` mask exists), the caller's
bias and mask read block by block, and the loop bounds that skip blocks no query sees."""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jax_core

from ...dropout import keep_mask
from .._fused import replace_masked


def block(x, start, size, axis):
    """``x[..., start:start + size, ...]`` along ``axis``, unless that axis broadcasts (size 1)."""
    if x.shape[axis] == 1:
        return x
    return lax.dynamic_slice_in_dim(x, start, size, axis)


def block_indices(rows, i, j, cfg):
    """The global indices of block (i, j)'s entries, broadcasting to ``(B, K, R, kc)``: batch
    row ``b (B, 1, 1, 1)``, query head ``h (B, K, R, 1)``, query ``t (1, 1, R, 1)`` and key
    ``u (1, 1, 1, kc)`` (row ``r`` of a block is query ``r // G`` of head ``r % G`` of its group)."""
    qc, kc, G = cfg.query_chunk, cfg.key_chunk, cfg.G
    r = lax.broadcasted_iota(jnp.int32, (1, 1, qc * G, 1), 2)
    b = rows.index[:, :1, 0][:, :, None, None]                                     # (B, 1, 1, 1)
    h = rows.index[..., 1][:, :, None, None] * G + r % G
    t = i * qc + r // G
    u = j * kc + lax.broadcasted_iota(jnp.int32, (1, 1, 1, kc), 3)
    return tuple(x.astype(jnp.int32) for x in (b, h, t, u))  # int32 as the mods were traced, x64 or not


def convert_mod(mod, *example):
    """``(fn, differentiated, fixed)``: ``mod`` traced once on the arrays ``example``, with every
    traced array it closes over hoisted out into an argument, so that ``fn(*args, *differentiated,
    *fixed)`` is ``mod(*args)`` and closes over no tracer of the caller's ``jit``, ``grad`` or
    ``vmap``; ``differentiated`` are the float arrays (a bias table, ALiBi slopes: the custom VJP
    gives them gradients), ``fixed`` the integer and boolean ones (document ids, an offset: no
    gradient). Arrays that are not traced stay in ``fn`` as constants. ``(None, (), ())`` for no
    mod. The same mod and example types give the same ``fn``, so a static ``fn`` compiles once.

    ``jax.closure_convert`` would hoist only the arrays that may carry a tangent, leaving an
    integer tracer inside ``fn``, where the custom VJP's backward pass cannot reach it."""
    if mod is None:
        return None, (), ()
    example = tuple((tuple(x.shape), jnp.dtype(x.dtype)) for x in example)
    if jax.config.jax_check_tracer_leaks:  # the cache holds the hoisted tracers: the leak checker would flag them
        return _converted.__wrapped__(mod, example)
    return _converted(mod, example)


@functools.lru_cache(maxsize=256)
def _converted(mod, example):
    """:func:`convert_mod`, cached per mod and the ``(shape, dtype)`` of each example argument."""
    closed = jax.make_jaxpr(mod)(*(jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in example))
    consts = closed.consts                                                        # what mod closes over
    traced = [i for i, c in enumerate(consts) if isinstance(c, jax.core.Tracer)]
    floats = [i for i in traced if jnp.issubdtype(consts[i].dtype, jnp.inexact)]
    fixed = [i for i in traced if i not in floats]
    kept = [None if i in traced else c for i, c in enumerate(consts)]             # the constants, holes for the rest
    jaxpr, n = closed.jaxpr, len(example)                                         # fn holds no tracer

    def fn(*args):
        values = list(kept)
        for i, value in zip(floats + fixed, args[n:], strict=True):
            values[i] = value
        return jax_core.jaxpr_as_fun(jax_core.ClosedJaxpr(jaxpr, values))(*args[:n])[0]

    return fn, tuple(consts[i] for i in floats), tuple(consts[i] for i in fixed)


def apply_mod(fn, consts, *args):
    """A closure-converted mod ``fn(*args, *consts)`` of scalars, on arrays that broadcast
    together: one ``jax.vmap`` per axis, each batching only the arguments that vary along
    it, so a term that depends on the query alone (``ids[b, q_idx]``) is computed once per
    query, not once per (query, key) entry; and one trace on scalars serves every block shape
    and both passes."""
    args = [jnp.asarray(a) for a in args]
    ndim = max(a.ndim for a in args)
    args = [a.reshape((1,) * (ndim - a.ndim) + a.shape) for a in args]
    shape = jnp.broadcast_shapes(*(a.shape for a in args))
    axes = [[d for d in range(ndim) if a.shape[d] != 1] for a in args]          # the axes each one varies along
    squeezed = [a.reshape([a.shape[d] for d in own]) for a, own in zip(args, axes)]

    def mod(*xs):
        return fn(*xs, *consts)

    for d in reversed([d for d in range(ndim) if shape[d] != 1]):               # innermost first
        mod = jax.vmap(mod, in_axes=tuple(0 if d in own else None for own in axes))
    return jnp.broadcast_to(mod(*squeezed), [n for n in shape if n != 1]).reshape(shape)


def block_logits(q, k, bias, mask, rows, i, j, cfg, edge, mods=None):
    """Logits and validity of block (query chunk i, key chunk j), before any ``score_mod``
    and with masked entries not yet replaced.

    q: rows layout ``(B, K, Tp, G, H)``, already scaled; k: ``(B, K, Sp, H)``; bias/mask in
    the rows layout ``(B|1, K|1, Tp|1, G|1, Sp|1)`` or None; ``rows`` the per-row lengths
    and indices (:class:`~.config.Rows`); ``mods`` the arrays the mods close over.
    ``edge``: this block may hold keys above the diagonal, outside the window, past S, past
    a row's length or ruled out by ``cfg.mask_mod``, so that mask is built.
    Returns ``x (B, K, qc * G, kc)`` (in the compute dtype) and ``valid`` broadcastable to
    it, or None when all are valid.
    """
    qc, kc = cfg.query_chunk, cfg.key_chunk
    B, K, _, G, H = q.shape
    qi = lax.dynamic_slice_in_dim(q, i * qc, qc, axis=2).reshape(B, K, qc * G, H)   # (B, K, R, H)
    kj = lax.dynamic_slice_in_dim(k, j * kc, kc, axis=2)                            # (B, K, kc, H)
    s = jnp.einsum("BKRH,BKSH->BKRS", qi, kj, preferred_element_type=cfg.compute)  # (B, K, R, kc)
    shape5 = (B, K, qc, G, kc)
    if bias is not None:
        b = block(block(bias, i * qc, qc, 2), j * kc, kc, 4)
        s = s + jnp.broadcast_to(b, shape5).reshape(s.shape).astype(s.dtype)
    valid = None
    if mask is not None:
        m = block(block(mask, i * qc, qc, 2), j * kc, kc, 4)
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
            qlen, kvlen = rows.qlen[:, :, None, None], rows.kvlen[:, :, None, None]       # (B, 1, 1, 1)
            ok = ok & (t.reshape(qc * G, kc) < qlen) & (u.reshape(qc * G, kc) < kvlen)  # (B, 1, R, kc)
        if cfg.segments:  # the query's segment id is the key's
            qs = jnp.repeat(lax.dynamic_slice_in_dim(rows.qseg, i * qc, qc, axis=2), G, axis=2)  # (B, 1, R)
            ks = lax.dynamic_slice_in_dim(rows.kseg, j * kc, kc, axis=2)                         # (B, 1, kc)
            ok = ok & (qs[..., None] == ks[:, :, None, :])                                       # (B, 1, R, kc)
        if cfg.mask_mod is not None:
            ok = ok & apply_mod(cfg.mask_mod, mods.mask, *block_indices(rows, i, j, cfg)).astype(bool)
        valid = ok if valid is None else valid & ok
    return s, valid


def transform(x, consts, rows, i, j, cfg):
    """Block (i, j)'s logits ``x (B, K, R, kc)`` soft-capped (``cfg.soft_cap``) and through
    ``cfg.score_mod`` (closing over ``consts``), in the compute dtype."""
    if cfg.soft_cap is not None:
        x = cfg.soft_cap * jnp.tanh(x / cfg.soft_cap)
    if cfg.score_mod is not None:
        x = apply_mod(cfg.score_mod, consts, x, *block_indices(rows, i, j, cfg)).astype(x.dtype)
    return x


def transforms(cfg):
    """Whether the logits go through :func:`transform` (and the backward pass through its VJP)."""
    return cfg.soft_cap is not None or cfg.score_mod is not None


def fill_masked(s, valid, cap=False):
    """Masked logits replaced by ``finfo.min`` (never ``-inf``: no NaN). ``cap``: the mask is the
    causal/padding one alone, applied as a minimum (:func:`replace_masked`), which keeps a tile
    one fused kernel on CPU."""
    if valid is None:
        return s
    if cap:
        return replace_masked(s, valid)
    return jnp.where(valid, s, jnp.finfo(s.dtype).min)


def block_scores(q, k, bias, mask, rows, i, j, cfg, edge, cap=False, mods=None):
    """The logits of block (i, j) as the softmax sees them: :func:`block_logits`, then the
    soft-cap and ``score_mod``, then masked entries replaced (:func:`fill_masked`). Returns ``(s, valid)``."""
    s, valid = block_logits(q, k, bias, mask, rows, i, j, cfg, edge, mods)
    if transforms(cfg):
        s = transform(s, mods.score, rows, i, j, cfg)
    return fill_masked(s, valid, cap), valid


def dropout_scale(rows, i, j, cfg, shape):
    """``keep / (1 - rate)`` of block (i, j), ``shape (B, K, R, kc)``: the keep-mask of
    :mod:`attention_jax.dropout` at the block's global (b, n, t, s), so any chunking drops
    the same weights as the dense path and the NumPy half."""
    b, n, t, u = block_indices(rows, i, j, cfg)
    if cfg.broadcast_dropout:
        b, n = b * 0, n * 0
    words = rows.words
    keep = keep_mask((words.reshape(-1)[0], words.reshape(-1)[1]), cfg.dropout_rate, b, n, t, u)
    return jnp.broadcast_to(jnp.where(keep, 1 / (1 - cfg.dropout_rate), 0).astype(cfg.compute), shape)


def key_range(i, cfg, nk):
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


def query_range(j, cfg, nq):
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


def to_rows_layout(x, B, K, G, T, S, pad_T, pad_S, fill):
    """A bias or mask broadcastable to ``(B, N, T, S)`` as ``(B|1, K|1, Tp|1, G|1, Sp|1)``, padded."""
    x = x.reshape((1,) * (4 - x.ndim) + x.shape)                                  # (B|1, N|1, T|1, S|1)
    b, n, t, s = x.shape
    x = x.reshape(b, K if n != 1 else 1, G if n != 1 else 1, t, s).transpose(0, 1, 3, 2, 4)
    pads = [(0, 0), (0, 0), (0, pad_T if t != 1 else 0), (0, 0), (0, pad_S if s != 1 else 0)]
    return jnp.pad(x, pads, constant_values=fill)


def attended_keys(mask, cfg, Sp):
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


def segment_attended_keys(rows, cfg, Sp):
    """``(B, 1, Sp)``: True where some real query (``t < T`` and its row's length; ``t >= s``
    with ``is_causal``) has key s's segment id: the keys that segment ids leave to no query
    are padding, zeroed as the others. Found by sorting each row's query ids (stable, so the
    last of equal ids is the latest query) and a binary search per key: O((T + S) log T)."""
    t = jnp.arange(cfg.T)
    query_ids = jnp.where(t < rows.qlen, rows.qseg[:, 0, :cfg.T], jnp.iinfo(jnp.int32).min)   # (B, T)
    key_ids = rows.kseg[:, 0]                                                                  # (B, Sp)
    order = jnp.argsort(query_ids, axis=1, stable=True)
    ids = jnp.take_along_axis(query_ids, order, axis=1)                                        # sorted
    last = jnp.clip(jax.vmap(lambda a, x: jnp.searchsorted(a, x, side="right"))(ids, key_ids) - 1, 0)  # (B, Sp)
    found = jnp.take_along_axis(ids, last, axis=1) == key_ids
    if cfg.is_causal:  # the latest query of that segment comes at or after the key
        found = found & (jnp.take_along_axis(order, last, axis=1) >= jnp.arange(Sp))
    return found[:, None, :]
