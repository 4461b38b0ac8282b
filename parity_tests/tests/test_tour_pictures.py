"""The pictures under docs/images/ are drawn by code: the scripts that draw them run here, into a
temporary folder, and draw every committed picture again (the same names, about the same size).

    python docs/machinery_pictures.py   # the machinery: self-attention, multi-head, encoder - attention - decoder
    python docs/flex_pictures.py        # the flex mods and their block masks

redraw the committed files; fonts differ between machines, so the pixels are not compared.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")

DOCS = Path(__file__).resolve().parents[2] / "docs"
IMAGES = DOCS / "images"
PNG = b"\x89PNG\r\n\x1a\n"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def agg():
    backend = matplotlib.get_backend()
    matplotlib.use("agg")
    yield
    matplotlib.use(backend)


def _same_picture(drawn, committed):
    """``drawn`` is a PNG of about the size of the committed one (width and height within 10%)."""
    from matplotlib.image import imread

    assert drawn.read_bytes()[:8] == PNG, drawn
    assert committed.exists(), f"{committed} is not committed: run the script and add it"
    (h, w), (h0, w0) = imread(drawn).shape[:2], imread(committed).shape[:2]
    assert abs(h - h0) <= 0.1 * h0 and abs(w - w0) <= 0.1 * w0, (drawn.name, (h, w), (h0, w0))


def test_the_machinery_pictures_are_drawn_by_code(tmp_path, agg):
    import matplotlib.pyplot as plt

    pictures = _load("machinery_pictures")
    paths = pictures.main(tmp_path)
    assert [p.name for p in paths] == ["machinery_self_attention.png", "machinery_multi_head.png",
                                       "machinery_seq2seq.png"]
    for path in paths:
        _same_picture(path, IMAGES / path.name)
    assert not plt.get_fignums(), "every figure is closed once saved"


def test_the_machinery_pictures_are_the_librarys_numbers(agg):
    # every matrix of the self-attention picture is drawn cell by cell from the library's arrays:
    # the weights' cells carry their value (viridis), so a row of the drawing sums like a row of weights
    import matplotlib.pyplot as plt

    import attention_np

    pictures = _load("machinery_pictures")
    figure = pictures.draw_self_attention()
    text = " ".join(t.get_text() for t in figure.axes[0].texts)
    for shape in ("(B, S, E) = (1, 6, 8)", "(B, S, H) = (1, 6, 4)", "(B, T, S) = (1, 6, 6)", "(B, T, H) = (1, 6, 4)"):
        assert shape in text, shape
    cells = [p for p in figure.axes[0].patches if p.get_width() == pictures.CELL]
    assert len(cells) == 6 * 8 + 3 * 6 * 4 + 2 * 6 * 6 + 6 * 4   # x; q, k, v; scores, weights; out
    plt.close(figure)
    x = pictures._words()
    assert x.shape == (1, 6, 8) and np.array_equal(x[0, 0], x[0, 4])   # "The" and "the": one vector
    _, weights = attention_np.self_attention(
        {n: {"kernel": np.eye(8), "bias": np.zeros(8)} for n in ("query", "key", "value")}, x)
    np.testing.assert_allclose(weights.sum(-1), 1.0)


def test_the_flex_pictures_are_drawn_by_code(tmp_path, agg, monkeypatch):
    import matplotlib.pyplot as plt

    pictures = _load("flex_pictures")
    monkeypatch.setattr(pictures, "IMAGES", tmp_path)
    drawn = []
    real_savefig = plt.Figure.savefig

    def savefig(figure, path, *args, **kwargs):
        # each picture has a legend for the block states and, where the mod adds a bias, a colour bar
        legends = [ax.get_legend() for ax in figure.axes if ax.get_legend() is not None]
        labels = [t.get_text() for legend in legends for t in legend.get_texts()]
        assert any(label.startswith("empty") for label in labels) and any(label.startswith("full") for label in labels)
        drawn.append((Path(path).name, len(figure.axes), figure._suptitle.get_text()))
        return real_savefig(figure, path, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", savefig)
    for name, (score_mod, mask_mod, title) in pictures.MODS.items():
        pictures.draw(name, score_mod, mask_mod, title)
    assert [name for name, _, _ in drawn] == [f"flex_{name}.png" for name in pictures.MODS]
    for name, axes, title in drawn:
        score_mod = pictures.MODS[name[len("flex_"):-len(".png")]][0]
        assert axes == (3 if score_mod is not None else 2), name   # the colour bar is an axes of its own
        assert title and len(title) <= 70, title
        _same_picture(tmp_path / name, IMAGES / name)
    assert not plt.get_fignums()
