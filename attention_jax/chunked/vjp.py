"""The custom VJP that makes :func:`attention_jax.chunked_attention` O(T + S) in the backward
pass: the forward saves the output and the per-row log-sum-exp (:class:`.config.Residuals`),
and the backward pass recomputes each score block from them."""

import functools

import jax

from .._sharding import reshard_like
from .config import Residuals
from .kernels import backward, each_head, forward, forward_tiles


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def flash(q, k, v, bias, mask, rows, cfg):
    """``out (B, K, Tp, G, H)`` in the compute dtype, from inputs in the rows layout."""
    if cfg.tiles:  # the primal alone (no autodiff): lse is not needed, and would break the fused tiles
        return forward_tiles(q, k, v, cfg)
    return _flash_fwd(q, k, v, bias, mask, rows, cfg)[0]


def _flash_fwd(q, k, v, bias, mask, rows, cfg):
    out, lse = each_head(lambda q, k, v, bias, mask, rows: forward(q, k, v, bias, mask, rows, cfg=cfg),
                         cfg, q, k, v, bias, mask, rows)
    return out, Residuals(q, k, v, bias, mask, out, lse, rows)


def _flash_bwd(cfg, res, dout):
    if cfg.backward_chunks is not None:  # the padded lengths are multiples of these too
        cfg = cfg._replace(query_chunk=cfg.backward_chunks[0], key_chunk=cfg.backward_chunks[1])
    dout = reshard_like(dout.astype(cfg.compute), res.out)  # a replicated cotangent: sliced here, not gathered into
    dq, dk, dv, dbias = each_head(
        lambda q, k, v, bias, mask, out, lse, dout, rows: backward(q, k, v, bias, mask, out, lse, dout, rows, cfg=cfg),
        cfg, res.q, res.k, res.v, res.bias, res.mask, res.out, res.lse, dout, res.rows)
    if dbias is not None:  # per-head slices of a broadcast bias: sum back to its shape
        axes = tuple(a for a in (0, 1) if res.bias.shape[a] == 1 and dbias.shape[a] != 1)
        dbias = dbias.sum(axis=axes, keepdims=True).astype(res.bias.dtype)
    rows = jax.tree.map(lambda _: None, res.rows)  # integer inputs: no cotangent
    return dq.astype(res.q.dtype), dk.astype(res.k.dtype), dv.astype(res.v.dtype), dbias, None, rows


flash.defvjp(_flash_fwd, _flash_bwd)
