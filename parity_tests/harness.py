"""The parity harness: a registry of cases and one comparison, importable by research code.

A :class:`ParityCase` names a mechanism, builds float64 NumPy inputs from a seed, and says
which NumPy and JAX functions to run. :func:`run_case` runs one case in one dtype on one
half and compares it with the NumPy float64 reference, computed from the *same* (rounded)
inputs, at the tolerance of DESIGN.md section 5. Register your own module's case with
:func:`register` and it appears in ``python -m parity_tests``::

    from parity_tests import ParityCase, register, run_case

    case = register(ParityCase(
        name="my_attention/basic", mechanism="my_attention", shapes="B=2 T=3 S=5 H=11",
        build=lambda rng: ((rng.normal(size=(2, 3, 11)), rng.normal(size=(2, 5, 11))), {}),
        numpy_fn=my_np_attention, jax_fn=my_jax_attention,
    ))
    print(run_case(case, "float32", half="jax"))
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

# DESIGN.md section 5: max abs and max rel error allowed against the NumPy float64 reference.
TOLERANCES = {"float64": 1e-12, "float32": 1e-5, "float16": 5e-3, "bfloat16": 2e-2}
TUTORIAL_TOLERANCE = 1e-6  # either half vs the tutorial's PyTorch class, float32
DTYPES = tuple(TOLERANCES)
HALVES = ("numpy", "jax")

_NP_DTYPES = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}


@dataclasses.dataclass(frozen=True)
class ParityCase:
    """One mechanism on one set of inputs.

    Attributes:
      name: unique, ``"<mechanism>/<variant>"``.
      mechanism: the public function's name.
      shapes: the sizes, in DESIGN.md's letters, for the report.
      build: ``rng -> (args, kwargs)``, float64 NumPy arrays (and bools, ints, strings);
        floating leaves are cast to the dtype under test, everything else passes as is.
      numpy_fn, jax_fn: the two halves, called as ``fn(*args, **kwargs)``.
      seed: seed of the ``numpy.random.Generator`` handed to ``build``.
      halves: which halves implement it; a JAX-only function (``chunked_attention``)
        names ``("jax",)`` and uses a NumPy reference as ``numpy_fn``.
      dtypes: the dtypes it is compared in (default: all four). A case with a discrete
        output (``greedy_decode``'s argmax ids) names the dtypes in which that output is
        defined to match the float64 reference.
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


@dataclasses.dataclass(frozen=True)
class Comparison:
    """How far ``actual`` is from ``expected``.

    An element passes when its abs error *or* its rel error is at most ``tol``. ``max_abs``
    is over all elements; ``max_rel`` over the elements whose abs error exceeds ``tol``
    (0 when there are none), so ``passed`` is ``max_abs <= tol or max_rel <= tol``, plus
    identical shapes and NaN where and only where the reference is NaN.
    """

    max_abs: float
    max_rel: float
    tol: float
    passed: bool
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Result:
    case: str
    mechanism: str
    shapes: str
    dtype: str
    half: str
    comparison: Comparison

    def as_dict(self) -> dict:
        return {
            "case": self.case,
            "mechanism": self.mechanism,
            "shapes": self.shapes,
            "dtype": self.dtype,
            "half": self.half,
            **dataclasses.asdict(self.comparison),
        }


REGISTRY: dict[str, ParityCase] = {}


def register(case: ParityCase) -> ParityCase:
    """Add ``case`` to the registry that ``python -m parity_tests`` runs; returns it."""
    if case.name in REGISTRY:
        raise ValueError(f"a parity case named {case.name!r} is registered already")
    REGISTRY[case.name] = case
    return case


def cast_floats(tree, dtype: str):
    """Cast every floating NumPy leaf of ``tree`` to ``dtype``; other leaves pass unchanged."""

    def cast(leaf):
        if isinstance(leaf, np.ndarray) and str(leaf.dtype) in _NP_DTYPES:
            return leaf.astype(_NP_DTYPES[dtype])
        return leaf

    return jax.tree.map(cast, tree)


def to_jax(tree):
    """NumPy array leaves to JAX arrays; Python scalars, strings and bools stay static."""
    return jax.tree.map(lambda leaf: jnp.asarray(leaf) if isinstance(leaf, np.ndarray) else leaf, tree)


def compare(expected, actual, tol: float) -> Comparison:
    """Compare two pytrees of arrays leaf by leaf (see :class:`Comparison`)."""
    expected_leaves, expected_def = jax.tree.flatten(expected)
    actual_leaves, actual_def = jax.tree.flatten(actual)
    if expected_def != actual_def:
        return Comparison(np.inf, np.inf, tol, False, f"structure {actual_def} != {expected_def}")
    max_abs = max_rel = 0.0
    detail = ""
    for i, (e, a) in enumerate(zip(expected_leaves, actual_leaves)):
        e = np.asarray(e).astype(np.float64)
        a = np.asarray(a).astype(np.float64)
        if e.shape != a.shape:
            return Comparison(np.inf, np.inf, tol, False, f"output {i}: shape {a.shape} != {e.shape}")
        nan_e, nan_a = np.isnan(e), np.isnan(a)
        if not np.array_equal(nan_e, nan_a):
            detail = f"output {i}: NaN at different positions"
        ok = ~(nan_e | nan_a)
        e, a = e[ok], a[ok]
        with np.errstate(invalid="ignore", divide="ignore"):  # inf == inf counts as equal
            err = np.where(e == a, 0.0, np.abs(a - e))
            rel = np.where(err > tol, err / np.abs(e), 0.0)
        if err.size:
            max_abs = max(max_abs, float(err.max()))
            max_rel = max(max_rel, float(rel.max()))
    passed = not detail and max_rel <= tol
    if not passed and not detail:
        detail = "outside tolerance"
    return Comparison(max_abs, max_rel, tol, passed, detail)


def run_case(case: ParityCase, dtype: str, half: str = "jax") -> Result:
    """Run ``case`` on ``half`` ("numpy" or "jax") in ``dtype`` and compare with the NumPy
    float64 reference on the same rounded inputs. JAX float64 needs ``jax_enable_x64``; JAX
    float32 runs at matmul precision "highest" (DESIGN.md section 5)."""
    if dtype not in TOLERANCES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if half not in HALVES:
        raise ValueError(f"half must be one of {', '.join(HALVES)}; got {half!r}")
    if half == "jax" and dtype == "float64" and not jax.config.jax_enable_x64:
        raise RuntimeError("float64 parity on the JAX half needs jax.config.update('jax_enable_x64', True)")
    args, kwargs = case.build(np.random.default_rng(case.seed))
    args, kwargs = cast_floats((args, kwargs), dtype)
    expected = case.numpy_fn(*cast_floats(args, "float64"), **cast_floats(kwargs, "float64"))
    if half == "numpy":
        actual = case.numpy_fn(*args, **kwargs)
    else:
        with jax.default_matmul_precision("highest"):
            actual = case.jax_fn(*to_jax(args), **to_jax(kwargs))
        actual = jax.device_get(actual)
    comparison = compare(expected, actual, TOLERANCES[dtype])
    if comparison.passed:
        dtypes = {str(leaf.dtype) for leaf in jax.tree.leaves(actual)}
        if dtypes != {dtype}:
            comparison = dataclasses.replace(comparison, passed=False, detail=f"output dtypes {sorted(dtypes)}, expected {dtype}")
    return Result(case.name, case.mechanism, case.shapes, dtype, half, comparison)


def run_all(cases=None, dtypes=DTYPES, halves=HALVES) -> list[Result]:
    """Every case x dtype x half, skipping the trivial NumPy float64 self-comparison."""
    cases = REGISTRY.values() if cases is None else cases
    return [
        run_case(case, dtype, half)
        for case in cases
        for dtype in dtypes
        for half in halves
        if half in case.halves and dtype in case.dtypes and not (half == "numpy" and dtype == "float64")
    ]


GOLDEN_PATH = pathlib.Path(__file__).with_name("golden") / "tutorial_additive.npz"


def load_tutorial_golden():
    """The notebook's own run (``torch.manual_seed(0)``, B=1, S=4, H=8), as stored by
    ``parity_tests/golden/make_tutorial_golden.py``: ``(params, decoder_hidden,
    encoder_outputs, context, attn_weights)`` with ``params`` already in this package's layout."""
    import attention_np

    with np.load(GOLDEN_PATH) as g:
        state = {"attn.weight": g["attn_weight"], "attn.bias": g["attn_bias"], "v": g["v"]}
        params = attention_np.additive_params_from_torch(state)
        return params, g["decoder_hidden"], g["encoder_outputs"], g["context"], g["attn_weights"]


def run_tutorial_golden() -> list[Result]:
    """Both halves, float32, against the outputs of the tutorial's PyTorch class."""
    import attention_jax
    import attention_np

    params, hidden, encoder_outputs, context, weights = load_tutorial_golden()
    results = []
    for half, fn in (("numpy", attention_np.additive_attention), ("jax", attention_jax.additive_attention)):
        args = (params, hidden, encoder_outputs) if half == "numpy" else to_jax((params, hidden, encoder_outputs))
        with jax.default_matmul_precision("highest"):
            actual = jax.device_get(fn(*args))
        comparison = compare((context, weights), actual, TUTORIAL_TOLERANCE)
        results.append(Result("tutorial golden (PyTorch)", "additive_attention", "B=1 S=4 H=8", "float32", half, comparison))
    return results
