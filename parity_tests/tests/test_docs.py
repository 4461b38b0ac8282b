"""The documentation proves itself: every docstring example runs (doctest), the NumPy
reference says nothing about compilers, the README stays a front door whose examples run and
whose links resolve, and the site builds with ``mkdocs build --strict`` and needs no network
connection to be read."""

import doctest
import importlib
import inspect
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
    names = [package.__name__] + [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return [importlib.import_module(name) for name in names]


MODULES = _modules(attention_np) + _modules(attention_jax)
WITH_EXAMPLES = [m for m in MODULES if ">>>" in Path(m.__file__).read_text()]


def test_the_modules_with_examples_are_found():
    # a walk that found nothing would make the doctest test below pass vacuously
    names = {m.__name__ for m in WITH_EXAMPLES}
    assert {"attention_np.scores", "attention_np.additive", "attention_np._masking", "attention_np._validate.engine",
            "attention_np.dot_product",
            "attention_jax.scores", "attention_jax.additive", "attention_jax.nnx.tutorial"} <= names


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


README = ROOT / "README.md"
SETUP_COMMANDS = (  # .ci/run and the people who copy them depend on these lines, verbatim
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && python -m parity_tests",
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && pytest",
)
SITE_PAGES = ("index", "tour", "learn", "seq2seq", "research", "multi_device", "performance", "benchmarks",
              "semantics", "design", "parity", "api/attention_np", "api/attention_jax")


def _python_blocks(text):
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.M | re.S)


def test_the_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 250, "the README is the front door; the manual lives in docs/"
    lines = text.splitlines()
    for command in SETUP_COMMANDS:
        assert command in lines, command
    for page in ("docs/research.md", "docs/performance.md", "docs/parity.md", "docs/semantics.md",
                 "docs/multi_device.md", "docs/learn.md", "docs/seq2seq.md"):
        assert f"]({page}" in text, f"the README links {page}"


def _slugs(markdown):
    # GitHub's and mkdocs' heading ids agree on these headings: lower case, punctuation dropped but - and _
    headings = re.findall(r"^#{1,6} (.+)$", re.sub(r"^```.*?^```$", "", markdown, flags=re.M | re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("path", [README] + sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_relative_links_resolve_on_github(path):
    # the site checks its own links (mkdocs --strict); these are the links as GitHub shows them
    text = path.read_text()
    assert "../shared" not in text
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"^```.*?^```$", "", text, flags=re.M | re.S)):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _slugs(resolved.read_text()):
            broken.append(target)
    assert not broken, f"{path.name}: {broken}"


def _resolve(name):
    """The functions ``name`` means as the docs write it: a bare ``f`` is in both halves, a dotted
    ``attention_jax.nnx.C`` or ``jax.nn.f`` is that path; a class means its ``__call__``."""
    if "." in name:
        top, *path = name.split(".")
        objects = [importlib.import_module(top)]
        for part in path:
            objects = [getattr(objects[0], part)]
    else:
        objects = [getattr(attention_np, name), getattr(attention_jax, name)]
    return [obj.__call__ if isinstance(obj, type) else obj for obj in objects]


def test_the_learner_page_names_the_calls_that_take_a_window():
    # learn.md says self_attention takes no window and names the calls that take
    # local_window_size: each name is checked against the code, so the sentence cannot drift
    text = (ROOT / "docs" / "learn.md").read_text()
    start = text.index("`self_attention` takes no window")
    sentence = text[start:text.index(".", text.index("same argument", start))]
    names = re.findall(r"`([\w.]+)(?:\(|`)", sentence)
    assert "self_attention" in names and "scaled_dot_product_attention" in names, names
    for name in names:
        for function in _resolve(name):
            takes = "local_window_size" in inspect.signature(function).parameters
            assert takes == (name != "self_attention"), (name, function)


def test_the_readme_examples_run_as_written():
    # the learner's and the porter's starts, each in a fresh process as a user runs them (the
    # researcher's, the model example, is run by test_nnx_mha.py); the site shows them from here
    blocks = [b for b in _python_blocks(README.read_text()) if "class Model" not in b]
    assert len(blocks) == 2
    for block in blocks:
        proc = subprocess.run([sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, block + proc.stdout + proc.stderr
        assert "FAILED" not in proc.stdout, proc.stdout


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    pytest.importorskip("mkdocs_jupyter")
    pytest.importorskip("mathjax")  # django-static-mathjax: the site serves MathJax itself
    # the tour's execution is tested in test_tour.py; here only the site's build and links
    env = dict(os.environ, TOUR_EXECUTE="false", NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for page in SITE_PAGES:
        assert (tmp_path / page / "index.html").exists() or page == "index", page
    assert (tmp_path / "index.html").exists()
    api = (tmp_path / "api" / "attention_np" / "index.html").read_text()
    assert "scaled_dot_product_attention" in api and 'class="arithmatex"' in api  # docstrings and their math
    assert "```" not in api and ".. math::" not in api  # reST and fences were converted, not printed
    # the README's examples, included into the site (one source), not a snippet marker printed
    research = (tmp_path / "research" / "index.html").read_text()
    assert "Use it in a model (runs as written)" in research and "y_alibi" in research
    assert "8&lt;" not in research and "start:model" not in research
    assert "init_additive_params" in (tmp_path / "learn" / "index.html").read_text()
    # read offline: MathJax and its fonts come from the site, no page loads anything from another host
    mathjax = tmp_path / "javascripts" / "mathjax" / "es5"
    assert (mathjax / "tex-mml-chtml.js").exists() and list((mathjax / "output" / "chtml" / "fonts").rglob("*.woff"))
    for html in tmp_path.rglob("*.html"):
        text = html.read_text()
        assert not re.search(r"//[\w.-]*(cdn|jsdelivr|unpkg)", text), html
        assert not re.search(r"<(script|link|img)[^>]*(src|href)=\"(https?:)?//", text), html
    assert "javascripts/mathjax/es5/tex-mml-chtml.js" in research
    for image in ("repository/examples/reverse_attention.png", "repository/benchmarks/results/attention.png"):
        assert (tmp_path / image).exists(), image
