"""parity_tests: proof that ``attention_np`` and ``attention_jax`` agree.

Importable harness (a registry of cases, :func:`run_case`, :func:`compare`), the pytest
suite (``parity_tests/tests``) and the report, ``python -m parity_tests``.
"""

from . import cases  # noqa: F401  (registers the built-in cases)
from .harness import (
    DTYPES,
    REGISTRY,
    TOLERANCES,
    Comparison,
    ParityCase,
    Result,
    compare,
    load_tutorial_golden,
    register,
    run_all,
    run_case,
    run_tutorial_golden,
)

__all__ = [
    "DTYPES",
    "REGISTRY",
    "TOLERANCES",
    "Comparison",
    "ParityCase",
    "Result",
    "compare",
    "load_tutorial_golden",
    "register",
    "run_all",
    "run_case",
    "run_tutorial_golden",
]
