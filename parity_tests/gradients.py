"""Gradients for the backward rows and the port checks, and the array trees they travel in.

Every gradient here is that of the loss ``L = sum(cotangent * outputs)``: ``jax.vjp`` for a
JAX function (:func:`jax_vjp`), and central finite differences of a float64 NumPy function
(:func:`central_differences`, :func:`finite_differences`) where there is no NumPy VJP::

    (L(x + h e_i) - L(x - h e_i)) / 2h

for each element ``i``, with ``h = FD_STEP``. The truncation error is ``h^2 / 6`` times the
third derivative, ~1e-10, and the rounding error ``eps |L| / h`` ~1e-11 ``|L|`` (measured:
<= 6e-9 on the registered cases), so ``FD_TOLERANCE = 1e-6`` (``parity_tests/tolerance.py``)
leaves two orders of margin or more, while a wrong gradient is off by 1e-2 or more.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from ._programs import _pick, _put, select

FD_STEP = 1e-5
# Finite differences cost two forward calls per element: arrays larger than this are checked
# on this many elements, drawn from a generator seeded by the case (``fd_samples=None``: all).
FD_SAMPLES = 64

NP_DTYPES = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}


def is_float(x) -> bool:
    """Whether ``x`` is a NumPy array of one of :data:`NP_DTYPES`."""
    return isinstance(x, np.ndarray) and str(x.dtype) in NP_DTYPES


def cast_floats(tree, dtype: str):
    """Every floating NumPy leaf of ``tree`` in ``dtype``; other leaves unchanged."""
    return jax.tree.map(lambda x: x.astype(NP_DTYPES[dtype]) if is_float(x) else x, tree)


def to_jax(tree):
    """NumPy array leaves to JAX arrays; Python scalars, strings and bools stay static."""
    return jax.tree.map(lambda leaf: jnp.asarray(leaf) if isinstance(leaf, np.ndarray) else leaf, tree)


def weighted_sum(cotangent, outputs) -> float:
    """``L = sum(cotangent * outputs)`` over the leaves of two trees, in float64."""
    return sum(float(np.sum(np.asarray(c, np.float64) * np.asarray(o, np.float64)))
               for c, o in zip(jax.tree.leaves(cotangent), jax.tree.leaves(outputs)))


def central_differences(leaf, loss, *, step: float = FD_STEP, samples=None, rng=None):
    """``dL/dx`` for the float64 array ``leaf`` (changed in place one element at a time, then
    restored) where ``loss()`` reads it: every element, or ``samples`` drawn by ``rng`` when
    the array is larger; the others are NaN."""
    flat = leaf.reshape(-1)  # a view: changing flat[i] changes the argument
    grad = np.full(flat.size, np.nan)
    if samples is None or flat.size <= samples:
        chosen = range(flat.size)
    else:
        chosen = np.sort(rng.choice(flat.size, samples, replace=False))
    for i in chosen:
        x = flat[i]
        flat[i] = x + step
        plus = loss()
        flat[i] = x - step
        minus = loss()
        flat[i] = x
        grad[i] = (plus - minus) / (2 * step)
    return grad.reshape(leaf.shape)


def draw_cotangent(seed, outputs):
    """A standard-normal cotangent shaped like ``outputs``, from a generator seeded by
    ``seed`` (a case's, or ``check_port``'s): the same draw in every dtype."""
    rng = np.random.default_rng([seed, 1])
    return jax.tree.map(lambda out: rng.normal(size=np.shape(out)), outputs)


def finite_differences(case, args, kwargs, cotangent, *, step: float = FD_STEP, samples=None) -> tuple:
    """Central finite differences of ``L = sum(cotangent * numpy_fn(*args, **kwargs))`` with
    respect to the case's differentiable arguments, in float64: ``(L(x + h e_i) - L(x - h
    e_i)) / 2h`` for each element ``i``. With ``samples``, an array larger than that is
    differenced on ``samples`` elements drawn by a generator seeded by the case; its other
    elements are NaN."""
    rng = np.random.default_rng([case.seed, 2])
    values = [jax.tree.map(lambda x: np.array(x, np.float64), v) for v in _pick(args, kwargs, case.differentiable)]

    def loss():
        a, k = _put(args, kwargs, case.differentiable, values)
        return weighted_sum(cotangent, select(case.numpy_fn(*a, **k), case.cotangent_outputs))

    return tuple(jax.tree.map(lambda leaf: central_differences(leaf, loss, step=step, samples=samples, rng=rng), v)
                 for v in values)


def jax_vjp(case, args, kwargs, cotangent) -> tuple:
    """``jax.vjp`` of the case's JAX function with respect to its differentiable arguments,
    at matmul precision "highest"; the cotangent is cast to each output's dtype."""
    jargs, jkwargs = to_jax((args, kwargs))

    def fn(*values):
        a, k = _put(jargs, jkwargs, case.differentiable, values)
        return select(case.jax_fn(*a, **k), case.cotangent_outputs)

    @jax.jit  # one compiled program for forward and backward: faster than op-by-op vjp
    def gradients(values, cotangent):
        _, vjp = jax.vjp(fn, *values)
        return tuple(vjp(cotangent))

    values = _pick(jargs, jkwargs, case.differentiable)
    with jax.default_matmul_precision("highest"):
        outputs = jax.eval_shape(fn, *values)
        cotangent = jax.tree.map(lambda c, o: jnp.asarray(c, o.dtype), cotangent, outputs)
        return jax.device_get(gradients(values, cotangent))
