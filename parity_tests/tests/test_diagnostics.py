"""alignment_diagnostics against closed forms, in both halves."""

import numpy as np
import pytest

import attention_np

from .conftest import HALVES

S = 7


def _run(half, weights, **kwargs):
    result = HALVES[half].alignment_diagnostics(weights, **kwargs)
    return {k: np.asarray(v) for k, v in result.items()}


@pytest.mark.parametrize("half", HALVES)
def test_one_hot_diagonal(half):
    d = _run(half, np.eye(S))
    assert d["entropy"] == 0 and d["monotonicity"] == 1 and d["diagonal_focus"] == 1
    np.testing.assert_array_equal(d["coverage"], np.ones(S))


@pytest.mark.parametrize("half", HALVES)
def test_uniform(half):
    T = 4
    d = _run(half, np.full((2, 3, T, S), 1 / S))  # leading axes: batch, heads
    np.testing.assert_allclose(d["entropy"], np.log(S), rtol=1e-12)
    np.testing.assert_allclose(d["coverage"], np.full((2, 3, S), T / S), rtol=1e-12)
    # band 1 around d_t = (t + 1/2) 7/4 - 1/2 covers 2 or 3 positions of each row: a closed count
    diagonal = (np.arange(T) + 0.5) * S / T - 0.5
    counts = [sum(abs(s - d) <= 1 for s in range(S)) for d in diagonal]
    np.testing.assert_allclose(d["diagonal_focus"], np.mean(counts) / S, rtol=1e-12)


@pytest.mark.parametrize("half", HALVES)
def test_reversed_diagonal_and_a_band_wide_enough_for_everything(half):
    reverse = np.eye(S)[::-1].copy()
    d = _run(half, reverse)
    assert d["monotonicity"] == 0 and d["entropy"] == 0
    np.testing.assert_allclose(d["diagonal_focus"], 1 / S)  # only the middle row crosses the diagonal
    assert _run(half, reverse, band=S)["diagonal_focus"] == 1


@pytest.mark.parametrize("half", HALVES)
def test_a_monotonic_alignment_that_pauses(half):
    focus = [0, 0, 1, 3, 3, 2, 6]  # one step back (3 -> 2)
    d = _run(half, np.eye(S)[focus])
    np.testing.assert_allclose(d["monotonicity"], 5 / 6)
    np.testing.assert_array_equal(d["coverage"], np.bincount(focus, minlength=S))


def test_halves_agree_on_random_weights(rng):
    logits = rng.normal(size=(2, 5, 9)) * 3
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    a, b = _run("numpy", weights, band=2), _run("jax", weights, band=2)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("half", HALVES)
def test_bad_input(half):
    with pytest.raises(ValueError, match=r"weights must have shape \(\.\.\., T, S\); got \(7,\)"):
        HALVES[half].alignment_diagnostics(np.ones(S))
    with pytest.raises(ValueError, match="band must be a non-negative number of source positions; got -1"):
        HALVES[half].alignment_diagnostics(np.eye(S), band=-1)
    with pytest.raises(TypeError, match="weights must have a floating dtype"):
        HALVES[half].alignment_diagnostics(np.eye(S, dtype=int))
    assert attention_np.alignment_diagnostics(np.zeros((0, S)))["entropy"] == 0.0
