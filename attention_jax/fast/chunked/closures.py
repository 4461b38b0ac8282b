"""A ``score_mod`` or ``mask_mod`` as the kernels call it: traced once, with the traced arrays it
closes over hoisted into arguments (:func:`convert_mod`), and applied to a block's broadcasting
index arrays one ``jax.vmap`` per axis (:func:`apply_mod`)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core


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
    # traced outside any mesh: the jaxpr then runs as well under the caller's mesh as inside a
    # shard_map (ring_attention), whose manual axes a recorded mesh would contradict
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ())):
        closed = jax.make_jaxpr(mod)(*(jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in example))
    consts = closed.consts                                                        # what mod closes over
    traced = [i for i, c in enumerate(consts) if isinstance(c, jax.core.Tracer)]
    floats = [i for i in traced if jnp.issubdtype(consts[i].dtype, jnp.inexact)]
    fixed = [i for i in traced if i not in floats]
    # the constants as host arrays, holes for the rest: a device array would carry the mesh it was
    # made under, which a shard_map's manual mesh contradicts
    kept = [None if i in traced else np.asarray(c) for i, c in enumerate(consts)]
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
