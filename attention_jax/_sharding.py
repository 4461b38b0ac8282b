"""Arrays typed like the inputs, so that sharded calls type-check (jax >= 0.7's sharding in types).

Two things are part of an array's type inside ``jax.jit``/``jax.shard_map`` and must match
between a loop's initial carry and the carry its body returns, or between the operands of
an op whose output sharding JAX will not guess:

- on a mesh with Explicit axes (``jax.make_mesh``'s default), the ``PartitionSpec``: an array
  made with ``jnp.zeros(shape)`` is replicated, while the body's values, computed from
  inputs sharded over batch or heads, are sharded;
- inside ``jax.shard_map`` (``check_vma=True``, the default), the manual axes the value varies
  over: ``jnp.zeros`` is the same on every device, the body's values are not.

:func:`full_like_leading` builds a constant with both from an input, and
:func:`explicit_spec` reads an input's spec (None off Explicit meshes, where nothing needs it).
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType, NamedSharding, PartitionSpec


def explicit_spec(x):
    """``x``'s ``PartitionSpec`` (one entry per axis) when it is sharded over Explicit mesh
    axes; None when it is not (no mesh, Auto axes, replicated, or inside ``shard_map``)."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or AxisType.Explicit not in tuple(mesh.axis_types):
        return None
    spec = tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))
    return None if all(s is None for s in spec) else spec


def explicit_sharding(x, spec):
    """A ``NamedSharding`` on ``x``'s (abstract) mesh with ``spec``, or None off Explicit meshes."""
    if explicit_spec(x) is None:
        return None
    return NamedSharding(jax.typeof(x).sharding.mesh, PartitionSpec(*spec))


def full_like_leading(x, shape, fill, dtype, axes=2):
    """``jnp.full(shape, fill, dtype)`` typed like ``x``: ``x``'s explicit sharding on the
    first ``axes`` axes (which ``shape`` shares with ``x``; the rest replicated) and ``x``'s
    device-varying ``shard_map`` axes. A loop carry built so has the type its body returns."""
    spec = explicit_spec(x)
    sharding = None
    if spec is not None:
        sharding = explicit_sharding(x, spec[:axes] + (None,) * (len(shape) - axes))
    return lax.full_like(x, fill, dtype, tuple(shape), sharding=sharding)


def leading_sharded(x, axes=2):
    """Whether ``x`` may be split over devices on any of its first ``axes`` axes: sharded so over
    Explicit mesh axes, or on a mesh with Auto axes of more than one device (whose sharding
    XLA chooses after tracing, so it is not known here)."""
    spec = explicit_spec(x)
    if spec is not None and any(s is not None for s in spec[:axes]):
        return True
    mesh = getattr(getattr(jax.typeof(x), "sharding", None), "mesh", None)
    if mesh is None or mesh.empty:
        return False
    return any(t == AxisType.Auto and size > 1 for t, size in zip(mesh.axis_types, mesh.axis_sizes))


def varying_axes(x):
    """The ``shard_map`` mesh axes ``x`` varies over (its type's vma; empty outside ``shard_map``)."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)
    if manual is not None:
        return frozenset(manual.varying)
    return frozenset(getattr(aval, "vma", ()))


def match_varying(*arrays):
    """``arrays`` (None passes) cast to vary over every ``shard_map`` axis any of them varies over,
    as ``jnp`` does implicitly when it combines them (and autodiff sums the cotangent back over
    the added axes). Inside a ``jax.custom_vjp`` JAX does neither, so the inputs of one are cast
    before it: a key/value replicated over an axis that the query is split along, for example."""
    axes = frozenset().union(*(varying_axes(x) for x in arrays if x is not None))
    out = []
    for x in arrays:
        missing = None if x is None else tuple(sorted(axes - varying_axes(x)))
        out.append(lax.pcast(x, missing, to="varying") if missing else x)
    return tuple(out)


def head_sum_sharding(x, contracted=2):
    """The output sharding of ``einsum("...NH,NHF->...F", x, kernel)`` (the heads mixed back to
    the model width) when ``x``'s contracted axes (its last ``contracted``) are sharded over
    Explicit mesh axes, which JAX will not guess: ``x``'s sharding on the axes kept, F
    replicated (the per-device partial sums all-reduced). None when nothing needs it."""
    spec = explicit_spec(x)
    if spec is None or all(s is None for s in spec[-contracted:]):
        return None
    return explicit_sharding(x, spec[:-contracted] + (None,))


def reshard_like(x, like):
    """``x`` resharded as ``like`` when ``like`` is sharded over Explicit mesh axes and ``x`` is
    not sharded so (a replicated cotangent, say: slicing it is local, whereas computing with it
    as it is makes XLA gather the other operands); ``x`` itself otherwise."""
    spec = explicit_spec(like)
    if spec is None or explicit_spec(x) == spec:
        return x
    return jax.sharding.reshard(x, jax.typeof(like).sharding)


def repeat_heads(x, G):
    """``(B, S, K, H)`` -> ``(B, S, K * G, H)``: each key/value head for its G query heads. On an
    Explicit mesh with the heads sharded, the repeated axis keeps the heads' sharding (device d
    holds the query heads its key/value heads serve), which ``jnp.repeat`` will not guess."""
    if G == 1:
        return x
    spec = explicit_spec(x)
    repeated = jnp.repeat(x, G, axis=2, out_sharding=None if spec is None else explicit_sharding(x, spec))
    # XLA's CPU backend (jax 0.10.2) got the gradients wrong at B = 1, K = 1 under jax.grad
    # without an outer jit (100% error; right without its YNNPACK reduce fusions): the
    # barrier keeps the repeated heads an array of their own (docs/design.md)
    return jax.lax.optimization_barrier(repeated)
