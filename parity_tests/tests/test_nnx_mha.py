"""attention_jax.nnx.MultiHeadAttention against flax.nnx.MultiHeadAttention: the same
parameter tree, Flax's weights loaded with nnx.update give Flax's outputs (1e-5, float32)
in prefill and decode, sow_weights sows the same weights; and what it adds (bias, windows,
implementation, zeros for fully masked queries, positional dropout). Also the functional
multi_head_attention of both halves with a Flax module's params (multi_head_params_from_flax
or Flax's own dict) over every combination of use_bias, normalize_qk, out_features,
in_kv_features, qkv_features and num_kv_heads: Flax's outputs and gradients, NumPy = JAX."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention_jax
import attention_np
from attention_jax.nnx import MultiHeadAttention

from .conftest import HALVES, highest

B, T, S, E, E_KV = 2, 5, 7, 10, 9
TOL = dict(rtol=1e-5, atol=1e-5)


def _pair(seed_flax=0, seed_ours=1, **kwargs):
    """A Flax module and ours (initialised differently), with Flax's weights loaded into ours."""
    theirs = nnx.MultiHeadAttention(**kwargs, decode=False, rngs=nnx.Rngs(seed_flax))
    ours = MultiHeadAttention(**kwargs, decode=False, rngs=nnx.Rngs(seed_ours))
    nnx.update(ours, nnx.state(theirs, nnx.Param))
    return theirs, ours


def _inputs(cross, seed=0):
    r = np.random.default_rng(seed)
    x = r.normal(size=(B, T, E)).astype(np.float32)
    context = r.normal(size=(B, S, E_KV)).astype(np.float32) if cross else None
    return x, context


def _mask(kind, n_heads, t, s, seed=0):
    """A mask with at least one key per query (Flax gives the mean elsewhere)."""
    r = np.random.default_rng(seed)
    if kind == "padding":  # (B, 1, 1, S): row 1 sees its first 3 keys
        mask = np.ones((B, 1, 1, s), bool)
        mask[1, ..., 3:] = False
        return mask
    mask = r.random((B, n_heads, t, s)) < 0.5  # per head, per query
    mask[..., 0] = True
    return mask


CONFIGS = {
    "plain": dict(num_heads=2, in_features=E),
    "no-bias": dict(num_heads=2, in_features=E, use_bias=False),
    "qk-norm": dict(num_heads=2, in_features=E, qkv_features=12, normalize_qk=True),
    "out-features": dict(num_heads=3, in_features=E, qkv_features=9, out_features=7),
    "gqa": dict(num_heads=6, in_features=E, qkv_features=12, num_kv_heads=3),
    "cross": dict(num_heads=4, in_features=E, qkv_features=8, in_kv_features=E_KV, out_features=11),
    "all": dict(num_heads=6, in_features=E, qkv_features=18, out_features=7, num_kv_heads=2,
                in_kv_features=E_KV, use_bias=False, normalize_qk=True),
}


def test_the_parameter_tree_and_the_initialisation_are_flaxs():
    kwargs = CONFIGS["all"] | {"use_bias": True}
    theirs = nnx.MultiHeadAttention(**kwargs, rngs=nnx.Rngs(0))
    ours = MultiHeadAttention(**kwargs, rngs=nnx.Rngs(0))
    a, b = nnx.to_pure_dict(nnx.state(theirs, nnx.Param)), nnx.to_pure_dict(nnx.state(ours, nnx.Param))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert set(a) == {"query", "key", "value", "out", "query_ln", "key_ln"}
    jax.tree.map(np.testing.assert_array_equal, a, b)  # same rngs, same order: the same weights


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("mask_kind", [None, "padding", "per-head"])
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_flax_weights_give_flax_outputs(config, mask_kind, is_causal):
    kwargs = CONFIGS[config]
    cross = "in_kv_features" in kwargs
    theirs, ours = _pair(**kwargs)
    x, context = _inputs(cross)
    s = S if cross else T
    mask = None if mask_kind is None else _mask(mask_kind, kwargs["num_heads"], T, s)
    with highest():
        expected = theirs(x, context, mask=None if mask is None else jnp.asarray(mask), is_causal=is_causal)
        actual = ours(x, context, mask=mask, is_causal=is_causal)
    assert actual.shape == (B, T, kwargs.get("out_features", E))
    np.testing.assert_allclose(actual, expected, **TOL)


@pytest.mark.parametrize("implementation", [None, "dense", "chunked"])
def test_every_implementation_gives_flaxs_outputs(implementation):
    theirs, ours = _pair(**CONFIGS["gqa"])
    x, _ = _inputs(False)
    with highest():
        expected = theirs(x, is_causal=True)
        actual = ours(x, is_causal=True, implementation=implementation)
    np.testing.assert_allclose(actual, expected, **TOL)


def test_sow_weights_sows_flaxs_weights():
    theirs, ours = _pair(**CONFIGS["gqa"])
    x, _ = _inputs(False)
    mask = _mask("per-head", 6, T, T)
    with highest():
        theirs(x, mask=jnp.asarray(mask), sow_weights=True)
        ours(x, mask=mask, sow_weights=True)
    (expected,) = nnx.state(theirs, nnx.Intermediate)["attention_weights"].get_value()
    (actual,) = nnx.state(ours, nnx.Intermediate)["attention_weights"].get_value()
    assert actual.shape == (B, 6, T, T)
    np.testing.assert_allclose(actual, expected, **TOL)
    np.testing.assert_array_equal(np.asarray(actual)[~np.broadcast_to(mask, actual.shape)], 0)


@pytest.mark.parametrize("config", ["plain", "gqa", "all"])
def test_decode_steps_equal_flaxs_decode_and_the_causal_full_pass(config):
    kwargs = {k: v for k, v in CONFIGS[config].items() if k != "in_kv_features"}
    theirs, ours = _pair(**kwargs)
    x, _ = _inputs(False)
    with highest():
        full = ours(x, is_causal=True)
        theirs.init_cache(x.shape)
        ours.init_cache(x.shape)
        for t in range(T):
            expected = theirs(x[:, t : t + 1], decode=True)
            actual = ours(x[:, t : t + 1], decode=True)
            np.testing.assert_allclose(actual, expected, **TOL)
            np.testing.assert_allclose(actual[:, 0], full[:, t], **TOL)
    np.testing.assert_allclose(nnx.state(ours, nnx.Cache)["cached_key"][...],
                               nnx.state(theirs, nnx.Cache)["cached_key"][...], **TOL)
    assert (ours.cache_index[...] == T).all()  # one position per batch row


def test_decode_prefill_then_steps_and_overflow():
    theirs, ours = _pair(**CONFIGS["gqa"])
    x, _ = _inputs(False)
    with highest():
        full = ours(x, is_causal=True)
        ours.init_cache(x.shape)
        np.testing.assert_allclose(ours(x[:, :3], decode=True), full[:, :3], **TOL)  # 3 tokens at once
        np.testing.assert_allclose(ours(x[:, 3:], decode=True), full[:, 3:], **TOL)
    with pytest.raises(ValueError, match="the decode cache holds 5 positions; 5 are used and 1 more do not fit"):
        ours(x[:, :1], decode=True)
    fresh = MultiHeadAttention(**CONFIGS["gqa"], decode=False, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="Autoregressive cache not initialized"):
        fresh(x[:, :1], decode=True)


def test_decode_under_nnx_jit_equals_flax():
    theirs, ours = _pair(**CONFIGS["plain"])
    x, _ = _inputs(False)

    @nnx.jit
    def step(module, token):
        return module(token, decode=True)

    with highest():
        theirs.init_cache(x.shape)
        ours.init_cache(x.shape)
        for t in range(T):
            np.testing.assert_allclose(step(ours, x[:, t : t + 1]), step(theirs, x[:, t : t + 1]), **TOL)


def test_a_fully_masked_query_gets_a_zero_row():
    theirs, ours = _pair(**CONFIGS["gqa"])
    x, _ = _inputs(False)
    mask = np.ones((B, 1, T, T), bool)
    mask[0, :, 2] = False  # query 2 of row 0 sees nothing, in every head
    with highest():
        actual = np.asarray(ours(x, mask=mask))
        expected = np.asarray(theirs(x, mask=jnp.asarray(mask)))
    np.testing.assert_array_equal(actual[0, 2], 0)
    assert np.abs(expected[0, 2]).max() > 1e-3  # Flax: the mean of the values, projected
    keep = np.ones((B, T), bool)
    keep[0, 2] = False
    np.testing.assert_allclose(actual[keep], expected[keep], **TOL)


def test_a_float_mask_is_refused_and_flax_boolean_masks_equal_flax():
    # Flax reads a float mask as nonzero = attend, PyTorch as an additive 0 / -inf bias: the
    # module, like every function, refuses to guess
    theirs, ours = _pair(**CONFIGS["plain"])
    x, _ = _inputs(False)
    float_mask = nnx.make_causal_mask(jnp.ones((B, T)))                    # float32, Flax's default
    pytorch_mask = jnp.where(float_mask > 0, 0.0, -jnp.inf)
    for mask in (float_mask, pytorch_mask):
        with pytest.raises(TypeError, match=r"mask must have a boolean dtype.*pass them as bias.*dtype=bool; got float"):
            ours(x, mask=mask)
    mask = nnx.make_causal_mask(jnp.ones((B, T)), dtype=jnp.bool_)
    with highest():
        np.testing.assert_allclose(ours(x, mask=mask), theirs(x, mask=mask), **TOL)


@pytest.mark.parametrize("implementation", ["dense", "chunked"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_lengths_in_the_call_equal_flax_with_the_padding_mask(implementation, is_causal):
    # Flax takes no lengths: its module gets the (B, 1, T, S) padding mask written out here
    theirs, ours = _pair(**CONFIGS["gqa"])
    x, _ = _inputs(False)
    q_len, kv_len = np.array([3, 2]), np.array([4, 0])                      # row 1 sees no key
    mask = (np.arange(T)[None, :, None] < q_len[:, None, None]) & (np.arange(T)[None, None, :] < kv_len[:, None, None])
    if is_causal:
        mask &= np.tril(np.ones((T, T), bool))
    with highest():
        actual = np.asarray(ours(x, query_seq_lengths=q_len, key_value_seq_lengths=kv_len,
                                 is_causal=is_causal, implementation=implementation))
        expected = np.asarray(theirs(x, mask=jnp.asarray(mask[:, None])))
    live = mask.any(-1)                                                     # (B, T): queries that see a key
    np.testing.assert_allclose(actual[live], expected[live], **TOL)
    np.testing.assert_array_equal(actual[~live], 0)                         # Flax: the mean of the values
    assert (~live).sum() == T + 2                                           # the check above checks something


def test_key_lengths_are_refused_while_decoding():
    module = MultiHeadAttention(num_heads=2, in_features=E, decode=True, rngs=nnx.Rngs(0))
    module.init_cache((B, T, E))
    with pytest.raises(ValueError, match="key_value_seq_lengths is not supported with decode"):
        module(jnp.ones((B, 1, E)), key_value_seq_lengths=jnp.array([1, 1]))


def test_bias_and_window_equal_flax_with_the_same_bias_and_window_mask():
    kwargs = CONFIGS["gqa"]
    slopes = 2.0 ** -np.arange(1, 7)                                     # ALiBi, one slope per head
    distance = np.arange(T)[None, :] - np.arange(T)[:, None]             # s - t
    alibi = (slopes[:, None, None] * -np.abs(distance)).astype(np.float32)[None]  # (1, N, T, T)
    window = np.abs(distance) <= 1
    attention_fn = functools.partial(nnx.dot_product_attention, bias=jnp.asarray(alibi))
    theirs = nnx.MultiHeadAttention(**kwargs, attention_fn=attention_fn, decode=False, rngs=nnx.Rngs(0))
    ours = MultiHeadAttention(**kwargs, decode=False, rngs=nnx.Rngs(1))
    nnx.update(ours, nnx.state(theirs, nnx.Param))
    x, _ = _inputs(False)
    with highest():
        expected = theirs(x, mask=jnp.asarray(window)[None, None])
        for implementation in ("dense", "chunked"):
            actual = ours(x, bias=alibi, local_window_size=1, implementation=implementation)
            np.testing.assert_allclose(actual, expected, **TOL)


@pytest.mark.parametrize("broadcast_dropout", [False, True])
def test_deterministic_dropout_is_flaxs_and_training_dropout_is_the_functional_mask(broadcast_dropout):
    kwargs = CONFIGS["gqa"] | {"dropout_rate": 0.25, "broadcast_dropout": broadcast_dropout}
    theirs, ours = _pair(**kwargs)
    x, _ = _inputs(False)
    with highest():
        np.testing.assert_allclose(ours(x, deterministic=True), theirs(x, deterministic=True), **TOL)
        trained = ours(x, deterministic=False, rngs=nnx.Rngs(dropout=5))
        # the same computation by hand: projections, then the functional core with the same key
        q = jnp.einsum("BTE,ENH->BTNH", x, ours.query.kernel[...]) + ours.query.bias[...]
        k = jnp.einsum("BTE,EKH->BTKH", x, ours.key.kernel[...]) + ours.key.bias[...]
        v = jnp.einsum("BTE,EKH->BTKH", x, ours.value.kernel[...]) + ours.value.bias[...]
        heads = attention_jax.dot_product_attention(q, k, v, dropout_rate=0.25, dropout_rng=nnx.Rngs(dropout=5).dropout(),
                                                    broadcast_dropout=broadcast_dropout)
        expected = jnp.einsum("BTNH,NHE->BTE", heads, ours.out.kernel[...]) + ours.out.bias[...]
    np.testing.assert_allclose(trained, expected, **TOL)
    assert np.abs(np.asarray(trained) - np.asarray(ours(x, deterministic=True))).max() > 1e-3
    with pytest.raises(ValueError, match="No `deterministic` argument"):
        MultiHeadAttention(**kwargs, decode=False, rngs=nnx.Rngs(0))(x)


@pytest.mark.parametrize("half", ["numpy", "jax"])
def test_multi_head_attention_takes_the_modules_lengths_and_dropout(half):
    # the function with the module's params, lengths and dropout key is the module, in both halves
    import attention_np

    kwargs = CONFIGS["gqa"] | {"dropout_rate": 0.25}
    _, ours = _pair(**kwargs)
    x, _ = _inputs(False)
    lengths = dict(query_seq_lengths=np.array([2, T]), key_value_seq_lengths=np.array([T, 3]))
    with highest():
        expected = ours(x, deterministic=False, rngs=nnx.Rngs(dropout=5), **lengths)
        params = attention_jax.multi_head_params_from_flax(ours)
        key = nnx.Rngs(dropout=5).dropout()
        lengths["broadcast_dropout"] = ours.broadcast_dropout  # Flax's default: True
        if half == "numpy":
            params = jax.tree.map(np.asarray, params)
            actual, _ = attention_np.multi_head_attention(params, np.asarray(x), dropout_rate=0.25,
                                                          dropout_rng=np.asarray(jax.random.key_data(key)), **lengths)
        else:
            actual, _ = attention_jax.multi_head_attention(params, x, dropout_rate=0.25, dropout_rng=key, **lengths)
    np.testing.assert_allclose(actual, expected, **TOL)
    np.testing.assert_array_equal(np.asarray(actual)[0, 2:], 0)  # queries past the row's length


def test_use_bias_false_loads_with_multi_head_params_from_flax():
    theirs, ours = _pair(**CONFIGS["no-bias"])
    params = attention_jax.multi_head_params_from_flax(theirs)
    np.testing.assert_array_equal(params["out"]["bias"], 0)
    x, _ = _inputs(False)
    with highest():
        np.testing.assert_allclose(attention_jax.multi_head_attention(params, x)[0], theirs(x), **TOL)


def test_grad_through_the_module_under_nnx_jit():
    theirs, ours = _pair(**CONFIGS["all"])
    x, context = _inputs(True)

    def loss(module):
        return (module(x, context, is_causal=True) ** 2).sum()

    with highest():
        expected = nnx.jit(nnx.grad(loss))(theirs)
        actual = nnx.jit(nnx.grad(loss))(ours)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 nnx.to_pure_dict(actual), nnx.to_pure_dict(expected))


def test_bfloat16_compute_with_float32_params_stays_within_the_bf16_tolerance():
    kwargs = CONFIGS["gqa"] | {"dtype": jnp.bfloat16}
    theirs, ours = _pair(**kwargs)
    reference = MultiHeadAttention(**CONFIGS["gqa"], decode=False, rngs=nnx.Rngs(0))
    nnx.update(reference, nnx.state(theirs, nnx.Param))
    x, _ = _inputs(False)
    with highest():
        actual = ours(x, is_causal=True)
        expected = reference(x, is_causal=True)
    assert actual.dtype == jnp.bfloat16 and ours.query.kernel[...].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(actual, np.float32), expected, rtol=2e-2, atol=2e-2)


def test_flaxs_constructor_errors():
    with pytest.raises(ValueError, match=r"num_heads \(4\) must be divisible by num_kv_heads \(3\)"):
        MultiHeadAttention(4, 8, num_kv_heads=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="Memory dimension"):
        MultiHeadAttention(3, 8, rngs=nnx.Rngs(0))
    module = MultiHeadAttention(2, 8, decode=False, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="Incompatible input dimension, got 9 but module expects 8"):
        module(jnp.zeros((1, 2, 9)))
    with pytest.raises(ValueError, match="`inputs_k` cannot be None if `inputs_v` is not None"):
        module(jnp.zeros((1, 2, 8)), None, jnp.zeros((1, 2, 8)))
    with pytest.raises(ValueError, match="No `decode` argument was provided"):  # as Flax, decode must be set
        MultiHeadAttention(2, 8, rngs=nnx.Rngs(0))(jnp.zeros((1, 2, 8)))


# --- the functional multi_head_attention with a Flax module's params --------------------------------
FUNCTIONAL_OPTIONS = ("use_bias", "normalize_qk", "out_features", "in_kv_features", "qkv_features", "num_kv_heads")
# every combination: a flag per option (True = Flax's non-default value)
FUNCTIONAL_COMBOS = [tuple(bool(c >> i & 1) for i in range(6)) for c in range(64)]


def _functional_kwargs(combo):
    """Flax's constructor arguments for a combination: N=2, H=5 (E=10) or 6 (qkv_features=12),
    K=2 or 1, F=7, E_kv=9, with or without biases and QK layer-norm."""
    no_bias, qk_norm, out, kv, qkv, gqa = combo
    kwargs = dict(num_heads=2, in_features=E, use_bias=not no_bias, normalize_qk=qk_norm)
    kwargs |= dict(out_features=7) if out else {}
    kwargs |= dict(in_kv_features=E_KV) if kv else {}
    kwargs |= dict(qkv_features=12) if qkv else {}
    kwargs |= dict(num_kv_heads=1) if gqa else {}
    return kwargs


def _flax_module(seed=0, **kwargs):
    """A Flax module with random biases and layer-norm scales too (Flax's zeros and ones would
    not test their layout)."""
    module = nnx.MultiHeadAttention(**kwargs, decode=False, rngs=nnx.Rngs(seed))
    r = np.random.default_rng(seed + 1)
    for path, variable in nnx.iter_graph(module):
        if isinstance(variable, nnx.Param) and path[-1] in ("bias", "scale"):
            variable[...] = variable[...] + jnp.asarray(0.5 * r.normal(size=variable.shape), jnp.float32)
    return module


def _combo_id(combo):
    return "-".join(name for name, on in zip(("no_bias", "qk_norm", "F", "E_kv", "qkv", "gqa"), combo) if on) or "plain"


@pytest.mark.parametrize("combo", FUNCTIONAL_COMBOS, ids=[_combo_id(c) for c in FUNCTIONAL_COMBOS])
def test_multi_head_attention_with_params_from_flax_gives_flaxs_outputs(combo):
    kwargs = _functional_kwargs(combo)
    module = _flax_module(**kwargs)
    r = np.random.default_rng(2)
    x_q = r.normal(size=(B, T, E)).astype(np.float32)
    x_kv = r.normal(size=(B, S, kwargs.get("in_kv_features", E))).astype(np.float32)
    params = attention_jax.multi_head_params_from_flax(module)
    assert ("query_ln" in params) == kwargs["normalize_qk"]
    flax_dict = nnx.to_pure_dict(nnx.state(module, nnx.Param))  # no biases for use_bias=False: taken as it is
    assert ("bias" in flax_dict["out"]) == kwargs["use_bias"]
    with highest():
        expected = np.asarray(module(x_q, x_kv))
        actual = {
            "jax": attention_jax.multi_head_attention(params, x_q, x_kv)[0],
            "jax, Flax's dict": attention_jax.multi_head_attention(flax_dict, x_q, x_kv)[0],
            "numpy": attention_np.multi_head_attention(jax.tree.map(np.asarray, params), x_q, x_kv)[0],
            "numpy, Flax's dict": attention_np.multi_head_attention(jax.tree.map(np.asarray, flax_dict), x_q, x_kv)[0],
        }
    assert expected.shape == (B, T, kwargs.get("out_features", E))
    for name, out in actual.items():
        assert out.shape == expected.shape and out.dtype == np.float32, name
        np.testing.assert_allclose(out, expected, **TOL, err_msg=name)


@pytest.mark.parametrize("combo", FUNCTIONAL_COMBOS, ids=[_combo_id(c) for c in FUNCTIONAL_COMBOS])
def test_numpy_equals_jax_in_float64_with_params_from_flax(combo):
    kwargs = _functional_kwargs(combo)
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(nnx.state(_flax_module(**kwargs), nnx.Param)))
    r = np.random.default_rng(3)
    x_q = r.normal(size=(B, T, E))
    x_kv = r.normal(size=(B, S, kwargs.get("in_kv_features", E)))
    mask = r.random((B, 1, T, S)) < 0.6
    mask[0, :, 1] = False  # query 1 of row 0 sees nothing: a zero row in both halves
    expected = attention_jax.multi_head_attention(params, x_q, x_kv, mask=mask)
    actual = attention_np.multi_head_attention(params, x_q, x_kv, mask=mask)
    for a, e in zip(actual, expected):
        assert a.dtype == np.float64 and a.shape == e.shape
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(actual[0][0, 1], 0)


@pytest.mark.parametrize("config", ["qk-norm", "cross", "all"])
@pytest.mark.parametrize("mask_kind", [None, "padding", "per-head"])
def test_params_from_flax_with_masks_and_causal_give_flaxs_outputs(config, mask_kind):
    kwargs = CONFIGS[config]
    module = _flax_module(**kwargs)
    x, context = _inputs(True)
    context = context if "in_kv_features" in kwargs else x
    s = context.shape[1]
    mask = None if mask_kind is None else _mask(mask_kind, kwargs["num_heads"], T, s)
    params = attention_jax.multi_head_params_from_flax(module)
    for is_causal in (False, True):
        with highest():
            expected = module(x, context, mask=None if mask is None else jnp.asarray(mask), is_causal=is_causal)
            for half in (attention_jax, attention_np):
                actual, weights = half.multi_head_attention(jax.tree.map(np.asarray, params), x, context, mask=mask,
                                                            is_causal=is_causal)
                assert weights.shape == (B, kwargs["num_heads"], T, s)
                np.testing.assert_allclose(actual, expected, **TOL)


@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no-bias"])
def test_gradients_through_params_from_flax_equal_flaxs(use_bias):
    # H=5: with H=3 ("all") Flax's float32 layer norm (variance E[x^2] - E[x]^2) is itself 1e-4 off
    # the float64 gradient of the query bias, ours 1e-5; with H=5 both are within 1e-6
    kwargs = CONFIGS["all"] | {"use_bias": use_bias, "qkv_features": 30}
    module = _flax_module(**kwargs)
    x, context = _inputs(True)
    params = attention_jax.multi_head_params_from_flax(module)

    def flax_loss(m):
        return (m(x, context, is_causal=True) ** 2).sum()

    def loss(p):
        return (attention_jax.multi_head_attention(p, x, context, is_causal=True)[0] ** 2).sum()

    with highest():
        expected = nnx.to_pure_dict(nnx.jit(nnx.grad(flax_loss))(module))
        actual = jax.jit(jax.grad(loss))(params)
    assert set(actual) == set(expected) == {"query", "key", "value", "out", "query_ln", "key_ln"}
    for name, layer in expected.items():  # use_bias=False: Flax has no bias; ours is zero, its gradient not compared
        for leaf, grad in layer.items():
            np.testing.assert_allclose(actual[name][leaf], grad, rtol=1e-4, atol=1e-5, err_msg=f"{name}.{leaf}")


@pytest.mark.parametrize("combo", FUNCTIONAL_COMBOS[::7], ids=[_combo_id(c) for c in FUNCTIONAL_COMBOS[::7]])
@pytest.mark.parametrize("half", ["numpy", "jax"])
def test_init_multi_head_params_has_flaxs_tree(combo, half):
    kwargs = _functional_kwargs(combo)
    module = nnx.MultiHeadAttention(**kwargs, decode=False, rngs=nnx.Rngs(0))
    expected = jax.tree.map(lambda a: (a.shape, a.dtype), nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    H = module.head_dim
    options = dict(num_kv_heads=kwargs.get("num_kv_heads"), in_kv_features=kwargs.get("in_kv_features"),
                   out_features=kwargs.get("out_features"), use_bias=kwargs["use_bias"],
                   normalize_qk=kwargs["normalize_qk"])
    if half == "numpy":
        params = attention_np.init_multi_head_params(np.random.default_rng(0), E, 2, H, **options)
    else:
        params = attention_jax.init_multi_head_params(jax.random.key(0), E, 2, H, **options)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == expected
    x = np.random.default_rng(1).normal(size=(B, T, E)).astype(np.float32)
    x_kv = np.random.default_rng(2).normal(size=(B, S, kwargs.get("in_kv_features", E))).astype(np.float32)
    nnx.update(module, jax.tree.map(jnp.asarray, params))  # Flax runs our initial params as its own
    with highest():
        np.testing.assert_allclose(HALVES[half].multi_head_attention(params, x, x_kv)[0], module(x, x_kv), **TOL)


def test_absent_none_and_zero_biases_are_the_same_layer():
    module = _flax_module(**CONFIGS["all"])  # use_bias=False: Flax's dict has kernels only
    flax_dict = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    x, context = _inputs(True)
    none = {name: ({**layer, "bias": None} if "kernel" in layer else layer) for name, layer in flax_dict.items()}
    zero = attention_jax.multi_head_params_from_flax(module)
    with highest():
        expected = module(x, context)
        for half in (attention_np, attention_jax):
            for params in (flax_dict, none, zero):
                np.testing.assert_allclose(half.multi_head_attention(params, x, context)[0], expected, **TOL)
    without_norm = {name: layer for name, layer in flax_dict.items() if not name.endswith("_ln")}
    with_none = without_norm | {"query_ln": None, "key_ln": None}
    for half in (attention_np, attention_jax):  # a None norm is no norm
        np.testing.assert_array_equal(half.multi_head_attention(with_none, x, context)[0],
                                      half.multi_head_attention(without_norm, x, context)[0])


def test_the_readme_model_example_runs_as_written():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("Use it in a model (runs as written):\n\n```python\n", 1)[1].split("```", 1)[0]
    namespace = {}
    with jax.enable_x64(False):  # as a user runs it: float32 (the suite enables x64 for its float64 rows)
        exec(compile(block, "README.md", "exec"), namespace)  # its own assert: decode equals the causal full pass
    assert namespace["y_long"].shape == (1, 1024, 64) and namespace["y_alibi"].shape == (2, 128, 64)


@pytest.mark.parametrize("mask_shape", [None, (B, 1, 1, T), (B, 6, 1, T), (T,), (B, 1, T, T)])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("window", [None, (0, 1), 2])
def test_the_rows_with_no_key_are_exactly_the_fully_masked_ones(mask_shape, is_causal, window):
    # the module reads them off the attention's lse (-inf, or the sink's logit): on the dense path
    # and on the chunked one with sinks, against the plain reduction of the combined mask
    from attention_jax._masking import combine_all_masks
    from attention_jax.nnx.multi_head import saw_a_key
    from attention_np._validate import check_window

    r = np.random.default_rng(1)
    mask = None if mask_shape is None else r.random(mask_shape) < 0.3
    q = r.normal(size=(B, T, 6, 2)).astype(np.float32)
    combined = combine_all_masks(None if mask is None else jnp.asarray(mask), is_causal, check_window(window), None, T, T)
    combined = np.ones((T, T), bool) if combined is None else np.asarray(combined)
    expected = np.broadcast_to(combined.reshape((1,) * (4 - combined.ndim) + combined.shape),
                               (B, 6, T, T)).any(axis=(1, 3))
    for implementation, sinks in (("dense", None), ("chunked", r.normal(size=6).astype(np.float32))):
        _, lse = attention_jax.dot_product_attention(q, q, q, mask=mask, is_causal=is_causal, local_window_size=window,
                                                     sinks=sinks, implementation=implementation, return_residual=True)
        np.testing.assert_array_equal(saw_a_key(lse, sinks), expected, err_msg=implementation)


@pytest.mark.parametrize("rotary", [False, True])
def test_ragged_prompts_prefill_together_and_each_row_equals_decoding_it_alone(rotary):
    """Prompts of lengths 6, 9 and 15, right-padded into one (3, 15) batch: one prefill call
    (``query_seq_lengths`` = the lengths), then four steps for the whole batch; each row equals
    the same module decoding that prompt alone (batch of one, no padding)."""
    E, lengths, steps = 8, [6, 9, 15], 4
    module = MultiHeadAttention(2, E, qkv_features=8, num_kv_heads=1, rotary=rotary, decode=False,
                                rngs=nnx.Rngs(0))
    r = np.random.default_rng(5)
    prompts = [r.normal(size=(n, E)).astype(np.float32) for n in lengths]
    tokens = r.normal(size=(steps, len(lengths), 1, E)).astype(np.float32)
    padded = np.zeros((len(lengths), max(lengths), E), np.float32)
    for b, p in enumerate(prompts):
        padded[b, : len(p)] = p
    with highest():
        module.init_cache((len(lengths), max(lengths) + steps, E))
        prefill = np.asarray(module(jnp.asarray(padded), decode=True, query_seq_lengths=jnp.asarray(lengths)))
        together = [np.asarray(module(jnp.asarray(t), decode=True)) for t in tokens]
        np.testing.assert_array_equal(module.cache_index[...], np.asarray(lengths) + steps)
        for b, p in enumerate(prompts):
            module.init_cache((1, max(lengths) + steps, E))  # one cache shape: each step compiles once
            alone = np.asarray(module(jnp.asarray(p[None]), decode=True))
            np.testing.assert_allclose(prefill[b, : len(p)], alone[0], **TOL)
            np.testing.assert_array_equal(prefill[b, len(p):], 0)           # padding: zeros
            for t in range(steps):
                step = np.asarray(module(jnp.asarray(tokens[t, b][None]), decode=True))
                np.testing.assert_allclose(together[t][b], step[0], **TOL)


def test_every_argument_of_flaxs_constructor_and_call_is_accepted():
    # diffs the signatures, so that an argument a future Flax adds is noticed here
    import inspect
    for method in ("__init__", "__call__"):
        theirs = inspect.signature(getattr(nnx.MultiHeadAttention, method)).parameters
        ours = inspect.signature(getattr(MultiHeadAttention, method)).parameters
        assert [name for name in theirs if name not in ours] == [], method
        for name in theirs:
            assert theirs[name].kind == ours[name].kind, (method, name)


def test_metadata_reaches_the_params_as_in_flax():
    metadata = dict(kernel_metadata={"out_sharding": (None, "model", None)}, bias_metadata={"out_sharding": ("model", None)},
                    out_kernel_metadata={"out_sharding": ("model", None, None)}, out_bias_metadata={"out_sharding": (None,)},
                    query_ln_scale_metadata={"out_sharding": (None,)}, key_ln_scale_metadata={"out_sharding": (None,)})
    kwargs = dict(num_heads=2, in_features=E, normalize_qk=True, decode=False, **metadata)
    mesh = jax.make_mesh((1,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    with jax.set_mesh(mesh):                                                    # Flax places annotated params
        theirs = nnx.MultiHeadAttention(**kwargs, rngs=nnx.Rngs(0))
        ours = MultiHeadAttention(**kwargs, rngs=nnx.Rngs(0))
    specs = [jax.tree.map(str, nnx.get_partition_spec(nnx.state(m, nnx.Param))) for m in (theirs, ours)]
    assert nnx.to_pure_dict(specs[1]) == nnx.to_pure_dict(specs[0])
    assert "model" in str(nnx.to_pure_dict(specs[1])["query"]["kernel"])   # the metadata is there at all


def test_attention_fn_replaces_the_attention_as_in_flax():
    # Flax's own attention: a query with every key masked gets the mean of the values, as in Flax
    theirs = nnx.MultiHeadAttention(num_heads=2, in_features=E, decode=False, rngs=nnx.Rngs(0))
    ours = MultiHeadAttention(num_heads=2, in_features=E, attention_fn=nnx.dot_product_attention, decode=False,
                              rngs=nnx.Rngs(0))
    x, _ = _inputs(False)
    mask = np.ones((B, 1, T, T), bool)
    mask[0, :, 1] = False
    with highest():
        np.testing.assert_allclose(ours(x, mask=mask), theirs(x, mask=mask), **TOL)
    with pytest.raises(ValueError, match="bias, local_window_size cannot be combined with attention_fn"):
        ours(x, bias=np.zeros((T, T), np.float32), local_window_size=1)


def test_dot_general_promote_dtype_and_shardings_go_where_flax_sends_them():
    calls = []

    def counting_dot_general(*args, **kwargs):
        calls.append(1)
        return jax.lax.dot_general(*args, **kwargs)

    kwargs = dict(num_heads=2, in_features=E, qkv_dot_general=counting_dot_general,
                  out_dot_general=counting_dot_general, qkv_promote_dtype=nnx.nn.dtypes.promote_dtype)
    theirs, ours = _pair(**kwargs)
    x, _ = _inputs(False)
    mesh = jax.make_mesh((1,), ("data",))
    sharding = jax.sharding.PartitionSpec("data")
    with jax.set_mesh(mesh), highest():
        expected = theirs(x, qkv_sharding=sharding, out_sharding=sharding)
        calls.clear()
        actual = ours(x, qkv_sharding=sharding, out_sharding=sharding)
    assert len(calls) == 4                                                      # q, k, v and out
    np.testing.assert_allclose(actual, expected, **TOL)


@pytest.mark.parametrize("bias, kdim", [(True, None), (False, None), (True, 6)])
def test_from_torch_gives_torchs_outputs(bias, kdim):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(E, 2, batch_first=True, bias=bias, kdim=kdim, vdim=kdim)
    ours = MultiHeadAttention.from_torch(theirs, decode=False)
    r = np.random.default_rng(0)
    x, context = r.normal(size=(B, T, E)).astype(np.float32), r.normal(size=(B, S, kdim or E)).astype(np.float32)
    padding = np.zeros((B, S), bool)
    padding[1, 4:] = True                                                   # PyTorch: True = ignore
    causal = np.triu(np.ones((T, S), bool), 1)                              # PyTorch: True = masked out
    tx, tc = torch.from_numpy(x), torch.from_numpy(context)
    expected = theirs(tx, tc, tc, key_padding_mask=torch.from_numpy(padding), attn_mask=torch.from_numpy(causal),
                      need_weights=False)[0].detach().numpy()
    mask = ~padding[:, None, None, :] & ~causal
    with highest():
        actual = ours(jnp.asarray(x), jnp.asarray(context), mask=mask)
    np.testing.assert_allclose(actual, expected, **TOL)


def test_from_torch_refuses_keys_and_values_of_different_widths():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="from_torch needs kdim == vdim .* got kdim=6, vdim=4"):
        MultiHeadAttention.from_torch(torch.nn.MultiheadAttention(E, 2, kdim=6, vdim=4))
