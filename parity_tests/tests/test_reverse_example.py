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


def test_without_attention_trains_and_both_halves_decode_alike(capsys):
    from examples import reverse

    results = reverse.main(["--attention", "none", "--steps", "30", "--batch", "32", "--embed", "8", "--hidden", "16",
                            "--heldout", "20", "--learning-rate", "1e-2", "--quiet", "--plot", ""])
    (r,) = results
    assert np.mean(r["losses"][-5:]) < 0.9 * r["losses"][0]  # it learns
    assert r["numpy_agrees"] == r["n"] == 20 and r["weights"] is None
    assert "none (last encoder state)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        reverse.main(["--attention", "none", "--hard"])


def test_without_attention_the_context_is_the_last_encoder_state():
    import jax

    from examples import reverse

    params = reverse.init_without_attention(jax.random.key(0), source_vocab=reverse.VOCAB, target_vocab=reverse.VOCAB,
                                            embed=8, hidden=16)
    assert "attention" not in params
    source, target_in, _, mask = reverse.make_batch(np.random.default_rng(1), 6)
    logits = np.asarray(reverse.forward_without_attention(params, source, target_in, mask))
    # step 0 by hand in NumPy: the decoder starts from the encoder's last state c and reads
    # [BOS; c]; the output layer reads [s_0; c]
    import attention_np

    p = jax.tree.map(np.asarray, params)
    _, c = attention_np.seq2seq.encode(p, source, mask)                  # (B, H): the state after the last real token
    x = p["target_embed"]["embedding"][target_in[:, 0]]                  # (B, D)
    s0 = attention_np.seq2seq.gru_cell(p["decoder"], np.concatenate([x, c], -1), c)
    expected = np.concatenate([s0, c], -1) @ p["out"]["kernel"] + p["out"]["bias"]
    np.testing.assert_allclose(logits[:, 0], expected, atol=1e-5)
    # teacher forcing on the greedy output predicts that output again (the two decoders agree)
    ids = reverse.greedy_decode_without_attention(params, source, bos_id=reverse.BOS, max_length=reverse.MAX_LEN,
                                                  source_mask=mask)
    forced = np.concatenate([np.full((6, 1), reverse.BOS), ids[:, :-1]], axis=1).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(reverse.forward_without_attention(params, source, forced, mask)).argmax(-1),
                                  ids)


def test_length_sweep_in_miniature(tmp_path):
    # without attention only: the model with attention compiles for 10 s, and the first test trains it
    from examples import reverse

    results = reverse.sweep(steps=5, batch=8, embed=8, hidden=8, heldout=10, min_len=3, max_length=4,
                            attentions=("none",), progress=False)
    (result,) = results.values()
    assert sorted(result["accuracy"]) == [3, 4]
    assert all(0.0 <= a <= 1.0 for a in result["accuracy"].values())
    assert len(result["losses"]) == 5 and result["seconds"] > 0
    results["additive"] = {"accuracy": {3: 1.0, 4: 0.9}}
    path = tmp_path / "sweep.png"
    reverse.plot_sweep(results, path, title="tiny")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
