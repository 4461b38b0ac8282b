"""docs/serving.md proves itself: every code block runs as written (each asserts its own
numbers against the NumPy reference, the mirror or the contiguous cache), and the pictures it
shows are the ones docs/serving_pictures.py draws, which still runs against the library."""

import importlib.util
import re
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "serving.md"


def _python_blocks(text):
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.M | re.S)


BLOCKS = _python_blocks(PAGE.read_text())


def test_the_page_has_its_examples():
    # a page whose fences changed shape would make the test below pass vacuously
    assert len(BLOCKS) == 5
    joined = "\n".join(BLOCKS)
    for call in ("attention_np.paged_attention", "fast.paged import paged_attention", "page_size=page_size",
                 "attention_np.varlen_attention", "attention_jax.varlen_attention"):
        assert call in joined, call


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_the_examples_run_as_written(block):
    with jax.enable_x64(False):  # as a user runs them: float32 (the suite enables x64 for its float64 rows)
        exec(compile(block, "docs/serving.md", "exec"), {})  # each block asserts its own result


def _pictures_script():
    spec = importlib.util.spec_from_file_location("serving_pictures", ROOT / "docs" / "serving_pictures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pictures_are_the_scripts(tmp_path):
    pytest.importorskip("matplotlib")
    shown = set(re.findall(r"\]\(images/(serving_\w+\.png)\)", PAGE.read_text()))
    assert shown == {"serving_paged.png", "serving_varlen.png"}
    for name in shown:
        assert (ROOT / "docs" / "images" / name).is_file(), f"run python docs/serving_pictures.py ({name})"
    pictures = _pictures_script()
    pictures.draw_paged(tmp_path / "serving_paged.png")  # drawn into tmp_path: the repository is not written
    pictures.draw_varlen(tmp_path / "serving_varlen.png")
    assert {p.name for p in tmp_path.iterdir()} == shown


def test_the_paged_picture_shows_what_the_write_does():
    # each slot of the drawn pool holds the token the page table sends there
    pictures = _pictures_script()
    pool = pictures.paged_pool()                                          # (P, page_size)
    for b, n in enumerate(pictures.LENGTHS):
        for p in range(n):
            page = pictures.PAGE_TABLE[b, p // pictures.PAGE_SIZE]
            assert pool[page, p % pictures.PAGE_SIZE] == 1000 * (b + 1) + p
    assert (pool > 0).sum() == sum(pictures.LENGTHS)                      # nothing else written
