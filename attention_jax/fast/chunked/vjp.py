"""The custom VJP that makes :func:`attention_jax.chunked_attention` and
:func:`attention_jax.flex_attention` O(T + S) in the backward pass: the forward saves the
output and the per-row log-sum-exp (:class:`.config.Residuals`), and the backward pass
recomputes each score block from them."""

import functools

import jax
import jax.numpy as jnp

from ..._sharding import reshard_like
from .config import Operands, Residuals
from .kernels import backward, each_head, forward, forward_tiles, sink_gradient


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def flash(ops, rows, mods, cfg):
    """``(out (B, K, Tp, G, H), lse (B, K, Tp, G))`` in the compute dtype, from the
    :class:`~.config.Operands` and :class:`~.config.Rows` in the rows layout; ``mods`` the
    :class:`~.config.Mods` of ``flex_attention`` (and the sinks)."""
    if cfg.tile:  # the primal alone (no autodiff): lse is not needed, and would break the fused tiles
        out = forward_tiles(ops.q, ops.k, ops.v, cfg)
        return out, jnp.zeros(out.shape[:-1], out.dtype)
    return _flash_fwd(ops, rows, mods, cfg)[0]


def _flash_fwd(ops, rows, mods, cfg):
    def run(ops, rows, sinks, states):  # the mods' closed-over arrays are shared by every row
        return forward(ops, rows, mods._replace(sinks=sinks, states=states), cfg=cfg)

    out, lse = each_head(run, cfg, ops, rows, mods.sinks, mods.states)
    return (out, lse), Residuals(ops, out, lse, rows, mods)


def _flash_bwd(cfg, res, cotangents):
    dout, dlse = cotangents
    if cfg.backward_chunks is not None:  # the padded lengths are multiples of these too
        cfg = cfg._replace(query_chunk=cfg.backward_chunks[0], key_chunk=cfg.backward_chunks[1])
    ops = res.operands
    dout = reshard_like(dout.astype(cfg.compute), res.out)  # a replicated cotangent: sliced here, not gathered into
    dlse = dlse.astype(cfg.compute)
    mods = res.mods

    def run(ops, out, lse, dout, dlse, rows, sinks, states):
        return backward(ops, out, lse, dout, dlse, rows, mods._replace(sinks=sinks, states=states), cfg=cfg)

    dq, dk, dv, dbias, dscore = each_head(run, cfg, ops, res.out, res.lse, dout, dlse, res.rows, mods.sinks,
                                          mods.states)
    if dbias is not None:  # per-head slices of a broadcast bias: sum back to its shape
        axes = tuple(a for a in (0, 1) if ops.bias.shape[a] == 1 and dbias.shape[a] != 1)
        dbias = dbias.sum(axis=axes, keepdims=True).astype(ops.bias.dtype)
    dscore = tuple(d.sum(axis=(0, 1)).astype(x.dtype) for d, x in zip(dscore, mods.score))
    dsinks = None
    if mods.sinks is not None:
        dsinks = sink_gradient(mods.sinks, res.out, res.lse, dout, dlse).astype(mods.sinks.dtype)  # (1, K, G)
    rows = jax.tree.map(lambda _: None, res.rows)  # integer inputs: no cotangent
    dmods = mods._replace(score=dscore, mask=tuple(None for _ in mods.mask), sinks=dsinks, states=None)
    dops = Operands(dq.astype(ops.q.dtype), dk.astype(ops.k.dtype), dv.astype(ops.v.dtype), dbias, None)
    return dops, rows, dmods


flash.defvjp(_flash_fwd, _flash_bwd)
