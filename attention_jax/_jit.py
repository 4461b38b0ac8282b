"""``jax.jit`` for the public functions, with errors that name the dtype the caller passed.

With ``jax_enable_x64`` off (JAX's default), ``jax.jit`` converts an int64 NumPy argument
to int32 before the function (and its shared checks) see it, so a ``TypeError`` would
name int32, a dtype the caller never passed. NumPy arguments that JAX would narrow so
(int64, uint64, complex128: never a valid input of these functions) are traced with x64
on for that one call, and the checks report them as they are, as the NumPy half does.
"""

import functools

import jax
import numpy as np

_NARROWED = {np.dtype(np.int64), np.dtype(np.uint64), np.dtype(np.complex128)}


def _narrowed_by_jax(x) -> bool:
    return isinstance(x, (np.ndarray, np.generic)) and x.dtype in _NARROWED


def jit(fun=None, *, static_argnames=()):
    """``jax.jit(fun, static_argnames=...)``, keeping the caller's dtypes for the checks."""
    if fun is None:
        return functools.partial(jit, static_argnames=static_argnames)
    jitted = jax.jit(fun, static_argnames=static_argnames)

    @functools.wraps(fun)
    def wrapper(*args, **kwargs):
        if not jax.config.jax_enable_x64 and any(map(_narrowed_by_jax, jax.tree.leaves((args, kwargs)))):
            with jax.enable_x64(True):
                return jitted(*args, **kwargs)
        return jitted(*args, **kwargs)

    wrapper.lower = jitted.lower  # AOT use: jax.jit's own lowering
    return wrapper
