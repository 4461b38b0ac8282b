"""Edge cases every public function shares: empty and size-1 axes, any number of
batch axes, unusual but legal scalars, and every JAX transformation (vmap, grad, checkpoint,
eval_shape), in both halves. Expected values come from elsewhere: the fully masked result
(the project's rule for "nothing to attend to"), jax.nn, torch, Flax, or per-element calls.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax
import attention_np

from .conftest import HALVES

H, E, A, Q = 4, 6, 5, 3


def _attend_nothing(b, h, q_idx, kv_idx):  # one function object: the blocked flex path compiles once per shape
    return kv_idx < 0


def build(rng, name, B, T, S, masked=False):
    """(args, kwargs) of one call of ``name``, float64; with ``masked`` every key is masked.
    Every array and parameter set has its own generator (seeded from ``rng``), so arrays that
    do not depend on S are the same for every S."""
    seeds = iter(rng.integers(0, 2**32, size=16))

    def x(*shape):
        return np.random.default_rng(next(seeds)).normal(size=shape)

    def fresh():
        return np.random.default_rng(next(seeds))

    mask_bts = np.zeros((B, T, S), bool) if masked else None
    mask_bs = np.zeros((B, S), bool) if masked else None
    sp = attention_np.init_self_attention_params(fresh(), E, H, dtype=np.float64)
    if name in ("dot_scores", "scaled_dot_scores", "cosine_scores"):
        return (x(B, T, H), x(B, S, H)), {}
    if name == "general_scores":
        return (attention_np.init_general_params(fresh(), H, dtype=np.float64), x(B, T, H), x(B, S, H)), {}
    if name == "concat_scores":
        return (attention_np.init_concat_params(fresh(), H, A, dtype=np.float64), x(B, T, H), x(B, S, H)), {}
    if name in ("soft_attention", "hard_attention"):
        return (x(B, T, S), x(B, S, H)), {"mask": mask_bts}
    if name == "self_attention":  # S is T here
        return (sp, x(B, T, E)), {"is_causal": True, "mask": None if not masked else np.zeros((B, T, T), bool)}
    if name == "cross_attention":
        return (sp, x(B, T, E), x(B, S, E)), {"mask": mask_bts}
    if name == "multi_head_attention":
        params = attention_np.init_multi_head_params(fresh(), E, 2, H, num_kv_heads=1, dtype=np.float64)
        params["out"]["bias"] = x(E)  # so a zero output is not the bias by accident
        return (params, x(B, T, E), x(B, S, E)), {"mask": None if not masked else np.zeros((B, 1, T, S), bool)}
    if name in ("scaled_dot_product_attention", "chunked_attention", "dot_product_attention"):
        return (x(B, T, 2, H), x(B, S, 1, H), x(B, S, 1, H)), {"mask": None if not masked else np.zeros((B, 1, T, S), bool)}
    if name == "flex_attention":
        return (x(B, T, 2, H), x(B, S, 1, H), x(B, S, 1, H)), {"mask_mod": _attend_nothing if masked else None}
    if name.startswith("global_attention"):
        score = name.split("/")[1]
        params = attention_np.init_global_params(fresh(), H, score=score, source_length=1, dtype=np.float64)
        if score == "location":  # (H, S): drawn apart, so the other parameters do not depend on S
            params["score"]["kernel"] = x(H, S)
        return (params, x(B, H), x(B, S, H)), {"score": score, "mask": mask_bs}
    if name == "local_attention":
        return (attention_np.init_local_params(fresh(), H, dtype=np.float64), x(B, H), x(B, S, H)), {"window": 2, "mask": mask_bs}
    if name == "location_scores":
        return ({"kernel": x(H, S)}, x(B, H)), {}
    if name == "location_sensitive_attention":
        params = attention_np.init_location_sensitive_params(fresh(), Q, H, A, filters=2, width=3, dtype=np.float64)
        return (params, x(B, Q), x(B, S, H), np.full((B, S), 1.0)), {"mask": mask_bs}
    if name == "additive_attention":
        return (attention_np.init_additive_params(fresh(), H, dtype=np.float64), x(B, H), x(B, S, H)), {"mask": mask_bs}
    raise KeyError(name)


MECHANISMS = [
    "dot_scores", "scaled_dot_scores", "cosine_scores", "general_scores", "concat_scores", "soft_attention",
    "hard_attention", "self_attention", "cross_attention", "multi_head_attention",
    "scaled_dot_product_attention", "chunked_attention", "dot_product_attention", "flex_attention", "global_attention/dot",
    "global_attention/general", "global_attention/concat", "global_attention/location",
    "local_attention", "location_scores", "location_sensitive_attention", "additive_attention",
]
MASKED = [m for m in MECHANISMS if "scores" not in m]  # the ones with a mask
JAX_ONLY = ("chunked_attention", "dot_product_attention")
PAIRS = [(m, h) for m in MECHANISMS for h in HALVES if not (m in JAX_ONLY and h == "numpy")]


def call(half, name, args, kwargs):
    fn = getattr(HALVES[half], name.split("/")[0])
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    out = fn(*args, **kwargs)
    return tuple(np.asarray(o) for o in (out if isinstance(out, tuple) else (out,)))


def test_every_public_mechanism_is_covered():
    public = {n for n in attention_jax.__all__ if not n.startswith("init_") and "from_" not in n}
    # not attention mechanisms over (query, key) pairs, with their own tests: the seq2seq
    # model, incremental decoding, hand-written VJPs and diagnostics of given weights; position
    # encodings (test_rotary.py, test_transformer.py); the Transformer layers built on
    # multi_head_attention (test_transformer.py); ring_attention and ulysses_attention, which need
    # a device mesh (test_ring.py runs them on 2, 4 and 8 devices, zigzag_permutation their layout,
    # test_multiprocess.py on two processes); varlen_attention, packed rows with no batch
    # axis (test_varlen.py: lengths 0 and 1, no query rows, no key rows, no sequence); the paged
    # KV cache, queries against pages through a page table (test_paged.py: lengths 1 to 50,
    # queries that see no key, NaN in unread pages)
    public -= {n for n in public if "seq2seq" in n or "decode" in n or n.endswith("_vjp") or "kv_cache" in n
               or n.endswith("_step") or "diagnostics" in n or n in ("ring_attention", "ulysses_attention",
                                                                     "zigzag_permutation") or "transformer" in n
               or n in ("apply_rotary", "sinusoidal_positions", "create_block_mask", "BlockMask", "varlen_attention",
                        "paged_attention", "paged_kv_write")}
    assert public <= {m.split("/")[0] for m in MECHANISMS}


# --- zero lengths -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, half", PAIRS)
def test_zero_source_length_is_nothing_to_attend_to(name, half, rng):
    # S = 0: the result of a query whose every key is masked (zeros, or for Luong's
    # attentional state tanh(W_c [0; h])), with the size-0 axis where S was
    if name == "self_attention":
        pytest.skip("self-attention has S = T; T = 0 is tested below")
    args, kwargs = build(np.random.default_rng(1), name, 2, 3, 0)
    out = call(half, name, args, kwargs)
    for o in out:
        assert np.all(np.isfinite(o))
    if name in MASKED:
        masked = call(half, name, *build(np.random.default_rng(1), name, 2, 3, 1, masked=True))
        for o, m in zip(out, masked):
            if m.size and np.all(m == 0):
                assert o.size == 0 or np.all(o == 0)
            elif m.shape == o.shape:  # Luong: tanh(W_c [0; h]), the same with no key as with none attended
                np.testing.assert_allclose(o, m, rtol=1e-12, atol=1e-12)
    else:
        assert all(o.size == 0 for o in out)


@pytest.mark.parametrize("axis", ["B", "T"])
@pytest.mark.parametrize("name, half", PAIRS)
def test_zero_batch_or_query_length_gives_empty_outputs(name, half, axis, rng):
    sizes = {"B": 2, "T": 3, "S": 5, axis: 0}
    if sizes["T"] == 0 and name in ("global_attention/dot", "global_attention/general", "global_attention/concat",
                                    "global_attention/location", "local_attention", "location_scores",
                                    "location_sensitive_attention", "additive_attention"):
        pytest.skip("one decoder state per batch element: no T axis")
    out = call(half, name, *build(rng, name, sizes["B"], sizes["T"], sizes["S"]))
    one = call(half, name, *build(rng, name, 1 if axis == "B" else 2, 1 if axis == "T" else 3, 5))
    assert all(o.size == 0 for o in out)
    assert [o.ndim for o in out] == [o.ndim for o in one]


@pytest.mark.parametrize("name, half", PAIRS)
def test_size_one_axes_match_the_numpy_reference(name, half, rng):
    args, kwargs = build(rng, name, 1, 1, 1)
    reference = "scaled_dot_product_attention" if name in JAX_ONLY else name
    expected = call("numpy", reference, args, kwargs)
    for o, e in zip(call(half, name, args, kwargs), expected):
        np.testing.assert_allclose(o, e, rtol=1e-12, atol=1e-12)


# --- JAX transformations -------------------------------------------------------------------------
def _jax_fn(name, args, kwargs):
    """The mechanism as a function of its float array arguments (params and options closed over)."""
    fn = getattr(attention_jax, name.split("/")[0])
    arrays = [i for i, a in enumerate(args) if isinstance(a, np.ndarray)]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}

    def f(*xs):
        full = list(args)
        for i, x in zip(arrays, xs):
            full[i] = x
        out = fn(*full, **kwargs)
        return out if isinstance(out, tuple) else (out,)

    return f, [jnp.asarray(args[i]) for i in arrays]


@pytest.mark.parametrize("name", MECHANISMS)
def test_vmap_over_an_extra_axis_equals_a_loop(name):
    calls = [build(np.random.default_rng(seed), name, 2, 3, 5) for seed in range(2)]
    f, xs0 = _jax_fn(name, *calls[0])
    _, xs1 = _jax_fn(name, *calls[1])
    f0 = lambda *xs: f(*xs)  # noqa: E731  (params and options from call 0 for both)
    stacked = jax.vmap(f0)(*[jnp.stack([a, b]) for a, b in zip(xs0, xs1)])
    for i, xs in enumerate((xs0, xs1)):
        for s, o in zip(stacked, f0(*xs)):
            np.testing.assert_allclose(s[i], o, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", MECHANISMS)
def test_eval_shape_checkpoint_and_grad_agree_with_the_plain_call(name, rng):
    f, xs = _jax_fn(name, *build(rng, name, 2, 3, 5))
    out = f(*xs)
    shapes = jax.eval_shape(f, *xs)
    assert [(s.shape, s.dtype) for s in shapes] == [(o.shape, o.dtype) for o in out]

    def loss(*xs):
        return sum(jnp.sum(jnp.sin(o.astype(jnp.float64))) for o in f(*xs))

    argnums = tuple(range(len(xs)))
    plain = jax.grad(loss, argnums)(*xs)
    remat = jax.jit(jax.grad(jax.checkpoint(loss), argnums))(*xs)
    jitted = jax.jit(jax.grad(loss, argnums))(*xs)
    for p, r, j in zip(plain, remat, jitted):
        assert np.all(np.isfinite(p))
        np.testing.assert_allclose(r, p, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(j, p, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", [m for m in MECHANISMS if m not in ("chunked_attention", "flex_attention")])
def test_forward_mode_equals_reverse_mode(name, rng):
    # jax.jacfwd (forward mode) against jax.jacrev on every dense mechanism
    f, xs = _jax_fn(name, *build(rng, name, 1, 2, 3))
    first = lambda x: f(x, *xs[1:])[0]  # noqa: E731
    both = jax.jit(lambda x: (jax.jacfwd(first)(x), jax.jacrev(first)(x)))  # one program
    np.testing.assert_allclose(*both(xs[0]), rtol=1e-12, atol=1e-12)


def test_forward_mode_through_flex_attention_names_the_alternative(rng):
    (q, k, v), _ = build(rng, "flex_attention", 1, 2, 3)
    with pytest.raises(TypeError, match="does not support forward-mode autodiff .* Use attention_jax.flex.flex_attention"):
        jax.jvp(lambda q: attention_jax.flex_attention(q, k, v), (q,), (q,))
    dense = lambda q: attention_jax.flex.flex_attention(q, k, v)  # noqa: E731
    blocked = lambda q: attention_jax.flex_attention(q, k, v)  # noqa: E731
    np.testing.assert_allclose(jax.jacfwd(dense)(q), jax.jacrev(blocked)(q), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("transform", ["jvp", "jacfwd"])
def test_forward_mode_through_chunked_attention_names_the_alternative(transform, rng):
    (q, k, v), _ = build(rng, "chunked_attention", 1, 2, 3)
    f = lambda q: attention_jax.chunked_attention(q, k, v)  # noqa: E731
    with pytest.raises(TypeError, match="does not support forward-mode autodiff .* Use scaled_dot_product_attention"):
        jax.jvp(f, (q,), (q,)) if transform == "jvp" else jax.jacfwd(f)(q)
    # the alternative it names gives the forward-mode derivative, equal to chunked's reverse mode
    dense = lambda q: attention_jax.scaled_dot_product_attention(q, k, v)[0]  # noqa: E731
    np.testing.assert_allclose(jax.jacfwd(dense)(q), jax.jacrev(f)(q), rtol=1e-12, atol=1e-12)


# --- batch axes (B...) -------------------------------------------------------------------------------
@pytest.mark.parametrize("lead", [(), (2, 3), (1, 2, 1)], ids=["none", "two", "three"])
@pytest.mark.parametrize("name, half", [("scaled_dot_product_attention", h) for h in HALVES] + [("chunked_attention", "jax")])
def test_any_number_of_batch_axes_equals_one_call_per_element(name, half, lead, rng):
    T, S, N, K = 3, 5, 4, 2
    q, k, v = rng.normal(size=lead + (T, N, H)), rng.normal(size=lead + (S, K, H)), rng.normal(size=lead + (S, K, H))
    mask = rng.random(lead[1:] + (1, T, S)) < 0.7   # broadcast over the first batch axis and the heads
    bias = rng.normal(size=(N, T, S))
    kwargs = {"mask": mask, "bias": bias, "is_causal": True}
    out = call(half, name, (q, k, v), kwargs)
    assert out[0].shape == lead + (T, N, H)
    m = np.broadcast_to(mask, lead + (1, T, S))
    for index in np.ndindex(*lead):
        one = call("numpy", "scaled_dot_product_attention", (q[index][None], k[index][None], v[index][None]),
                   {**kwargs, "mask": m[index][None]})
        np.testing.assert_allclose(out[0][index], one[0][0], rtol=1e-12, atol=1e-12)
        if len(out) > 1:
            np.testing.assert_allclose(out[1][index], one[1][0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("half", HALVES)
def test_unbatched_inputs_match_jax_nn(half, rng):
    q, k, v = (rng.normal(size=s).astype(np.float32) for s in ((3, 4, H), (5, 2, H), (5, 2, H)))
    with jax.default_matmul_precision("highest"):
        expected = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        out, weights = HALVES[half].scaled_dot_product_attention(q, k, v, is_causal=True)
    assert weights.shape == (4, 3, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("half", HALVES)
def test_multi_head_batch_axes_match_flax(half, rng):
    from flax import nnx

    module = nnx.MultiHeadAttention(num_heads=2, in_features=E, qkv_features=2 * H, decode=False, rngs=nnx.Rngs(0))
    params = jax.tree.map(np.asarray, attention_jax.multi_head_params_from_flax(module))
    x, y = rng.normal(size=(2, 3, 4, E)).astype(np.float32), rng.normal(size=(2, 3, 5, E)).astype(np.float32)
    mask = rng.random((3, 1, 4, 5)) < 0.7
    mask[..., 0] = True  # Flax gives the mean for fully masked queries, we give zeros: avoid them
    with jax.default_matmul_precision("highest"):
        expected = module(x, y, mask=np.broadcast_to(mask, (2, 3, 1, 4, 5)))  # Flax: every batch axis given
        out, weights = HALVES[half].multi_head_attention(params, x, y, mask=mask)
    assert weights.shape == (2, 3, 2, 4, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# --- scale: any finite number ----------------------------------------------------------------------
@pytest.mark.parametrize("scale", [-0.7, 0.0, 3])
@pytest.mark.parametrize("name, half", [("scaled_dot_product_attention", h) for h in HALVES] + [("chunked_attention", "jax")])
def test_negative_zero_and_int_scales_match_jax_nn_and_torch(name, half, scale, rng):
    torch = pytest.importorskip("torch")
    q, k, v = (rng.normal(size=s).astype(np.float32) for s in ((2, 3, 4, H), (2, 5, 2, H), (2, 5, 2, H)))
    with jax.default_matmul_precision("highest"):
        out = call(half, name, (q, k, v), {"scale": scale})[0]
        expected = jax.nn.dot_product_attention(q, k, v, scale=scale)
    t = lambda x: torch.from_numpy(np.ascontiguousarray(np.swapaxes(x, 1, 2)))  # noqa: E731
    theirs = torch.nn.functional.scaled_dot_product_attention(t(q), t(k), t(v), scale=float(scale), enable_gqa=True)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, np.swapaxes(theirs.numpy(), 1, 2), rtol=1e-5, atol=1e-5)
    if scale == 0:  # every logit is 0: uniform weights, the mean of the values (closed form)
        np.testing.assert_allclose(out, np.repeat(v.mean(1, keepdims=True), 2, axis=2).repeat(3, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("half", HALVES)
def test_numpy_scalar_scale_keeps_the_input_dtype(half, rng):
    q = rng.normal(size=(2, 3, 2, H)).astype(np.float32)
    out, weights = HALVES[half].scaled_dot_product_attention(q, q, q, scale=np.float64(0.5))
    assert out.dtype == np.float32 and weights.dtype == np.float32
    scores = HALVES[half].scaled_dot_scores(q[:, :, 0], q[:, :, 0], scale=np.float64(-0.5))
    assert scores.dtype == np.float32
