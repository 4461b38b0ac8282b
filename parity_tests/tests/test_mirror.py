"""The JAX half keeps mirroring the NumPy half: ``attention_jax/X.py`` is ``attention_np/X.py``
in code, up to what JAX changes (``jnp`` for ``np``, ``jit``, the functional ``.at[]`` updates).

For each twin pair the share of the JAX file's code lines that do not match a line of the
NumPy file is measured: both files parsed, docstrings, comments, blank lines and imports
dropped, ``np.`` read as ``jnp.``, stripped lines compared with
``difflib.SequenceMatcher(autojunk=False)``; the share is ``(JAX lines - matched) / JAX lines``.
Run this file with ``-s`` to print the table.

A twin that drifts further from its NumPy file fails here; lower its budget when you bring
them closer. A new ``attention_jax`` module has a NumPy twin, or is listed in
:data:`JAX_ONLY` with the reason it has none.
"""

import ast
import difflib
import io
import math
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NUMPY, JAX = ROOT / "attention_np", ROOT / "attention_jax"

# The most each twin's JAX file may differ from its NumPy file: the measured share rounded
# up to the next 0.05. A twin that drifts further from its NumPy file fails here; lower the
# budget when you bring them closer.
BUDGETS = {
    "_batch.py": 0.00, "_dtypes.py": 0.60, "_masking.py": 0.05, "additive.py": 0.15, "cross_attention.py": 0.10,
    "diagnostics.py": 0.20, "dot_product.py": 0.45, "dropout.py": 0.30, "flex.py": 0.00, "global_attention.py": 0.10,
    "hard.py": 0.40, "kv_cache.py": 0.35, "local_attention.py": 0.10, "location.py": 0.10, "multi_head.py": 0.45,
    "paged.py": 0.40, "rotary.py": 0.25, "scores.py": 0.15, "self_attention.py": 0.15, "seq2seq.py": 0.35,
    "soft.py": 0.15, "torch_weights.py": 0.70, "transformer.py": 0.15,
}

# attention_jax modules and subpackages without an attention_np twin, and why.
JAX_ONLY = {
    "_jit.py": "plumbing: which arguments jax.jit treats as static; NumPy runs eagerly",
    "_random.py": "plumbing: JAX random keys; the NumPy half takes numpy.random.Generator",
    "_sharding.py": "plumbing: device meshes and shardings; NumPy has one device",
    "fast": "the tuned paths (dense, chunked, flex, paged, varlen kernels): their NumPy references are "
            "dot_product.py, flex.py, paged.py and varlen.py",
    "parallel": "multi-device attention (ring): the same numbers as dot_product.py on one device",
    "nnx": "Flax NNX modules around the functional core; NumPy has no module system",
}


def twins():
    """The file names that exist in both packages, top level, ``__init__.py`` aside (re-exports)."""
    return sorted(p.name for p in NUMPY.glob("*.py") if (JAX / p.name).exists() and p.name != "__init__.py")


def code_lines(source):
    """The stripped code lines of a file's ``source``: no docstrings, comments, blank lines or
    imports; ``np.`` read as ``jnp.``."""
    lines = source.splitlines()
    dropped = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            dropped.update(range(node.lineno, node.end_lineno + 1))
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                dropped.update(range(first.lineno, first.end_lineno + 1))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:  # cut the line at its comment
            row, col = token.start
            lines[row - 1] = lines[row - 1][:col]
    code = [re.sub(r"\bnp\.", "jnp.", line.strip()) for n, line in enumerate(lines, 1) if n not in dropped]
    return [line for line in code if line]


def drift(name):
    """``(JAX code lines, unmatched share)`` of the twin ``name``."""
    numpy_lines, jax_lines = code_lines((NUMPY / name).read_text()), code_lines((JAX / name).read_text())
    matcher = difflib.SequenceMatcher(None, numpy_lines, jax_lines, autojunk=False)
    matched = sum(block.size for block in matcher.get_matching_blocks())
    return len(jax_lines), (len(jax_lines) - matched) / max(len(jax_lines), 1)


def test_print_the_table():
    """The measured share of each twin beside its budget (``pytest -s`` shows it)."""
    rows = [(name, *drift(name), BUDGETS.get(name)) for name in twins()]
    print(f"\n{'twin':<22}{'JAX lines':>10}{'differ':>9}{'budget':>9}")
    for name, count, share, budget in rows:
        print(f"{name:<22}{count:>10}{share:>9.3f}{'' if budget is None else f'{budget:>9.2f}'}")
    assert rows


@pytest.mark.parametrize("name", twins())
def test_twin_stays_within_its_budget(name):
    assert name in BUDGETS, (f"attention_jax/{name} is a new twin of attention_np/{name}: give it a budget in "
                             f"BUDGETS, {math.ceil(drift(name)[1] / 0.05 - 1e-9) * 0.05:.2f}")
    _, share = drift(name)
    assert share <= BUDGETS[name] + 1e-9, (
        f"attention_jax/{name} differs from attention_np/{name} in {share:.1%} of its code lines, more than its "
        f"budget {BUDGETS[name]:.0%}: bring it back to the NumPy file's lines (or, for a difference JAX needs, "
        "raise the budget and say why)")


def test_every_budget_is_a_twin():
    assert set(BUDGETS) == set(twins())


def test_every_jax_module_has_a_numpy_twin_or_a_reason():
    modules = {p.name for p in JAX.glob("*.py") if p.name != "__init__.py"}
    packages = {p.name for p in JAX.iterdir() if (p / "__init__.py").exists()}
    without_twin = {m for m in modules if not (NUMPY / m).exists()} | packages
    assert without_twin == set(JAX_ONLY), (
        f"attention_jax modules without an attention_np twin and no reason in JAX_ONLY: "
        f"{sorted(without_twin - set(JAX_ONLY))}; listed but gone or twinned: {sorted(set(JAX_ONLY) - without_twin)}")


def test_code_lines_drop_docstrings_comments_and_imports():
    # the measure itself: a file that differs only in what is dropped reads the same
    numpy_source = '"""doc"""\nimport numpy as np\n\ndef f(x):\n    """doc"""\n    return np.tanh(x)  # one\n'
    jax_source = 'import jax.numpy as jnp\n\ndef f(x):\n    # other\n    return jnp.tanh(x)\n'
    assert code_lines(numpy_source) == code_lines(jax_source) == ["def f(x):", "return jnp.tanh(x)"]
