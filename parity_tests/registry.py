"""What the parity harness runs and reports: :class:`ParityCase` (a mechanism on one set of
inputs), :class:`Comparison` and :class:`Result` (one row of the report), which tolerance of
docs/design.md section 5 a row gets, and the registry that ``python -m parity_tests`` runs
(:func:`register`, :func:`load_cases`). Running and comparing rows: :mod:`parity_tests.harness`;
the numbers and the rule: :mod:`parity_tests.tolerance`."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping

from .gradients import FD_SAMPLES
from .tolerance import FD_TOLERANCE, TOLERANCES

DTYPES = tuple(TOLERANCES)
HALVES = ("numpy", "jax")
DIRECTIONS = ("forward", "backward")

# Gradients (backward rows) against the NumPy VJP in float64: the same budget as the outputs;
# against finite differences FD_TOLERANCE (parity_tests/gradients.py says why).
GRAD_TOLERANCES = dict(TOLERANCES)


@dataclasses.dataclass(frozen=True)
class ParityCase:
    """One mechanism on one set of inputs.

    Attributes:
      name: unique, ``"<mechanism>/<variant>"``.
      mechanism: the public function's name.
      shapes: the sizes, in docs/design.md's letters, for the report.
      build: ``rng -> (args, kwargs)``, float64 NumPy arrays (and bools, ints, strings);
        floating leaves are cast to the dtype under test, everything else passes as is.
      numpy_fn, jax_fn: the two halves, called as ``fn(*args, **kwargs)``.
      seed: seed of the ``numpy.random.Generator`` handed to ``build``.
      halves: which halves implement it; a JAX-only function (``chunked_attention``)
        names ``("jax",)`` and uses a NumPy reference as ``numpy_fn``.
      dtypes: the dtypes it is compared in (default: all four). A case with a discrete
        output (``greedy_decode``'s argmax ids) names the dtypes in which that output is
        defined to match the float64 reference.
      differentiable: the arguments its gradient is taken with respect to: positional
        indices (``0`` = the first argument, e.g. a whole params dict) and keyword names
        (``"bias"``), every floating leaf of each. Empty (the default): no backward rows.
      numpy_vjp: ``(args, kwargs, cotangent) -> gradients``, a tuple in ``differentiable``'s
        order, e.g. a wrapper around ``attention_np.scaled_dot_product_attention_vjp``.
        Without one the backward reference is finite differences (float64 rows only).
      cotangent_outputs: indices of the outputs the loss reads, e.g. ``(0,)`` for
        ``(out, weights)`` functions whose VJP takes ``d_out`` only; None: every output.
      tolerances, grad_tolerances: per-dtype overrides of :data:`TOLERANCES` (outputs) and
        :data:`GRAD_TOLERANCES` (gradients) for this case, one number a dtype that the abs or
        the rel error must be within (``Tolerance.abs_or_rel``); ``grad_tolerances``
        may also set ``"finite_differences"`` (default :data:`FD_TOLERANCE`).
      fd_samples: elements per array checked by finite differences (None: every element).
    """

    name: str
    mechanism: str
    shapes: str
    build: Callable
    numpy_fn: Callable
    jax_fn: Callable
    seed: int = 0
    halves: tuple = HALVES
    dtypes: tuple = DTYPES
    differentiable: tuple = ()
    numpy_vjp: Callable | None = None
    cotangent_outputs: tuple | None = None
    tolerances: Mapping | None = None
    grad_tolerances: Mapping | None = None
    fd_samples: int | None = FD_SAMPLES

    def tolerance(self, dtype: str, direction: str = "forward", reference: str = "") -> float:
        """The tolerance of one row: the case's override, else docs/design.md's."""
        if direction == "forward":
            return {**TOLERANCES, **(self.tolerances or {})}[dtype]
        overrides = self.grad_tolerances or {}
        if reference == FINITE_DIFFERENCES:
            return overrides.get("finite_differences", FD_TOLERANCE)
        return {**GRAD_TOLERANCES, **overrides}[dtype]


@dataclasses.dataclass(frozen=True)
class Comparison:
    """How far ``actual`` is from ``expected``.

    An element passes when its abs error *or* its rel error is at most ``tol``
    (:func:`parity_tests.compare_elements` with ``Tolerance.abs_or_rel(tol)``). ``max_abs``
    is over all elements; ``max_rel`` over the elements whose abs error exceeds ``tol``
    (0 when there are none), so ``passed`` is ``max_abs <= tol or max_rel <= tol``, plus
    identical shapes, and NaN and inf where and only where the reference has them.
    """

    max_abs: float
    max_rel: float
    tol: float
    passed: bool
    detail: str = ""


# what a row is compared against
NUMPY_FLOAT64 = "numpy float64"
NUMPY_VJP = "numpy VJP float64"
FINITE_DIFFERENCES = "finite differences"


@dataclasses.dataclass(frozen=True)
class Result:
    """One row of the report: a case in one dtype on one half, forward or backward.

    ``reference`` says what it was compared with. ``skipped`` is the reason a row was not
    run (JAX float64 without ``jax_enable_x64``; finite differences below float64); a
    skipped row has ``comparison.passed`` False but is not ``failed``.
    """

    case: str
    mechanism: str
    shapes: str
    dtype: str
    half: str
    comparison: Comparison
    direction: str = "forward"
    reference: str = NUMPY_FLOAT64
    skipped: str = ""

    @property
    def failed(self) -> bool:
        return not self.skipped and not self.comparison.passed

    @property
    def status(self) -> str:
        return "skip" if self.skipped else "pass" if self.comparison.passed else "FAIL"

    @property
    def ratio(self) -> float:
        """The worst error relative to the tolerance, as compared (abs, else rel): <= 1 passes."""
        c = self.comparison
        return (c.max_abs if c.max_abs <= c.tol else c.max_rel) / c.tol

    def as_dict(self) -> dict:
        return {
            "case": self.case,
            "mechanism": self.mechanism,
            "shapes": self.shapes,
            "dtype": self.dtype,
            "half": self.half,
            "direction": self.direction,
            "reference": self.reference,
            "skipped": self.skipped,
            **dataclasses.asdict(self.comparison),
        }


REGISTRY: dict[str, ParityCase] = {}


def register(case: ParityCase) -> ParityCase:
    """Add ``case`` to the registry that ``python -m parity_tests`` runs; returns it."""
    if case.name in REGISTRY:
        raise ValueError(f"a parity case named {case.name!r} is registered already")
    REGISTRY[case.name] = case
    return case


def load_cases(*modules: str) -> list[ParityCase]:
    """Import modules (``"mypackage.my_cases"``) that :func:`register` cases and return the
    cases they added; ``python -m parity_tests --cases mypackage.my_cases`` calls this."""
    before = set(REGISTRY)
    for module in modules:
        importlib.import_module(module)
    return [case for name, case in REGISTRY.items() if name not in before]
