"""Every public attention path, on random problems (hypothesis): finite outputs and
gradients, dead rows exactly zero, and equal to the NumPy float64 reference and its VJP.

A problem is a random shape (T != S, grouped key/value heads), a random boolean mask with
fully masked rows and fully masked batch rows, sequence lengths including 0, a local window,
a bias with whole rows of ``-inf``, the causal flag, an upstream gradient up to 1e4 on every
position (padding included), and a dtype. A *dead* query (one that sees no key: every key
masked, or every logit ``-inf``) must give a zero output and a zero query gradient.

The examples run under the hypothesis profile of ``conftest.py`` (few, derandomized, so the
suite stays fast and CI sees the same examples each run); ``--hypothesis-profile=search``
runs a long random search.
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from hypothesis import example, given, settings
from hypothesis import strategies as st

import attention_jax
import attention_jax.nnx
import attention_np
from attention_jax.fast.dense import dense_attention

# Worst |error| / max(1, max |reference|) per dtype (docs/design.md, tolerances); bfloat16
# and float16 gradients pass through two rounded matmuls more than the outputs.
TOLERANCE = {"float32": 2e-5, "bfloat16": 3e-2, "float16": 5e-3}
GRAD_TOLERANCE = {"float32": 2e-5, "bfloat16": 6e-2, "float16": 1e-2}
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
# float16 overflows (65504) once upstream gradients of 1e4 are summed over a few positions:
# that is the dtype's range, not the attention's, so float16 draws up to 1e2
UPSTREAM = {"float32": [1.0, 1e2, 1e4], "bfloat16": [1.0, 1e2, 1e4], "float16": [1.0, 1e2]}
# Half the profile's examples for the tests that compile a model (module, step, multi-head
# function) or two paths per example: each example is a new shape, so a new compilation
FEWER = settings(max_examples=max(2, settings.default.max_examples // 2))


@st.composite
def problems(draw, *, options=True, T_equals_S=False):
    """One random attention problem (a dict); ``options=False``: mask and causal flag only."""
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    B = draw(st.sampled_from([1, 2]))
    T = draw(st.sampled_from([1, 3, 5]))
    S = T if T_equals_S else draw(st.sampled_from([1, 4, 6]))
    K, G, H = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2])), draw(st.sampled_from([2, 4]))
    N = K * G
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    cast = lambda x: x.astype(DTYPES[dtype])
    p = {"dtype": dtype, "query": cast(rng.normal(size=(B, T, N, H))), "key": cast(rng.normal(size=(B, S, K, H))),
         "value": cast(rng.normal(size=(B, S, K, H))), "is_causal": draw(st.booleans()), "mask": None, "bias": None,
         "query_seq_lengths": None, "key_value_seq_lengths": None, "local_window_size": None}
    p["d_out"] = cast(rng.normal(size=(B, T, N, H)) * draw(st.sampled_from(UPSTREAM[dtype])))
    if draw(st.booleans()):
        mask = rng.random((B, 1, T, S)) < draw(st.sampled_from([0.3, 0.7]))
        mask[:, :, rng.integers(T)] = False                        # a query that sees no key
        if B > 1 and draw(st.booleans()):
            mask[rng.integers(B)] = False                          # a batch row that sees nothing
        p["mask"] = mask
    if not options:
        return p
    if draw(st.booleans()):
        p["query_seq_lengths"] = rng.integers(0, T + 1, size=B)    # 0 included
        p["key_value_seq_lengths"] = rng.integers(0, S + 1, size=B)
    if draw(st.booleans()):
        p["local_window_size"] = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
    if draw(st.booleans()):
        bias = rng.normal(size=(B, N, T, S))
        bias[rng.random((B, N, T, S)) < 0.2] = -np.inf             # some keys -inf
        bias[:, :, rng.integers(T)] = -np.inf                      # a query whose every logit is -inf
        p["bias"] = cast(bias)
    return p


def combined_mask(p):
    """The problem's mask, causal flag, lengths and window as one ``(B, 1, T, S)`` bool mask,
    written out here rather than taken from the library's mask helpers."""
    B, T, _, _ = p["query"].shape
    S = p["key"].shape[1]
    mask = np.ones((B, 1, T, S), bool) if p["mask"] is None else p["mask"].copy()
    t, s = np.arange(T)[:, None], np.arange(S)[None, :]
    if p["is_causal"]:
        mask &= s <= t
    if p["query_seq_lengths"] is not None:
        mask &= np.arange(T)[None, None, :, None] < np.asarray(p["query_seq_lengths"])[:, None, None, None]
    if p["key_value_seq_lengths"] is not None:
        mask &= np.arange(S)[None, None, None, :] < np.asarray(p["key_value_seq_lengths"])[:, None, None, None]
    if p["local_window_size"] is not None:
        left, right = p["local_window_size"]
        mask &= (s >= t - left) & (s <= t + right)
    return mask


def reference(p):
    """``(out, (d_query, d_key, d_value), dead (B, T, N))`` in float64 from ``attention_np``,
    on the problem's (rounded) inputs."""
    f64 = lambda x: None if x is None else np.asarray(x, np.float64)
    q, k, v, do, bias = (f64(p[n]) for n in ("query", "key", "value", "d_out", "bias"))
    mask = combined_mask(p)
    out, weights = attention_np.scaled_dot_product_attention(q, k, v, bias=bias, mask=mask)
    grads = attention_np.scaled_dot_product_attention_vjp(q, k, v, do, bias=bias, mask=mask)
    dead = (weights.sum(-1) == 0).transpose(0, 2, 1)                       # (B, T, N)
    return out, grads, dead


def error(actual, expected, scale=0.0):
    """Worst |actual - expected| / max(1, max |expected|, scale)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return np.abs(actual - expected).max(initial=0.0) / max(1.0, np.abs(expected).max(initial=0.0), scale)


def check(p, out, grads, *, dead_rows=True):
    """Finite, dead rows exactly zero, equal to the reference within the dtype's tolerance."""
    expected_out, expected_grads, dead = reference(p)
    out, grads = np.asarray(out, np.float64), [np.asarray(g, np.float64) for g in grads]
    assert np.isfinite(out).all(), "non-finite output"
    for name, g in zip(("d_query", "d_key", "d_value"), grads):
        assert np.isfinite(g).all(), f"non-finite {name}"
    if dead_rows:
        assert (out[dead] == 0).all(), "a dead query's output is not zero"
        assert (grads[0][dead] == 0).all(), "a dead query's gradient is not zero"
    dtype = p["dtype"]
    assert error(out, expected_out) <= TOLERANCE[dtype], ("out", error(out, expected_out))
    # each gradient relative to the largest of the three: where the softmax has one key,
    # d_key is exactly 0 as a difference of terms as large as d_value, which a float32
    # FlashAttention backward (D = rowsum(dO * O)) rounds to about eps * |d_value|
    scale = max(np.abs(e).max(initial=0.0) for e in expected_grads)
    for name, g, e in zip(("d_query", "d_key", "d_value"), grads, expected_grads):
        assert error(g, e, scale) <= GRAD_TOLERANCE[dtype], (name, error(g, e, scale))


OPTIONS = ("bias", "mask", "is_causal", "query_seq_lengths", "key_value_seq_lengths", "local_window_size")


def run_jax(fn, p):
    """``fn(query, key, value, **options)`` and its ``jax.vjp`` under the problem's ``d_out``,
    compiled as one program."""
    options = {n: p[n] for n in OPTIONS}

    @jax.jit
    def forward_and_backward(q, k, v, d_out):
        out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, **options), q, k, v)
        return out, vjp(d_out)
    return forward_and_backward(*(jnp.asarray(p[n]) for n in ("query", "key", "value", "d_out")))


PATHS = {
    "scaled_dot_product_attention": lambda q, k, v, **o: attention_jax.scaled_dot_product_attention(q, k, v, **o)[0],
    "dense_attention (tuned)": lambda q, k, v, **o: dense_attention(q, k, v, **o)[0],
    "dot_product_attention dense": lambda q, k, v, **o: attention_jax.dot_product_attention(q, k, v, implementation="dense", **o),
    "dot_product_attention chunked": lambda q, k, v, **o: attention_jax.dot_product_attention(q, k, v, implementation="chunked", **o),
    "dot_product_attention None": lambda q, k, v, **o: attention_jax.dot_product_attention(q, k, v, **o),
    # blocks of 2 x 3: the loops run, and the last block of each axis is partly padding
    "chunked_attention 2x3 blocks": lambda q, k, v, **o: attention_jax.chunked_attention(
        q, k, v, block_sizes=(2, 3), **o),
}


def pinned_problem(dtype, B, T, S, K, G, H, upstream, seed, **options):
    """A problem with the given sizes and options, for the examples every run checks."""
    rng = np.random.default_rng(seed)
    cast = lambda x: x.astype(DTYPES[dtype])
    p = {"dtype": dtype, "query": cast(rng.normal(size=(B, T, K * G, H))), "key": cast(rng.normal(size=(B, S, K, H))),
         "value": cast(rng.normal(size=(B, S, K, H))), "d_out": cast(rng.normal(size=(B, T, K * G, H)) * upstream)}
    return p | {n: None for n in OPTIONS} | {"is_causal": False} | options


def dead_row_bias(T, S):
    """A bias whose row 1 is all -inf (that query is dead)."""
    bias = np.random.default_rng(1).normal(size=(1, 1, T, S))
    bias[:, :, 1] = -np.inf
    return bias


@pytest.mark.parametrize("path", PATHS)
@given(p=problems())
# query 1 dead by its -inf bias row, next to causally masked keys in the same key block
@example(p=pinned_problem("bfloat16", 1, 3, 4, 1, 1, 2, 1.0, 0, is_causal=True,
                          bias=dead_row_bias(3, 4).astype(ml_dtypes.bfloat16)))
# one key per query (window (0, 0)), upstream 1e2: d_key is exactly 0
@example(p=pinned_problem("float32", 1, 3, 6, 1, 2, 4, 1e2, 2, local_window_size=(0, 0)))
def test_jax_paths(path, p):
    out, grads = run_jax(PATHS[path], p)
    check(p, out, grads)


@FEWER
@given(p=problems(), dropout=st.sampled_from([0.0, 0.5]))
def test_tuned_dense_path_equals_the_mirror(p, dropout):
    """:mod:`attention_jax.fast.dense` against :func:`attention_jax.scaled_dot_product_attention`
    (the line-by-line mirror of the NumPy half): outputs, weights and gradients, dropout
    included (the same keep-mask)."""
    options = {n: p[n] for n in OPTIONS} | {"dropout_rate": dropout, "dropout_rng": 7}
    args = [jnp.asarray(p[n]) for n in ("query", "key", "value")]
    results = []
    for fn in (dense_attention, attention_jax.scaled_dot_product_attention):
        (out, weights), vjp = jax.vjp(lambda q, k, v: fn(q, k, v, **options), *args)
        results.append((out, weights, *vjp((jnp.asarray(p["d_out"]), jnp.zeros_like(weights)))))
    for name, tuned, mirror in zip(("out", "weights", "d_query", "d_key", "d_value"), *results):
        assert error(tuned, mirror) <= GRAD_TOLERANCE[p["dtype"]], name


@given(p=problems())
def test_numpy_reference_with_every_option(p):
    """The NumPy half's own options (lengths, window, causal) against the combined mask."""
    f64 = {n: np.asarray(p[n], np.float64) for n in ("query", "key", "value")}
    bias = None if p["bias"] is None else np.asarray(p["bias"], np.float64)
    options = {n: p[n] for n in OPTIONS if n != "bias"}
    out, _ = attention_np.scaled_dot_product_attention(f64["query"], f64["key"], f64["value"], bias=bias, **options)
    expected, _, dead = reference(p)
    assert np.isfinite(out).all() and (out[dead] == 0).all()
    assert error(out, expected) <= 1e-12


def multi_head_problem(p, rng):
    """Model-width inputs and params for the problem's heads: ``(params, x, kv, d_out)``."""
    B, T, N, H = p["query"].shape
    S, K = p["key"].shape[1], p["key"].shape[2]
    E = 3
    params = attention_np.init_multi_head_params(rng, E, N, H, num_kv_heads=K, dtype=np.float64)
    x, kv = rng.normal(size=(B, T, E)), rng.normal(size=(B, S, E))
    d_out = rng.normal(size=(B, T, E)) * np.abs(p["d_out"]).max()
    return params, x, kv, d_out


@FEWER
@given(p=problems(options=False), seed=st.integers(0, 2**16))
def test_multi_head_attention_function(p, seed):
    """``multi_head_attention`` (float32) against the NumPy float64 forward and VJP."""
    params, x, kv, d_out = multi_head_problem(p, np.random.default_rng(seed))
    mask = combined_mask(p)
    f32 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)
    with jax.default_matmul_precision("highest"):
        out, vjp = jax.vjp(lambda params, x, kv: attention_jax.multi_head_attention(params, x, kv, mask=mask)[0],
                           *f32((params, x, kv)))
        grads = vjp(jnp.asarray(d_out, jnp.float32))
    expected, _ = attention_np.multi_head_attention(params, x, kv, mask=mask)
    expected_grads = attention_np.multi_head_attention_vjp(params, x, kv, kv, d_out, mask=mask)
    assert error(out, expected) <= TOLERANCE["float32"]
    got, want = jax.tree.leaves(grads[0]) + list(grads[1:]), jax.tree.leaves(expected_grads[0]) + [
        expected_grads[1], expected_grads[2] + expected_grads[3]]  # key and value are one input here
    for g, e in zip(got, want):
        assert np.isfinite(np.asarray(g)).all()
        assert error(g, e) <= GRAD_TOLERANCE["float32"]


@FEWER
@given(p=problems(options=False), seed=st.integers(0, 2**16))
def test_nnx_module(p, seed):
    """``nnx.MultiHeadAttention`` (float32, dense and chunked) against the NumPy forward: live
    rows equal, dead rows zero (the module zeroes the projected row), finite input gradients."""
    B, T, N, H = p["query"].shape
    S, K = p["key"].shape[1], p["key"].shape[2]
    rng = np.random.default_rng(seed)
    module = attention_jax.nnx.MultiHeadAttention(N, 3, qkv_features=N * H, num_kv_heads=K, decode=False,
                                                  rngs=nnx.Rngs(seed))
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    x, kv = rng.normal(size=(B, T, 3)), rng.normal(size=(B, S, 3))
    mask = combined_mask(p)
    expected, weights = attention_np.multi_head_attention(params, x, kv, mask=mask)
    dead = weights.sum(-1).sum(1) == 0                                     # (B, T): no key in any head
    d_out = jnp.asarray(rng.normal(size=expected.shape) * np.abs(p["d_out"]).max(), jnp.float32)
    for implementation in ("dense", "chunked"):
        with jax.default_matmul_precision("highest"):
            out, vjp = jax.vjp(lambda x, kv: module(x, kv, mask=mask, implementation=implementation),
                               jnp.asarray(x, jnp.float32), jnp.asarray(kv, jnp.float32))
        grads = vjp(d_out)
        out = np.asarray(out)
        assert (out[dead] == 0).all()
        assert error(out[~dead], expected[~dead]) <= TOLERANCE["float32"], implementation
        assert all(np.isfinite(np.asarray(g)).all() for g in grads)
        assert (np.asarray(grads[0])[dead] == 0).all()


@FEWER
@given(seed=st.integers(0, 2**16), lengths=st.lists(st.integers(0, 4), min_size=2, max_size=2),
       steps=st.lists(st.integers(1, 3), min_size=1, max_size=3), upstream=st.sampled_from([1.0, 1e4]))
def test_cached_step(seed, lengths, steps, upstream):
    """``multi_head_attention_step`` from caches of different lengths (0 included), a few
    tokens at a time: equal to the NumPy step, gradients finite under large upstream gradients."""
    rng = np.random.default_rng(seed)
    E, N, K, H, max_len = 3, 2, 1, 2, 16
    params = attention_np.init_multi_head_params(rng, E, N, H, num_kv_heads=K, dtype=np.float64)
    cache_np = attention_np.init_kv_cache(2, max_len, K, H, dtype=np.float64)
    cache_np["key"][:], cache_np["value"][:] = rng.normal(size=cache_np["key"].shape), rng.normal(size=cache_np["value"].shape)
    cache_np["length"] = np.asarray(lengths)
    cache = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32) if a.dtype.kind == "f" else jnp.asarray(a), cache_np)
    params32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    for k in steps:
        x = rng.normal(size=(2, k, E))
        expected, _, cache_np = attention_np.multi_head_attention_step(params, x, cache_np)
        x32 = jnp.asarray(x, jnp.float32)
        d_out = jnp.asarray(rng.normal(size=expected.shape) * upstream, jnp.float32)
        step = lambda x: attention_jax.multi_head_attention_step(params32, x, cache)
        with jax.default_matmul_precision("highest"):
            out, _, next_cache = step(x32)
            grad = jax.jit(jax.grad(lambda x: (step(x)[0] * d_out).sum()))(x32)
        assert error(out, expected) <= TOLERANCE["float32"]
        assert np.isfinite(np.asarray(grad)).all()
        cache = next_cache
