"""Every path with ``jax_enable_x64`` off (JAX's default) and on (the suite's default, for the
float64 rows): one problem with every option at once (bias, segment ids, window, soft-cap,
sinks, lengths, causal), values and the gradients of query, key, value and bias, on float32
inputs. Both modes must run, agree with each other to float32 rounding, and equal the NumPy
float64 definition (values) and the mirror's float64 gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention_jax
import attention_np
from attention_jax.nnx import MultiHeadAttention
from attention_np.mods import document_mask

B, T, N, K, H = 2, 6, 4, 2, 4
TOL = dict(rtol=2e-5, atol=2e-5)   # float32 paths vs float64 references
rng = np.random.default_rng(0)
QUERY, KEY, VALUE = (rng.normal(size=(B, T, n, H)).astype(np.float32) for n in (N, K, K))
BIAS = rng.normal(size=(B, N, T, T)).astype(np.float32)
IDS = np.array([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]], np.int32)   # boundaries inside 2 x 3 blocks
SINKS = rng.normal(size=N).astype(np.float32)
OPTIONS = dict(is_causal=True, local_window_size=(2, 1), logits_soft_cap=2.0,
               query_seq_lengths=np.array([6, 5], np.int32), key_value_seq_lengths=np.array([6, 4], np.int32))

PATHS = {
    "scaled_dot_product_attention": lambda *a, **o: attention_jax.scaled_dot_product_attention(*a, **o)[0],
    "dot_product_attention dense": lambda *a, **o: attention_jax.dot_product_attention(*a, implementation="dense", **o),
    "dot_product_attention chunked": lambda *a, **o: attention_jax.dot_product_attention(*a, implementation="chunked", **o),
    "chunked_attention 2x3 blocks": lambda *a, **o: attention_jax.chunked_attention(
        *a, block_sizes=(2, 3), **o),
}


def _mode(x64):
    return jax.enable_x64(x64)


def _values_and_grads(path, x64):
    """``path``'s output and the gradients of ``sum(out * w)`` in query, key, value and bias,
    as one compiled program, with x64 ``x64``; returned as float64 NumPy."""
    weights = np.random.default_rng(1).normal(size=QUERY.shape).astype(np.float32)
    ids = dict(query_segment_ids=IDS, key_value_segment_ids=IDS)

    with _mode(x64):
        @jax.jit
        def run(q, k, v, bias, sinks):
            f = lambda q, k, v, bias: PATHS[path](q, k, v, bias=bias, sinks=sinks, **ids, **OPTIONS)
            out, vjp = jax.vjp(f, q, k, v, bias)
            return out, vjp(jnp.asarray(weights))
        out, grads = run(*(jnp.asarray(x) for x in (QUERY, KEY, VALUE, BIAS, SINKS)))
        assert out.dtype == jnp.float32
    return jax.tree.map(lambda x: np.asarray(x, np.float64), (out, grads))


def _reference():
    """The NumPy float64 output, and the float64 gradients of the mirror (x64 on)."""
    f64 = lambda x: np.asarray(x, np.float64)
    ids = dict(query_segment_ids=IDS, key_value_segment_ids=IDS)
    out, _ = attention_np.scaled_dot_product_attention(*map(f64, (QUERY, KEY, VALUE)), bias=f64(BIAS),
                                                       sinks=f64(SINKS), **ids, **OPTIONS)
    weights = np.random.default_rng(1).normal(size=QUERY.shape)
    with _mode(True):
        f = lambda q, k, v, bias: attention_jax.scaled_dot_product_attention(q, k, v, bias=bias, sinks=f64(SINKS),
                                                                              **ids, **OPTIONS)[0]
        _, vjp = jax.vjp(f, *map(f64, (QUERY, KEY, VALUE, BIAS)))
        grads = jax.tree.map(np.asarray, vjp(weights))
    return out, grads


@pytest.mark.parametrize("path", PATHS)
def test_every_path_runs_and_agrees_with_x64_off_and_on(path):
    expected_out, expected_grads = _reference()
    results = {x64: _values_and_grads(path, x64) for x64 in (False, True)}
    for out, grads in results.values():
        np.testing.assert_allclose(out, expected_out, **TOL)
        for name, g, e in zip(("query", "key", "value", "bias"), grads, expected_grads):
            np.testing.assert_allclose(g, e, **TOL, err_msg=name)


@pytest.mark.parametrize("x64", [False, True], ids=["x64 off", "x64 on"])
def test_flex_module_and_step_run_in_both_modes(x64):
    """flex_attention with a document mask and sinks (values and gradients), the NNX module
    (sinks, soft-cap, rotary, window) with its decode cache, and the cached step."""
    f64 = lambda x: np.asarray(x, np.float64)
    expected, _ = attention_np.scaled_dot_product_attention(
        *map(f64, (QUERY, KEY, VALUE)), query_segment_ids=IDS, key_value_segment_ids=IDS, sinks=f64(SINKS))
    with _mode(x64):
        mask_mod = document_mask(jnp.asarray(IDS))
        f = lambda q: attention_jax.flex_attention(q, KEY, VALUE, mask_mod=mask_mod, sinks=SINKS)
        out, d_query = jax.jit(jax.value_and_grad(lambda q: (f(q) ** 2).sum()))(jnp.asarray(QUERY))
        np.testing.assert_allclose(f(jnp.asarray(QUERY)), expected, **TOL)
        assert np.isfinite(np.asarray(d_query)).all()

        module = MultiHeadAttention(N, 8, num_kv_heads=K, use_sinks=True, logits_soft_cap=2.0, rotary=True,
                                    decode=False, rngs=nnx.Rngs(0))
        x = jnp.asarray(rng.normal(size=(B, T, 8)), jnp.float32)
        full = module(x, is_causal=True, local_window_size=(2, 0))
        module.init_cache((B, T, 8))
        steps = [module(x[:, :4], decode=True, local_window_size=(2, 0))]
        steps += [module(x[:, t:t + 1], decode=True, local_window_size=(2, 0)) for t in (4, 5)]
        np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, **TOL)

        params = attention_np.init_multi_head_params(np.random.default_rng(2), 8, N, H, num_kv_heads=K)
        cache = attention_jax.init_kv_cache(B, T, K, H)
        out, _, cache = attention_jax.multi_head_attention_step(params, x[:, :3], cache, local_window_size=(1, 0))
        expected_step, _ = attention_np.multi_head_attention(params, np.asarray(x[:, :3]), is_causal=True,
                                                             local_window_size=(1, 0))
        np.testing.assert_allclose(out, expected_step, **TOL)
        assert cache["length"].dtype == jnp.int32
