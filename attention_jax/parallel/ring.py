"""Sequence-parallel ring attention over a device mesh (Liu, Zaharia & Abbeel 2023).

When a sequence does not fit one device, shard it: device i of the ring holds query block
``Q_i`` and key/value block ``K_i, V_i`` (the sequence axis split evenly over the mesh axis).
Each device computes attention of its queries against the key/value block it holds, then
passes that block to the next device with ``lax.ppermute`` and receives the previous one's;
after P steps every query block has met every key/value block. Each step runs the kernels of
``chunked_attention`` on the pair it holds (:mod:`attention_jax.fast.chunked.kernels`, in
their blocks: a device never holds a whole (T/P, S/P) score block) and merges the step's
``(out, lse)`` into the running one (:func:`attention_jax.fast.online_softmax.merge`), so no
device holds more than one foreign key/value block.

The backward pass rings again (a custom VJP): the key/value blocks travel with their
gradient accumulators ``dK_j, dV_j``; each device adds its queries' contribution (the chunked
backward kernel, its weights recomputed from the final log-sum-exp) and passes them on, and
after P steps each accumulator is back on the device that owns the block. Only the inputs,
the output and the per-row log-sum-exp are saved: O((T + S) / P) memory per device in both
directions.

Causal attention skips blocks entirely above the diagonal (``lax.switch``): device i computes
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
from .._sharding import explicit_spec, match_varying
from ..fast import online_softmax
from ..fast.chunked.blocks import BlockSizes
from ..fast.chunked.config import Config, Mods, Operands
from ..fast.chunked.kernels import backward, forward
from ..fast.chunked.layout import from_rows, make_rows, to_rows


def _step_configs(Tb, Sb, G, is_causal, compute):
    """The chunked kernels' :class:`~attention_jax.fast.chunked.config.Config` of a ring step:
    ``(full, diagonal)``: a key block before this device's queries (every key visible), and
    with ``is_causal`` the block on the diagonal (local positions: both blocks start at the
    same global position). One block size for both, so that the padded lengths agree."""
    qc, kc = BlockSizes.get_default().blocks(is_causal, Tb, Sb)
    full = Config(is_causal=False, query_chunk=min(qc, Tb), key_chunk=min(kc, Sb), T=Tb, S=Sb, G=G, compute=compute)
    return full, full._replace(is_causal=True)


def _branch(i, j, is_causal):
    """Which kernel device i runs on the key block of device j: 0 none (above the causal
    diagonal), 1 every key visible, 2 the causal diagonal."""
    if not is_causal:
        return jnp.int32(1)
    return jnp.where(j > i, 0, jnp.where(j == i, 2, 1)).astype(jnp.int32)


def _ring_forward(ops, rows, *, axis_name, P, configs, is_causal):
    """Per device, in the rows layout of the chunked kernels: ``ops`` this device's queries and
    key/value block (and key mask). Each step runs the chunked forward kernel on the block it
    holds and merges its ``(out, lse)`` into the running one (:func:`.online_softmax.merge`),
    then passes the block on. Returns ``(out (B, K, Tp, G, H), lse (B, K, Tp, G))``."""
    i = lax.axis_index(axis_name)
    perm = [(j, (j + 1) % P) for j in range(P)]  # device j sends to j + 1: block i - p arrives at step p
    c = configs[0].compute
    none = (jnp.zeros_like(ops.q, c), jnp.full_like(ops.q[..., 0], -jnp.inf, c))  # typed as the kernels' outputs

    def step(p, carry):
        out, lse, k, v, mask = carry
        block = ops._replace(k=k, v=v, mask=mask)
        kernels = [lambda: none] + [lambda cfg=cfg: forward(block, rows, Mods(), cfg=cfg) for cfg in configs]
        out, lse = online_softmax.merge(out, lse, *lax.switch(_branch(i, (i - p) % P, is_causal), kernels))
        k, v, mask = (lax.ppermute(x, axis_name, perm) for x in (k, v, mask))
        return out, lse, k, v, mask

    out, lse, *_ = lax.fori_loop(0, P, step, (*none, ops.k, ops.v, ops.mask))
    return out, lse


def _ring_backward(ops, rows, out, lse, d_out, *, axis_name, P, configs, is_causal):
    """Per device: the gradients of :func:`_ring_forward`'s output: each step runs the chunked
    backward kernel (its weights recomputed from the final ``lse``) on the block it holds; the
    key/value blocks travel with their gradient accumulators, home again after P steps."""
    i = lax.axis_index(axis_name)
    perm = [(j, (j + 1) % P) for j in range(P)]
    d_lse = jnp.zeros_like(lse)  # the ring returns no lse: no cotangent for it

    def step(p, carry):
        dq, k, v, mask, dk, dv = carry
        block = ops._replace(k=k, v=v, mask=mask)
        none = (jnp.zeros_like(dq), jnp.zeros_like(dk), jnp.zeros_like(dv))
        kernels = [lambda: none] + [lambda cfg=cfg: backward(block, out, lse, d_out, d_lse, rows, Mods(), cfg=cfg)[:3]
                                    for cfg in configs]
        dq_j, dk_j, dv_j = lax.switch(_branch(i, (i - p) % P, is_causal), kernels)
        k, v, mask, dk, dv = (lax.ppermute(x, axis_name, perm) for x in (k, v, mask, dk + dk_j, dv + dv_j))
        return dq + dq_j, k, v, mask, dk, dv

    start = (jnp.zeros_like(ops.q, out.dtype), ops.k, ops.v, ops.mask, jnp.zeros_like(ops.k, out.dtype),
             jnp.zeros_like(ops.v, out.dtype))
    dq, _, _, _, dk, dv = lax.fori_loop(0, P, step, start)  # after P passes each dk_j, dv_j is home again
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
    configs = _step_configs(T // P, key.shape[1] // P, N // K, is_causal, compute)
    configs = configs if is_causal else configs[:1]
    options = {"axis_name": axis_name, "P": P, "configs": configs, "is_causal": is_causal}

    @jax.custom_vjp
    def local(ops, rows):
        return _ring_forward(ops, rows, **options)[0]

    def local_fwd(ops, rows):
        out, lse = _ring_forward(ops, rows, **options)
        return out, (ops, rows, out, lse)

    def local_bwd(residuals, d_out):
        ops, rows, out, lse = residuals
        dq, dk, dv = _ring_backward(ops, rows, out, lse, d_out, **options)
        return Operands(dq.astype(ops.q.dtype), dk.astype(ops.k.dtype), dv.astype(ops.v.dtype), None, None), \
            jax.tree.map(lambda _: None, rows)

    local.defvjp(local_fwd, local_bwd)

    def per_device(q, k, v, key_mask):  # q (B, T/P, N, H) scaled, k, v (B, S/P, K, H), key_mask (B, S/P)
        ops = to_rows(q, k, v, None, key_mask[:, None, None, :], configs[0])
        ops = Operands(*match_varying(*ops))  # a custom_vjp's inputs vary over the same manual axes
        out = local(ops, make_rows(configs[0], B, K))
        return from_rows(out, jnp.zeros(out.shape[:-1], out.dtype), q.shape[1])[0]

    seq = PartitionSpec(_batch_axes(query, axis_name), axis_name)
    # the ring axis alone is manual; on a mesh without Explicit axes the others stay automatic,
    # so XLA keeps the batch (and heads) sharded as the query is, not replicated
    manual = {axis_name} if AxisType.Explicit not in tuple(mesh.axis_types) else set(mesh.axis_names)
    sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(seq, seq, seq, seq), out_specs=seq, axis_names=manual,
                            check_vma=True)
    args = (query.astype(compute) * scale, key.astype(compute), value.astype(compute), mask)
    if AxisType.Explicit in tuple(mesh.axis_types):
        # on Explicit axes shard_map takes inputs only as in_specs shards them (a replicated
        # mask or an unsharded query is an error, not a resharding)
        args = tuple(jax.sharding.reshard(x, NamedSharding(mesh, seq)) for x in args)
    return sharded(*args).astype(dtype)


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
