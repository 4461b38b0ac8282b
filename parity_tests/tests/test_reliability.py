"""Masking policy and extreme values, for every mechanism with a mask, in both halves.

docs/design.md section 4: a query with every key masked gets zero weights, a zero output (the
attention's context) and zero, finite gradients; masked (padding) positions holding NaN
or inf change nothing; logits of +-1e4 and inputs of 1e3 stay finite.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax
import attention_np
from parity_tests.harness import to_jax

from .conftest import HALVES, B, H, S, T

E, A, Q = 13, 7, 6


def padding(s=S):
    """Batch element 0 has its last positions padded; batch element 1 is entirely masked."""
    mask = np.ones((B, s), bool)
    mask[0, s - 2 :] = False
    mask[1] = False
    return mask


@dataclasses.dataclass
class Mechanism:
    name: str
    build: callable          # rng -> (args, kwargs), float64, with a padding mask
    source_args: tuple = ()  # args indexed by source position on axis 1: poisoned where padded
    zero_outputs: tuple = (0, 1)  # outputs that are zero for the fully masked batch element 1


def _mh_params(rng, n=6, k=3):
    return attention_np.init_multi_head_params(rng, E, n, H, num_kv_heads=k, dtype=np.float64)


MECHANISMS = [
    Mechanism("scaled_dot_product_attention", lambda rng: (
        (rng.normal(size=(B, T, 6, H)), rng.normal(size=(B, S, 3, H)), rng.normal(size=(B, S, 3, H))),
        {"mask": padding()[:, None, None, :], "bias": rng.normal(size=(B, 6, T, S))}), source_args=(1, 2)),
    # JAX only: blocks of 2 x 2 so padding, ragged chunks and skipped blocks are all exercised;
    # an output per (batch, query, head) and no weights
    Mechanism("chunked_attention", lambda rng: (
        (rng.normal(size=(B, T, 6, H)), rng.normal(size=(B, S, 3, H)), rng.normal(size=(B, S, 3, H))),
        {"mask": padding()[:, None, None, :], "bias": rng.normal(size=(B, 6, T, S)), "is_causal": True,
         "block_sizes": (2, 2)}), source_args=(1, 2), zero_outputs=(0,)),
    Mechanism("chunked_attention/no mask, causal", lambda rng: (
        (rng.normal(size=(B, T, 6, H)), rng.normal(size=(B, S, 3, H)), rng.normal(size=(B, S, 3, H))),
        {"is_causal": True, "block_sizes": (2, 2)}), source_args=(1, 2), zero_outputs=()),
    Mechanism("additive_attention", lambda rng: (
        (attention_np.init_additive_params(rng, H, dtype=np.float64), rng.normal(size=(B, H)), rng.normal(size=(B, S, H))),
        {"mask": padding()}), source_args=(2,)),
    Mechanism("soft_attention", lambda rng: ((rng.normal(size=(B, T, S)), rng.normal(size=(B, S, H))), {"mask": padding()[:, None]}), source_args=(1,)),
    Mechanism("hard_attention", lambda rng: ((rng.normal(size=(B, T, S)), rng.normal(size=(B, S, H))), {"mask": padding()[:, None]}), source_args=(1,)),
    Mechanism("self_attention", lambda rng: (
        (attention_np.init_self_attention_params(rng, E, H, dtype=np.float64), rng.normal(size=(B, T, E))),
        {"mask": padding(T)[:, None], "is_causal": True})),
    Mechanism("cross_attention", lambda rng: (
        (attention_np.init_cross_attention_params(rng, E, H, dtype=np.float64), rng.normal(size=(B, T, E)), rng.normal(size=(B, S, E))),
        {"mask": padding()[:, None]}), source_args=(2,)),
    Mechanism("multi_head_attention", lambda rng: (
        (_mh_params(rng), rng.normal(size=(B, T, E)), rng.normal(size=(B, S, E))), {"mask": padding()[:, None, None]}), source_args=(2,)),
    *[
        Mechanism(f"global_attention/{score}", lambda rng, score=score: (
            (attention_np.init_global_params(rng, H, score=score, source_length=S, dtype=np.float64), rng.normal(size=(B, H)), rng.normal(size=(B, S, H))),
            {"mask": padding(), "score": score}), source_args=(2,), zero_outputs=(1,))
        for score in ("dot", "general", "concat", "location")
    ],
    Mechanism("local_attention", lambda rng: (
        (attention_np.init_local_params(rng, H, score="concat", dtype=np.float64), rng.normal(size=(B, H)), rng.normal(size=(B, S, H))),
        {"mask": padding(), "score": "concat", "window": 2}), source_args=(2,), zero_outputs=(1,)),
    Mechanism("location_sensitive_attention", lambda rng: (
        (attention_np.init_location_sensitive_params(rng, Q, H, A, filters=4, width=3, dtype=np.float64),
         rng.normal(size=(B, Q)), rng.normal(size=(B, S, H)), np.full((B, S), 1 / S)),
        {"mask": padding()}), source_args=(2,)),
]
IDS = [m.name for m in MECHANISMS]


def poison_padding(x, mechanism, poison):
    """A copy of ``x`` (source positions on axis 1) with ``poison`` where no query may look:
    the masked padding, or with a causal mask and no other the keys past the last query."""
    x = x.copy()
    if "no mask, causal" in mechanism.name:
        x[:, T:] = poison  # S > T: query T - 1 sees keys 0..T-1 only
    else:
        x[~padding()] = poison
    return x


def fn(half, mechanism):
    name = mechanism.name.split("/")[0]
    if not hasattr(HALVES[half], name):
        pytest.skip(f"{name} is JAX only")
    function = getattr(HALVES[half], name)
    if name == "chunked_attention":  # one output, no weights: as a 1-tuple like the others' (out, weights)
        return lambda *args, **kwargs: (function(*args, **kwargs),)
    return function


WITH_MASKED_ROWS = [m for m in MECHANISMS if m.zero_outputs]


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("mechanism", WITH_MASKED_ROWS, ids=[m.name for m in WITH_MASKED_ROWS])
def test_fully_masked_rows_give_zeros(mechanism, half, rng, jit):
    args, kwargs = mechanism.build(rng)
    outputs = fn(half, mechanism)(*args, **kwargs)
    for i in mechanism.zero_outputs:
        assert np.all(np.asarray(outputs[i])[1] == 0), f"output {i} of the fully masked batch element is not zero"
    for out in outputs:
        assert np.all(np.isfinite(np.asarray(out)))


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("mechanism", [m for m in MECHANISMS if m.source_args], ids=[m.name for m in MECHANISMS if m.source_args])
@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_masked_positions_holding_nan_or_inf_change_nothing(mechanism, half, poison, rng, jit):
    args, kwargs = mechanism.build(rng)
    clean = fn(half, mechanism)(*args, **kwargs)
    args = list(args)
    for i in mechanism.source_args:
        args[i] = poison_padding(args[i], mechanism, poison)
    poisoned = fn(half, mechanism)(*args, **kwargs)
    for a, b in zip(clean, poisoned):
        np.testing.assert_array_equal(a, b)


def _float_leaves_grad(mechanism, rng, loss_of_outputs):
    args, kwargs = mechanism.build(rng)
    function = fn("jax", mechanism)
    args = to_jax(args)
    kwargs = to_jax(kwargs)
    return jax.jit(jax.grad(lambda a: loss_of_outputs(function(*a, **kwargs))))(args)  # one program


@pytest.mark.parametrize("mechanism", WITH_MASKED_ROWS, ids=[m.name for m in WITH_MASKED_ROWS])
def test_fully_masked_rows_have_zero_finite_gradients(mechanism, rng, jit):
    # d(fully masked outputs) / d(every input, parameters included) is exactly zero
    def loss(outputs):
        return sum(jnp.sum(jnp.sin(outputs[i][1])) for i in mechanism.zero_outputs)

    for g in jax.tree.leaves(_float_leaves_grad(mechanism, rng, loss)):
        assert np.all(np.asarray(g) == 0)


@pytest.mark.parametrize("mechanism", [m for m in MECHANISMS if m.source_args], ids=[m.name for m in MECHANISMS if m.source_args])
def test_gradients_stay_finite_with_nan_padding(mechanism, rng, jit):
    args, kwargs = mechanism.build(rng)
    args = list(args)
    for i in mechanism.source_args:
        args[i] = poison_padding(args[i], mechanism, np.nan)
    poisoned = dataclasses.replace(mechanism, build=lambda _: (tuple(args), kwargs))
    grads = _float_leaves_grad(poisoned, rng, lambda outputs: sum(jnp.sum(jnp.sin(o)) for o in outputs))
    for g in jax.tree.leaves(grads):
        assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("mechanism", MECHANISMS, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_inputs_of_1e3_stay_finite(mechanism, half, dtype, rng):
    args, kwargs = mechanism.build(rng)
    # the data (not the parameters) at magnitude 1e3; parameters keep their scale, cast to dtype
    args = tuple(
        jax.tree.map(lambda x: x.astype(dtype), a) if isinstance(a, dict) else (np.sign(a) * 1e3).astype(dtype)
        for a in args
    )
    kwargs = {k: (v * 1e3).astype(dtype) if k == "bias" else v for k, v in kwargs.items()}
    for out in fn(half, mechanism)(*args, **kwargs):
        assert np.all(np.isfinite(np.asarray(out).astype(np.float32)))


@pytest.mark.parametrize("half", HALVES)
def test_logits_of_1e4_are_one_hot_and_finite(half, rng, jit):
    lib = HALVES[half]
    scores = np.where(np.eye(T, S, dtype=bool)[None], 1e4, -1e4).repeat(B, 0).astype(np.float32)
    values = rng.normal(size=(B, S, H)).astype(np.float32)
    for context, weights in (lib.soft_attention(scores, values), lib.hard_attention(scores, values)):
        np.testing.assert_array_equal(weights, np.broadcast_to(np.eye(T, S), (B, T, S)))
        np.testing.assert_array_equal(context, values[:, :T])
    q = rng.normal(size=(B, T, 2, H)).astype(np.float32)
    bias = np.where(np.eye(T, S, dtype=bool), 1e4, -1e4).astype(np.float32)
    out, weights = lib.scaled_dot_product_attention(q, q[:, :1].repeat(S // 1, 1)[:, :S], q[:, :1].repeat(S, 1), bias=bias)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(weights))


SDPA_PATHS = {
    "numpy": lambda q, k, v, c: attention_np.scaled_dot_product_attention(q, k, v, is_causal=c)[0],
    "jax mirror": lambda q, k, v, c: attention_jax.scaled_dot_product_attention(q, k, v, is_causal=c)[0],
    "dense (tuned)": lambda q, k, v, c: attention_jax.dot_product_attention(q, k, v, is_causal=c, implementation="dense"),
    "chunked": lambda q, k, v, c: attention_jax.chunked_attention(q, k, v, is_causal=c),
    "chunked, blocks of 2": lambda q, k, v, c: attention_jax.chunked_attention(
        q, k, v, is_causal=c, block_sizes=(2, 2)),
}


@pytest.mark.parametrize("path", SDPA_PATHS)
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_nan_in_an_attended_key_reaches_the_queries_that_attend_it(path, is_causal, rng):
    # design section 4: NaN/inf in the inputs propagate to the outputs they touch, nothing
    # is silently cleaned
    q, k, v = (rng.standard_normal((2, 6, 2, 4)).astype(np.float32) for _ in range(3))
    s = 3
    k[:, s] = np.nan
    out = np.asarray(SDPA_PATHS[path](q, k, v, is_causal))
    touched = slice(s, None) if is_causal else slice(None)
    assert np.all(np.isnan(out[:, touched])), "a query attending the poisoned key must give NaN"
    if is_causal and path != "dense (tuned)":  # see attention_jax.fast._fused.replace_masked
        assert np.all(np.isfinite(out[:, :s])), "queries before the poisoned key never see it"
