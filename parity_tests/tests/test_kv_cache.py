"""Incremental decoding: stepping through a sequence with the KV cache, in any chunking, is
the causal multi-head attention of the whole sequence (both halves, GQA, ragged rows)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax
import attention_np

from .conftest import HALVES, highest

B, L_MAX, E, N, K, H = 2, 11, 13, 6, 3, 5
L = 7
CHUNKINGS = [[1] * L, [3, 1, 2, 1], [L]]


def _setup(rng, dtype=np.float64):
    params = attention_np.init_multi_head_params(rng, E, N, H, num_kv_heads=K, dtype=dtype)
    params = jax.tree.map(lambda p: p + 0.1 * rng.normal(size=p.shape).astype(dtype), params)  # nonzero biases
    return params, rng.normal(size=(B, L, E)).astype(dtype)


def _as(half, tree):
    return tree if half == "numpy" else jax.tree.map(jnp.asarray, tree)


def _step_through(module, params, x, chunks, cache):
    outs, weights, t = [], [], 0
    for c in chunks:
        out, w, cache = module.multi_head_attention_step(params, x[:, t : t + c], cache)
        outs.append(np.asarray(out))
        weights.append(np.asarray(w))
        t += c
    return np.concatenate(outs, 1), weights, cache


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=["ones", "3121", "whole"])
@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_any_chunking_equals_the_causal_full_pass(half, chunks, dtype, tol, rng):
    params, x = _setup(rng, dtype)
    expected, expected_weights = attention_np.multi_head_attention(params, x, is_causal=True)
    module = HALVES[half]
    with highest():
        out, weights, cache = _step_through(module, _as(half, params), _as(half, x), chunks,
                                            module.init_kv_cache(B, L_MAX, K, H, dtype=dtype))
    assert out.dtype == dtype
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)
    np.testing.assert_array_equal(cache["length"], [L, L])
    t = 0
    for c, w in zip(chunks, weights):
        assert w.shape == (B, N, c, L_MAX)
        np.testing.assert_allclose(w[..., :L], expected_weights[:, :, t : t + c], rtol=tol, atol=tol)
        np.testing.assert_array_equal(w[..., L:], 0.0)  # past the valid length
        t += c


def test_numpy_and_jax_steps_agree_including_the_cache(rng):
    params, x = _setup(rng)
    results = {
        half: _step_through(m, _as(half, params), _as(half, x), [3, 1, 2, 1], m.init_kv_cache(B, L_MAX, K, H, dtype=np.float64))
        for half, m in HALVES.items()
    }
    np.testing.assert_allclose(results["jax"][0], results["numpy"][0], atol=1e-12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-12), results["jax"][2], results["numpy"][2])


def test_jax_step_under_jit_and_as_a_scan_body(rng):
    params, x = _setup(rng)
    params = _as("jax", params)
    expected, _ = attention_np.multi_head_attention(jax.device_get(params), np.asarray(x), is_causal=True)

    @jax.jit
    def decode(params, x):
        def body(cache, x_t):
            out, _, cache = attention_jax.multi_head_attention_step(params, x_t[:, None], cache)
            return cache, out[:, 0]

        cache, outs = jax.lax.scan(body, attention_jax.init_kv_cache(B, L_MAX, K, H, dtype=jnp.float64), x.swapaxes(0, 1))
        return outs.swapaxes(0, 1), cache

    out, cache = decode(params, jnp.asarray(x))
    np.testing.assert_allclose(out, expected, atol=1e-12)
    np.testing.assert_array_equal(cache["length"], [L, L])
    assert "scan" in str(jax.make_jaxpr(decode)(params, jnp.asarray(x)))


@pytest.mark.parametrize("half", HALVES)
def test_ragged_rows_decode_together(half, rng):
    """Prompts of lengths 2 and 5 prefilled row by row, then 3 tokens decoded for both rows at once."""
    module = HALVES[half]
    params, _ = _setup(rng)
    prompts = [rng.normal(size=(1, 2, E)), rng.normal(size=(1, 5, E))]
    new = rng.normal(size=(B, 3, E))
    caches = []
    for prompt in prompts:
        _, _, cache = module.multi_head_attention_step(_as(half, params), _as(half, prompt), module.init_kv_cache(1, L_MAX, K, H, dtype=np.float64))
        caches.append(cache)
    cache = jax.tree.map(lambda *rows: np.concatenate([np.asarray(r) for r in rows]), *caches)
    np.testing.assert_array_equal(cache["length"], [2, 5])
    out, weights, cache = _step_through(module, _as(half, params), _as(half, new), [1, 2], _as(half, cache))
    np.testing.assert_array_equal(cache["length"], [5, 8])
    for b, prompt in enumerate(prompts):
        full = np.concatenate([prompt[0], new[b]])[None]                     # (1, n + 3, E)
        expected, _ = attention_np.multi_head_attention(params, full, is_causal=True)
        np.testing.assert_allclose(out[b], expected[0, -3:], atol=1e-12)
    assert np.all(weights[0][0, :, 0, 3:] == 0) and np.all(weights[0][1, :, 0, 6:] == 0)


@pytest.mark.parametrize("half", HALVES)
def test_writing_past_max_len_is_a_value_error(half, rng):
    module = HALVES[half]
    params, x = _setup(rng)
    cache = module.init_kv_cache(B, 4, K, H, dtype=np.float64)
    _, _, cache = module.multi_head_attention_step(_as(half, params), _as(half, x[:, :3]), cache)
    with pytest.raises(ValueError, match="the cache has no room: a row holds 3 of max_length=4 tokens, so k=2 new tokens do not fit"):
        module.multi_head_attention_step(_as(half, params), _as(half, x[:, 3:5]), cache)


def test_jax_under_jit_drops_what_does_not_fit_and_caps_the_length(rng):
    params, x = _setup(rng)
    params, x = _as("jax", params), jnp.asarray(x)
    cache = attention_jax.init_kv_cache(B, 4, K, H, dtype=jnp.float64)
    _, _, cache = attention_jax.multi_head_attention_step(params, x[:, :3], cache)
    step = jax.jit(attention_jax.multi_head_attention_step)
    _, _, full = step(params, x[:, 3:5], cache)
    np.testing.assert_array_equal(full["length"], [4, 4])
    np.testing.assert_array_equal(full["key"][:, :3], cache["key"][:, :3])  # earlier positions untouched


@pytest.mark.parametrize("half", HALVES)
def test_bad_input(half, rng):
    module = HALVES[half]
    params, x = _setup(rng)
    params, x = _as(half, params), _as(half, x)
    cache = module.init_kv_cache(B, L_MAX, K, H, dtype=np.float64)
    with pytest.raises(ValueError, match=r"x_new must hold at least one new token \(k >= 1\); got shape \(2, 0, 13\)"):
        module.multi_head_attention_step(params, x[:, :0], cache)
    with pytest.raises(ValueError, match=r"cache\['key'\] must have shape \(B, L, K, H\) with B=2 from x_new, K=3 from params\['key'\]\['kernel'\], "
                       r"H=5 from params\['query'\]\['kernel'\]; got \(2, 11, 6, 5\)"):
        module.multi_head_attention_step(params, x, module.init_kv_cache(B, L_MAX, N, H, dtype=np.float64))
    with pytest.raises(ValueError, match=r"cache is missing \['length'\]"):
        module.multi_head_attention_step(params, x, {"key": cache["key"], "value": cache["value"]})
    with pytest.raises(TypeError, match=r"cache\['length'\] must have an integer dtype; got float64"):
        module.multi_head_attention_step(params, x, {**cache, "length": np.zeros(B)})
    with pytest.raises(TypeError, match="cache must be a dict from init_kv_cache; got list"):
        module.multi_head_attention_step(params, x, [cache])
    normalized = {**params, "query_ln": {"scale": np.ones(H + 1)}}
    with pytest.raises(ValueError, match=r"params\['query_ln'\]\['scale'\] must have shape \(H,\) with H=5"):
        module.multi_head_attention_step(normalized, x, cache)


@pytest.mark.parametrize("half", HALVES)
def test_normalize_qk_params_step_as_the_causal_full_pass(half, rng):
    """Flax's normalize_qk (query_ln, key_ln) in the step: the same layer norms as
    multi_head_attention, so stepping equals its causal full pass; and they matter."""
    params, x = _setup(rng)
    params |= {"query_ln": {"scale": 1 + 0.3 * rng.normal(size=H)}, "key_ln": {"scale": 1 + 0.3 * rng.normal(size=H)}}
    expected, _ = attention_np.multi_head_attention(params, x, is_causal=True)
    module = HALVES[half]
    with highest():
        out, _, _ = _step_through(module, _as(half, params), _as(half, x), [3, 1, 2, 1],
                                  module.init_kv_cache(B, L_MAX, K, H, dtype=np.float64))
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    plain, _ = attention_np.multi_head_attention({n: params[n] for n in ("query", "key", "value", "out")}, x, is_causal=True)
    assert np.abs(plain - expected).max() > 1e-3
