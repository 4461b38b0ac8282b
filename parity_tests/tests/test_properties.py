"""Property tests (hypothesis) on both halves: what must hold for every shape and input.

Derandomized, so CI sees the same examples every run; 20 examples a property keeps JAX's
per-shape compilation affordable.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import attention_jax
import attention_np

from .conftest import HALVES

SETTINGS = settings(deadline=None)  # the examples of the loaded profile (conftest.py): few here, many with "search"


@st.composite
def attention_inputs(draw, masked=True):
    """float64 (query, key, value, mask) with small random shapes, GQA included."""
    B, T, S, K, G, H = (draw(st.integers(1, m)) for m in (3, 4, 5, 2, 2, 4))
    N = K * G
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    query, key, value = rng.normal(size=(B, T, N, H)), rng.normal(size=(B, S, K, H)), rng.normal(size=(B, S, K, H))
    mask = rng.random((B, N, T, S)) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0])) if masked else None
    return query, key, value, mask


@pytest.mark.parametrize("half", HALVES)
@SETTINGS
@given(inputs=attention_inputs())
def test_weights_are_a_distribution_or_zero(half, inputs):
    query, key, value, mask = inputs
    _, weights = HALVES[half].scaled_dot_product_attention(query, key, value, mask=mask)
    weights = np.asarray(weights)
    assert np.all(weights >= 0)
    assert np.all(weights[~mask] == 0)
    sums = weights.sum(-1)
    np.testing.assert_allclose(sums, np.where(mask.any(-1), 1.0, 0.0), atol=1e-12)


@pytest.mark.parametrize("half", HALVES)
@SETTINGS
@given(inputs=attention_inputs(), data=st.data())
def test_permuting_keys_and_values_together_changes_nothing(half, inputs, data):
    query, key, value, mask = inputs
    perm = np.asarray(data.draw(st.permutations(range(key.shape[1]))))
    out, weights = HALVES[half].scaled_dot_product_attention(query, key, value, mask=mask)
    out_p, weights_p = HALVES[half].scaled_dot_product_attention(query, key[:, perm], value[:, perm], mask=mask[..., perm])
    np.testing.assert_allclose(out_p, out, atol=1e-12)
    np.testing.assert_allclose(weights_p, np.asarray(weights)[..., perm], atol=1e-12)


@pytest.mark.parametrize("half", HALVES)
@SETTINGS
@given(inputs=attention_inputs(), shift=st.floats(-50, 50))
def test_adding_a_constant_to_a_row_of_logits_changes_nothing(half, inputs, shift):
    query, key, value, mask = inputs
    B, T, N, _ = query.shape
    row_shift = np.random.default_rng(0).normal(size=(B, N, T, 1)) * shift  # one constant per row
    out, weights = HALVES[half].scaled_dot_product_attention(query, key, value, mask=mask)
    out_s, weights_s = HALVES[half].scaled_dot_product_attention(query, key, value, mask=mask, bias=row_shift)
    np.testing.assert_allclose(out_s, out, atol=1e-12)
    np.testing.assert_allclose(weights_s, weights, atol=1e-12)
    # the same for soft attention, directly on the scores
    scores = np.random.default_rng(1).normal(size=(B, T, key.shape[1]))
    c1, w1 = HALVES[half].soft_attention(scores, value[:, :, 0], mask=mask[:, 0])
    c2, w2 = HALVES[half].soft_attention(scores + row_shift[:, 0], value[:, :, 0], mask=mask[:, 0])
    np.testing.assert_allclose(c2, c1, atol=1e-12)
    np.testing.assert_allclose(w2, w1, atol=1e-12)


@pytest.mark.parametrize("half", HALVES)
@SETTINGS
@given(inputs=attention_inputs())
def test_batch_elements_are_independent(half, inputs):
    query, key, value, mask = inputs
    out, weights = HALVES[half].scaled_dot_product_attention(query, key, value, mask=mask, is_causal=True)
    for b in range(query.shape[0]):
        one = HALVES[half].scaled_dot_product_attention(query[b : b + 1], key[b : b + 1], value[b : b + 1], mask=mask[b : b + 1], is_causal=True)
        np.testing.assert_allclose(one[0][0], out[b], atol=1e-12)
        np.testing.assert_allclose(one[1][0], weights[b], atol=1e-12)


@SETTINGS
@given(inputs=attention_inputs(masked=False))
def test_causal_outputs_do_not_depend_on_later_inputs(inputs):
    query, key, value, _ = inputs
    T = min(query.shape[1], key.shape[1])
    x = jnp.asarray(query[:, :T])  # self-attention: query = key = value = x
    # d out[:, t] / d x[:, u] for every t and u at once: (B, T, N, H, B, T, N, H)
    jacobian = np.asarray(jax.jit(jax.jacrev(lambda x: attention_jax.scaled_dot_product_attention(x, x, x, is_causal=True)[0]))(x))
    for t in range(T):
        assert np.all(jacobian[:, t, :, :, :, t + 1 :] == 0)


@SETTINGS
@given(inputs=attention_inputs(), causal=st.booleans())
def test_numpy_and_jax_agree(inputs, causal):
    query, key, value, mask = inputs
    expected = attention_np.scaled_dot_product_attention(query, key, value, mask=mask, is_causal=causal)
    actual = attention_jax.scaled_dot_product_attention(query, key, value, mask=mask, is_causal=causal)
    for e, a in zip(expected, actual):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), B=st.integers(1, 3), S=st.integers(1, 6), H=st.integers(1, 5), masked=st.booleans())
def test_additive_attention_halves_agree_and_weights_sum_to_one(seed, B, S, H, masked):
    rng = np.random.default_rng(seed)
    params = attention_np.init_additive_params(rng, H, dtype=np.float64)
    hidden, encoder_outputs = rng.normal(size=(B, H)), rng.normal(size=(B, S, H))
    mask = rng.random((B, S)) < 0.6 if masked else None
    expected = attention_np.additive_attention(params, hidden, encoder_outputs, mask=mask)
    actual = attention_jax.additive_attention(params, hidden, encoder_outputs, mask=mask)
    for e, a in zip(expected, actual):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)
    rows = np.ones(B, bool) if mask is None else mask.any(-1)
    np.testing.assert_allclose(expected[1].sum(-1), np.where(rows, 1.0, 0.0), atol=1e-12)
