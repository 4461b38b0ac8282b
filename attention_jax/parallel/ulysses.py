"""Sequence parallelism by all-to-all (DeepSpeed-Ulysses, Jacobs et al. 2023).

The inputs arrive sharded along the sequence over the P devices of a mesh axis. One
``all_to_all`` per input re-shards them along the heads instead: each device then holds the
whole sequence for N / P of the heads, runs any single-device path on it (dense, chunked or
flex-like options, all of :func:`attention_jax.dot_product_attention`'s), and a last
``all_to_all`` brings the output back to sequence shards. Four collectives of O(L N H / P)
each, against the ring's P steps; but every head must fit one device's share (N divisible by
P), and a device holds the whole sequence for its heads. Grouped key/value heads with K < P
are repeated up to P (K must divide P), as Ulysses implementations do for GQA.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from attention_np._validate import check_sdpa

from ..fast.dispatch import dot_product_attention

_SEQUENCE_OPTIONS = ("query_segment_ids", "key_value_segment_ids")  # (B, T) / (B, S): sharded like the sequence


def ulysses_attention(query, key, value, *, mesh, axis_name, implementation=None, **options):
    r"""Attention with the sequence sharded over ``axis_name``, computed with the heads sharded.

    .. math::
        (B, T/P, N, H) \xrightarrow{\text{all-to-all}} (B, T, N/P, H)
        \xrightarrow{\text{attention}} (B, T, N/P, H) \xrightarrow{\text{all-to-all}} (B, T/P, N, H)

    Jacobs et al. 2023, "DeepSpeed Ulysses". Equal to :func:`dot_product_attention` on the
    gathered inputs, values and gradients (``all_to_all`` is linear; its transpose is the
    reverse ``all_to_all``).

    Args:
      query: ``(B, T, N, H)``, sharded (or to be sharded) along T over ``axis_name``.
      key, value: ``(B, S, K, H)``, sharded along S.
      mesh: a ``jax.sharding.Mesh`` with an axis ``axis_name`` of P devices: T and S multiples
        of P, N a multiple of P (else use :func:`ring_attention`), K a multiple of P or a
        divisor of it.
      axis_name: the mesh axis the sequence is split over.
      implementation: the single-device path, as :func:`dot_product_attention` takes it.
      **options: :func:`dot_product_attention`'s (``bias`` and ``mask`` broadcastable to
        ``(B, N, T, S)`` with N broadcast, ``is_causal``, ``scale``, lengths, window,
        segment ids (sharded like the sequence), soft-cap, ``sinks (N,)``,
        ``return_residual``, dropout).

    Returns:
      ``out (B, T, N, H)`` sharded along T like ``query``; ``(out, lse)`` with ``return_residual``.

    Example: on a one-device mesh it is the single-device function.

    >>> mesh = jax.make_mesh((1,), ("sp",))
    >>> x = jnp.ones((1, 4, 2, 8))
    >>> bool(jnp.allclose(ulysses_attention(x, x, x, mesh=mesh, axis_name="sp"), dot_product_attention(x, x, x)))
    True
    """
    query, key, value = (jnp.asarray(x) for x in (query, key, value))
    if not isinstance(mesh, Mesh) or axis_name not in mesh.shape:
        raise ValueError(f"mesh must be a jax.sharding.Mesh with an axis {axis_name!r}; got {mesh!r}")
    shapes = check_sdpa(query, key, value, options.get("bias"), options.get("mask"), options.get("scale"))
    if query.ndim != 4:
        raise ValueError(f"query must have shape (B, T, N, H) (one batch axis); got {tuple(query.shape)}")
    P = mesh.shape[axis_name]
    T, S, N, K = (shapes[c] for c in "TSNK")
    for name, length in (("T", T), ("S", S)):
        if length % P:
            raise ValueError(f"ulysses_attention splits {name} evenly over the {P} devices of mesh axis "
                             f"{axis_name!r}; got {name}={length}")
    if N % P:
        raise ValueError(f"ulysses_attention splits the N={N} query heads over the {P} devices of mesh axis "
                         f"{axis_name!r}: N must be a multiple of {P}; ring_attention takes any head count")
    if K % P and P % K:
        raise ValueError(f"ulysses_attention splits the K={K} key/value heads over {P} devices (repeating them up "
                         f"to {P} when fewer): K must be a multiple or a divisor of {P}; got K={K}")
    for name in ("bias", "mask"):
        x = options.get(name)
        if x is not None and jnp.ndim(x) >= 3 and jnp.shape(x)[-3] != 1:
            raise ValueError(f"ulysses_attention splits the heads over devices: {name} must broadcast along N "
                             f"(shape (B|1, 1, T|1, S|1)); got {tuple(jnp.shape(x))}")
    if options.get("dropout_rate", 0.0):
        raise ValueError("ulysses_attention has no attention dropout (its keep-mask is hashed on the global head, "
                         "which the head shards renumber); use dot_product_attention or ring_attention")
    sinks = options.pop("sinks", None)
    sequence = {name: options.pop(name) for name in _SEQUENCE_OPTIONS if options.get(name) is not None}
    return _ulysses(query, key, value, sinks, sequence, mesh=mesh, axis_name=axis_name, P=P,
                    implementation=implementation, options=tuple(sorted(options.items(), key=lambda kv: kv[0])))


def _ulysses(query, key, value, sinks, sequence, *, mesh, axis_name, P, implementation, options):
    options = dict(options)
    return_residual = bool(options.get("return_residual", False))
    K = key.shape[2]
    if K < P:  # grouped heads: each device needs the key/value head of its query heads
        key, value = (jnp.repeat(x, P // K, axis=2) for x in (key, value))
    arrays = {name: jnp.asarray(x) for name, x in options.items() if isinstance(x, (jax.Array, np.ndarray))}
    static = {name: x for name, x in options.items() if name not in arrays}

    def per_device(q, k, v, sinks, sequence, arrays):
        # sequence shards -> head shards: (B, T/P, N, H) -> (B, T, N/P, H)
        q, k, v = (lax.all_to_all(x, axis_name, 2, 1, tiled=True) for x in (q, k, v))
        sequence = {name: lax.all_gather(ids, axis_name, axis=1, tiled=True) for name, ids in sequence.items()}
        if sinks is not None:  # the sinks of this device's heads
            n = q.shape[2]
            sinks = lax.dynamic_slice_in_dim(sinks, lax.axis_index(axis_name) * n, n)
        result = dot_product_attention(q, k, v, implementation=implementation, sinks=sinks, **sequence, **arrays,
                                       **static)
        # head shards -> sequence shards: out (B, T, N/P, H) -> (B, T/P, N, H), lse (B, T, N/P) -> (B, T/P, N)
        back = tuple(lax.all_to_all(x, axis_name, 1, 2, tiled=True) for x in (result if return_residual else (result,)))
        return back if return_residual else back[0]

    seq, rep = PartitionSpec(None, axis_name), PartitionSpec()
    explicit = AxisType.Explicit in tuple(mesh.axis_types)
    manual = {axis_name} if not explicit else set(mesh.axis_names)
    in_specs = (seq, seq, seq, rep, {name: seq for name in sequence}, {name: rep for name in arrays})
    sharded = jax.shard_map(per_device, mesh=mesh, in_specs=in_specs, out_specs=(seq, seq) if return_residual else seq,
                            axis_names=manual, check_vma=True)
    args = [query, key, value, None if sinks is None else jnp.asarray(sinks),
            {name: jnp.asarray(ids) for name, ids in sequence.items()}, arrays]
    if explicit:  # shard_map takes inputs on Explicit axes only as in_specs shards them
        args = [jax.tree.map(lambda x, spec=spec: jax.sharding.reshard(x, NamedSharding(mesh, spec)), a)
                if not isinstance(a, dict) else {n: jax.sharding.reshard(x, NamedSharding(mesh, spec[n])) for n, x in a.items()}
                for a, spec in zip(args, in_specs)]
    return sharded(*args)
