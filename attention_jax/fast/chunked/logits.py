"""The entries of one block: its logits (the matmul, the caller's bias and mask, the iota
masks of the options and ``mask_mod``), their soft-cap and ``score_mod``, and its dropout
scale, at the block's global indices. No ``(T, S)`` array exists: every mask is built per
block from iota."""

import jax.numpy as jnp
from jax import lax

from ...dropout import keep_mask
from .._fused import replace_masked
from .closures import apply_mod
from .layout import block


def positions(rows, i, j, cfg):
    """The global positions of block (i, j)'s queries ``t (qc,)`` and keys ``u (kc,)``: the
    local indices, or ``rows.qpos``/``rows.kpos`` where given (a ring device's shard)."""
    qc, kc = cfg.query_chunk, cfg.key_chunk
    t = i * qc + jnp.arange(qc, dtype=jnp.int32)
    u = j * kc + jnp.arange(kc, dtype=jnp.int32)
    if rows is not None and rows.qpos is not None:
        t = lax.dynamic_slice_in_dim(rows.qpos[0, 0], i * qc, qc)
    if rows is not None and rows.kpos is not None:
        u = lax.dynamic_slice_in_dim(rows.kpos[0, 0], j * kc, kc)
    return t, u


def block_indices(rows, i, j, cfg):
    """The global indices of block (i, j)'s entries, broadcasting to ``(B, K, R, kc)``: batch
    row ``b (B, 1, 1, 1)``, query head ``h (B, K, R, 1)``, query ``t (1, 1, R, 1)`` and key
    ``u (1, 1, 1, kc)`` (row ``r`` of a block is query ``r // G`` of head ``r % G`` of its group)."""
    G = cfg.G
    r = lax.broadcasted_iota(jnp.int32, (1, 1, cfg.query_chunk * G, 1), 2)
    b = rows.index[:, :1, 0][:, :, None, None]                                     # (B, 1, 1, 1)
    h = rows.index[..., 1][:, :, None, None] * G + r % G
    t, u = positions(rows, i, j, cfg)
    t = jnp.repeat(t, G)[None, None, :, None]                                      # row r: query r // G
    u = u[None, None, None, :]
    return tuple(x.astype(jnp.int32) for x in (b, h, t, u))  # int32 as the mods were traced, x64 or not


def block_logits(ops, rows, mods, cfg, i, j, edge):
    """Logits and validity of block (query chunk i, key chunk j), before any ``score_mod``
    and with masked entries not yet replaced.

    ``ops`` the :class:`~.config.Operands` (``q`` already scaled), ``rows`` the per-row
    lengths and indices (:class:`~.config.Rows`), ``mods`` the arrays the mods close over.
    ``edge``: the block is partial (:mod:`.sparse`): it may hold keys above the diagonal,
    outside the window, past S, past a row's length, of another segment or ruled out by
    ``cfg.mask_mod``, so that mask is built.
    Returns ``x (B, K, qc * G, kc)`` (in the compute dtype) and ``valid`` broadcastable to
    it, or None when all are valid.
    """
    qc, kc = cfg.query_chunk, cfg.key_chunk
    B, K, _, G, H = ops.q.shape
    qi = lax.dynamic_slice_in_dim(ops.q, i * qc, qc, axis=2).reshape(B, K, qc * G, H)   # (B, K, R, H)
    kj = lax.dynamic_slice_in_dim(ops.k, j * kc, kc, axis=2)                            # (B, K, kc, H)
    s = jnp.einsum("BKRH,BKSH->BKRS", qi, kj, preferred_element_type=cfg.compute)      # (B, K, R, kc)
    shape5 = (B, K, qc, G, kc)
    if ops.bias is not None:
        b = block(block(ops.bias, i * qc, qc, 2), j * kc, kc, 4)
        s = s + jnp.broadcast_to(b, shape5).reshape(s.shape).astype(s.dtype)
    valid = None
    if ops.mask is not None:
        m = block(block(ops.mask, i * qc, qc, 2), j * kc, kc, 4)
        valid = jnp.broadcast_to(m, shape5).reshape(s.shape)
    if edge:
        t, u = positions(rows, i, j, cfg)                                          # global positions
        t, u = jnp.broadcast_to(t[:, None, None], (qc, G, kc)), jnp.broadcast_to(u[None, None, :], (qc, G, kc))
        ok = (j * kc + lax.broadcasted_iota(jnp.int32, (qc, G, kc), 2)) < cfg.S      # not the padding past S
        if cfg.is_causal:
            ok = ok & (u <= t)
        if cfg.window is not None:
            left, right = cfg.window
            ok = ok & (u >= t - left) & (u <= t + right)
        ok = ok.reshape(qc * G, kc)
        if cfg.has_lengths:
            qlen, kvlen = rows.qlen[:, :, None, None], rows.kvlen[:, :, None, None]       # (B, 1, 1, 1)
            ok = ok & (t.reshape(qc * G, kc) < qlen) & (u.reshape(qc * G, kc) < kvlen)  # (B, 1, R, kc)
        if cfg.has_segments:  # the query's segment id is the key's
            qs = jnp.repeat(lax.dynamic_slice_in_dim(rows.qseg, i * qc, qc, axis=2), G, axis=2)  # (B, 1, R)
            ks = lax.dynamic_slice_in_dim(rows.kseg, j * kc, kc, axis=2)                         # (B, 1, kc)
            ok = ok & (qs[..., None] == ks[:, :, None, :])                                       # (B, 1, R, kc)
        if cfg.mask_mod is not None:
            ok = ok & apply_mod(cfg.mask_mod, mods.mask, *block_indices(rows, i, j, cfg)).astype(bool)
        valid = ok if valid is None else valid & ok
    return s, valid


def modify_logits(x, consts, rows, i, j, cfg):
    """Block (i, j)'s logits ``x (B, K, R, kc)`` soft-capped (``cfg.soft_cap``) and through
    ``cfg.score_mod`` (closing over ``consts``), in the compute dtype."""
    if cfg.soft_cap is not None:
        x = cfg.soft_cap * jnp.tanh(x / cfg.soft_cap)
    if cfg.score_mod is not None:
        x = apply_mod(cfg.score_mod, consts, x, *block_indices(rows, i, j, cfg)).astype(x.dtype)
    return x


def fill_masked(s, valid, as_minimum=False):
    """Masked logits replaced by ``finfo.min`` (never ``-inf``: no NaN). ``as_minimum``: the mask
    is the causal/padding one alone, applied as a minimum (:func:`replace_masked`), which keeps
    a tile one fused kernel on CPU."""
    if valid is None:
        return s
    if as_minimum:
        return replace_masked(s, valid)
    return jnp.where(valid, s, jnp.finfo(s.dtype).min)


def block_scores(ops, rows, mods, cfg, i, j, edge, as_minimum=False):
    """The logits of block (i, j) as the softmax sees them: :func:`block_logits`, then the
    soft-cap and ``score_mod``, then masked entries replaced (:func:`fill_masked`). Returns ``(s, valid)``."""
    s, valid = block_logits(ops, rows, mods, cfg, i, j, edge)
    if cfg.modifies_logits:
        s = modify_logits(s, mods.score, rows, i, j, cfg)
    return fill_masked(s, valid, as_minimum), valid


def dropout_scale(rows, i, j, cfg, shape):
    """``keep / (1 - rate)`` of block (i, j), ``shape (B, K, R, kc)``: the keep-mask of
    :mod:`attention_jax.dropout` at the block's global (b, n, t, s), so any chunking drops
    the same weights as the dense path and the NumPy half."""
    b, n, t, u = block_indices(rows, i, j, cfg)
    if cfg.broadcast_dropout:
        b, n = b * 0, n * 0
    keep = keep_mask(rows.words.reshape(2), cfg.dropout_rate, b, n, t, u)        # the rng's two uint32 words
    return jnp.broadcast_to(jnp.where(keep, 1 / (1 - cfg.dropout_rate), 0).astype(cfg.compute), shape)
