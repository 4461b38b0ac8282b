"""``python -m examples.specialised_heads`` in miniature: the task's targets are right, the
loss falls, the head statistics are weights, and the picture is written."""

import numpy as np
import pytest

pytest.importorskip("optax")
pytest.importorskip("matplotlib")


def test_batches_hold_each_key_twice_and_the_right_targets():
    from examples import specialised_heads as sh

    batch = sh.make_batch(np.random.default_rng(0), 32)
    keys, values = batch["keys"], batch["values"]
    for b in range(32):
        assert sorted(keys[b]) == sorted(list(range(sh.KEYS)) * 2)
        np.testing.assert_array_equal(batch["previous"][b, 1:], keys[b, :-1])
        for t in range(sh.LENGTH):
            earlier = [s for s in range(t) if keys[b, s] == keys[b, t]]
            assert batch["has_match"][b, t] == bool(earlier)
            if earlier:
                assert batch["match_position"][b, t] == earlier[0] and batch["match"][b, t] == values[b, earlier[0]]
    assert batch["has_match"].sum(1).tolist() == [sh.KEYS] * 32   # every key's second appearance
    assert not batch["has_previous"][:, 0].any() and batch["has_previous"][:, 1:].all()


def test_tiny_run_learns_and_draws(tmp_path, capsys):
    from examples import specialised_heads as sh

    path = tmp_path / "heads.png"
    result = sh.main(["--steps", "60", "--batch", "16", "--heldout", "50", "--plot", str(path)])
    assert np.mean(result["losses"][-5:]) < 0.7 * result["losses"][0]   # it learns
    for stat in ("on_previous", "on_match"):
        assert result[stat].shape == (2,) and ((0 <= result[stat]) & (result[stat] <= 1)).all()
    weights = result["weights"]                                          # (B, N, T, T)
    assert weights.shape == (50, 2, sh.LENGTH, sh.LENGTH)
    assert np.allclose(np.triu(weights), 0)                              # position t sees only s < t
    np.testing.assert_allclose(weights[:, :, 1:].sum(-1), 1, atol=1e-5)  # row 0 sees nothing: all zero
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "head 1: mean weight on the previous position" in capsys.readouterr().out
