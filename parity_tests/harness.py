"""The parity harness: running the registry's cases and one comparison, importable by research code.

A :class:`ParityCase` names a mechanism, builds float64 NumPy inputs from a seed, and says
which NumPy and JAX functions to run. :func:`run_case` runs one case in one dtype on one
half and compares it with the NumPy float64 reference, computed from the *same* (rounded)
inputs, at the tolerance of docs/design.md section 5 (or the case's own). A case that names its
``differentiable`` arguments also gets backward rows (``direction="backward"``): the
gradient of ``sum(cotangent * output)`` from ``jax.vjp`` of the JAX function, against the
NumPy VJP in float64 where the case has one (``numpy_vjp``) and against central finite
differences of the NumPy float64 forward otherwise. Register your own module's case with
:func:`register` and it appears in ``python -m parity_tests``; :func:`pytest_params` and
:func:`assert_parity` turn the registry into parametrized tests::

    from parity_tests import ParityCase, register, run_case

    case = register(ParityCase(
        name="my_attention/basic", mechanism="my_attention", shapes="B=2 T=3 S=5 H=11",
        build=lambda rng: ((rng.normal(size=(2, 3, 11)), rng.normal(size=(2, 5, 11))), {}),
        numpy_fn=my_np_attention, jax_fn=my_jax_attention,
        differentiable=(0, 1),             # gradients w.r.t. both inputs, by finite differences
        tolerances={"float16": 1e-2},      # this case only; the others keep docs/design.md's
    ))
    print(run_case(case, "float32", half="jax"))
    print(run_case(case, "float64", half="jax", direction="backward"))
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import time

import jax
import numpy as np

from ._programs import Entry, Program, run_entries, select
from .gradients import cast_floats, draw_cotangent, finite_differences, to_jax
from .registry import (
    DIRECTIONS,
    DTYPES,
    FINITE_DIFFERENCES,
    HALVES,
    NUMPY_FLOAT64,
    NUMPY_VJP,
    REGISTRY,
    TOLERANCES,
    Comparison,
    ParityCase,
    Result,
)
from .tolerance import Tolerance, compare_elements


def compare(expected, actual, tol: float) -> Comparison:
    """Compare two pytrees of arrays leaf by leaf by the registry's rule, abs or rel error
    within ``tol`` (:func:`~parity_tests.tolerance.compare_elements`), and sum them up as a
    :class:`Comparison`::

        >>> c = compare(np.array([1.0, 100.0]), np.array([1.0, 100.0 + 3e-4]), 1e-5)
        >>> c.passed, round(c.max_abs, 8), round(c.max_rel, 8)   # 3e-4 abs, 3e-6 rel: within 1e-5
        (True, 0.0003, 3e-06)
    """
    tolerance = Tolerance.abs_or_rel(tol)
    expected_leaves, expected_def = jax.tree.flatten(expected)
    actual_leaves, actual_def = jax.tree.flatten(actual)
    if expected_def != actual_def:
        return Comparison(np.inf, np.inf, tol, False, f"structure {actual_def} != {expected_def}")
    max_abs = max_rel = 0.0
    detail = ""
    passed = True
    for i, (e, a) in enumerate(zip(expected_leaves, actual_leaves)):
        e = np.asarray(e).astype(np.float64)
        a = np.asarray(a).astype(np.float64)
        if e.shape != a.shape:
            return Comparison(np.inf, np.inf, tol, False, f"output {i}: shape {a.shape} != {e.shape}")
        elements = compare_elements(a, e, tolerance)
        passed = passed and elements.passed
        nan_e, nan_a = np.isnan(e), np.isnan(a)
        if not np.array_equal(nan_e, nan_a):
            detail = f"output {i}: NaN at different positions"
        elif elements.misplaced.any():
            detail = f"output {i}: inf at different positions"
        # the summary: the largest abs error, and the largest rel error where abs is beyond tol
        ok = ~(nan_e | nan_a)
        e, err = e[ok], elements.error[ok]
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(err > tol, err / np.abs(e), 0.0)
        if err.size:
            max_abs = max(max_abs, float(err.max()))
            max_rel = max(max_rel, float(rel.max()))
    passed = passed and not detail
    if not passed and not detail:
        detail = "outside tolerance"
    return Comparison(max_abs, max_rel, tol, passed, detail)


def _check_dtypes(comparison: Comparison, actual, dtype: str, what: str) -> Comparison:
    if comparison.passed:
        dtypes = {str(leaf.dtype) for leaf in jax.tree.leaves(actual)}
        if dtypes != {dtype}:
            return dataclasses.replace(comparison, passed=False, detail=f"{what} dtypes {sorted(dtypes)}, expected {dtype}")
    return comparison


def _skipped(case, dtype, half, direction, reference, reason, tol) -> Result:
    comparison = Comparison(np.nan, np.nan, tol, False, f"skipped: {reason}")
    return Result(case.name, case.mechanism, case.shapes, dtype, half, comparison, direction, reference, reason)


def backward_reference(case: ParityCase, dtype: str, half: str) -> str:
    """What a backward row compares with: the NumPy VJP in float64 where the case has one
    (except the NumPy half's own float64 row: that VJP is checked against finite
    differences), else finite differences of the NumPy float64 forward."""
    if case.numpy_vjp is None or (half == "numpy" and dtype == "float64"):
        return FINITE_DIFFERENCES
    return NUMPY_VJP


def run_case(
    case: ParityCase, dtype: str, half: str = "jax", direction: str = "forward", *, tolerance: float | None = None
) -> Result:
    """Run ``case`` on ``half`` ("numpy" or "jax") in ``dtype`` and compare with the NumPy
    float64 reference on the same rounded inputs. JAX float64 needs ``jax_enable_x64``
    (without it the row is skipped, with the reason); JAX float32 runs at matmul precision
    "highest" (docs/design.md section 5). ``direction="backward"`` compares gradients (see
    :class:`ParityCase`'s ``differentiable``). ``tolerance`` overrides the case's for this call."""
    return run_rows([(case, dtype, half, direction)], tolerances=[tolerance])[0]


def _check_row(case, dtype, half, direction) -> None:
    if dtype not in TOLERANCES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if half not in HALVES:
        raise ValueError(f"half must be one of {', '.join(HALVES)}; got {half!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}; got {direction!r}")
    if direction == "backward" and not case.differentiable:
        raise ValueError(f"case {case.name!r} declares no differentiable arguments")


def _skip_reason(case, dtype, half, direction, reference) -> str:
    if half == "jax" and dtype == "float64" and not jax.config.jax_enable_x64:
        return "float64 on the JAX half needs jax.config.update('jax_enable_x64', True)"
    if direction == "backward" and half == "numpy" and case.numpy_vjp is None:
        return "no NumPy VJP"
    if reference == FINITE_DIFFERENCES and dtype != "float64":
        return "finite differences are float64 only"
    return ""


def run_rows(rows, tolerances=None) -> list[Result]:
    """``run_case`` for each ``(case, dtype, half, direction)`` of ``rows`` (with the per-row
    ``tolerances``, None: the case's), the JAX rows compiled together as one program
    (``parity_tests/_programs.py``): one compilation for all of them instead of one a row."""
    prepared = _prepare(rows, tolerances)
    return _finish(prepared, _run_jax(prepared.entries))


@dataclasses.dataclass
class _Prepared:
    results: list    # a Result for each skipped row, None for the others
    pending: list    # what _finish needs for each row that runs
    entries: dict    # row index -> the JAX computation of a JAX row


def _prepare(rows, tolerances=None) -> _Prepared:
    tolerances = [None] * len(rows) if tolerances is None else list(tolerances)
    prepared = _Prepared([None] * len(rows), [], {})
    for i, ((case, dtype, half, direction), tolerance) in enumerate(zip(rows, tolerances)):
        _check_row(case, dtype, half, direction)
        reference = NUMPY_FLOAT64 if direction == "forward" else backward_reference(case, dtype, half)
        tol = case.tolerance(dtype, direction, reference) if tolerance is None else tolerance
        reason = _skip_reason(case, dtype, half, direction, reference)
        if reason:
            prepared.results[i] = _skipped(case, dtype, half, direction, reference, reason, tol)
            continue
        args, kwargs = cast_floats(case.build(np.random.default_rng(case.seed)), dtype)
        cotangent = _cotangent(case, args, kwargs, dtype) if direction == "backward" else None
        if half == "jax":
            differentiable = case.differentiable if direction == "backward" else ()
            prepared.entries[i] = Entry(case.jax_fn, args, kwargs, differentiable, cotangent, case.cotangent_outputs)
        prepared.pending.append((i, case, dtype, half, direction, reference, tol, args, kwargs, cotangent))
    return prepared


def _finish(prepared: _Prepared, jax_results: dict) -> list[Result]:
    """The NumPy rows run, every row compared with its reference."""
    results = list(prepared.results)
    for i, case, dtype, half, direction, reference, tol, args, kwargs, cotangent in prepared.pending:
        if half == "jax":
            actual = jax_results[i]
        elif direction == "forward":
            actual = case.numpy_fn(*args, **kwargs)
        else:
            actual = tuple(case.numpy_vjp(args, kwargs, cotangent))
        if direction == "backward":
            expected, actual = _backward_expected(case, args, kwargs, cotangent, reference, actual)
        else:
            expected = case.numpy_fn(*cast_floats(args, "float64"), **cast_floats(kwargs, "float64"))
        what = "gradient" if direction == "backward" else "output"
        comparison = _check_dtypes(compare(expected, actual, tol), actual, dtype, what)
        results[i] = Result(case.name, case.mechanism, case.shapes, dtype, half, comparison, direction, reference)
    return results


def _run_jax(entries: dict) -> dict:
    """All entries in one program; if that fails (a function that cannot be traced inside an
    outer ``jit``, or an error), each entry alone, a forward entry at last called as it is,
    so that an error is raised by the row it belongs to."""
    if not entries:
        return {}
    try:
        return run_entries(entries)
    except Exception:
        if len(entries) == 1 and next(iter(entries.values())).differentiable:
            raise
    results = {}
    for key, entry in entries.items():
        try:
            results[key] = run_entries({key: entry})
            results[key] = results[key][key]
        except Exception:
            if entry.differentiable:
                raise
            with jax.default_matmul_precision("highest"):
                results[key] = jax.device_get(entry.fn(*to_jax(entry.args), **to_jax(entry.kwargs)))
    return results


def _cotangent(case, args, kwargs, dtype):
    """The row's cotangent: drawn for the shapes of the NumPy float64 outputs, rounded to ``dtype``."""
    args64, kwargs64 = cast_floats((args, kwargs), "float64")
    outputs = select(case.numpy_fn(*args64, **kwargs64), case.cotangent_outputs)
    return cast_floats(draw_cotangent(case.seed, outputs), dtype)


def _backward_expected(case, args, kwargs, cotangent, reference, actual):
    """``(expected, actual)`` gradients on the same rounded inputs and cotangent; against
    finite differences only the differenced elements are compared."""
    args64, kwargs64 = cast_floats((args, kwargs), "float64")
    cotangent64 = cast_floats(cotangent, "float64")
    if reference == NUMPY_VJP:
        return tuple(case.numpy_vjp(args64, kwargs64, cotangent64)), actual
    expected = finite_differences(case, args64, kwargs64, cotangent64, samples=case.fd_samples)
    if jax.tree.structure(expected) != jax.tree.structure(actual):
        return expected, actual  # compare() reports the mismatch
    differenced = [~np.isnan(e) for e in jax.tree.leaves(expected)]
    take = lambda tree: [np.asarray(x)[m] for x, m in zip(jax.tree.leaves(tree), differenced)]
    return take(expected), take(actual)


# --- which rows exist, running them all, pytest --------------------------------------------------
def planned_rows(cases=None, dtypes=DTYPES, halves=HALVES, directions=DIRECTIONS) -> list[tuple]:
    """``(case, dtype, half, direction)`` of every row the report runs. Forward: the case's
    dtypes on its halves, except the trivial NumPy float64 self-comparison. Backward (cases
    with ``differentiable`` arguments): every dtype where a NumPy VJP is the reference,
    float64 where finite differences are (the NumPy half only with a NumPy VJP)."""
    cases = REGISTRY.values() if cases is None else cases
    rows = []
    for case in cases:
        for direction in directions:
            if direction == "backward" and not case.differentiable:
                continue
            for dtype in dtypes:
                for half in halves:
                    if half not in case.halves or dtype not in case.dtypes:
                        continue
                    if direction == "forward" and half == "numpy" and dtype == "float64":
                        continue
                    if direction == "backward" and half == "numpy" and case.numpy_vjp is None:
                        continue
                    if direction == "backward" and backward_reference(case, dtype, half) == FINITE_DIFFERENCES and dtype != "float64":
                        continue
                    rows.append((case, dtype, half, direction))
    return rows


def run_all(
    cases=None, dtypes=DTYPES, halves=HALVES, directions=DIRECTIONS, *, tolerances=None, grad_tolerances=None,
    progress=None,
) -> list[Result]:
    """Every row of :func:`planned_rows`, a mechanism at a time: the JAX rows of one
    mechanism (every case, dtype and direction) compile as one program, so a run compiles
    once a mechanism instead of once a row. ``tolerances`` / ``grad_tolerances`` (dtype ->
    tolerance) override the cases' own for this call. ``progress(mechanism, results,
    seconds)`` is called after each mechanism, in order.

    Two threads share the work, as two cores would: this one traces the programs and runs
    the NumPy side (references, finite differences), a second one compiles (XLA does not
    hold the GIL), one or two mechanisms ahead."""
    by_mechanism = {}
    for row in planned_rows(cases, dtypes, halves, directions):
        by_mechanism.setdefault(row[0].mechanism, []).append(row)
    start = time.perf_counter()
    results, queue = [], collections.deque()

    def finish():
        mechanism, prepared, compiling = queue.popleft()
        jax_results = compiling.result().run() if compiling is not None else _run_jax(prepared.entries)
        done = _finish(prepared, jax_results)
        if progress is not None:
            progress(mechanism, done, time.perf_counter() - start)
        results.extend(done)

    with concurrent.futures.ThreadPoolExecutor(1) as compiler:
        for mechanism, rows in by_mechanism.items():
            overrides = [((tolerances if direction == "forward" else grad_tolerances) or {}).get(dtype)
                         for _, dtype, _, direction in rows]
            prepared = _prepare(rows, overrides)
            try:
                program = Program(prepared.entries).lower() if prepared.entries else None
            except Exception:  # _run_jax runs the rows one by one: the failing row raises its error
                program = None
            queue.append((mechanism, prepared, None if program is None else compiler.submit(program.compile)))
            while len(queue) > 2 or (queue and queue[0][2] is not None and queue[0][2].done()):
                finish()
        while queue:
            finish()
    return results


def pytest_params(cases=None, dtypes=DTYPES, halves=HALVES, directions=DIRECTIONS) -> list:
    """The registry's rows as ``pytest.param(case, dtype, half, direction)`` with readable ids
    (``additive_attention/mask-backward-float32-jax``)::

        @pytest.mark.parametrize("case, dtype, half, direction", parity_tests.pytest_params())
        def test_parity(case, dtype, half, direction):
            parity_tests.assert_parity(case, dtype, half, direction)
    """
    import pytest

    return [
        pytest.param(case, dtype, half, direction, id=f"{case.name}-{direction}-{dtype}-{half}")
        for case, dtype, half, direction in planned_rows(cases, dtypes, halves, directions)
    ]


def assert_parity(case: ParityCase, dtype: str, half: str = "jax", direction: str = "forward", *, tolerance=None) -> Result:
    """:func:`run_case` as a pytest check: a skipped row skips the test with its reason, a
    failing one fails with the errors and the tolerance. Returns the result."""
    import pytest

    result = run_case(case, dtype, half, direction, tolerance=tolerance)
    if result.skipped:
        pytest.skip(result.skipped)
    c = result.comparison
    assert c.passed, (
        f"{case.name} {direction} {dtype} {half} vs {result.reference}: max abs {c.max_abs:.3g}, "
        f"max rel {c.max_rel:.3g}, tol {c.tol:g}: {c.detail}"
    )
    return result
