r"""Test an attention path the way the suite tests its own: random problems, the float64
NumPy answer, one comparison, and a table of the paths with what each supports.

- :class:`Problem`: query, key, value, the keyword options of
  ``scaled_dot_product_attention`` and the upstream gradients; :func:`make_problem` builds
  one, :func:`problems` (hypothesis) draws them: shapes with T != S and grouped key/value
  heads, masks with fully masked rows, lengths including 0, windows, ``-inf`` biases, segment
  ids with a segment no key has, soft-caps, sinks, dropout, the residual, upstream gradients
  up to 1e4 on every position.
- :func:`reference`: the float64 answer of ``attention_np`` on the problem's (rounded)
  inputs: ``out``, ``lse``, the gradients and the *dead* queries (those that see no key:
  their output and query gradient must be exactly zero).
- :func:`check`: ``actual`` against the float64 ``expected`` by the design's tolerance of the
  dtype (:data:`parity_tests.tolerance.TOLERANCES`), raising an ``AssertionError`` that says
  where and by how much.
- :data:`PATHS`: every JAX path of the suite as a :class:`Path`, ``call`` with
  ``dot_product_attention``'s signature and return value, and ``supports``, the options it
  takes. :func:`expect_supported` says whether a problem's options are all supported;
  :func:`check_path` runs a path on a problem and checks equality (values, lse, gradients,
  dead rows) or, for options it does not support, that it refuses them by name.

A new path is one entry in :data:`PATHS` (or a :class:`Path` of your own); a new option is
one name in :data:`OPTIONS`, drawn in :func:`problems` and passed to the reference.

Example: ``dot_product_attention`` on a small causal problem, in float32.

>>> import attention_jax
>>> from parity_tests.testing import check, check_path, make_problem, qkv, reference
>>> query, key, value = qkv(B=1, T=3, S=3, N=2, K=1, H=4, dtype="float32")
>>> problem = make_problem(query, key, value, is_causal=True)
>>> problem
Problem(float32, B=1 T=3 S=3 N=2 K=1 H=4, is_causal)
>>> expected = reference(problem)
>>> out = attention_jax.dot_product_attention(query, key, value, is_causal=True)
>>> check(out, expected.out, "float32")                 # silent when equal
>>> check(out + 1e-3, expected.out, "float32")
Traceback (most recent call last):
...
AssertionError: out (float32): 24 of 24 elements beyond the tolerance 1e-05 ...
>>> check_path("dot_product_attention None", problem)    # forward, gradients and dead rows
>>> capped = make_problem(query, key, value, logits_soft_cap=5.0)
>>> check_path("dense_attention (tuned)", capped)       # it refuses the soft-cap by name; the rest is checked

The property tests of the suite (``parity_tests/tests/test_every_path.py``) are::

    @pytest.mark.parametrize("path", PATHS)
    @given(problem=problems())
    def test_jax_paths(path, problem):
        check_path(path, problem)

hypothesis is needed by :func:`problems` only (the ``test`` extra); the rest of this module
imports without it.
"""

from .expected import Expected, check, reference
from .paths import PATHS, Path, check_path, expect_supported, flex_mods, flex_path, run
from .problems import OPTIONS, Problem, make_problem, problems, qkv

__all__ = [
    "OPTIONS",
    "PATHS",
    "Expected",
    "Path",
    "Problem",
    "check",
    "check_path",
    "expect_supported",
    "flex_mods",
    "flex_path",
    "make_problem",
    "problems",
    "qkv",
    "reference",
    "run",
]
