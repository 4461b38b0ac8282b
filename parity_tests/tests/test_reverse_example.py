"""``python -m examples.reverse`` in miniature: the loss falls, both halves decode alike, the PNG is written."""

import numpy as np
import pytest

pytest.importorskip("optax")
pytest.importorskip("matplotlib")


def test_tiny_reverse_run_trains_and_plots(tmp_path, capsys):
    from examples import reverse

    path = tmp_path / "weights.png"
    results = reverse.main(["--steps", "40", "--batch", "32", "--embed", "8", "--hidden", "16", "--heldout", "40",
                            "--learning-rate", "1e-2", "--hard", "--quiet", "--plot", str(path)])
    out = capsys.readouterr().out
    assert [r["hard"] for r in results] == [False, True]
    for r in results:
        assert np.mean(r["losses"][-5:]) < 0.9 * r["losses"][0]  # it learns
        assert r["numpy_agrees"] == r["n"] == 40  # attention_np.greedy_decode gives the JAX predictions
        assert 0.0 <= r["exact_accuracy"] <= r["token_accuracy"] <= 1.0
        assert r["weights"].shape == (40, reverse.MAX_LEN, reverse.MAX_LEN)
    assert path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "additive (soft)" in out and "additive (hard, straight-through)" in out


def test_batches_are_reversals_with_masks():
    from examples import reverse

    source, target_in, target, mask = reverse.make_batch(np.random.default_rng(0), 64)
    lengths = mask.sum(1)
    assert lengths.min() >= reverse.MIN_LEN and lengths.max() <= reverse.MAX_LEN
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(target[b, :n], source[b, :n][::-1])
        assert (source[b, n:] == reverse.PAD).all() and (target[b, n:] == reverse.PAD).all()
    np.testing.assert_array_equal(target_in[:, 0], reverse.BOS)
    np.testing.assert_array_equal(target_in[:, 1:], target[:, :-1])
