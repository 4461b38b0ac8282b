"""dot_product_attention, and the options it shares with scaled_dot_product_attention and
chunked_attention (windows, sequence lengths, traced scale, mixed precision), against
jax.nn.dot_product_attention and the float64 NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax
import attention_np
from attention_jax.fast.dispatch import DENSE_MAX_SCORES, choose_implementation

from .conftest import highest

B, T, S, N, K, H = 2, 11, 13, 6, 3, 8
TOL = dict(rtol=1e-5, atol=1e-5)


def _qkv(seed=0, t=T, s=S, dtype=np.float32):
    r = np.random.default_rng(seed)
    return (r.normal(size=(B, t, N, H)).astype(dtype), r.normal(size=(B, s, K, H)).astype(dtype),
            r.normal(size=(B, s, K, H)).astype(dtype))


QL, KL = np.array([T, 6], np.int32), np.array([S, 4], np.int32)
OPTIONS = {
    "window": dict(local_window_size=(2, 3)),
    "symmetric window": dict(local_window_size=1),
    "window+causal": dict(local_window_size=(4, 0), is_causal=True),
    "lengths": dict(query_seq_lengths=QL, key_value_seq_lengths=KL),
    "query lengths": dict(query_seq_lengths=QL),
    "everything": dict(query_seq_lengths=QL, key_value_seq_lengths=KL, local_window_size=(3, 1), is_causal=True,
                       bias=np.random.default_rng(1).normal(size=(1, N, T, S)).astype(np.float32)),
}

CALLS = {
    "dot_product_attention": lambda q, k, v, **o: attention_jax.dot_product_attention(q, k, v, **o),
    "dense": lambda q, k, v, **o: attention_jax.dot_product_attention(q, k, v, implementation="dense", **o),
    "chunked 4x3": lambda q, k, v, **o: attention_jax.chunked_attention(q, k, v, block_sizes=(4, 3), **o),
    "chunked 5x8": lambda q, k, v, **o: attention_jax.chunked_attention(q, k, v, block_sizes=(5, 8), **o),
    "scaled_dot_product_attention": lambda q, k, v, **o: attention_jax.scaled_dot_product_attention(q, k, v, **o)[0],
    "numpy": lambda q, k, v, **o: attention_np.scaled_dot_product_attention(q, k, v, **o)[0],
}


def _valid_rows(options):
    """(B, T): queries with a key to attend to (jax.nn gives the mean elsewhere, we give zeros)."""
    valid = np.ones((B, T), bool)
    if "query_seq_lengths" in options:
        valid &= np.arange(T)[None] < options["query_seq_lengths"][:, None]
    return valid


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("option", OPTIONS)
def test_windows_and_lengths_match_jax_nn_on_valid_rows(call, option):
    q, k, v = _qkv()
    options = OPTIONS[option]
    with highest():
        expected = np.asarray(jax.nn.dot_product_attention(q, k, v, **options))
        actual = np.asarray(CALLS[call](q, k, v, **options))
    valid = _valid_rows(options)
    np.testing.assert_allclose(actual[valid], expected[valid], **TOL)
    # jax.nn zeroes padded query rows too
    np.testing.assert_array_equal(actual[~valid], 0)


@pytest.mark.parametrize("option", ["window", "lengths", "everything"])
def test_gradients_of_chunked_and_dense_agree_with_jax_nn(option):
    q, k, v = _qkv(2)
    options = OPTIONS[option]
    cotangent = np.random.default_rng(3).normal(size=q.shape).astype(np.float32) * _valid_rows(options)[..., None, None]

    def grads(fn):
        return jax.jit(jax.grad(lambda q, k, v: (fn(q, k, v, **options) * cotangent).sum(), argnums=(0, 1, 2)))(q, k, v)

    with highest():
        expected = grads(jax.nn.dot_product_attention)
        for call in ("dense", "chunked 4x3"):
            for a, e in zip(grads(CALLS[call]), expected):
                np.testing.assert_allclose(a, e, rtol=1e-5, atol=2e-5)


def test_a_window_skips_key_blocks_so_the_work_is_linear_in_length():
    # the compiled loops visit only blocks that meet the band: with kc = qc = 64 and a
    # window of 64 each query chunk needs at most 3 key chunks of L/64, the one on the
    # diagonal full, its two neighbours partial
    L = 1024
    from attention_jax.fast.chunked.config import Config
    from attention_jax.fast.chunked.layout import make_rows
    from attention_jax.fast.chunked.sparse import EMPTY, FULL, PARTIAL, option_states
    cfg = Config(is_causal=False, query_chunk=64, key_chunk=64, T=L, S=L, G=1, window=(64, 64))
    states = np.asarray(option_states(make_rows(cfg, 1, 1), cfg, L // 64, L // 64))[0, 0]   # (nq, nk)
    assert ((states != EMPTY).sum(axis=1) <= 3).all() and (np.diag(states) == FULL).all()
    assert list(states[0, :3]) == [FULL, PARTIAL, EMPTY] and list(states[5, 3:8]) == [EMPTY, PARTIAL, FULL, PARTIAL, EMPTY]
    r = np.random.default_rng(0)
    x = r.normal(size=(1, L, 1, 8)).astype(np.float32)
    with highest():
        np.testing.assert_allclose(
            attention_jax.chunked_attention(x, x, x, local_window_size=(64, 64), block_sizes=(64, 64)),
            jax.nn.dot_product_attention(x, x, x, local_window_size=(64, 64)), **TOL)


def test_the_dispatch_rule():
    small, large = jnp.zeros((1, 256, 2, 64)), jnp.zeros((1, 257, 2, 64))
    assert 256 * 256 == DENSE_MAX_SCORES
    assert choose_implementation(small, small, backend="cpu") == "dense"
    assert choose_implementation(large, large, backend="cpu") == "chunked"
    assert choose_implementation(large, small, backend="cpu") == "chunked"
    bf16 = large.astype(jnp.bfloat16)
    assert choose_implementation(bf16, bf16, backend="gpu") == "cudnn"
    assert choose_implementation(bf16, bf16, backend="gpu", is_causal=True, local_window_size=(8, 0)) == "cudnn"
    # cuDNN only where its answer is ours: no mask / kv lengths (an empty row would be the mean),
    # no dropout, left windows only, H % 8 == 0 and <= 128, half precision
    assert choose_implementation(bf16, bf16, backend="gpu", mask=jnp.ones((1, 1, 257, 257), bool)) == "chunked"
    assert choose_implementation(bf16, bf16, backend="gpu", key_value_seq_lengths=jnp.ones(1, jnp.int32)) == "chunked"
    assert choose_implementation(bf16, bf16, backend="gpu", dropout_rate=0.1) == "chunked"
    assert choose_implementation(bf16, bf16, backend="gpu", local_window_size=8) == "chunked"
    assert choose_implementation(large, large, backend="gpu") == "chunked"
    assert choose_implementation(jnp.zeros((1, 8, 2, 12), jnp.bfloat16), jnp.zeros((1, 8, 2, 12), jnp.bfloat16),
                                 backend="gpu") == "dense"
    assert choose_implementation(bf16, bf16, backend="gpu", scale=jnp.float32(0.1)) == "chunked"


def test_implementation_none_runs_the_chosen_path():
    q, k, v = _qkv()
    chosen = choose_implementation(jnp.asarray(q), jnp.asarray(k))
    assert chosen == "dense"
    with highest():
        np.testing.assert_array_equal(attention_jax.dot_product_attention(q, k, v, is_causal=True),
                                      attention_jax.dot_product_attention(q, k, v, is_causal=True, implementation=chosen))
    long = np.random.default_rng(0).normal(size=(1, 300, 1, 8)).astype(np.float32)
    with highest():
        np.testing.assert_array_equal(attention_jax.dot_product_attention(long, long, long),
                                      attention_jax.dot_product_attention(long, long, long, implementation="chunked"))


def test_dot_product_attention_matches_jax_nn_without_batch_axes_and_with_gqa_bias_mask():
    q, k, v = _qkv()
    r = np.random.default_rng(4)
    mask = r.random((B, N, T, S)) < 0.7
    mask[..., 0] = True
    bias = r.normal(size=(B, 1, T, S)).astype(np.float32)
    with highest():
        for impl in (None, "dense", "chunked"):
            np.testing.assert_allclose(attention_jax.dot_product_attention(q, k, v, bias, mask, implementation=impl),
                                       jax.nn.dot_product_attention(q, k, v, bias, mask), **TOL)
            np.testing.assert_allclose(attention_jax.dot_product_attention(q[0], k[0], v[0], implementation=impl),
                                       jax.nn.dot_product_attention(q[0], k[0], v[0]), **TOL)


def test_bad_implementation_and_cudnn_dropout_are_clear_errors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="implementation must be one of None, 'dense', 'chunked', 'cudnn', 'xla'; got 'flash'"):
        attention_jax.dot_product_attention(q, k, v, implementation="flash")
    with pytest.raises(ValueError, match="implementation='cudnn' has no attention dropout"):
        attention_jax.dot_product_attention(q, k, v, implementation="cudnn", dropout_rate=0.1, dropout_rng=0)
    for impl in ("dense", "chunked"):
        with pytest.raises(ValueError, match=r"local_window_size must be None, an int >= 0 or a pair"):
            attention_jax.dot_product_attention(q, k, v, local_window_size=(-1, 2), implementation=impl)
        with pytest.raises(TypeError, match="query_seq_lengths must have an integer dtype"):
            attention_jax.dot_product_attention(q, k, v, query_seq_lengths=np.ones(B, np.float32), implementation=impl)
        with pytest.raises(ValueError, match="needs a dropout_rng"):
            attention_jax.dot_product_attention(q, k, v, dropout_rate=0.5, implementation=impl)


@pytest.mark.parametrize("option", ["everything", "window"])
def test_implementation_xla_is_jax_nns_plain_path_and_runs_ours_dense(option):
    # jax.nn calls its plain (non-cuDNN) path "xla": code written for jax.nn runs unchanged,
    # on our dense path, with jax.nn's numbers on every query that has a key to attend to
    q, k, v = _qkv()
    options = OPTIONS[option]
    valid = _valid_rows(options)
    with highest():
        got = attention_jax.dot_product_attention(q, k, v, **options, implementation="xla")
        expected = jax.nn.dot_product_attention(q, k, v, **options, implementation="xla")
        dense = attention_jax.dot_product_attention(q, k, v, **options, implementation="dense")
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(expected)[valid], **TOL)
    np.testing.assert_array_equal(got, dense)


# --- a traced scale: a learnable temperature -------------------------------------------------------
@pytest.mark.parametrize("call", ["dense", "chunked 4x3", "dot_product_attention"])
def test_a_traced_scale_matches_jax_nn_and_gets_its_gradient(call):
    q, k, v = _qkv()
    cotangent = np.random.default_rng(5).normal(size=q.shape).astype(np.float32)

    def loss(fn, temperature):
        return (fn(q, k, v, scale=temperature, is_causal=True) * cotangent).sum()

    with highest():
        temperature = jnp.float32(0.37)
        expected_value, expected_grad = jax.value_and_grad(lambda t: loss(jax.nn.dot_product_attention, t))(temperature)
        value, grad = jax.jit(jax.value_and_grad(lambda t: loss(CALLS[call], t)))(temperature)
    np.testing.assert_allclose(value, expected_value, rtol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4)
    assert abs(float(grad)) > 1e-3


def test_a_scalar_array_scale_in_numpy_equals_the_number():
    q, k, v = _qkv(dtype=np.float64)
    np.testing.assert_array_equal(attention_np.scaled_dot_product_attention(q, k, v, scale=np.float64(0.3))[0],
                                  attention_np.scaled_dot_product_attention(q, k, v, scale=0.3)[0])


# --- mixed precision ------------------------------------------------------------------------------
def _dot_general_operand_dtypes(fn, *args):
    jaxpr = jax.make_jaxpr(fn)(*args)
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.append(tuple(str(v.aval.dtype) for v in eqn.invars) + (str(eqn.outvars[0].aval.dtype),))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return found


# on the CPU backend half-precision operands are upcast to float32 (attention_jax._dtypes.operand_dtype)
OPERAND = "float32" if jax.default_backend() == "cpu" else None

MIXED = {
    "scaled_dot_product_attention": lambda q, k, v: attention_jax.scaled_dot_product_attention(q, k, v, is_causal=True)[0],
    "chunked_attention": lambda q, k, v: attention_jax.chunked_attention(q, k, v, is_causal=True, block_sizes=(4, 4)),
    "dot_product_attention": lambda q, k, v: attention_jax.dot_product_attention(q, k, v, is_causal=True),
}


@pytest.mark.parametrize("dtype, tol", [(jnp.bfloat16, 2e-2), (jnp.float16, 5e-3)], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("name", MIXED)
def test_half_precision_matmuls_have_half_operands_and_float32_accumulation(name, dtype, tol):
    q, k, v = (jnp.asarray(x, dtype) for x in _qkv())
    dots = _dot_general_operand_dtypes(MIXED[name], q, k, v)
    half = OPERAND or jnp.dtype(dtype).name
    assert dots and all(d[:2] == (half, half) and d[2] == "float32" for d in dots), dots
    out = MIXED[name](q, k, v)
    assert out.dtype == dtype
    reference = attention_np.scaled_dot_product_attention(*(np.asarray(x, np.float64) for x in (q, k, v)), is_causal=True)[0]
    np.testing.assert_allclose(np.asarray(out, np.float64), reference, rtol=tol, atol=tol)


def test_half_precision_backward_of_chunked_has_half_operands():
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in _qkv())
    dots = _dot_general_operand_dtypes(jax.grad(lambda q, k, v: MIXED["chunked_attention"](q, k, v).astype(jnp.float32).sum(),
                                                argnums=(0, 1, 2)), q, k, v)
    half = OPERAND or "bfloat16"
    assert len(dots) >= 6 and all(d[:2] == (half, half) and d[2] == "float32" for d in dots), dots


@pytest.mark.parametrize("path", ["dense", "chunked"])
def test_causal_keys_past_the_last_query_are_never_read(path):
    """With the causal mask alone and S > T, keys s >= T have no query: NaN or inf stored
    there (unwritten cache slots) must not reach the output or the gradients. Expected: the
    NumPy half on the first T keys only."""
    Tq, Sk, rng = 5, 9, np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, n, 2, 4)) for n in (Tq, Sk, Sk))
    k[:, Tq:], v[:, Tq:] = np.nan, np.inf
    expected, _ = attention_np.scaled_dot_product_attention(q, k[:, :Tq], v[:, :Tq], is_causal=True)

    def f(q, k, v):
        return attention_jax.dot_product_attention(q, k, v, is_causal=True, implementation=path)

    out, vjp = jax.vjp(f, *(jnp.asarray(x) for x in (q, k, v)))
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    grads = vjp(jnp.ones_like(out))
    assert all(np.isfinite(g).all() for g in grads)
    assert np.all(np.asarray(grads[1])[:, Tq:] == 0) and np.all(np.asarray(grads[2])[:, Tq:] == 0)


@pytest.mark.parametrize("path", ["dense", "chunked"])
def test_a_row_of_minus_inf_bias_gives_zeros_without_a_mask(path):
    """A bias whose row for query 1 is all ``-inf`` (no mask, no causal flag): that query sees
    no key, so its output and its query gradient are zeros, finite, as the NumPy half says;
    the other rows equal the NumPy half."""
    rng = np.random.default_rng(1)
    q, k, v, d_out = (rng.normal(size=(2, n, 2, 4)) for n in (3, 5, 5, 3))
    bias = rng.normal(size=(1, 2, 3, 5))
    bias[:, :, 1] = -np.inf
    expected, _ = attention_np.scaled_dot_product_attention(q, k, v, bias=bias)
    out, vjp = jax.vjp(lambda q, k, v: attention_jax.dot_product_attention(q, k, v, bias=bias, implementation=path),
                       *(jnp.asarray(x) for x in (q, k, v)))
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(out)[:, 1], 0)
    grads = vjp(jnp.asarray(d_out))
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    np.testing.assert_array_equal(np.asarray(grads[0])[:, 1], 0)
