"""The forward and backward kernels of :func:`attention_jax.chunked_attention` and
:func:`attention_jax.flex_attention`: FlashAttention-2's algorithms 1 and 2 (Dao 2023) over the
blocks their block states say are visited (:mod:`.sparse`), in the rows layout of :mod:`.layout`
(a block's logits are ``(B, K, R, kc)``, R = query_chunk * G).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ..._sharding import full_like_leading, leading_sharded
from .. import online_softmax
from .config import Mods, Operands
from .layout import block
from .logits import block_logits, block_scores, dropout_scale, fill_masked, modify_logits
from .sparse import FULL, PARTIAL, option_states, union, visits


def loops(states, body, carry):
    """``body(j, edge, carry)`` over the blocks j of a row (or column) of the grid whose
    ``states (n,)`` (:mod:`.sparse`) say they are visited: the full ones (``edge`` False: no
    mask is built), then the partial ones (``edge`` True), each in index order; empty blocks
    are skipped."""
    for kind, edge in ((FULL, False), (PARTIAL, True)):
        order, count = visits(states, kind)
        carry = lax.fori_loop(0, count, lambda n, c, order=order, edge=edge: body(order[n], edge, c), carry)
    return carry


def block_states(mods, rows, cfg, nq, nk):
    """The states ``(nq, nk)`` of this pass's blocks, one for all the rows processed together
    (:func:`.sparse.union`): a flex block mask's, or those of the options
    (:func:`.sparse.option_states`: causal, window, lengths, segment ids, key padding)."""
    states = option_states(rows, cfg, nq, nk) if mods.states is None else mods.states
    return union(states, axes=(0, 1))


def sink_gradient(sinks, out, lse, dout, dlse):
    """The gradient ``(1, K, G)`` of the sink logits ``(1, K, G)``, from the rows layout's ``out``,
    ``lse`` and their cotangents: ``d lse / d sink = e^(sink - lse)``, the sink's weight, and
    ``d out / d sink = -weight * out``."""
    weight = jnp.exp(sinks[:, :, None, :] - lse)                                  # (B, K, Tp, G)
    delta = jnp.sum(dout * out, axis=-1) - dlse
    return -jnp.sum(weight * delta, axis=(0, 2), keepdims=True)[:, :, 0]


def sink_rows(sinks, qc):
    """The sink logits ``(1, K|1, G)`` as the rows of a query chunk, ``(1, K|1, qc * G)``."""
    b, k, G = sinks.shape
    return jnp.broadcast_to(sinks[:, :, None, :], (b, k, qc, G)).reshape(b, k, qc * G)


def forward(ops, rows, mods, *, cfg):
    """Online-softmax forward: ``out (B, K, Tp, G, H)`` and ``lse (B, K, Tp, G)``, in the
    compute dtype (the operands may be float16/bfloat16). A row that attends no key (and has
    no sink) has ``lse = -inf``."""
    B, K, Tp, G, H = ops.q.shape
    qc, kc = cfg.query_chunk, cfg.key_chunk
    nq, nk = Tp // qc, ops.k.shape[2] // kc
    R = qc * G
    # rows with no valid key in the first block visited need their exp(0) = 1 zeroed: never
    # the case for the causal mask alone (key 0, in the first block visited, is valid for
    # every row), but a mask, a -inf bias, a window, lengths or the mods can rule it out
    zero_invalid = ops.mask is not None or ops.bias is not None or cfg.may_empty_rows
    states = block_states(mods, rows, cfg, nq, nk)                                # (nq, nk)

    def query_chunk(i):
        def body(j, edge, carry):
            m, l, acc = carry                                                      # (B, K, R), (B, K, R), (B, K, R, H)
            s, valid = block_scores(ops, rows, mods, cfg, i, j, edge)              # (B, K, R, kc)
            vj = lax.dynamic_slice_in_dim(ops.v, j * kc, kc, axis=2)               # (B, K, kc, H)
            m, l, p, correction = online_softmax.update(m, l, s, valid if zero_invalid else None)
            kept = p * dropout_scale(rows, i, j, cfg, p.shape) if cfg.dropout_rate > 0 else p
            acc = acc * correction[..., None] + jnp.einsum(
                "BKRS,BKSH->BKRH", kept.astype(vj.dtype), vj, preferred_element_type=cfg.compute)
            return m, l, acc

        c = cfg.compute
        # typed like q (its batch/head sharding, its shard_map axes): the carry the body returns
        init = (full_like_leading(ops.q, (B, K, R), jnp.finfo(c).min, c), full_like_leading(ops.q, (B, K, R), 0, c),
                full_like_leading(ops.q, (B, K, R, H), 0, c))
        if mods.sinks is not None:  # a sink is a key seen first: logit the sink, weight e^0, no value
            init = (init[1] + sink_rows(mods.sinks, qc), init[1] + 1, init[2])
        out, lse = online_softmax.finish(*loops(states[i], body, init), dead_lse=-jnp.inf)
        return out.reshape(B, K, qc, G, H), lse.reshape(B, K, qc, G)

    out, lse = lax.map(query_chunk, jnp.arange(nq))                              # (nq, B, K, qc, G, ...)
    out = jnp.moveaxis(out, 0, 2).reshape(B, K, Tp, G, H)
    lse = jnp.moveaxis(lse, 0, 2).reshape(B, K, Tp, G)
    return out, lse


def forward_tiles(q, k, v, cfg):
    """The output of :func:`forward` (not ``lse``) for the causal mask alone at short
    lengths (:meth:`.blocks.BlockSizes.tile_for`), as a static grid of ``cfg.tile``-square tiles: each tile's
    scores, max, exp, row sums and weighted values are one fused XLA kernel batched over
    all (batch, head) rows, and the tiles of a query block are combined by their maxima
    (the online softmax in another order). XLA's CPU backend fuses a tile only outside a
    loop, up to about 256 x 256 scores, and only when its max and sums are not outputs
    too, hence the unrolled grid (at most 10 tiles, ``BlockSizes.tile_max_length``) and the
    primal alone: under autodiff :func:`forward` runs, for the ``lse`` the backward pass
    needs. Tiles above the diagonal are never computed; every row has key 0, none is empty."""
    B, K, Tp, G, H = q.shape
    t = cfg.tile
    cfg = cfg._replace(query_chunk=t, key_chunk=t)
    nq, nk = -(-cfg.T // t), -(-cfg.S // t)
    q, k, v = (resize_rows(x, n * t) for x, n in ((q, nq), (k, nk), (v, nk)))   # rows past T, S are never seen
    ops = Operands(q, k, v)
    outs = []
    for i in range(nq):
        tiles = []                                                                # (m, l, acc) of each key tile
        for j in range(min(nk, i + 1)):                                           # up to the diagonal
            edge = j == i or (j + 1) * t > cfg.S                                  # a key above the diagonal or past S
            s, _ = block_scores(ops, None, Mods(), cfg, i, j, edge, as_minimum=True)  # (B, K, R, t)
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
    return resize_rows(jnp.concatenate(outs, axis=2), Tp)


def resize_rows(x, n):
    """``x`` with ``n`` rows along axis 2: cut, or padded with zeros."""
    return x[:, :, :n] if x.shape[2] >= n else jnp.pad(x, [(0, 0), (0, 0), (0, n - x.shape[2])] + [(0, 0)] * (x.ndim - 3))


def backward(ops, out, lse, dout, dlse, rows, mods, *, cfg):
    """FlashAttention-2 backward: recompute each block's weights from ``lse``; with dropout
    ``d logits = p (z dp - delta)``, z the block's keep / (1 - rate); ``dlse`` the cotangent
    of ``lse`` (``d lse / d x = p``); through a ``score_mod`` by its VJP, which also gives
    the gradients of the arrays it closes over (``d mods.score``, each ``(1, 1, ...)``)."""
    q, k, v, bias, _ = ops
    B, K, Tp, G, H = q.shape
    qc, kc = cfg.query_chunk, cfg.key_chunk
    nq, nk = Tp // qc, k.shape[2] // kc
    R = qc * G
    c = cfg.compute
    delta = jnp.sum(dout * out, axis=-1) - dlse                                   # (B, K, Tp, G)
    lse = jnp.where(lse == -jnp.inf, 0, lse)  # a row that attends nothing: its logits finfo.min, exp 0
    do_operand = dout.astype(q.dtype)
    states = block_states(mods, rows, cfg, nq, nk)                                # (nq, nk)

    def chunk(x, i):  # (B, K, Tp, G, ...) -> chunk i as (B, K, R, ...)
        x = lax.dynamic_slice_in_dim(x, i * qc, qc, axis=2)
        return x.reshape((B, K, R) + x.shape[4:])

    def key_chunk(j, grads):
        dq, dk, dv, dbias, dscore = grads
        kj = lax.dynamic_slice_in_dim(k, j * kc, kc, axis=2)                      # (B, K, kc, H)
        vj = lax.dynamic_slice_in_dim(v, j * kc, kc, axis=2)

        def body(i, edge, carry):
            dq, dk_j, dv_j, dbias, dscore = carry
            x, valid = block_logits(ops, rows, mods, cfg, i, j, edge)              # (B, K, R, kc)
            if cfg.modifies_logits:
                x, pullback = jax.vjp(lambda x, consts: modify_logits(x, consts, rows, i, j, cfg), x, mods.score)
            # the forward's weights; masked logits are finfo.min and lse is finite, so they come out exactly 0
            p = jnp.exp(fill_masked(x, valid) - chunk(lse, i)[..., None])
            do_i = chunk(do_operand, i)                                             # (B, K, R, H)
            dp = jnp.einsum("BKRH,BKSH->BKRS", do_i, vj, preferred_element_type=c)
            if cfg.dropout_rate > 0:
                z = dropout_scale(rows, i, j, cfg, p.shape)
                kept, dp = p * z, dp * z
            else:
                kept = p
            dv_j = dv_j + jnp.einsum("BKRS,BKRH->BKSH", kept.astype(q.dtype), do_i, preferred_element_type=c)
            ds = p * (dp - chunk(delta, i)[..., None])                              # d logits
            if cfg.modifies_logits:
                ds, dconsts = pullback(ds)
                dscore = tuple(a + b for a, b in zip(dscore, dconsts))
            dq_i = jnp.einsum("BKRS,BKSH->BKRH", ds.astype(q.dtype), kj, preferred_element_type=c)
            dq_i = dq_i.reshape(B, K, qc, G, H)
            dq = lax.dynamic_update_slice_in_dim(dq, lax.dynamic_slice_in_dim(dq, i * qc, qc, 2) + dq_i, i * qc, 2)
            dk_j = dk_j + jnp.einsum("BKRS,BKRH->BKSH", ds.astype(q.dtype), chunk(q, i), preferred_element_type=c)
            if dbias is not None:
                dbias = add_bias_block(dbias, ds.reshape(B, K, qc, G, kc), i * qc, j * kc)
            return dq, dk_j, dv_j, dbias, dscore

        zeros = full_like_leading(k, (B, K, kc, H), 0, c)
        dq, dk_j, dv_j, dbias, dscore = loops(states[:, j], body, (dq, zeros, zeros, dbias, dscore))
        dk = lax.dynamic_update_slice_in_dim(dk, dk_j, j * kc, axis=2)
        dv = lax.dynamic_update_slice_in_dim(dv, dv_j, j * kc, axis=2)
        return dq, dk, dv, dbias, dscore

    # typed as the inputs (their sharding, their shard_map axes): bias's, and (the blocks added
    # into it are computed from q) q's mesh and manual axes even when bias has neither
    dbias = None if bias is None else jnp.zeros_like(bias, c) + full_like_leading(q, bias.shape, 0, c, axes=0)
    dscore = tuple(jnp.zeros_like(x) for x in mods.score)
    init = (jnp.zeros_like(q, c), jnp.zeros_like(k, c), jnp.zeros_like(v, c), dbias, dscore)
    dq, dk, dv, dbias, dscore = lax.fori_loop(0, nk, key_chunk, init)
    dscore = tuple(d[None, None] for d in dscore)  # (1, 1, ...): each_head stacks them per row
    return dq, dk, dv, dbias, dscore  # d/d(scaled q): the scale's own factor is autodiff's, outside


def add_bias_block(dbias, ds, t0, s0):
    """Add the block's ``d logits (B, K, qc, G, kc)`` into ``dbias``, summing over the axes
    along which the bias broadcasts."""
    axes = tuple(a for a in range(5) if dbias.shape[a] == 1 and ds.shape[a] != 1)
    ds = ds.sum(axis=axes, keepdims=True)
    t0 = t0 if dbias.shape[2] != 1 else 0
    s0 = s0 if dbias.shape[4] != 1 else 0
    # one index dtype: with x64 on, Python ints are int64 and the loops' block indices int32
    start = tuple(jnp.asarray(x, jnp.int32) for x in (0, 0, t0, 0, s0))
    return lax.dynamic_update_slice(dbias, lax.dynamic_slice(dbias, start, ds.shape) + ds.astype(dbias.dtype), start)


def each_head(fn, cfg, *arrays):
    """``fn`` on one (batch, key/value head) slice at a time, outputs stacked back to (B, K, ...);
    ``arrays`` are arrays, None or pytrees of arrays (:class:`~.config.Operands`, first, whose
    ``q`` gives B and K; :class:`~.config.Rows`).

    One head at a time makes every block product a plain 2-D matmul, which XLA's CPU
    backend spreads over all cores; batched block products ran about 1.5x slower
    (benchmarks/attention.py, B=2, N=4, L=2048). Tiny blocks (below 256 x 256) stay
    batched: there the loop's overhead outweighs it, and so do arrays that are (or, on a mesh
    with Auto axes, may be) sharded over batch or heads: each device then runs its own rows
    batched, where slicing one row of a sharded axis would gather it across devices.
    """
    lead = jax.tree.leaves(arrays[0])[0]
    B, K = lead.shape[:2]
    if B * K == 1 or cfg.query_chunk * cfg.key_chunk < 2**16 or leading_sharded(lead):
        return fn(*arrays)  # batch or heads sharded over devices: each device runs its own, batched

    def one(bk):
        b, h = bk // K, bk % K
        return fn(*(jax.tree.map(lambda x: block(block(x, b, 1, 0), h, 1, 1), a) for a in arrays))

    stacked = lax.map(one, jnp.arange(B * K))                                    # (B * K, 1, 1, ...)
    return jax.tree.map(lambda x: x.reshape((B, K) + x.shape[3:]), stacked)
