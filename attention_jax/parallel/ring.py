"""Sequence-parallel ring attention over a device mesh (Liu, Zaharia & Abbeel 2023).

When a sequence does not fit one device, shard it: device i of the ring holds query block
``Q_i`` and key/value block ``K_i, V_i`` (the sequence axis split evenly over the mesh axis).
Each device computes attention of its queries against the key/value block it holds, then
passes that block to the next device with ``lax.ppermute`` and receives the previous one's;
after P steps every query block has met every key/value block. The blocks are combined with
the online softmax of ``chunked_attention`` (:mod:`attention_jax.fast.online_softmax`: a running
max ``m``, normaliser ``l`` and output accumulator per query row), so no device ever holds
more than one (T/P, S/P) score block or more than one foreign key/value block.

The backward pass rings again (a custom VJP): the key/value blocks travel with their
gradient accumulators ``dK_j, dV_j``; each device adds its queries' contribution and passes
them on, and after P steps each accumulator is back on the device that owns the block. Only
the inputs, the output and the per-row log-sum-exp are saved: O((T + S) / P) memory per
device in both directions.

Causal attention skips blocks entirely above the diagonal (``lax.cond``): device i computes
i + 1 of the P blocks, so the ring is not load-balanced (device P - 1 does P times the work
of device 0); a zig-zag layout (Brandon et al. 2023, "Striped attention") would balance it.

Shape letters: B batch, T query length, S key/value length, N query heads, K key/value heads
(N % K == 0), H features per head, P devices on the ring.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from attention_np._validate import check_sdpa

from .._dtypes import compute_dtype
from .._sharding import explicit_spec, varying_axes
from ..fast import online_softmax


def _block(q, k, v, q_start, k_start, *, scale, is_causal, key_mask):
    """Logits of one (T/P, S/P) block, masked logits ``finfo.min`` (the convention of
    :mod:`attention_jax.fast.online_softmax`): ``(B, K, G, Tb, Sb)`` and the mask."""
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k) * scale                 # (B, K, G, Tb, Sb)
    mask = key_mask[:, None, None, None, :]                                # (B, 1, 1, 1, Sb)
    if is_causal:
        q_pos = q_start + jnp.arange(q.shape[1])
        k_pos = k_start + jnp.arange(k.shape[1])
        mask = mask & (k_pos[None, :] <= q_pos[:, None])                   # (B, 1, 1, Tb, Sb)
    return jnp.where(mask, logits, jnp.finfo(logits.dtype).min), mask


def _visible(q_start, k_start, Tb, is_causal):
    """Whether any query of the block starting at ``q_start`` may see a key of the block at
    ``k_start`` (False for blocks entirely above the causal diagonal)."""
    return jnp.logical_or(not is_causal, k_start <= q_start + Tb - 1)


def _ring_forward(q, k, v, key_mask, *, axis_name, P, scale, is_causal):
    """Per device: ``q (B, Tb, K, G, H)``, ``k, v (B, Sb, K, H)``, ``key_mask (B, Sb)`` ->
    ``(out (B, Tb, K, G, H), lse (B, K, G, Tb))``."""
    B, Tb, K, G, H = q.shape
    Sb = k.shape[1]
    i = lax.axis_index(axis_name)
    perm = [(j, (j + 1) % P) for j in range(P)]  # device j sends to j + 1: block i - p arrives at step p
    m = online_softmax.initial_max((B, K, G, Tb), q.dtype)
    l = jnp.zeros((B, K, G, Tb), q.dtype)
    acc = jnp.zeros((B, K, G, Tb, H), q.dtype)
    m, l, acc = (lax.pcast(x, tuple(varying_axes(q)), to="varying") for x in (m, l, acc))  # per-device values, as the loop makes them

    def step(p, carry):
        m, l, acc, k, v, key_mask = carry
        j = (i - p) % P                                                    # the block this device holds now
        q_start, k_start = i * Tb, j * Sb

        def update(m, l, acc):
            logits, mask = _block(q, k, v, q_start, k_start, scale=scale, is_causal=is_causal, key_mask=key_mask)
            m, l, p_block, correction = online_softmax.update(m, l, logits, mask)  # p_block (B, K, G, Tb, Sb)
            acc = acc * correction[..., None] + jnp.einsum("BKGTS,BSKH->BKGTH", p_block, v)
            return m, l, acc

        m, l, acc = lax.cond(_visible(q_start, k_start, Tb, is_causal), update, lambda m, l, acc: (m, l, acc), m, l, acc)
        k, v, key_mask = (lax.ppermute(x, axis_name, perm) for x in (k, v, key_mask))
        return m, l, acc, k, v, key_mask

    m, l, acc, *_ = lax.fori_loop(0, P, step, (m, l, acc, k, v, key_mask))
    out, lse = online_softmax.finish(m, l, acc)                             # (B, K, G, Tb, H), (B, K, G, Tb)
    return out.transpose(0, 3, 1, 2, 4), lse


def _ring_backward(q, k, v, key_mask, out, lse, d_out, *, axis_name, P, scale, is_causal):
    """Per device: the gradients ``(dq, dk, dv)`` of :func:`_ring_forward`'s output, with the
    key/value blocks and their gradient accumulators travelling round the ring once more."""
    B, Tb, K, G, H = q.shape
    Sb = k.shape[1]
    i = lax.axis_index(axis_name)
    perm = [(j, (j + 1) % P) for j in range(P)]
    D = jnp.einsum("BTKGH,BTKGH->BKGT", d_out, out)                        # rowsum(dO * O)

    def step(p, carry):
        dq, k, v, dk, dv, key_mask = carry
        j = (i - p) % P
        q_start, k_start = i * Tb, j * Sb

        def update(dq, dk, dv):
            logits, mask = _block(q, k, v, q_start, k_start, scale=scale, is_causal=is_causal, key_mask=key_mask)
            probs = jnp.where(mask, jnp.exp(logits - lse[..., None]), 0.0)  # (B, K, G, Tb, Sb); lse 0 for an empty row
            dv = dv + jnp.einsum("BKGTS,BTKGH->BSKH", probs, d_out)
            d_probs = jnp.einsum("BTKGH,BSKH->BKGTS", d_out, v)
            d_logits = probs * (d_probs - D[..., None])                    # softmax VJP
            dq = dq + jnp.einsum("BKGTS,BSKH->BTKGH", d_logits, k) * scale
            dk = dk + jnp.einsum("BKGTS,BTKGH->BSKH", d_logits, q) * scale
            return dq, dk, dv

        dq, dk, dv = lax.cond(_visible(q_start, k_start, Tb, is_causal), update, lambda *a: a, dq, dk, dv)
        k, v, dk, dv, key_mask = (lax.ppermute(x, axis_name, perm) for x in (k, v, dk, dv, key_mask))
        return dq, k, v, dk, dv, key_mask

    start = (jnp.zeros_like(q), k, v, jnp.zeros_like(k), jnp.zeros_like(v), key_mask)
    dq, _, _, dk, dv, _ = lax.fori_loop(0, P, step, start)  # after P passes each dk_j, dv_j is home again
    return dq, dk, dv


def ring_attention(query, key, value, *, mesh, axis_name, is_causal=False, scale=None, mask=None):
    r"""Scaled dot-product attention with the sequence sharded over a ring of devices.

    .. math::
        \mathrm{out}_i = \sum_j \mathrm{softmax}\Big(\tfrac{Q_i K_j^\top}{\sqrt H}\Big) V_j
        \quad \text{(one softmax over all j)}, \qquad
        (K_j, V_j) \to \text{device } j + 1 \text{ after each step}

    Liu, Zaharia & Abbeel 2023, "Ring attention with blockwise transformers for near-infinite
    context"; the blockwise recurrences of FlashAttention-2 (Dao 2023). Equal to
    ``scaled_dot_product_attention`` on the gathered inputs; see the module docstring for the
    backward pass and the causal schedule.

    Args:
      query: ``(B, T, N, H)``, sharded (or to be sharded) along T over ``axis_name``.
      key, value: ``(B, S, K, H)``, sharded along S; the dtype of ``query``.
      mesh: a ``jax.sharding.Mesh`` with an axis ``axis_name`` of P devices; T and S must be
        multiples of P (causal attention also needs T == S).
      axis_name: the mesh axis the sequence is split over.
      is_causal: query t attends only to keys s <= t.
      scale: logits scale, default ``1/sqrt(H)``.
      mask: optional bool, broadcastable to ``(B, N, T, S)`` (True = attend) as everywhere,
        and the same for every head and query: a key-padding mask ``(B|1, 1, 1, S)``; a query
        with no key to attend to gets zeros, as everywhere in this project.

    Returns:
      ``out (B, T, N, H)``, in the dtype of ``query``, sharded like ``query``.
    """
    query, key, value = (jnp.asarray(x) for x in (query, key, value))
    if not isinstance(mesh, Mesh) or axis_name not in mesh.shape:
        raise ValueError(f"mesh must be a jax.sharding.Mesh with an axis {axis_name!r}; got {mesh!r}")
    shapes = check_sdpa(query, key, value, None, None, scale)
    if query.ndim != 4:
        raise ValueError(f"query must have shape (B, T, N, H) (one batch axis); got {tuple(query.shape)}")
    B, T, N, H = query.shape
    S = shapes["S"]
    P = mesh.shape[axis_name]
    for name, length in (("T", T), ("S", S)):
        if length % P:
            raise ValueError(f"ring_attention splits {name} evenly over the {P} devices of mesh axis {axis_name!r}; got {name}={length}")
    if is_causal and T != S:
        raise ValueError(f"causal ring_attention needs T == S (its blocks share the diagonal); got T={T}, S={S}")
    mask = jnp.ones((B, S), bool) if mask is None else _key_mask(mask, B, N, T, S)
    scale = 1.0 / math.sqrt(H) if scale is None else float(scale)
    return _ring(query, key, value, mask, mesh=mesh, axis_name=axis_name, P=P, scale=scale, is_causal=bool(is_causal))


def _key_mask(mask, B, N, T, S):
    """``(B, S)``: the keys each batch row attends, from a ``mask`` broadcastable to ``(B, N, T, S)``
    that does not vary along N or T."""
    mask = jnp.asarray(mask)
    shape = (1,) * (4 - mask.ndim) + tuple(mask.shape)
    if mask.dtype != bool or mask.ndim > 4 or any(d not in (1, full) for d, full in zip(shape, (B, N, T, S))):
        raise ValueError(f"mask must be a bool array broadcastable to (B, N, T, S) = {(B, N, T, S)}; "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    if shape[1] != 1 or shape[2] != 1:
        raise ValueError(f"ring_attention takes a key-padding mask, the same for every head and query, of shape "
                         f"(B|1, 1, 1, S) = {(B, 1, 1, S)}; got {tuple(mask.shape)}, which varies along "
                         f"{'N' if shape[1] != 1 else 'T'}")
    return jnp.broadcast_to(mask.reshape(shape)[:, 0, 0, :], (B, S))


@functools.partial(jax.jit, static_argnames=("mesh", "axis_name", "P", "scale", "is_causal"))
def _ring(query, key, value, mask, *, mesh, axis_name, P, scale, is_causal):
    dtype, compute = query.dtype, compute_dtype(query.dtype)
    B, T, N, H = query.shape
    K = key.shape[2]
    options = {"axis_name": axis_name, "P": P, "scale": scale, "is_causal": is_causal}

    @jax.custom_vjp
    def local(q, k, v, key_mask):
        return _ring_forward(q, k, v, key_mask, **options)[0]

    def local_fwd(q, k, v, key_mask):
        out, lse = _ring_forward(q, k, v, key_mask, **options)
        return out, (q, k, v, key_mask, out, lse)

    def local_bwd(residuals, d_out):
        q, k, v, key_mask, out, lse = residuals
        dq, dk, dv = _ring_backward(q, k, v, key_mask, out, lse, d_out, **options)
        return dq, dk, dv, None

    local.defvjp(local_fwd, local_bwd)
    seq = PartitionSpec(_batch_axes(query, axis_name), axis_name)
    # the ring axis alone is manual; on a mesh without Explicit axes the others stay automatic,
    # so XLA keeps the batch (and heads) sharded as the query is, not replicated
    manual = {axis_name} if AxisType.Explicit not in tuple(mesh.axis_types) else set(mesh.axis_names)
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(seq, seq, seq, seq), out_specs=seq, axis_names=manual,
                            check_vma=True)
    q = query.astype(compute).reshape(B, T, K, N // K, H)                  # (B, T, K, G, H): G query heads a kv head
    args = (q, key.astype(compute), value.astype(compute), mask)
    if AxisType.Explicit in tuple(mesh.axis_types):
        # on Explicit axes shard_map takes inputs only as in_specs shards them (a replicated
        # mask or an unsharded query is an error, not a resharding)
        args = tuple(jax.sharding.reshard(x, NamedSharding(mesh, seq)) for x in args)
    out = sharded(*args)
    return out.reshape(B, T, N, H).astype(dtype)


def _batch_axes(query, axis_name):
    """The mesh axes the query's batch axis is sharded over on an Explicit mesh (kept, so that
    data and sequence parallelism combine), or None. On a mesh without Explicit axes the
    ``shard_map`` is manual over the ring axis only, and XLA keeps the batch (and heads) as the
    query has them."""
    spec = explicit_spec(query)
    if spec is None or spec[0] is None:
        return None
    axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
    return None if axis_name in axes else spec[0]
