"""parity_tests: proof that ``attention_np`` and ``attention_jax`` agree.

Importable harness (a registry of cases, :func:`run_case`, :func:`compare`), the pytest
suite (``parity_tests/tests``) and the report, ``python -m parity_tests``; :func:`check_port`,
:func:`sweep_port` and :func:`assert_port` check anyone's port between NumPy, JAX and
PyTorch. One rule for "equal" serves them all: :class:`Tolerance` and
:func:`compare_elements`. :mod:`parity_tests.testing` is the suite's property-test kit for
any attention path: :class:`Problem` and :func:`problems` (hypothesis), :func:`reference`,
:func:`check`, and :data:`PATHS`, what each path supports (:func:`expect_supported`).
"""

from . import cases, layout_cases  # noqa: F401  (register the built-in cases)
from .gradients import FD_STEP, finite_differences, jax_vjp
from .harness import assert_parity, compare, planned_rows, pytest_params, run_all, run_case
from .port import PORTS, LeafCheck, PortCase, PortReport, assert_port, check_port, register_port, sweep_port
from .registry import (
    DIRECTIONS,
    DTYPES,
    GRAD_TOLERANCES,
    REGISTRY,
    TOLERANCES,
    Comparison,
    ParityCase,
    Result,
    load_cases,
    register,
)
from .testing import (
    PATHS,
    Path,
    Problem,
    check,
    check_path,
    expect_supported,
    make_problem,
    problems,
    qkv,
    reference,
)
from .tolerance import FD_TOLERANCE, Tolerance, compare_elements
from .tutorial import load_tutorial_golden, run_tutorial_golden

__all__ = [
    "DIRECTIONS",
    "DTYPES",
    "FD_STEP",
    "FD_TOLERANCE",
    "GRAD_TOLERANCES",
    "PATHS",
    "REGISTRY",
    "TOLERANCES",
    "Comparison",
    "ParityCase",
    "Path",
    "Problem",
    "Result",
    "Tolerance",
    "LeafCheck",
    "PORTS",
    "PortCase",
    "PortReport",
    "assert_parity",
    "assert_port",
    "check",
    "check_path",
    "check_port",
    "compare",
    "compare_elements",
    "expect_supported",
    "finite_differences",
    "jax_vjp",
    "load_cases",
    "load_tutorial_golden",
    "make_problem",
    "planned_rows",
    "problems",
    "pytest_params",
    "qkv",
    "reference",
    "register",
    "register_port",
    "run_all",
    "run_case",
    "run_tutorial_golden",
    "sweep_port",
]
