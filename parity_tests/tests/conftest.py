"""Shared fixtures: float64 JAX for the 1e-12 parity rows, prime sizes, jit on and off."""

import contextlib
import os

from parity_tests._programs import FAST_CPU_COMPILE

# The suite compiles a few thousand small programs and runs each once or twice, so XLA's
# compile time is most of its time: on CPU the report's compile options (FAST_CPU_COMPILE:
# legacy fusion emitters, LLVM at -O0) compile about 3.5x faster and change no result; numbers
# in benchmarks/results/experiments.md. Here they go into XLA_FLAGS, so that every compile of
# the suite and its subprocesses gets them; flags already in XLA_FLAGS win. This must run
# before jax starts its backend, which importing parity_tests does not do.
_given = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join([_given] + [f"--{name}={str(value).lower()}" for name, value in FAST_CPU_COMPILE.items()
                                               if f"--{name}" not in _given]).strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

import attention_jax  # noqa: E402
import attention_np  # noqa: E402

# float64 parity needs x64; every float32 test passes float32 arrays explicitly.
jax.config.update("jax_enable_x64", True)

# Hypothesis profiles. "default": a few fixed examples per property, so the suite stays fast and
# every run sees the same ones; "search": a long random search for a bug hunt, run as
#   pytest --hypothesis-profile=search parity_tests/tests/test_every_path.py
settings.register_profile("default", max_examples=6, derandomize=True, deadline=None, print_blob=True)
settings.register_profile("search", max_examples=500, derandomize=False, deadline=None, print_blob=True)
settings.load_profile("default")

# The two halves, by name, for tests parametrized over both.
HALVES = {"numpy": attention_np, "jax": attention_jax}

# Prime sizes so that a transposed axis cannot pass.
B, T, S, N, K, H = 2, 3, 5, 7, 3, 11


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# Modules whose JAX tests also run op by op (jax.disable_jit) by default: the tutorial's
# mechanism and the core function. Elsewhere op by op is opt-in (`pytest --op-by-op`), as it
# runs every loop in Python and took a seventh of the suite's time.
OP_BY_OP_MODULES = ("test_additive", "test_dot_product")


def pytest_addoption(parser):
    parser.addoption("--op-by-op", action="store_true",
                     help="run every test that takes the `jit` fixture op by op (jax.disable_jit) too")


def pytest_generate_tests(metafunc):
    if "jit" in metafunc.fixturenames:
        both = metafunc.config.getoption("--op-by-op") or metafunc.module.__name__.endswith(OP_BY_OP_MODULES)
        modes = [True, False] if both else [True]
        metafunc.parametrize("jit", modes, ids=["jit", "nojit"][:len(modes)], indirect=True)


@pytest.fixture
def jit(request):
    """Run the JAX half compiled, or op by op (``jax.disable_jit``)."""
    ctx = contextlib.nullcontext() if request.param else jax.disable_jit()
    with ctx:
        yield request.param


def highest():
    """Full float32 matmuls for the 1e-5 rows (docs/design.md section 5)."""
    return jax.default_matmul_precision("highest")


# pytest-xdist runs each file on one worker (`--dist loadfile` in pyproject.toml), so that a
# program shared by a file's tests compiles once, not once per worker (numbers in
# benchmarks/results/experiments.md). The workers take the files longest first, as measured on
# 2 cores, so that no long file starts last; files not listed follow in collection order.
LONGEST_FIRST = ("test_nnx_mha.py", "test_chunked.py", "test_edge_cases.py", "test_every_path.py",
                 "test_sharding.py", "test_flex.py", "test_seq2seq.py", "test_parity.py", "test_packed.py",
                 "test_dot_product.py", "test_port.py", "test_mechanisms.py", "test_reliability.py",
                 "test_ring.py", "test_backward.py", "test_tiny_lm_example.py", "test_dot_product_attention.py",
                 "test_tour.py", "test_reverse_example.py", "test_dropout.py", "test_nnx.py", "test_properties.py")


def pytest_collection_modifyitems(config, items):
    # the NumPy half has no jit to turn off: its op-by-op twin would only rerun the oracle
    params = lambda item: getattr(item, "callspec", None) and item.callspec.params or {}
    numpy_op_by_op = [item for item in items if params(item).get("half") == "numpy" and params(item).get("jit") is False]
    if numpy_op_by_op:
        config.hook.pytest_deselected(items=numpy_op_by_op)
        items[:] = [item for item in items if item not in numpy_op_by_op]
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: otherwise collection order
