"""``jax.jit`` for the public functions, with errors that name the dtype the caller passed, and
the arguments made ready for it (a static or traced scale, a dropout rng).

With ``jax_enable_x64`` off (JAX's default), ``jax.jit`` converts an int64 NumPy argument
to int32 before the function (and its shared checks) see it, so a ``TypeError`` would
name int32, a dtype the caller never passed. NumPy arguments that JAX would narrow so
(int64, uint64, complex128: never a valid input of these functions) are traced with x64
on for that one call, and the checks report them as they are, as the NumPy half does.
"""

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from attention_np._validate import check_scale, is_scalar_array

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


def split_scale(scale):
    """A scale as ``(static, traced)``: a Python/NumPy number is static (checked here, so a
    bad one names itself before ``jit`` sees it); a 0-d float array (a learnable temperature,
    possibly a tracer) is passed to the compiled function as an argument."""
    if scale is not None and is_scalar_array(scale) and not isinstance(scale, (int, float)):
        return None, scale
    if scale is not None:
        check_scale(scale)
    return scale, None


def logits_scale(scale, scale_value, H, compute):
    """Inside ``jit``: the traced ``scale_value`` (:func:`split_scale`) in the compute dtype, else
    the static ``scale``, default ``1 / sqrt(H)`` (H = 0: the logits are empty sums, 0)."""
    if scale_value is not None:
        return jnp.asarray(scale_value).astype(compute)
    return 1.0 / math.sqrt(max(H, 1)) if scale is None else float(scale)


def static_rng(dropout_rng, dropout_rate):
    """``dropout_rng`` ready for ``jit``: None without dropout; a Python int as its two uint32
    words (so that the NumPy half's reading of the same int is used)."""
    if dropout_rng is None or not (isinstance(dropout_rate, (int, float)) and dropout_rate > 0):
        return None
    if isinstance(dropout_rng, int) and not isinstance(dropout_rng, bool):
        value = dropout_rng % 2**64
        return jnp.asarray([value & 0xFFFFFFFF, value >> 32], jnp.uint32)
    return dropout_rng


@contextlib.contextmanager
def reverse_mode_only(name, dense):
    """Inside: JAX's error for forward-mode autodiff of a ``jax.custom_vjp`` becomes a
    ``TypeError`` that says why ``name`` is reverse-mode only and names ``dense``, the function
    with the same numbers (O(T S) memory) that supports forward mode."""
    try:
        yield
    except TypeError as error:
        if "forward-mode autodiff" in str(error) and "custom_vjp" in str(error):
            raise TypeError(
                f"{name} does not support forward-mode autodiff (jax.jvp, jax.jacfwd, jax.linearize): its "
                "memory-efficient backward pass is a jax.custom_vjp, which JAX cannot differentiate forward. "
                f"Use {dense} (the same numbers, O(T S) memory) for forward mode, or reverse mode (jax.grad, "
                "jax.vjp, jax.jacrev)."
            ) from None
        raise
