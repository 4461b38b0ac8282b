"""``cosine_scores``, the content-based addressing of Graves, Wayne & Danihelka 2014 (Neural
Turing machines), proved: against closed forms worked by hand, against the formula written
out one pair at a time, its invariances, zero vectors, and the two halves against each other
(docs/design.md section 5's tolerances), with the same errors in both."""

import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import attention_jax
import attention_np

from .conftest import HALVES, B, H, S, T, highest


@pytest.fixture(params=[True, False], ids=["jit", "nojit"])
def compiled(request):
    """The JAX half compiled, and op by op (``jax.disable_jit``)."""
    if request.param:
        yield True
    else:
        with jax.disable_jit():
            yield False


def scores(half, query, keys, **options):
    return np.asarray(HALVES[half].cosine_scores(query, keys, **options))


# --- closed forms, worked by hand -----------------------------------------------------------------
@pytest.mark.parametrize("half", HALVES)
def test_hand_worked_cosines(half, compiled):
    # q = (3, 4), |q| = 5. k0 = (4, 3): 24 / 25. k1 = (-8, 6), |k1| = 10: (-24 + 24) / 50 = 0.
    # k2 = (6, 8) = 2 q: 1. k3 = (-3, -4) = -q: -1. k4 = (0, 0): 0 (the epsilon, not NaN).
    query = np.array([[[3.0, 4.0]]])                                         # (B, T, H) = (1, 1, 2)
    keys = np.array([[[4.0, 3.0], [-8.0, 6.0], [6.0, 8.0], [-3.0, -4.0], [0.0, 0.0]]])  # (1, 5, 2)
    np.testing.assert_allclose(scores(half, query, keys), [[[0.96, 0.0, 1.0, -1.0, 0.0]]], rtol=0, atol=1e-12)
    # a key strength beta multiplies every score
    np.testing.assert_allclose(scores(half, query, keys, strength=2.5), [[[2.4, 0.0, 2.5, -2.5, 0.0]]],
                               rtol=0, atol=1e-12)
    # three dimensions: q = (1, 2, 2), |q| = 3; k = (2, 1, -2), |k| = 3: (2 + 2 - 4) / 9 = 0;
    # k = (2, 2, 1): (2 + 4 + 2) / 9 = 8/9
    query = np.array([[[1.0, 2.0, 2.0]]])
    keys = np.array([[[2.0, 1.0, -2.0], [2.0, 2.0, 1.0]]])
    np.testing.assert_allclose(scores(half, query, keys), [[[0.0, 8 / 9]]], rtol=0, atol=1e-12)


@pytest.mark.parametrize("half", HALVES)
def test_matches_the_formula_one_pair_at_a_time(half, rng, compiled):
    query, keys = rng.normal(size=(B, T, H)), rng.normal(size=(B, S, H))
    got = scores(half, query, keys, strength=3.0)
    for b in range(B):
        for t in range(T):
            for s in range(S):
                q, k = query[b, t], keys[b, s]
                want = 3.0 * (q @ k) / (math.sqrt(q @ q) * math.sqrt(k @ k))
                assert abs(got[b, t, s] - want) <= 1e-12, (b, t, s)


@pytest.mark.parametrize("half", HALVES)
def test_lengths_do_not_matter_directions_do(half, rng):
    # the cosine of the angle: positive factors on a query or a key change nothing; a minus sign
    # flips the score; every score lies in [-strength, strength]
    query, keys = rng.normal(size=(B, T, H)), rng.normal(size=(B, S, H))
    base = scores(half, query, keys, strength=1.5)
    stretched = scores(half, query * rng.uniform(0.01, 100, size=(B, T, 1)), keys * rng.uniform(0.01, 100, size=(B, S, 1)),
                       strength=1.5)
    np.testing.assert_allclose(stretched, base, rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores(half, -query, keys, strength=1.5), -base, rtol=0, atol=1e-12)
    assert np.all(np.abs(base) <= 1.5 + 1e-12)
    # a query that is a positive multiple of key s scores exactly strength on it
    aligned = scores(half, 7.0 * keys[:, :1], keys, strength=1.5)                  # (B, 1, S)
    np.testing.assert_allclose(aligned[:, 0, 0], 1.5, rtol=0, atol=1e-12)


@pytest.mark.parametrize("half", HALVES)
def test_a_large_strength_makes_the_addressing_one_hot(half, rng):
    # the NTM's weights are softmax(strength * cosine): a large strength picks the best key
    query, keys = rng.normal(size=(B, T, H)), rng.normal(size=(B, S, H))
    e = scores(half, query, keys, strength=1e4)
    _, weights = attention_np.soft_attention(e, keys)
    np.testing.assert_array_equal(weights.argmax(-1), scores(half, query, keys).argmax(-1))
    np.testing.assert_allclose(weights.max(-1), 1.0, atol=1e-9)
    # strength 0 forgets the content: uniform weights
    _, flat = attention_np.soft_attention(scores(half, query, keys, strength=0.0), keys)
    np.testing.assert_allclose(flat, 1 / S, atol=1e-15)


# --- zero vectors -----------------------------------------------------------------------------------
def test_zero_vectors_score_zero_with_finite_gradients():
    query = np.zeros((1, 2, 3))
    query[0, 1] = [1.0, 2.0, 2.0]
    keys = np.array([[[0.0, 0.0, 0.0], [2.0, 2.0, 1.0]]])
    for half in HALVES:
        got = scores(half, query, keys)
        np.testing.assert_allclose(got, [[[0.0, 0.0], [0.0, 8 / 9]]], rtol=0, atol=1e-12)
    d_query, d_keys = jax.grad(lambda q, k: attention_jax.cosine_scores(q, k).sum(), argnums=(0, 1))(query, keys)
    assert np.all(np.isfinite(d_query)) and np.all(np.isfinite(d_keys))


def test_gradients_match_finite_differences_of_the_numpy_half(rng):
    query, keys = rng.normal(size=(1, 2, 3)), rng.normal(size=(1, 4, 3))
    cotangent = rng.normal(size=(1, 2, 4))

    def loss(q, k):
        return float((attention_np.cosine_scores(q, k, strength=2.0) * cotangent).sum())

    d_query, d_keys = jax.grad(lambda q, k: (attention_jax.cosine_scores(q, k, strength=2.0) * cotangent).sum(),
                               argnums=(0, 1))(query, keys)
    for x, grad, index in ((query, d_query, 0), (keys, d_keys, 1)):
        numeric = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            step = np.zeros_like(x)
            step[i] = 1e-6
            args_plus, args_minus = [query, keys], [query, keys]
            args_plus[index], args_minus[index] = x + step, x - step
            numeric[i] = (loss(*args_plus) - loss(*args_minus)) / 2e-6
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


# --- the two halves -----------------------------------------------------------------------------
def test_halves_agree_in_float64(rng):
    query, keys = rng.normal(size=(B, T, H)), rng.normal(size=(B, S, H))
    np.testing.assert_allclose(scores("jax", query, keys, strength=4.0), scores("numpy", query, keys, strength=4.0),
                               rtol=1e-12, atol=1e-12)


def test_halves_agree_in_float32(rng):
    query, keys = rng.normal(size=(B, T, H)).astype(np.float32), rng.normal(size=(B, S, H)).astype(np.float32)
    reference = scores("numpy", query.astype(np.float64), keys.astype(np.float64))
    with highest():
        got = {half: scores(half, query, keys) for half in HALVES}
    for half, value in got.items():
        assert value.dtype == np.float32, half
        np.testing.assert_allclose(value, reference, rtol=1e-5, atol=1e-5, err_msg=half)


@pytest.mark.parametrize(("dtype", "tolerance"), [(np.float16, 5e-3), (ml_dtypes.bfloat16, 2e-2)],
                         ids=["float16", "bfloat16"])
def test_half_precision_keeps_its_dtype_and_the_tolerance(rng, dtype, tolerance):
    query, keys = rng.normal(size=(B, T, H)), rng.normal(size=(B, S, H))
    reference = scores("numpy", query, keys)
    for half in HALVES:
        got = HALVES[half].cosine_scores(query.astype(dtype), keys.astype(dtype))
        assert np.dtype(got.dtype) == np.dtype(dtype), half
        np.testing.assert_allclose(np.asarray(got, np.float64), reference, rtol=tolerance, atol=tolerance, err_msg=half)


def test_empty_sequences():
    for half in HALVES:
        assert scores(half, np.zeros((B, 0, H)), np.ones((B, S, H))).shape == (B, 0, S)
        assert scores(half, np.ones((B, T, H)), np.zeros((B, 0, H))).shape == (B, T, 0)


def test_jax_half_under_vmap_and_jit(rng):
    query, keys = rng.normal(size=(B, T, H)), rng.normal(size=(B, S, H))
    one_row = jax.jit(jax.vmap(lambda q, k: attention_jax.cosine_scores(q[None], k[None])[0]))
    np.testing.assert_allclose(one_row(jnp.asarray(query), jnp.asarray(keys)), scores("numpy", query, keys),
                               rtol=1e-12, atol=1e-12)


# --- the same errors in both halves ---------------------------------------------------------------
@pytest.mark.parametrize(("args", "options", "exception", "message"), [
    ((np.zeros((B, T, H)), np.zeros((B, S, 7))), {}, ValueError,
     "keys must have shape (B, S, H) with B=2, H=11 from query; got (2, 5, 7)"),
    ((np.zeros((B, T, H), np.complex64), np.zeros((B, S, H))), {}, TypeError,
     "query must have a floating dtype (float16, bfloat16, float32 or float64); got complex64"),
    ((np.zeros((B, T, H)), np.zeros((B, S, H))), {"strength": "2"}, TypeError,
     "strength must be a finite real number (int or float); got '2' (str)"),
    ((np.zeros((B, T, H)), np.zeros((B, S, H))), {"strength": True}, TypeError,
     "strength must be a finite real number (int or float); got True (bool)"),
    ((np.zeros((B, T, H)), np.zeros((B, S, H))), {"strength": float("inf")}, ValueError,
     "strength must be a finite real number; got inf"),
], ids=["shape", "dtype", "strength str", "strength bool", "strength inf"])
@pytest.mark.parametrize("half", HALVES)
def test_bad_input_raises_the_same_error_in_both_halves(half, args, options, exception, message):
    with pytest.raises(exception) as info:
        HALVES[half].cosine_scores(*args, **options)
    assert str(info.value) == message
