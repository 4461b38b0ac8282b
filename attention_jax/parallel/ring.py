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

The options are those of ``chunked_attention``, computed at global positions: every device
knows the positions of the queries it holds and of the key block it holds at each step
(:mod:`.layouts`), and the kernels' block states skip the blocks no query of the pair sees
(above the causal diagonal, outside the window, past a row's length, segments that do not
meet). With the contiguous layout causal attention is not load-balanced (device i computes
i + 1 of the P blocks; device P - 1 does P times the work of device 0); with
``layout="zigzag"`` every device holds one chunk from each end of the sequence and computes
the same number of blocks.

Shape letters: B batch, T query length, S key/value length, N query heads, K key/value heads
(N % K == 0), H features per head, P devices on the ring.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from attention_np._validate import check_choice, check_sdpa, check_sdpa_extras, check_sdpa_options

from .._dtypes import compute_dtype
from .._jit import logits_scale, split_scale
from .._sharding import explicit_spec, match_varying
from ..fast import online_softmax
from ..fast.chunked.blocks import BlockSizes
from ..fast.chunked.closures import convert_mod
from ..fast.chunked.config import Config, Mods, Operands
from ..fast.chunked.kernels import backward, forward, sink_gradient
from ..fast.chunked.layout import from_rows, make_rows, to_rows
from .layouts import LAYOUTS, device_positions, zigzag_permutation


def _with_sinks(out, lse, sinks):
    """The sinks (``(1, K, G)``) join each row's normaliser once, after the ring: ``lse' =
    log(e^lse + e^sink)`` and the output scaled by ``e^(lse - lse')`` (a sink holds no value)."""
    if sinks is None:
        return out, lse
    return online_softmax.merge(out, lse, jnp.zeros_like(out), jnp.broadcast_to(sinks[:, :, None, :], lse.shape))


def _ring_forward(ops, rows, sinks, mods, *, axis_name, P, cfg, layout):
    """Per device, in the rows layout of the chunked kernels: ``ops`` this device's queries and
    key/value block (and key mask), ``rows`` its lengths, segment ids and query positions. Each
    step runs the chunked forward kernel on the key block it holds (at that block's global
    positions, with its segment ids) and merges its ``(out, lse)`` into the running one, then
    passes the block on. Returns ``(out (B, K, Tp, G, H), lse (B, K, Tp, G))``."""
    i = lax.axis_index(axis_name)
    perm = [(j, (j + 1) % P) for j in range(P)]  # device j sends to j + 1: block i - p arrives at step p
    c = cfg.compute

    def step(p, carry):
        out, lse, k, v, mask, kseg = carry
        kpos = _padded_positions((i - p) % P, rows.kpos.shape[-1], cfg.S, P, layout)
        block = forward(ops._replace(k=k, v=v, mask=mask), rows._replace(kseg=kseg, kpos=kpos), mods, cfg=cfg)
        out, lse = online_softmax.merge(out, lse, *block)
        k, v, mask, kseg = (None if x is None else lax.ppermute(x, axis_name, perm) for x in (k, v, mask, kseg))
        return out, lse, k, v, mask, kseg

    start = (jnp.zeros_like(ops.q, c), jnp.full_like(ops.q[..., 0], -jnp.inf, c), ops.k, ops.v, ops.mask, rows.kseg)
    out, lse, *_ = lax.fori_loop(0, P, step, start)
    return _with_sinks(out, lse, sinks)


def _ring_backward(ops, rows, sinks, mods, out, lse, d_out, d_lse, *, axis_name, P, cfg, layout):
    """Per device: the gradients of :func:`_ring_forward`'s outputs: each step runs the chunked
    backward kernel (its weights recomputed from the final ``lse``) on the block it holds; the
    key/value blocks travel with their gradient accumulators, home again after P steps. Also
    the gradients of the sinks and of the float arrays ``score_mod`` closes over."""
    i = lax.axis_index(axis_name)
    perm = [(j, (j + 1) % P) for j in range(P)]

    def step(p, carry):
        dq, k, v, mask, kseg, dk, dv, d_score = carry
        kpos = _padded_positions((i - p) % P, rows.kpos.shape[-1], cfg.S, P, layout)
        dq_j, dk_j, dv_j, _, d_score_j = backward(ops._replace(k=k, v=v, mask=mask), out, lse, d_out, d_lse,
                                                  rows._replace(kseg=kseg, kpos=kpos), mods, cfg=cfg)
        k, v, mask, kseg, dk, dv = (None if x is None else lax.ppermute(x, axis_name, perm)
                                    for x in (k, v, mask, kseg, dk + dk_j, dv + dv_j))
        d_score = tuple(a + b[0, 0] for a, b in zip(d_score, d_score_j))
        return dq + dq_j, k, v, mask, kseg, dk, dv, d_score

    start = (jnp.zeros_like(ops.q, out.dtype), ops.k, ops.v, ops.mask, rows.kseg, jnp.zeros_like(ops.k, out.dtype),
             jnp.zeros_like(ops.v, out.dtype), tuple(jnp.zeros_like(x) for x in mods.score))
    dq, *_, dk, dv, d_score = lax.fori_loop(0, P, step, start)  # after P passes each dk_j, dv_j is home again
    d_sinks = None if sinks is None else sink_gradient(sinks, out, lse, d_out, d_lse)
    return dq, dk, dv, d_sinks, d_score


def _padded_positions(device, Sp, S, P, layout):
    """``(1, 1, Sp)``: the global positions of ``device``'s S = L / P entries, padded to ``Sp``
    with the last one (the block states read each block's range)."""
    positions = device_positions(device, S, P, layout)
    return jnp.pad(positions, (0, Sp - S), mode="edge")[None, None]


def ring_attention(query, key, value, *, mesh, axis_name, is_causal=False, scale=None, mask=None,
                   query_seq_lengths=None, key_value_seq_lengths=None, local_window_size=None,
                   query_segment_ids=None, key_value_segment_ids=None, logits_soft_cap=None, sinks=None,
                   return_residual=False, layout="contiguous", score_mod=None, mask_mod=None):
    r"""Scaled dot-product attention with the sequence sharded over a ring of devices.

    .. math::
        \mathrm{out}_i = \sum_j \mathrm{softmax}\Big(\tfrac{Q_i K_j^\top}{\sqrt H}\Big) V_j
        \quad \text{(one softmax over all j)}, \qquad
        (K_j, V_j) \to \text{device } j + 1 \text{ after each step}

    Liu, Zaharia & Abbeel 2023, "Ring attention with blockwise transformers for near-infinite
    context"; the blockwise recurrences of FlashAttention-2 (Dao 2023); the zig-zag layout of
    Brandon et al. 2023. Equal to :func:`dot_product_attention` on the gathered inputs (a
    query with no key gives zeros and zero gradients); see the module docstring for the
    backward pass and the causal schedule.

    Args:
      query: ``(B, T, N, H)``, sharded (or to be sharded) along T over ``axis_name``.
      key, value: ``(B, S, K, H)``, sharded along S; the dtype of ``query``.
      mesh: a ``jax.sharding.Mesh`` with an axis ``axis_name`` of P devices; T and S must be
        multiples of P (2P with ``layout="zigzag"``; causal attention also needs T == S).
      axis_name: the mesh axis the sequence is split over.
      is_causal: query t attends only to keys s <= t (global positions).
      scale: logits scale, default ``1/sqrt(H)``; a 0-d float array is traced.
      mask: optional bool, broadcastable to ``(B, N, T, S)`` (True = attend) as everywhere,
        and the same for every head and query: a key-padding mask ``(B|1, 1, 1, S)``.
      query_seq_lengths, key_value_seq_lengths: optional int ``(B,)``, in global positions.
      local_window_size: optional ``(left, right)`` or an int: keys ``t - left <= s <= t + right``.
      query_segment_ids, key_value_segment_ids: optional int ``(B, T)``, ``(B, S)`` in the
        layout of the sequence (packed documents may span shards); block pairs whose ids do
        not meet are skipped.
      logits_soft_cap: optional c > 0: logits ``c tanh(logits / c)``.
      sinks: optional float ``(N,)``: per-head sink logits, counted once per query.
      return_residual: also return ``lse (B, T, N)`` (the convention of
        :func:`dot_product_attention`), sharded like the output.
      score_mod, mask_mod: optional, as :func:`flex_attention` takes them, called with global
        query and key positions (in either layout); blocks are skipped by the options alone, so
        a ``mask_mod`` is evaluated in every block visited. The float arrays a ``score_mod``
        closes over get gradients. Not with a batch axis sharded over another mesh axis (the
        mods would see each device's local batch row).
      layout: ``"contiguous"`` (device i holds positions ``i L/P ..``) or ``"zigzag"``: the
        sequence axes of every input (and segment ids, and the output) are in the order of
        :func:`zigzag_permutation`, so that causal work is the same on every device.

    Returns:
      ``out (B, T, N, H)`` in the dtype of ``query``, sharded and laid out like ``query``;
      ``(out, lse)`` with ``return_residual``.
    """
    query, key, value = (jnp.asarray(x) for x in (query, key, value))
    if not isinstance(mesh, Mesh) or axis_name not in mesh.shape:
        raise ValueError(f"mesh must be a jax.sharding.Mesh with an axis {axis_name!r}; got {mesh!r}")
    check_choice("layout", layout, LAYOUTS)
    shapes = check_sdpa(query, key, value, None, None, scale)
    if query.ndim != 4:
        raise ValueError(f"query must have shape (B, T, N, H) (one batch axis); got {tuple(query.shape)}")
    window, _ = check_sdpa_options(shapes, query_seq_lengths, key_value_seq_lengths, local_window_size, 0.0, None)
    soft_cap = check_sdpa_extras(shapes, query_segment_ids, key_value_segment_ids, logits_soft_cap, sinks)
    B, T, N, H = query.shape
    S = shapes["S"]
    P = mesh.shape[axis_name]
    pieces = P if layout == "contiguous" else 2 * P
    for name, length in (("T", T), ("S", S)):
        if length % pieces:
            raise ValueError(f"ring_attention with layout={layout!r} splits {name} into {pieces} equal pieces "
                             f"over the {P} devices of mesh axis {axis_name!r}; got {name}={length}")
    if (is_causal or layout == "zigzag") and T != S:
        raise ValueError(f"{'causal ' if is_causal else ''}ring_attention with layout={layout!r} needs T == S (its "
                         f"blocks share the diagonal); got T={T}, S={S}")
    mask = jnp.ones((B, S), bool) if mask is None else _key_mask(mask, B, N, T, S)
    if key_value_seq_lengths is not None:  # keys past a row's length: padding, as the key mask's
        positions = jnp.arange(S) if layout == "contiguous" else jnp.asarray(zigzag_permutation(S, P))
        mask = mask & (positions[None, :] < jnp.asarray(key_value_seq_lengths).reshape(B, 1))
    query_ids = key_value_segment_ids if query_segment_ids is None else query_segment_ids
    key_ids = query_ids if key_value_segment_ids is None else key_value_segment_ids
    if (score_mod is not None or mask_mod is not None) and _batch_axes(query, axis_name) is not None:
        raise ValueError("score_mod and mask_mod on the ring take the batch row b as the global one: shard the "
                         "batch axis of query over the ring's mesh axis only, or not at all")
    index, compute = jnp.zeros((), jnp.int32), compute_dtype(query.dtype)
    score_fn, score_floats, score_fixed = convert_mod(score_mod, jnp.zeros((), compute), index, index, index, index)
    mask_fn, mask_floats, mask_fixed = convert_mod(mask_mod, index, index, index, index)
    scale, scale_value = split_scale(scale)
    out, lse = _ring(query, key, value, mask, query_seq_lengths, key_value_seq_lengths, query_ids, key_ids, sinks,
                     scale_value, tuple(score_floats), tuple(score_fixed), tuple(mask_floats + mask_fixed),
                     mesh=mesh, axis_name=axis_name, P=P, scale=scale, is_causal=bool(is_causal), window=window,
                     soft_cap=soft_cap, layout=layout, score_fn=score_fn, mask_fn=mask_fn)
    return (out, lse) if return_residual else out


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


@functools.partial(jax.jit, static_argnames=("mesh", "axis_name", "P", "scale", "is_causal", "window", "soft_cap",
                                             "layout", "score_fn", "mask_fn"))
def _ring(query, key, value, mask, qlen, kvlen, qseg, kseg, sinks, scale_value, score_consts, score_fixed, mask_consts,
          *, mesh, axis_name, P, scale, is_causal, window, soft_cap, layout, score_fn, mask_fn):
    dtype, compute = query.dtype, compute_dtype(query.dtype)
    B, T, N, H = query.shape
    S, K = key.shape[1], key.shape[2]
    Tb, Sb = T // P, S // P
    qc, kc = BlockSizes.get_default().blocks(is_causal, Tb, Sb, qseg is not None)
    has_lengths = qlen is not None or kvlen is not None
    cfg = Config(is_causal=is_causal, query_chunk=min(qc, Tb), key_chunk=min(kc, Sb), T=Tb, S=Sb, G=N // K,
                 window=window, has_lengths=has_lengths, has_segments=qseg is not None, compute=compute,
                 soft_cap=soft_cap, score_mod=score_fn, mask_mod=mask_fn)
    options = {"axis_name": axis_name, "P": P, "cfg": cfg, "layout": layout}

    def bound(fixed):
        """The options with ``score_mod`` taking its integer arrays ``fixed`` (traced: bound in
        each pass, as :func:`attention_jax.flex_attention` does)."""
        if not fixed:
            return options
        return options | {"cfg": cfg._replace(score_mod=lambda *args: score_fn(*args, *fixed))}

    @jax.custom_vjp
    def local(ops, rows, sinks, mods, fixed):
        return _ring_forward(ops, rows, sinks, mods, **bound(fixed))

    def local_fwd(ops, rows, sinks, mods, fixed):
        out, lse = _ring_forward(ops, rows, sinks, mods, **bound(fixed))
        return (out, lse), (ops, rows, sinks, mods, fixed, out, lse)

    def local_bwd(residuals, cotangents):
        ops, rows, sinks, mods, fixed, out, lse = residuals
        d_out, d_lse = (x.astype(out.dtype) for x in cotangents)
        dq, dk, dv, d_sinks, d_score = _ring_backward(ops, rows, sinks, mods, out, lse, d_out, d_lse, **bound(fixed))
        d_ops = Operands(dq.astype(ops.q.dtype), dk.astype(ops.k.dtype), dv.astype(ops.v.dtype), None, None)
        d_mods = Mods(tuple(d.astype(x.dtype) for d, x in zip(d_score, mods.score)), tuple(None for _ in mods.mask))
        return (d_ops, jax.tree.map(lambda _: None, rows), None if sinks is None else d_sinks.astype(sinks.dtype),
                d_mods, tuple(None for _ in fixed))

    local.defvjp(local_fwd, local_bwd)

    def per_device(q, k, v, key_mask, qlen, kvlen, qseg, kseg, sinks, score_consts, score_fixed, mask_consts):
        # q (B, T/P, N, H) scaled, k, v (B, S/P, K, H), key_mask (B, S/P), lengths (B,), ids (B, T/P), (B, S/P)
        i = lax.axis_index(axis_name)
        ops = to_rows(q, k, v, None, key_mask[:, None, None, :], cfg)  # a mask always: rows may see no key in a step
        keep = ops.mask[:, 0, 0, 0, :, None]                                      # (B, Sp, 1)
        ops = ops._replace(k=jnp.where(keep[:, None], ops.k, 0), v=jnp.where(keep[:, None], ops.v, 0))  # NaN padding unread
        rows = make_rows(cfg, B, K, query_segment_ids=qseg, key_value_segment_ids=kseg)
        if has_lengths:  # global lengths: a missing side is the whole sequence
            rows = rows._replace(qlen=(jnp.full((B,), T) if qlen is None else qlen).reshape(B, 1).astype(jnp.int32),
                                 kvlen=(jnp.full((B,), S) if kvlen is None else kvlen).reshape(B, 1).astype(jnp.int32))
        rows = rows._replace(qpos=_padded_positions(i, ops.q.shape[2], Tb, P, layout),
                             kpos=_padded_positions(i, ops.k.shape[2], Sb, P, layout))
        sinks = None if sinks is None else sinks.astype(compute).reshape(1, K, N // K)
        # a custom_vjp's inputs vary over the same manual axes (autodiff sums the replicated ones' cotangents)
        *arrays, sinks = match_varying(*ops, sinks)
        score_consts = match_varying(arrays[0], *score_consts)[1:]
        out, lse = local(Operands(*arrays), rows, sinks, Mods(tuple(score_consts), tuple(mask_consts)), score_fixed)
        return from_rows(out, lse, Tb)

    batch = _batch_axes(query, axis_name)
    seq, rows_spec, rep = PartitionSpec(batch, axis_name), PartitionSpec(batch), PartitionSpec()
    # the ring axis alone is manual; on a mesh without Explicit axes the others stay automatic,
    # so XLA keeps the batch (and heads) sharded as the query is, not replicated
    manual = {axis_name} if AxisType.Explicit not in tuple(mesh.axis_types) else set(mesh.axis_names)
    specs = (seq, seq, seq, seq, rows_spec, rows_spec, seq, seq, rep, rep, rep, rep)
    args = [query.astype(compute) * logits_scale(scale, scale_value, H, compute), key.astype(compute),
            value.astype(compute), mask, qlen, kvlen, qseg, kseg, sinks]
    args = [None if x is None else jnp.asarray(x) for x in args] + [score_consts, score_fixed, mask_consts]
    if AxisType.Explicit in tuple(mesh.axis_types):
        # on Explicit axes shard_map takes inputs only as in_specs shards them (a replicated
        # mask or an unsharded query is an error, not a resharding)
        args = [jax.tree.map(lambda x, spec=spec: jax.sharding.reshard(x, NamedSharding(mesh, spec)), x)
                for x, spec in zip(args, specs)]
    # a score_mod or mask_mod runs as a jaxpr traced outside the ring (closures.convert_mod), whose
    # primitives cannot be told which manual axes their inputs vary over: checked without vma
    sharded = jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=(seq, seq), axis_names=manual,
                            check_vma=score_fn is None and mask_fn is None)
    out, lse = sharded(*args)
    return out.astype(dtype), lse


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
