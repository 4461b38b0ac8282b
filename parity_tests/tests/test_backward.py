"""The hand-written NumPy VJPs (attention_np/backward.py) against two independent sources:
``jax.vjp`` of the attention_jax function (float64, 1e-12) and central finite differences of
the NumPy float64 forward (the harness's FD_STEP and FD_TOLERANCE), over masks, causal,
grouped heads and fully masked rows; plus the closed-form facts gradients must obey."""

import jax
import numpy as np
import pytest

import attention_jax
import attention_np
from parity_tests import FD_TOLERANCE, REGISTRY, ParityCase, assert_parity, finite_differences, pytest_params

from .conftest import B, H, K, S, T

N, E = 6, 13  # N = 2K: grouped heads
TOL64 = 1e-12  # docs/design.md section 5, float64


def _assert_close(actual, expected, tol):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=tol, atol=tol)


def _jax_grads(fn, primals, cotangent):
    _, vjp = jax.vjp(fn, *jax.tree.map(jax.numpy.asarray, primals))
    return jax.device_get(vjp(cotangent))


def _fd(numpy_fn, args, kwargs, differentiable, cotangent, outputs=None, samples=None):
    """Finite differences through the harness (an ad hoc case): every element, or ``samples``
    elements an array (the others NaN, compared as NaN == NaN: skip them)."""
    case = ParityCase("fd", "fd", "", None, numpy_fn, None, differentiable=differentiable, cotangent_outputs=outputs)
    return finite_differences(case, args, kwargs, cotangent, samples=samples)


def _assert_close_where_differenced(actual, fd, tol):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(fd)):
        done = ~np.isnan(e)
        assert done.any()
        np.testing.assert_allclose(np.asarray(a)[done], e[done], rtol=tol, atol=tol)


# --- scaled dot-product attention ---------------------------------------------------------------
def _fully_masked_mask(rng):
    mask = rng.random((B, N, T, S)) < 0.6
    mask[1, :, 0, :] = False  # query 0 of batch 1 sees nothing, in every head
    mask[0, 2, :, :] = False  # head 2 of batch 0 sees nothing
    return mask


SDPA_OPTIONS = {
    "plain": lambda rng: {},
    "causal": lambda rng: {"is_causal": True},
    "mask+fully-masked": lambda rng: {"mask": _fully_masked_mask(rng)},
    "mask+bias+causal+scale": lambda rng: {"mask": _fully_masked_mask(rng), "bias": rng.normal(size=(B, 1, T, S)), "is_causal": True, "scale": 0.3},
}


def _sdpa_inputs(rng, options):
    query, key, value = rng.normal(size=(B, T, N, H)), rng.normal(size=(B, S, K, H)), rng.normal(size=(B, S, K, H))
    return (query, key, value), SDPA_OPTIONS[options](rng), rng.normal(size=(B, T, N, H))


@pytest.mark.parametrize("options", SDPA_OPTIONS)
def test_sdpa_vjp_equals_jax_vjp(rng, options):
    (query, key, value), kwargs, d_out = _sdpa_inputs(rng, options)
    expected = _jax_grads(lambda q, k, v: attention_jax.scaled_dot_product_attention(q, k, v, **kwargs)[0], (query, key, value), d_out)
    _assert_close(attention_np.scaled_dot_product_attention_vjp(query, key, value, d_out, **kwargs), expected, TOL64)


@pytest.mark.parametrize("options", SDPA_OPTIONS)
def test_sdpa_vjp_agrees_with_finite_differences(rng, options):
    args, kwargs, d_out = _sdpa_inputs(rng, options)
    expected = _fd(attention_np.scaled_dot_product_attention, args, kwargs, (0, 1, 2), (d_out,), outputs=(0,))
    _assert_close(attention_np.scaled_dot_product_attention_vjp(*args, d_out, **kwargs), expected, FD_TOLERANCE)


def test_sdpa_vjp_fully_masked_rows_and_nan_padding_get_zero_gradients(rng):
    (query, key, value), _, d_out = _sdpa_inputs(rng, "plain")
    mask = np.ones((B, 1, T, S), bool)
    mask[..., S - 1] = False  # the last key is padding for every query
    mask[1, :, 0, :] = False  # and query 0 of batch 1 sees nothing
    key[:, S - 1], value[:, S - 1] = np.nan, np.inf  # whatever padding holds
    d_query, d_key, d_value = attention_np.scaled_dot_product_attention_vjp(query, key, value, d_out, mask=mask)
    assert np.isfinite(d_query).all() and np.isfinite(d_key).all() and np.isfinite(d_value).all()
    assert not d_query[1, 0].any()  # (N, H) of the query with nothing to attend to
    assert not d_key[:, S - 1].any() and not d_value[:, S - 1].any()
    assert d_query[0].any() and d_key[:, 0].any()  # the test could fail: other gradients are not zero


def test_sdpa_vjp_is_causal_by_gradients(rng):
    """d out[t] / d key[s] == 0 for s > t: with d_out nonzero only at query t, no key after t moves."""
    (query, key, value), _, _ = _sdpa_inputs(rng, "plain")
    for t in range(T):
        d_out = np.zeros((B, T, N, H))
        d_out[:, t] = rng.normal(size=(B, N, H))
        _, d_key, d_value = attention_np.scaled_dot_product_attention_vjp(query, key, value, d_out, is_causal=True)
        assert not d_key[:, t + 1:].any() and not d_value[:, t + 1:].any()
        assert d_key[:, : t + 1].any() or t == 0  # one key alone: softmax gradient w.r.t. it is zero
        assert d_value[:, : t + 1].any()


def test_sdpa_vjp_sums_grouped_heads(rng):
    """With K < N a key/value head's gradient is the sum over the query heads it serves:
    the same as differentiating the repeated (N-head) key and summing."""
    (query, key, value), _, d_out = _sdpa_inputs(rng, "plain")
    repeated = [np.repeat(x, N // K, axis=2) for x in (key, value)]
    _, d_key_full, d_value_full = attention_np.scaled_dot_product_attention_vjp(query, *repeated, d_out)
    _, d_key, d_value = attention_np.scaled_dot_product_attention_vjp(query, key, value, d_out)
    _assert_close((d_key, d_value), [x.reshape(B, S, K, N // K, H).sum(axis=3) for x in (d_key_full, d_value_full)], TOL64)


@pytest.mark.parametrize("fn", ["scaled_dot_product_attention", "dot_product_attention"])
@pytest.mark.parametrize("N_, causal", [(2, False), (4, True)])
def test_one_key_value_head_at_batch_one_eager_grad(rng, fn, N_, causal):
    """Multi-query attention (K = 1) at B = 1, differentiated by ``jax.grad`` without an
    outer jit, against the NumPy VJP. XLA's CPU backend (jax 0.10.2) returned gradients with
    100% error here (with an outer jit, or B = 2, or K = 2, they were right) until the dense
    path put its repeated key/value heads behind an optimization barrier."""
    query = rng.normal(size=(1, 64, N_, 8))
    key, value = rng.normal(size=(1, 64, 1, 8)), rng.normal(size=(1, 64, 1, 8))
    d_out = rng.normal(size=query.shape)
    jax_fn = getattr(attention_jax, fn)

    def loss(q, k, v):
        out = jax_fn(q, k, v, is_causal=causal)
        return ((out[0] if isinstance(out, tuple) else out) * d_out).sum()

    grads = jax.grad(loss, argnums=(0, 1, 2))(*(jax.numpy.asarray(x) for x in (query, key, value)))
    expected = attention_np.scaled_dot_product_attention_vjp(query, key, value, d_out, is_causal=causal)
    _assert_close(grads, expected[:3], TOL64)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_vjps_keep_the_input_dtype(rng, dtype):
    (query, key, value), _, d_out = _sdpa_inputs(rng, "plain")
    cast = lambda x: np.asarray(x).astype(jax.numpy.dtype(dtype))
    grads = attention_np.scaled_dot_product_attention_vjp(*map(cast, (query, key, value, d_out)))
    assert {str(g.dtype) for g in grads} == {dtype}
    params = jax.tree.map(cast, attention_np.init_additive_params(rng, H))
    d_params, d_hidden, d_enc = attention_np.additive_attention_vjp(params, cast(rng.normal(size=(B, H))), cast(rng.normal(size=(B, S, H))), cast(np.ones((B, 1, H))))
    assert {str(g.dtype) for g in jax.tree.leaves((d_params, d_hidden, d_enc))} == {dtype}


# --- additive attention (the tutorial's class) -----------------------------------------------------
def _additive_inputs(rng, masked):
    params = {"attn": {"kernel": rng.normal(size=(2 * H, H)) / H**0.5, "bias": rng.normal(size=(H,))}, "v": rng.normal(size=(H,))}
    kwargs = {}
    if masked:
        mask = rng.random((B, S)) < 0.6
        mask[1] = False  # batch element 1 has nothing to attend to
        mask[0, :2] = True
        kwargs["mask"] = mask
    cotangent = (rng.normal(size=(B, 1, H)), rng.normal(size=(B, S)))
    return (params, rng.normal(size=(B, H)), rng.normal(size=(B, S, H))), kwargs, cotangent


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask+fully-masked"])
@pytest.mark.parametrize("with_d_weights", [True, False], ids=["d_context+d_weights", "d_context"])
def test_additive_vjp_equals_jax_vjp_and_finite_differences(rng, masked, with_d_weights):
    args, kwargs, (d_context, d_weights) = _additive_inputs(rng, masked)
    if with_d_weights:
        fn, cotangent = (lambda *a: attention_jax.additive_attention(*a, **kwargs)), (d_context, d_weights)
    else:
        fn, cotangent = (lambda *a: attention_jax.additive_attention(*a, **kwargs)[0]), d_context
    grads = attention_np.additive_attention_vjp(*args, d_context, d_weights if with_d_weights else None, **kwargs)
    assert jax.tree.structure(grads[0]) == jax.tree.structure(args[0])  # d_params: the params' dict
    _assert_close(grads, _jax_grads(fn, args, cotangent), TOL64)
    fd = _fd(attention_np.additive_attention, args, kwargs, (0, 1, 2), cotangent if with_d_weights else (d_context,),
             outputs=None if with_d_weights else (0,))
    _assert_close(grads, fd, FD_TOLERANCE)
    if masked:
        _, d_hidden, d_enc = grads
        assert not d_hidden[1].any() and not d_enc[1].any()  # nothing attended: zero gradients
        assert not d_enc[~kwargs["mask"]].any() and d_enc[0, 0].any()


# --- multi-head attention ---------------------------------------------------------------------
def _multi_head_inputs(rng, variant):
    def dense(in_shape, out_shape):
        return {"kernel": rng.normal(size=in_shape + out_shape) / np.prod(in_shape) ** 0.5, "bias": rng.normal(size=out_shape)}

    params = {"query": dense((E,), (N, H)), "key": dense((E,), (K, H)), "value": dense((E,), (K, H)), "out": dense((N, H), (E,))}
    kwargs = {}
    if "mask" in variant:
        mask = rng.random((B, 1, T, S)) < 0.6
        mask[0, :, 1] = False  # query 1 of batch 0 sees nothing: zero output, not the output bias
        mask[1, :, :, 3] = False  # key 3 of batch 1 is padding
        kwargs["mask"] = mask
    if "causal" in variant:
        kwargs["is_causal"] = True
    inputs = (rng.normal(size=(B, T, E)), rng.normal(size=(B, S, E)), rng.normal(size=(B, S, E)))
    return (params, *inputs), kwargs, rng.normal(size=(B, T, E))


@pytest.mark.parametrize("variant", ["plain", "causal", "mask+fully-masked", "mask+causal"])
def test_multi_head_vjp_equals_jax_vjp_and_finite_differences(rng, variant):
    args, kwargs, d_out = _multi_head_inputs(rng, variant)
    grads = attention_np.multi_head_attention_vjp(*args, d_out, **kwargs)
    assert jax.tree.structure(grads[0]) == jax.tree.structure(args[0])
    expected = _jax_grads(lambda *a: attention_jax.multi_head_attention(*a, **kwargs)[0], args, d_out)
    _assert_close(grads, expected, TOL64)
    # ~3000 elements: 32 an array (all of the output bias, E=13) keep the test fast
    fd = _fd(attention_np.multi_head_attention, args, kwargs, (0, 1, 2, 3), (d_out,), outputs=(0,), samples=32)
    _assert_close_where_differenced(grads, fd, FD_TOLERANCE)
    if "mask" in variant:
        _, d_query, d_key, d_value = grads
        assert not d_query[0, 1].any() and not d_key[1, 3].any() and not d_value[1, 3].any()


def test_multi_head_vjp_self_attention_is_the_sum_of_three(rng):
    (params, x, _, _), _, d_out = _multi_head_inputs(rng, "causal")
    d_params, d_query, d_key, d_value = attention_np.multi_head_attention_vjp(params, x, x, x, d_out, is_causal=True)
    expected = _jax_grads(lambda p, x: attention_jax.multi_head_attention(p, x, is_causal=True)[0], (params, x), d_out)
    _assert_close((d_params, d_query + d_key + d_value), expected, TOL64)


# Flax's options: biases given, absent (Flax's use_bias=False) or None; normalize_qk's
# query_ln/key_ln; key/value inputs of width E_kv != E; an output width F != E
FLAX_OPTIONS = {
    "qk-norm": dict(normalize_qk=True),
    "no-bias": dict(use_bias=False),
    "none-bias+qk-norm": dict(use_bias=None, normalize_qk=True),
    "E_kv+F": dict(in_kv_features=7, out_features=5),
    "all+mask": dict(use_bias=False, normalize_qk=True, in_kv_features=7, out_features=5, mask=True),
}


def _flax_option_inputs(rng, use_bias=True, normalize_qk=False, in_kv_features=E, out_features=E, mask=False):
    params = attention_np.init_multi_head_params(rng, E, N, H, num_kv_heads=K, in_kv_features=in_kv_features,
                                                 out_features=out_features, use_bias=use_bias is True,
                                                 normalize_qk=normalize_qk, dtype=np.float64)
    params = jax.tree.map(lambda a: a + 0.5 * rng.normal(size=a.shape) if a.ndim < 3 else a, params)  # not 0, not 1
    if use_bias is None:  # a bias given as None is no bias; its gradient is None, as jax.vjp gives it
        params = {name: layer | {"bias": None} if "kernel" in layer else layer for name, layer in params.items()}
    kwargs = {}
    if mask:
        kwargs["mask"] = rng.random((B, 1, T, S)) < 0.6
        kwargs["mask"][0, :, 1] = False  # query 1 of batch 0 sees nothing
    inputs = (rng.normal(size=(B, T, E)), rng.normal(size=(B, S, in_kv_features)), rng.normal(size=(B, S, in_kv_features)))
    return (params, *inputs), kwargs, rng.normal(size=(B, T, out_features))


@pytest.mark.parametrize("options", FLAX_OPTIONS)
def test_multi_head_vjp_with_flaxs_options_equals_jax_vjp_and_finite_differences(rng, options):
    args, kwargs, d_out = _flax_option_inputs(rng, **FLAX_OPTIONS[options])
    grads = attention_np.multi_head_attention_vjp(*args, d_out, **kwargs)
    assert jax.tree.structure(grads[0]) == jax.tree.structure(args[0])  # None biases included
    expected = _jax_grads(lambda *a: attention_jax.multi_head_attention(*a, **kwargs)[0], args, d_out)
    _assert_close(grads, expected, TOL64)
    fd = _fd(attention_np.multi_head_attention, args, kwargs, (0, 1, 2, 3), (d_out,), outputs=(0,), samples=16)
    _assert_close_where_differenced(grads, fd, FD_TOLERANCE)
    if "query_ln" in args[0]:  # a layer norm removes the mean over H: no bias gradient along it
        d_params = grads[0]
        for name in ("query", "key"):
            if d_params[name].get("bias") is not None:
                np.testing.assert_allclose(d_params[name]["bias"].sum(axis=-1), 0, atol=1e-12)


# --- the registry's backward rows, through the pytest entry point ---------------------------------
# The report runs every backward row (about 130, minutes on 2 cores); the suite runs the float64
# rows of one case per hand-written VJP and of chunked_attention.
_BACKWARD = ["scaled_dot_product_attention/gqa+mask+bias+causal", "additive_attention/mask",
             "multi_head_attention/cross+gqa+mask", "chunked_attention/gqa+mask+bias+causal q2 k3"]


@pytest.mark.parametrize("case, dtype, half, direction", pytest_params(
    [REGISTRY[name] for name in _BACKWARD], dtypes=("float64",), directions=("backward",)))
def test_registered_backward_row(case, dtype, half, direction):
    assert_parity(case, dtype, half, direction)
