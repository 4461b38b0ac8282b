"""Every public attention path, on random problems (hypothesis): finite outputs and
gradients, dead rows exactly zero, and equal to the NumPy float64 reference and its VJP; an
option a path does not support is refused by name.

The problems, the reference, the comparison and the table of paths with what each supports
are :mod:`parity_tests.testing`: a problem is a random shape (T != S, grouped key/value
heads), a random boolean mask with fully masked rows and fully masked batch rows, sequence
lengths including 0, a local window, a bias with whole rows of ``-inf``, the causal flag,
segment ids with a segment no key has, a soft-cap, sinks, dropout, the residual, an upstream
gradient up to 1e4 on every position (padding included), and a dtype. A *dead* query (one
that sees no key: every key masked, or every logit ``-inf``) must give a zero output and a
zero query gradient.

The examples run under the hypothesis profile of ``conftest.py`` (few, derandomized, so the
suite stays fast and CI sees the same examples each run); ``--hypothesis-profile=search``
runs a long random search.
"""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import example, given, settings
from hypothesis import strategies as st

import attention_jax
import attention_jax.nnx
import attention_np
import parity_tests.testing
from attention_jax.fast.dense import dense_attention
from parity_tests.testing import PATHS, check, check_path, make_problem, problems, qkv, reference
from parity_tests.testing.expected import _NUMPY_VJP_OPTIONS as NUMPY_VJP_OPTIONS
from parity_tests.testing.expected import _written_out_vjp as written_out_vjp

# Half the profile's examples for the tests that compile a model (module, step, multi-head
# function) or two paths per example: each example is a new shape, so a new compilation
FEWER = settings(max_examples=max(2, settings.default.max_examples // 2))


def pinned_problem(dtype, B, T, S, K, G, H, upstream, seed, **options):
    """A problem with the given sizes and options, for the examples every run checks."""
    query, key, value = qkv(B, T, S, K * G, K, H, dtype=dtype, rng=seed)
    return make_problem(query, key, value, upstream=upstream, seed=seed + 1, **options)


def dead_row_bias(T, S):
    """A bias whose row 1 is all -inf (that query is dead)."""
    bias = np.random.default_rng(1).normal(size=(1, 1, T, S))
    bias[:, :, 1] = -np.inf
    return bias


@pytest.mark.parametrize("path", PATHS)
@given(p=problems())
# query 1 dead by its -inf bias row, next to causally masked keys in the same key block
@example(p=pinned_problem("bfloat16", 1, 3, 4, 1, 1, 2, 1.0, 0, is_causal=True, bias=dead_row_bias(3, 4)))
# one key per query (window (0, 0)), upstream 1e2: d_key is exactly 0
@example(p=pinned_problem("float32", 1, 3, 6, 1, 2, 4, 1e2, 2, local_window_size=(0, 0)))
def test_jax_paths(path, p):
    check_path(path, p)


def test_the_paths_say_what_they_support():
    """The table's claims: the tuned dense path has no segment ids, soft-cap or sinks, the
    blocked flex path no dropout, every other path every option."""
    unsupported = {name: parity_tests.testing.OPTIONS - path.supports for name, path in PATHS.items()}
    assert unsupported.pop("dense_attention (tuned)") == {"query_segment_ids", "key_value_segment_ids",
                                                          "logits_soft_cap", "sinks"}
    assert unsupported.pop("flex_attention 2x3 blocks") == {"dropout_rate"}
    assert not any(unsupported.values()), unsupported


def test_the_testing_module_examples_run():
    result = doctest.testmod(parity_tests.testing, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@FEWER
@given(p=problems(options=PATHS["dense_attention (tuned)"].supports))
def test_tuned_dense_path_equals_the_mirror(p):
    """:mod:`attention_jax.fast.dense` against :func:`attention_jax.scaled_dot_product_attention`
    (the line-by-line mirror of the NumPy half): outputs, weights, lse and gradients, dropout
    included (the same keep-mask)."""
    args = [jnp.asarray(x) for x in (p.query, p.key, p.value)]
    results = []
    for fn in (dense_attention, attention_jax.scaled_dot_product_attention):
        outputs, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, **p.options), *args)
        cotangents = (jnp.asarray(p.d_out), jnp.zeros_like(outputs[1])) + tuple(
            jnp.asarray(p.d_lse) for _ in outputs[2:])
        results.append((*outputs, *vjp(cotangents)))
    names = ("out", "weights") + ("lse",) * bool(p.options.get("return_residual")) + ("d_query", "d_key", "d_value")
    for name, tuned, mirror in zip(names, *results):
        check(tuned, mirror, p.dtype, name=name)


@given(p=problems())
def test_numpy_reference_with_every_option(p):
    """The NumPy half's own options (lengths, window, causal, segment ids) against the mask
    :class:`~parity_tests.testing.Problem` writes out, the other options (bias, soft-cap,
    sinks, dropout) alike in both."""
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    masks = ("mask", "is_causal", "query_seq_lengths", "key_value_seq_lengths", "local_window_size",
             "query_segment_ids", "key_value_segment_ids")
    others = {n: f64(v) if n in ("bias", "sinks") else v for n, v in p.options.items() if n not in masks}
    q, k, v = (f64(x) for x in (p.query, p.key, p.value))
    out, weights = attention_np.scaled_dot_product_attention(q, k, v, mask=p.mask(), **others)[:2]
    expected = reference(p)
    assert np.isfinite(out).all() and (out[expected.dead] == 0).all()
    check(out, expected.out, "float64")


@given(p=problems(options=NUMPY_VJP_OPTIONS, dtypes=("float64",)))
def test_written_out_gradients_equal_the_numpy_vjp(p):
    """The reference's VJP written out for soft-cap, sinks, dropout and lse, on the options
    where ``attention_np.scaled_dot_product_attention_vjp`` has them too: the same numbers."""
    expected = reference(p)
    _, weights, lse = attention_np.scaled_dot_product_attention(p.query, p.key, p.value, return_residual=True,
                                                                **p.options)
    for name, got, want in zip(("d_query", "d_key", "d_value"),
                               written_out_vjp(p, weights, lse), expected.grads):
        check(got, want, "float64", name=name)


def multi_head_problem(p, rng):
    """Model-width inputs and params for the problem's heads: ``(params, x, kv, d_out)``."""
    B, T, N, H = p.query.shape
    S, K = p.key.shape[1], p.key.shape[2]
    E = 3
    params = attention_np.init_multi_head_params(rng, E, N, H, num_kv_heads=K, dtype=np.float64)
    x, kv = rng.normal(size=(B, T, E)), rng.normal(size=(B, S, E))
    d_out = rng.normal(size=(B, T, E)) * np.abs(p.d_out.astype(np.float64)).max()
    return params, x, kv, d_out


@FEWER
@given(p=problems(options={"mask", "is_causal"}), seed=st.integers(0, 2**16))
def test_multi_head_attention_function(p, seed):
    """``multi_head_attention`` (float32) against the NumPy float64 forward and VJP."""
    params, x, kv, d_out = multi_head_problem(p, np.random.default_rng(seed))
    mask = p.mask()
    f32 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)  # noqa: E731
    with jax.default_matmul_precision("highest"):
        out, vjp = jax.vjp(lambda params, x, kv: attention_jax.multi_head_attention(params, x, kv, mask=mask)[0],
                           *f32((params, x, kv)))
        grads = vjp(jnp.asarray(d_out, jnp.float32))
    expected, _ = attention_np.multi_head_attention(params, x, kv, mask=mask)
    expected_grads = attention_np.multi_head_attention_vjp(params, x, kv, kv, d_out, mask=mask)
    check(out, expected, "float32")
    got, want = jax.tree.leaves(grads[0]) + list(grads[1:]), jax.tree.leaves(expected_grads[0]) + [
        expected_grads[1], expected_grads[2] + expected_grads[3]]  # key and value are one input here
    # each gradient relative to the largest (a key bias's is exactly 0: the softmax ignores it)
    scale = max(np.abs(e).max() for e in want)
    for g, e in zip(got, want):
        assert np.isfinite(np.asarray(g)).all()
        check(g, e, "float32", scale=scale)


@FEWER
@given(p=problems(options={"mask", "is_causal"}), seed=st.integers(0, 2**16))
def test_nnx_module(p, seed):
    """``nnx.MultiHeadAttention`` (float32, dense and chunked) against the NumPy forward: live
    rows equal, dead rows zero (the module zeroes the projected row), finite input gradients."""
    B, T, N, H = p.query.shape
    S, K = p.key.shape[1], p.key.shape[2]
    rng = np.random.default_rng(seed)
    module = attention_jax.nnx.MultiHeadAttention(N, 3, qkv_features=N * H, num_kv_heads=K, decode=False,
                                                  rngs=nnx.Rngs(seed))
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    x, kv = rng.normal(size=(B, T, 3)), rng.normal(size=(B, S, 3))
    mask = p.mask()
    expected, weights = attention_np.multi_head_attention(params, x, kv, mask=mask)
    dead = weights.sum(-1).sum(1) == 0                                     # (B, T): no key in any head
    d_out = jnp.asarray(rng.normal(size=expected.shape) * np.abs(p.d_out.astype(np.float64)).max(), jnp.float32)
    for implementation in ("dense", "chunked"):
        @jax.jit  # forward and backward as one program: one compilation, not one per operation
        def forward_and_backward(x, kv):
            out, vjp = jax.vjp(lambda x, kv: module(x, kv, mask=mask, implementation=implementation), x, kv)
            return out, vjp(d_out)

        with jax.default_matmul_precision("highest"):
            out, grads = forward_and_backward(jnp.asarray(x, jnp.float32), jnp.asarray(kv, jnp.float32))
        out = np.asarray(out)
        assert (out[dead] == 0).all()
        check(out[~dead], expected[~dead], "float32", name=implementation)
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
        step = lambda x: attention_jax.multi_head_attention_step(params32, x, cache)  # noqa: E731
        with jax.default_matmul_precision("highest"):
            out, _, next_cache = step(x32)
            grad = jax.jit(jax.grad(lambda x: (step(x)[0] * d_out).sum()))(x32)
        check(out, expected, "float32")
        assert np.isfinite(np.asarray(grad)).all()
        cache = next_cache
