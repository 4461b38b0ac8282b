"""scaled_dot_product_attention: closed forms, jax.nn and PyTorch as oracles, causality by gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax
import attention_np

from .conftest import B, H, K, N, S, T, highest

HALVES = {"numpy": attention_np.scaled_dot_product_attention, "jax": attention_jax.scaled_dot_product_attention}


def qkv(rng, n=N, k=N, dtype=np.float32, t=T, s=S):
    return tuple(
        rng.normal(size=shape).astype(dtype) for shape in ((B, t, n, H), (B, s, k, H), (B, s, k, H))
    )


# --- closed forms -----------------------------------------------------------------------------
@pytest.mark.parametrize("half", HALVES)
def test_equal_keys_give_uniform_weights_and_the_mean_value(half, rng, jit):
    query, key, value = qkv(rng, dtype=np.float64)
    key = np.broadcast_to(key[:, :1], key.shape)  # every key the same
    out, weights = HALVES[half](query, key, value)
    np.testing.assert_allclose(weights, np.full((B, N, T, S), 1 / S), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out, np.broadcast_to(value.mean(1, keepdims=True), (B, T, N, H)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("half", HALVES)
def test_a_single_key_returns_its_value(half, rng, jit):
    query, key, value = qkv(rng, dtype=np.float64, s=1)
    out, weights = HALVES[half](query, key, value)
    np.testing.assert_array_equal(weights, np.ones((B, N, T, 1)))
    np.testing.assert_allclose(out, np.broadcast_to(value, (B, T, N, H)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("half", HALVES)
def test_a_huge_logit_gives_one_hot_weights(half, rng, jit):
    query, key, value = qkv(rng, dtype=np.float64)
    bias = np.zeros((1, 1, T, S))
    bias[..., np.arange(T), [4, 0, 2]] = 1e4  # query t picks key (4, 0, 2)[t]
    out, weights = HALVES[half](query, key, value, bias=bias)
    np.testing.assert_array_equal(weights.argmax(-1), np.broadcast_to([4, 0, 2], (B, N, T)))
    np.testing.assert_allclose(weights.max(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(out, value[:, [4, 0, 2]], atol=1e-12)


@pytest.mark.parametrize("half", HALVES)
def test_fully_masked_query_gets_zero_weights_and_zero_output(half, rng, jit):
    query, key, value = qkv(rng, dtype=np.float64)
    mask = np.ones((B, 1, T, S), bool)
    mask[0, :, 1] = False
    out, weights = HALVES[half](query, key, value, mask=mask)
    np.testing.assert_array_equal(weights[0, :, 1], 0.0)
    np.testing.assert_array_equal(out[0, 1], 0.0)
    np.testing.assert_allclose(np.asarray(weights).sum(-1)[1], 1.0, atol=1e-12)


# --- independent oracles ------------------------------------------------------------------------
ORACLE_OPTIONS = {
    "plain": lambda rng, n, k: {},
    "causal": lambda rng, n, k: {"is_causal": True},
    "mask": lambda rng, n, k: {"mask": (rng.random((B, n, T, S)) < 0.7) | (np.arange(S) == 0)},
    "bias": lambda rng, n, k: {"bias": rng.normal(size=(B, n, T, S)).astype(np.float32)},
    "scale": lambda rng, n, k: {"scale": 0.25},
}


@pytest.mark.parametrize("heads", [(N, N), (6, K), (6, 1)], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("option", ORACLE_OPTIONS)
@pytest.mark.parametrize("half", HALVES)
def test_matches_jax_nn_dot_product_attention(half, option, heads, rng, jit):
    query, key, value = qkv(rng, *heads)
    kwargs = ORACLE_OPTIONS[option](rng, heads[0], heads[1])
    with highest():
        expected = jax.nn.dot_product_attention(query, key, value, **kwargs)
        out, _ = HALVES[half](query, key, value, **kwargs)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("option", ["plain", "causal", "mask", "bias", "scale"])
@pytest.mark.parametrize("heads", [(N, N), (6, K)], ids=["mha", "gqa"])
@pytest.mark.parametrize("half", HALVES)
def test_matches_torch_scaled_dot_product_attention(half, heads, option, rng):
    torch = pytest.importorskip("torch")
    query, key, value = qkv(rng, *heads)
    kwargs = ORACLE_OPTIONS[option](rng, heads[0], heads[1])
    t = lambda x: torch.from_numpy(np.ascontiguousarray(np.swapaxes(x, 1, 2)))  # (B, N, T, H)
    attn_mask = kwargs.get("mask", kwargs.get("bias"))
    expected = torch.nn.functional.scaled_dot_product_attention(
        t(query), t(key), t(value),
        attn_mask=None if attn_mask is None else torch.from_numpy(attn_mask),
        is_causal=kwargs.get("is_causal", False), scale=kwargs.get("scale"), enable_gqa=True,
    )
    out, _ = HALVES[half](query, key, value, **kwargs)
    np.testing.assert_allclose(out, np.swapaxes(expected.numpy(), 1, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("half", HALVES)
def test_fully_masked_rows_match_torch_zeros(half, rng):
    torch = pytest.importorskip("torch")
    query, key, value = qkv(rng)
    mask = np.ones((B, N, T, S), bool)
    mask[1, 2, 0] = False
    t = lambda x: torch.from_numpy(np.ascontiguousarray(np.swapaxes(x, 1, 2)))
    expected = torch.nn.functional.scaled_dot_product_attention(t(query), t(key), t(value), attn_mask=torch.from_numpy(mask))
    out, _ = HALVES[half](query, key, value, mask=mask)
    np.testing.assert_allclose(out, np.swapaxes(expected.numpy(), 1, 2), rtol=1e-5, atol=1e-5)


# --- gradients ------------------------------------------------------------------------------------
def test_causal_output_does_not_depend_on_later_inputs(rng, jit):
    x = jnp.asarray(rng.normal(size=(B, T, N, H)))  # self-attention: query = key = value = x

    def out_at(x, t):
        return attention_jax.scaled_dot_product_attention(x, x, x, is_causal=True)[0][:, t].sum()

    grad_at = jax.jit(jax.grad(out_at))  # t traced: one program for every t
    for t in range(T):
        grad = np.asarray(grad_at(x, t))
        assert np.all(grad[:, t + 1 :] == 0), f"out[{t}] depends on a later position"
        assert np.all(np.abs(grad[:, : t + 1]).sum(-1) > 0), f"out[{t}] ignores an earlier position"


def test_fully_masked_query_has_zero_finite_gradients(rng, jit):
    query, key, value = (jnp.asarray(x) for x in qkv(rng, dtype=np.float64))
    mask = np.ones((B, 1, T, S), bool)
    mask[0, :, 1] = False

    def loss(q, k, v):
        return attention_jax.scaled_dot_product_attention(q, k, v, mask=mask)[0][0, 1].sum()

    grads = jax.grad(loss, argnums=(0, 1, 2))(query, key, value)
    for g in grads:
        assert np.all(np.asarray(g) == 0)


def test_gradients_match_jax_nn(rng, jit):
    query, key, value = (jnp.asarray(x) for x in qkv(rng, 6, K, dtype=np.float64))

    def loss(fn, q, k, v):
        out = fn(q, k, v, is_causal=True)
        return jnp.sum(jnp.sin(out[0] if isinstance(out, tuple) else out))

    ours = jax.jit(jax.grad(lambda *a: loss(attention_jax.scaled_dot_product_attention, *a), argnums=(0, 1, 2)))(query, key, value)
    theirs = jax.jit(jax.grad(lambda *a: loss(jax.nn.dot_product_attention, *a), argnums=(0, 1, 2)))(query, key, value)
    # jax.nn runs its softmax in float32 even for float64 input: 1e-5 is its precision, not ours
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("half", HALVES)
def test_outputs_keep_the_input_dtype(half, rng):
    for dtype in (np.float16, np.float32, np.float64):
        out, weights = HALVES[half](*qkv(rng, dtype=dtype))
        assert out.dtype == dtype and weights.dtype == dtype


@pytest.mark.parametrize("window", [(0, 0), (1, 0), (0, 2), (2, 1), 1], ids=str)
@pytest.mark.parametrize("half", HALVES)
def test_a_window_is_the_band_written_out(half, window, rng):
    """``local_window_size=(left, right)`` (an int w: ``(w, w)``) equals the mask
    ``t - left <= s <= t + right`` built here, with T != S; the edges included."""
    query, key, value = qkv(rng, dtype=np.float64, t=4, s=6)
    left, right = (window, window) if isinstance(window, int) else window
    t, s = np.arange(4)[:, None], np.arange(6)[None, :]
    band = (s >= t - left) & (s <= t + right)
    out, weights = HALVES[half](query, key, value, local_window_size=window)
    expected, expected_weights = attention_np.scaled_dot_product_attention(query, key, value, mask=band)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-12, atol=1e-12)
    assert (np.asarray(weights)[..., band] > 0).all()                  # every key of the band is attended
