"""``python -m examples.tiny_lm`` in miniature: both models learn, the cached prefill of ragged
prompts gives the full pass's logits, sampling continues every prompt, the plot is written."""

import numpy as np
import pytest

pytest.importorskip("optax")
pytest.importorskip("matplotlib")


def test_tiny_run_trains_both_models_samples_and_plots(tmp_path):
    import jax.numpy as jnp

    from examples import tiny_lm

    path = tmp_path / "loss.png"
    results = tiny_lm.main(["--steps", "25", "--width", "32", "--layers", "1", "--quiet", "--plot", str(path)])
    for name in ("ours", "flax"):
        losses = results[name]["losses"]
        assert np.mean(losses[-5:]) < 0.85 * losses[0], name                   # it learns
    assert [s.split()[0] for s in results["samples"]] == ["the", "a", "my"]
    assert all(len(s) > len(p) for s, p in zip(results["samples"], ["the cat", "a", "my friend walked"]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the decode cache's prefill of right-padded prompts equals the full causal pass with lengths
    model = results["ours"]["model"]
    tokens, lengths = tiny_lm.make_batch(np.random.default_rng(1), 3, 40)
    tokens, lengths = jnp.asarray(tokens[:, :-1]), jnp.asarray(lengths)
    full = np.asarray(model(tokens, lengths))
    for block in model.blocks:
        block.attention.init_cache((3, 40, 32))
    cached = np.asarray(model(tokens, lengths, decode=True))
    real = np.arange(40)[None, :] < np.asarray(lengths)[:, None]
    np.testing.assert_allclose(cached[real], full[real], rtol=2e-4, atol=2e-4)


def test_batches_hold_whole_sentences_and_their_lengths():
    from examples import tiny_lm

    tokens, lengths = tiny_lm.make_batch(np.random.default_rng(0), 16, 64)
    for row, n in zip(tokens, lengths):
        assert row[0] == tiny_lm.BOS and (row[n + 1:] == tiny_lm.PAD).all() and row[n] != tiny_lm.PAD
        assert tiny_lm.decode_text(row[1 : n + 1]).endswith(".")
