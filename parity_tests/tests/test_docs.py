"""The documentation proves itself: every docstring example runs (doctest), the NumPy
reference says nothing about compilers, and the site builds with ``mkdocs build --strict``."""

import doctest
import importlib
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import attention_jax
import attention_np

ROOT = Path(__file__).resolve().parents[2]


def _modules(package):
    names = [package.__name__] + [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
    return [importlib.import_module(name) for name in names]


MODULES = _modules(attention_np) + _modules(attention_jax)
WITH_EXAMPLES = [m for m in MODULES if ">>>" in Path(m.__file__).read_text()]


def test_the_modules_with_examples_are_found():
    # a walk that found nothing would make the doctest test below pass vacuously
    names = {m.__name__ for m in WITH_EXAMPLES}
    assert {"attention_np.scores", "attention_np.additive", "attention_np._masking", "attention_np._validate",
            "attention_np.dot_product",
            "attention_jax.scores", "attention_jax.additive", "attention_jax.nnx"} <= names


@pytest.mark.parametrize("module", WITH_EXAMPLES, ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, module.__name__) if t.examples]
    # every '>>>' line of the file is collected (none hides in a place doctest does not look)
    source = Path(module.__file__).read_text()
    assert sum(len(t.examples) for t in tests) == len(re.findall(r"^\s*>>> ", source, flags=re.M))
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {module.__name__}"


COMPILER_WORDS = re.compile(r"\b(xla|jit|jitted|jit-compiled|fusion|fuses|fused)\b", re.IGNORECASE)


@pytest.mark.parametrize("path", sorted((ROOT / "attention_np").glob("*.py")), ids=lambda p: p.name)
def test_numpy_reference_does_not_mention_the_compiler(path):
    hits = [f"{path.name}:{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1)
            if COMPILER_WORDS.search(line)]
    assert not hits, "JAX-compiler remarks belong in attention_jax:\n" + "\n".join(hits)


def test_compiler_words_are_caught():
    # the pattern itself: catches the words, not words that merely contain them
    assert COMPILER_WORDS.search("(A maximum, not a where: XLA fuses it.)")
    assert COMPILER_WORDS.search("JAX outside ``jit``")
    assert COMPILER_WORDS.search("under jax.jit")
    assert not COMPILER_WORDS.search('ax.set_xlabel("source")')


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    pytest.importorskip("mkdocs_jupyter")
    # the tour's execution is tested in test_tour.py; here only the site's build and links
    env = dict(os.environ, TOUR_EXECUTE="false", NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for page in ("index.html", "tour/index.html", "design/index.html", "api/attention_np/index.html",
                 "api/attention_jax/index.html", "benchmarks/index.html"):
        assert (tmp_path / page).exists(), page
    api = (tmp_path / "api" / "attention_np" / "index.html").read_text()
    assert "scaled_dot_product_attention" in api and 'class="arithmatex"' in api  # docstrings and their math
    assert "```" not in api and ".. math::" not in api  # reST and fences were converted, not printed
