"""Every public function in the NumPy reference's reading order (docs/learn.md) is followed by
a worked example with numbers a reader can check by hand, and every example runs.

test_docs.py runs the examples of every module; this file checks that none of the reading
order's functions is without one, and runs each function's examples on their own, so a
failure names the function."""

import doctest
import importlib
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def reading_order():
    """The ``attention_np`` files named in docs/learn.md's "Read the reference in this order"."""
    text = (ROOT / "docs" / "learn.md").read_text()
    section = text.split("## Read the reference in this order", 1)[1].split("\n## ", 1)[0]
    return list(dict.fromkeys(re.findall(r"`(\w+)\.py`", section)))


def public_functions():
    functions = []
    for name in reading_order():
        module = importlib.import_module(f"attention_np.{name}")
        functions += [f for f_name, f in vars(module).items()
                      if inspect.isfunction(f) and f.__module__ == module.__name__ and not f_name.startswith("_")]
    return functions


FUNCTIONS = public_functions()
NUMPY_DEFAULT_PRINTING = {"precision": 8, "suppress": False, "floatmode": "maxprec", "linewidth": 75,
                          "threshold": 1000, "edgeitems": 3}


def test_the_reading_order_is_found():
    # an empty walk would let every test below pass vacuously
    assert reading_order() == ["soft", "scores", "additive", "_masking", "dot_product", "self_attention",
                               "cross_attention", "multi_head", "hard", "location", "global_attention",
                               "local_attention", "seq2seq", "backward"]
    names = {f.__name__ for f in FUNCTIONS}
    assert {"soft_attention", "masked_softmax", "multi_head_attention", "greedy_decode",
            "scaled_dot_product_attention_vjp"} <= names
    assert len(FUNCTIONS) >= 40


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_every_function_has_a_worked_example_that_runs(function):
    tests = doctest.DocTestFinder(recurse=False).find(function, function.__name__,
                                                      globs=vars(inspect.getmodule(function)))
    examples = sum(len(t.examples) for t in tests)
    assert examples, f"{function.__module__}.{function.__name__} has no worked example in its docstring"
    # at least one example shows a result (not only setting things up)
    assert any(e.want for t in tests for e in t.examples), f"{function.__name__}'s example prints nothing"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    with np.printoptions(**NUMPY_DEFAULT_PRINTING):  # as a reader's fresh session prints them
        for test in tests:
            runner.run(test)
    assert runner.summarize(verbose=False).failed == 0, f"{function.__name__}'s example gives other numbers"


def test_the_testing_kits_example_runs():
    import parity_tests.testing as kit

    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder(recurse=False).find(kit, "parity_tests.testing"):
        runner.run(test)
    assert runner.tries >= 8 and runner.failures == 0, (runner.tries, runner.failures)
