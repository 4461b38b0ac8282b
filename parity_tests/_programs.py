"""The JAX half of many report rows in one compiled program.

Compiling dominates the report: a program per row (the forward through the library's
``jit``, the backward through a ``jax.jit`` of its ``jax.vjp``) would compile hundreds of
times. Here the rows of a group (all the rows of one mechanism, in ``run_all``)
become one ``jax.jit`` program with one entry per ``(case, dtype, direction)``: the plain
forward call of the case's JAX function, and ``jax.vjp`` of it for the backward rows. XLA
compiles the group once; the forward of a backward entry and the forward entry of the same
case and dtype are the same operations, which XLA computes once.

The forward entries stay plain forward calls (not the primal output of ``jax.vjp``): a
function with a custom VJP runs different code without autodiff, and that code is what its
forward rows check. Every array (inputs, masks, ids, cotangents) is an argument of the
program, never a constant, so nothing is folded at compile time; Python scalars, strings
and None are closed over, as the library's ``static_argnames`` would take them.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

# Each program runs once, so on CPU its compile time is the report's time: XLA's legacy fusion
# emitters with LLVM at -O0 compile it about 4x faster, with the same results (numbers in
# benchmarks/results/experiments.md, "The test suite's compile time"). The test suite puts the
# same options in XLA_FLAGS (parity_tests/tests/conftest.py).
FAST_CPU_COMPILE = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0,
                    "xla_llvm_disable_expensive_passes": True}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row's JAX computation: ``fn(*args, **kwargs)`` on the row's (cast) inputs; for a
    backward entry also the cotangent and what to differentiate (see ``ParityCase``)."""

    fn: object
    args: tuple
    kwargs: dict
    differentiable: tuple = ()
    cotangent: object = None
    cotangent_outputs: tuple | None = None


def _split(tree):
    """``(arrays, rebuild)``: the NumPy array leaves of ``tree`` (the program's arguments) and
    a function that puts traced arrays back among the other leaves."""
    leaves, treedef = jax.tree.flatten(tree)
    where = [i for i, leaf in enumerate(leaves) if isinstance(leaf, np.ndarray)]

    def rebuild(arrays):
        full = list(leaves)
        for i, a in zip(where, arrays):
            full[i] = a
        return jax.tree.unflatten(treedef, full)

    return [leaves[i] for i in where], rebuild


def select(outputs, indices):
    """The outputs a cotangent covers (``indices``, a case's ``cotangent_outputs``; None: all)."""
    return outputs if indices is None else tuple(outputs[i] for i in indices)


def _pick(args, kwargs, differentiable) -> tuple:
    """The differentiable arguments, in ``differentiable``'s order."""
    return tuple(kwargs[d] if isinstance(d, str) else args[d] for d in differentiable)


def _put(args, kwargs, differentiable, values):
    """``(args, kwargs)`` with the differentiable arguments replaced by ``values``."""
    args, kwargs = list(args), dict(kwargs)
    for d, value in zip(differentiable, values):
        if isinstance(d, str):
            kwargs[d] = value
        else:
            args[d] = value
    return tuple(args), kwargs


def _run(entry: Entry, args, kwargs, cotangent):
    """Inside the program: the outputs (forward entry) or the gradients (backward entry)."""
    if not entry.differentiable:
        return entry.fn(*args, **kwargs)

    def fn(*values):
        a, k = _put(args, kwargs, entry.differentiable, values)
        return select(entry.fn(*a, **k), entry.cotangent_outputs)

    outputs, vjp = jax.vjp(fn, *_pick(args, kwargs, entry.differentiable))
    # the cotangent arrives in the row's dtype; each output's dtype is what vjp expects
    cotangent = jax.tree.map(lambda c, o: c.astype(o.dtype), cotangent, outputs)
    return tuple(vjp(cotangent))


class Program:
    """The entries' program, traced and lowered (:meth:`lower`, Python, holds the GIL), then
    compiled (:meth:`compile`, XLA, releases it: another thread may compile meanwhile) and
    run (:meth:`run`)."""

    def __init__(self, entries: dict):
        self.entries = entries
        self.arrays, self.rebuilders = {}, {}
        for key, entry in entries.items():
            self.arrays[key], self.rebuilders[key] = _split((entry.args, entry.kwargs, entry.cotangent))
        self.compiled = None

    def _program(self, arrays):
        results = {}
        for key, entry in self.entries.items():
            args, kwargs, cotangent = self.rebuilders[key](arrays[key])
            results[key] = _run(entry, args, kwargs, cotangent)
        return results

    def lower(self) -> Program:
        with jax.default_matmul_precision("highest"):
            # device_put, not jnp.asarray: the latter compiles a small program per shape and dtype
            self.arrays = jax.device_put(self.arrays)
            self.lowered = jax.jit(self._program).lower(self.arrays)
        return self

    def compile(self) -> Program:
        options = FAST_CPU_COMPILE if jax.default_backend() == "cpu" else None
        self.compiled = self.lowered.compile(compiler_options=options)
        return self

    def run(self) -> dict:
        return jax.device_get(self.compiled(self.arrays))


def run_entries(entries: dict) -> dict:
    """Run every :class:`Entry` of ``entries`` (any hashable keys) in one compiled program at
    matmul precision "highest"; returns the same keys with NumPy results."""
    return Program(entries).lower().compile().run()
