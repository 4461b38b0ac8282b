"""Attention dropout: one positional keep-mask (a hash of rng, b, n, t, s) for every path, so
dense JAX, chunked_attention with two different chunkings (forward and backward) and the
NumPy half drop the same weights; the fraction dropped is the rate; kept weights scale by
1 / (1 - rate)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax
import attention_np
from attention_jax import dropout as jax_dropout
from attention_np import dropout as np_dropout

from .conftest import highest

B, T, S, N, K, H = 2, 11, 13, 6, 3, 8
RATE = 0.3


def _qkv(seed=0, dtype=np.float32):
    r = np.random.default_rng(seed)
    return (r.normal(size=(B, T, N, H)).astype(dtype), r.normal(size=(B, S, K, H)).astype(dtype),
            r.normal(size=(B, S, K, H)).astype(dtype))


PATHS = {
    "dense": lambda q, k, v, **o: attention_jax.scaled_dot_product_attention(q, k, v, **o)[0],
    "dot_product_attention": lambda q, k, v, **o: attention_jax.dot_product_attention(q, k, v, **o),
    "chunked 4x3": lambda q, k, v, **o: attention_jax.chunked_attention(q, k, v, block_sizes=(4, 3), **o),
    "chunked 5x8": lambda q, k, v, **o: attention_jax.chunked_attention(q, k, v, block_sizes=(5, 8), **o),
}
OPTIONS = {"plain": {}, "causal": {"is_causal": True}, "window+lengths": {
    "local_window_size": (3, 2), "key_value_seq_lengths": np.array([13, 6], np.int32)},
    "broadcast": {"broadcast_dropout": True}}


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("path", PATHS)
def test_every_path_drops_the_weights_the_numpy_half_drops(path, option):
    q, k, v = _qkv()
    rng = jax.random.key(7)
    options = OPTIONS[option] | {"dropout_rate": RATE}
    expected = attention_np.scaled_dot_product_attention(
        *(x.astype(np.float64) for x in (q, k, v)), dropout_rng=np.asarray(jax.random.key_data(rng)), **options)[0]
    with highest():
        actual = PATHS[path](q, k, v, dropout_rng=rng, **options)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    undropped = attention_np.scaled_dot_product_attention(*(x.astype(np.float64) for x in (q, k, v)),
                                                          **{**options, "dropout_rate": 0.0})[0]
    assert np.abs(expected - undropped).max() > 1e-2  # dropout did change the output


def test_an_int_rng_means_the_same_in_both_halves_and_old_style_keys_work():
    q, k, v = _qkv()
    expected = attention_np.scaled_dot_product_attention(q, k, v, dropout_rate=RATE, dropout_rng=12345)[0]
    with highest():
        for rng in (12345, np.asarray([12345, 0], np.uint32)):
            np.testing.assert_allclose(PATHS["chunked 4x3"](q, k, v, dropout_rate=RATE, dropout_rng=rng), expected, rtol=1e-5, atol=1e-5)
        key = jax.random.PRNGKey(3)  # raw uint32[2]
        np.testing.assert_allclose(PATHS["dense"](q, k, v, dropout_rate=RATE, dropout_rng=key),
                                   attention_np.scaled_dot_product_attention(q, k, v, dropout_rate=RATE, dropout_rng=np.asarray(key))[0],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("option", ["plain", "causal", "window+lengths"])
def test_gradients_are_the_same_on_every_path(option):
    q, k, v = _qkv(1)
    rng = jax.random.key(11)
    options = OPTIONS[option] | {"dropout_rate": RATE, "dropout_rng": rng}
    cotangent = np.random.default_rng(2).normal(size=q.shape).astype(np.float32)

    def grads(fn):
        return jax.jit(jax.grad(lambda q, k, v: (fn(q, k, v, **options) * cotangent).sum(), argnums=(0, 1, 2)))(q, k, v)

    with highest():
        expected = grads(PATHS["dense"])
        for path in ("chunked 4x3", "chunked 5x8"):
            for a, e in zip(grads(PATHS[path]), expected):
                np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
    # and the dense gradient is the float64 NumPy forward's, by central differences on a few entries
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    data = np.asarray(jax.random.key_data(rng))

    def f(q):
        out = attention_np.scaled_dot_product_attention(q, k64, v64, **{**options, "dropout_rng": data})[0]
        return (out * cotangent).sum()

    for index in [(0, 0, 0, 0), (1, 5, 3, 2), (0, 10, 5, 7)]:
        step = np.zeros_like(q64)
        step[index] = 1e-6
        numeric = (f(q64 + step) - f(q64 - step)) / 2e-6
        np.testing.assert_allclose(expected[0][index], numeric, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("half", ["numpy", "jax"])
def test_the_fraction_dropped_is_the_rate_within_5_standard_errors(rate, half):
    shape = (4, 8, 64, 96)
    ones = np.ones(shape, np.float32)
    if half == "numpy":
        dropped = np_dropout.dropout_weights(ones, 2024, rate)
    else:
        dropped = np.asarray(jax_dropout.dropout_weights(jnp.asarray(ones), jax_dropout.rng_words(2024), rate))
    fraction = (dropped == 0).mean()
    n = np.prod(shape)
    assert abs(fraction - rate) < 5 * np.sqrt(rate * (1 - rate) / n), (fraction, rate)
    # kept weights are scaled by 1 / (1 - rate), so the mean stays 1
    np.testing.assert_allclose(dropped[dropped != 0], 1 / (1 - rate), rtol=1e-6)
    # and the mask is not periodic along any axis: each row's and column's fraction is plausible
    per_key = (dropped == 0).mean(axis=(0, 1, 2))
    assert np.abs(per_key - rate).max() < 6 * np.sqrt(rate * (1 - rate) / (4 * 8 * 64))


def test_masks_differ_between_rngs_rows_and_heads_and_broadcast_shares_one():
    ones = np.ones((2, 3, 16, 16), np.float32)
    a = np_dropout.dropout_weights(ones, 1, 0.5) == 0
    b = np_dropout.dropout_weights(ones, 2, 0.5) == 0
    assert (a != b).mean() > 0.4 and (a[0] != a[1]).mean() > 0.4 and (a[0, 0] != a[0, 1]).mean() > 0.4
    shared = np_dropout.dropout_weights(ones, 1, 0.5, broadcast=True) == 0
    assert (shared == shared[:1, :1]).all()
    np.testing.assert_array_equal(shared[0, 0], a[0, 0])  # b = n = 0 is the broadcast mask


def test_uniform_weights_drop_to_zero_or_scale_up():
    # equal keys: every weight is 1/S before dropout, so out = value's masked mean, closed form
    q = np.zeros((1, 4, 1, 2), np.float64)
    v = np.random.default_rng(0).normal(size=(1, 5, 1, 2))
    out, weights = attention_np.scaled_dot_product_attention(q, q[:, :1].repeat(5, 1), v, dropout_rate=0.4, dropout_rng=9)
    np.testing.assert_allclose(weights, 0.2)  # the weights returned are before dropout
    keep = np_dropout.keep_mask(9, 0.4, np.zeros((1, 1, 1, 1), int), np.zeros((1, 1, 1, 1), int),
                                np.arange(4).reshape(1, 1, 4, 1), np.arange(5).reshape(1, 1, 1, 5))[0, 0]
    np.testing.assert_allclose(out[0, :, 0], (keep * 0.2 / 0.6) @ v[0, :, 0], rtol=1e-12)


def test_large_blocks_run_one_head_at_a_time_with_the_same_mask():
    # blocks of 256 x 256 take chunked_attention's one-(batch, head)-at-a-time path, which
    # slices the per-row lengths and the (b, k) indices the hash needs
    r = np.random.default_rng(0)
    q = r.normal(size=(2, 300, 4, 8)).astype(np.float32)
    k, v = (r.normal(size=(2, 300, 2, 8)).astype(np.float32) for _ in range(2))
    options = dict(dropout_rate=0.2, dropout_rng=jax.random.key(4), local_window_size=(40, 7),
                   key_value_seq_lengths=np.array([300, 120], np.int32), query_seq_lengths=np.array([290, 300], np.int32))
    cotangent = r.normal(size=q.shape).astype(np.float32)

    def value_and_grads(fn):
        return jax.value_and_grad(lambda q, k, v: (fn(q, k, v) * cotangent).sum(), argnums=(0, 1, 2))(q, k, v)

    with highest():
        expected = value_and_grads(lambda q, k, v: attention_jax.scaled_dot_product_attention(q, k, v, **options)[0])
        actual = value_and_grads(lambda q, k, v: attention_jax.chunked_attention(
            q, k, v, block_sizes=(256, 256), **options))
    np.testing.assert_allclose(actual[0], expected[0], rtol=1e-5)
    for a, e in zip(actual[1], expected[1]):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
