"""mkdocs hooks: put into the site the files it needs from outside docs/, so that it works
without a network connection.

- MathJax 3, from the ``django-static-mathjax`` package (the ``docs`` extra; a plain copy of
  MathJax's files, no Django needed): the combined ``tex-mml-chtml.js`` and what it loads
  lazily (fonts, TeX extensions, the menu and its accessibility parts), under
  ``javascripts/mathjax/``. ``mkdocs.yml`` loads it from there, never from a CDN.
- Images of the repository that a page links as ``../<path>`` (a link that works on GitHub,
  e.g. ``../examples/reverse_attention.png``): copied to ``repository/<path>`` and the link
  rewritten, so it works in the site too. The benchmark plot lives in benchmarks/results/,
  outside docs/, so that the benchmark script owns it.
- nbconvert's notebook template (the tour) carries a script that would import mermaid from a
  CDN if the notebook had a mermaid diagram; the tour has none, so the script is dropped and
  no page names a third-party host.
"""

import importlib.util
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

MATHJAX_SITE_DIR = "javascripts/mathjax"
# what tex-mml-chtml.js loads after it: fonts, TeX packages (autoload), the menu, a11y
MATHJAX_PARTS = ("tex-mml-chtml.js", "output/chtml", "input/tex/extensions", "ui", "a11y", "sre")

# ](../path.png) in a page of docs/ (first level): an image of the repository outside docs/
REPO_IMAGE = re.compile(r"\]\(\.\./((?!docs/)[\w./-]+\.(?:png|svg|jpg|jpeg|gif))\)")
REPO_SITE_DIR = "repository"

NBCONVERT_MERMAID = re.compile(r'<script type="module">(?:(?!</script>).)*?import\("https://[^"]*mermaid.*?</script>',
                               re.DOTALL)


def _mathjax_es5():
    spec = importlib.util.find_spec("mathjax")
    es5 = Path(spec.origin).parent / "static" / "mathjax" / "es5" if spec and spec.origin else None
    if es5 is None or not (es5 / "tex-mml-chtml.js").exists():
        raise PluginError("MathJax is served from the site: pip install -e '.[docs]' (django-static-mathjax)")
    return es5


def _repo_images():
    found = set()
    for page in DOCS.glob("*.md"):
        for path in REPO_IMAGE.findall(page.read_text(encoding="utf-8")):
            if not (ROOT / path).is_file():
                raise PluginError(f"{page.name} links ../{path}, which does not exist")
            found.add(path)
    return sorted(found)


def on_files(files, config):
    es5 = _mathjax_es5()
    for part in MATHJAX_PARTS:
        source = es5 / part
        for path in [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file()):
            dest = f"{MATHJAX_SITE_DIR}/es5/{path.relative_to(es5).as_posix()}"
            files.append(File.generated(config, dest, abs_src_path=str(path)))
    for path in _repo_images():
        files.append(File.generated(config, f"{REPO_SITE_DIR}/{path}", abs_src_path=str(ROOT / path)))
    return files


def on_page_markdown(markdown, page, config, files):
    if "/" in page.file.src_uri:  # only first-level pages link ../ into the repository
        return markdown
    return REPO_IMAGE.sub(lambda m: f"]({REPO_SITE_DIR}/{m.group(1)})", markdown)


def on_post_page(output, page, config):
    if "jp-Mermaid" in output:
        if 'class="jp-Mermaid"' in output:  # a real diagram: keep the loader, and say so
            raise PluginError(f"{page.file.src_uri} has a mermaid diagram, which would load mermaid from a CDN")
        output = NBCONVERT_MERMAID.sub("", output)
    return output
