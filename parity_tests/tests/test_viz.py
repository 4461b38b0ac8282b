"""plot_attention: a heatmap of either half's weights, with clear errors on mismatched labels."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import attention_jax  # noqa: E402
import attention_np  # noqa: E402
from attention_np.viz import plot_attention  # noqa: E402


@pytest.mark.parametrize("half", ["numpy", "jax"])
def test_plots_either_halfs_weights(half, tmp_path, rng):
    scores, values = rng.normal(size=(1, 3, 5)), rng.normal(size=(1, 5, 4))
    module = attention_np if half == "numpy" else attention_jax
    _, weights = module.soft_attention(scores, values)
    path = tmp_path / "w.png"
    ax = plot_attention(weights, list("abcde"), ["x", "y", "z"], path=path, title="t")
    assert path.read_bytes()[:4] == b"\x89PNG"
    np.testing.assert_allclose(ax.images[0].get_array(), np.asarray(weights)[0], rtol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == list("abcde")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["x", "y", "z"]


def test_bad_labels_and_shapes():
    with pytest.raises(ValueError, match=r"weights are \(T, S\) = \(2, 3\); got 2 target_tokens and 2 source_tokens"):
        plot_attention(np.zeros((2, 3)), ["a", "b"], ["x", "y"])
    with pytest.raises(ValueError, match=r"weights must have shape \(T, S\) or \(1, T, S\); got \(2, 2, 3\)"):
        plot_attention(np.zeros((2, 2, 3)), ["a", "b", "c"], ["x", "y"])


def test_axes_say_query_and_key_unless_told_otherwise():
    ax = plot_attention(np.full((2, 3), 1 / 3), ["a", "b", "c"], ["x", "y"])
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("key", "query")
    ax = plot_attention(np.full((2, 3), 1 / 3), ["a", "b", "c"], ["x", "y"], xlabel="source", ylabel="target")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("source", "target")


def test_small_heatmaps_carry_their_numbers():
    # weights [1, 3] / 4 and [1, 1] / 2: the cells read 0.25 0.75 / 0.50 0.50, row by row
    weights = np.array([[0.25, 0.75], [0.5, 0.5]])
    ax = plot_attention(weights, ["a", "b"], ["x", "y"])
    cells = sorted((t.get_position()[1], t.get_position()[0], t.get_text()) for t in ax.texts)
    assert [text for *_, text in cells] == ["0.25", "0.75", "0.50", "0.50"]
    # on the bright cell (0.75) the number is dark, on the dark ones light
    colors = {t.get_text(): t.get_color() for t in ax.texts}
    assert colors["0.75"] == "black" and colors["0.25"] == "white"
    assert not plot_attention(weights, ["a", "b"], ["x", "y"], annotate=False).texts


def test_large_heatmaps_stay_unlabelled_unless_asked():
    weights = np.full((9, 8), 1 / 8)   # 72 cells: more than fit
    assert not plot_attention(weights, list("abcdefgh"), list("123456789")).texts
    assert len(plot_attention(weights, list("abcdefgh"), list("123456789"), annotate=True).texts) == 72
