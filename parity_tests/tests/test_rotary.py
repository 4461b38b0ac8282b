"""Rotary position embeddings: both halves against the rotation written out pair by pair in
float64, the relative-position property, partial rotation, errors, and the module (decoding
token by token equals the full causal pass)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention_jax
import attention_np
from attention_jax.nnx import MultiHeadAttention

from .conftest import HALVES


def rotation_by_hand(x, positions, base, fraction):
    """Each pair (i, i + R/2) multiplied by its 2 x 2 rotation matrix, one at a time."""
    H = x.shape[-1]
    R = int(H * fraction) // 2 * 2
    out = x.astype(np.float64).copy()
    for index in np.ndindex(*x.shape[:-2]):                       # (B..., T)
        t = positions[index[-1]]
        for i in range(R // 2):
            angle = t * base ** (-2 * i / R)
            turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            pair = np.stack([x[index][:, i], x[index][:, i + R // 2]])    # (2, N)
            out[index][:, i], out[index][:, i + R // 2] = turn @ pair
    return out


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("fraction, base", [(1.0, 10000.0), (0.5, 100.0), (0.4, 10000.0)])
def test_equals_the_rotation_written_out(half, fraction, base, rng):
    x = rng.normal(size=(2, 5, 3, 10))
    positions = np.array([0, 1, 2, 7, 100])
    got = HALVES[half].apply_rotary(x, positions, base=base, fraction=fraction)
    np.testing.assert_allclose(np.asarray(got), rotation_by_hand(x, positions, base, fraction), rtol=1e-12, atol=1e-12)
    R = int(10 * fraction) // 2 * 2
    np.testing.assert_array_equal(np.asarray(got)[..., R:], x[..., R:])          # the rest passes through


@pytest.mark.parametrize("half", HALVES)
def test_scores_depend_only_on_the_distance(half, rng):
    q, k = rng.normal(size=(1, 1, 1, 8)), rng.normal(size=(1, 1, 1, 8))
    rotate = HALVES[half].apply_rotary

    def score(t, s):
        return float(np.sum(np.asarray(rotate(q, np.array([t]))) * np.asarray(rotate(k, np.array([s])))))

    for t, s in [(3, 1), (10, 2), (0, 5)]:
        for shift in (1, 17, 1000):
            assert score(t, s) == pytest.approx(score(t + shift, s + shift), rel=1e-9, abs=1e-9)
    assert abs(score(3, 1) - score(3, 2)) > 1e-3                                  # and it does depend on it


def test_float32_and_bfloat16_against_float64(rng):
    x = rng.normal(size=(2, 6, 2, 8))
    positions = np.arange(6)[None, :] + np.array([[0], [40]])                     # per batch row
    expected = attention_np.apply_rotary(x, positions)
    for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)):
        got = attention_jax.apply_rotary(jnp.asarray(x, dtype), jnp.asarray(positions))
        assert got.dtype == dtype
        np.testing.assert_allclose(np.asarray(got, np.float64), expected, atol=tol * 4, rtol=tol)


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("kwargs, positions, error, message", [
    ({}, np.array([0.5, 1.0]), TypeError, "positions must be an integer array"),
    ({}, np.arange(3), ValueError, "positions must be broadcastable to (B..., T) with T=2"),
    ({"fraction": 0.0}, np.arange(2), ValueError, "fraction must be a number in (0, 1]; got 0.0"),
    ({"fraction": 0.1}, np.arange(2), ValueError, "H * fraction must be at least 2; got H=4, fraction=0.1"),
    ({"base": 1.0}, np.arange(2), ValueError, "base must be a number greater than 1; got 1.0"),
])
def test_errors_name_the_argument(half, kwargs, positions, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*").replace(".", r"\.")):
        HALVES[half].apply_rotary(np.zeros((1, 2, 1, 4)), positions, **kwargs)


def test_module_decoding_step_by_step_equals_the_full_causal_pass(rng):
    E, T = 8, 6
    module = MultiHeadAttention(2, E, qkv_features=8, num_kv_heads=1, rotary=True, decode=False, rngs=nnx.Rngs(0))
    x = jnp.asarray(rng.normal(size=(2, T, E)), jnp.float32)
    with jax.default_matmul_precision("highest"):
        full = module(x, is_causal=True)
        module.init_cache(x.shape)
        steps = [module(x[:, :2], decode=True)] + [module(x[:, t:t + 1], decode=True) for t in range(2, T)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)
    # and the embeddings do something: without them the output differs
    plain = MultiHeadAttention(2, E, qkv_features=8, num_kv_heads=1, decode=False, rngs=nnx.Rngs(0))
    assert float(jnp.abs(plain(x, is_causal=True) - full).max()) > 1e-3


def test_module_rotates_after_the_projection(rng):
    """The module's output equals the functional multi-head attention on queries and keys
    rotated by hand (NumPy half) between the projections and the attention."""
    E, T, N, H = 6, 5, 2, 4
    module = MultiHeadAttention(N, E, qkv_features=N * H, rotary=True, rotary_fraction=0.5, decode=False,
                                rngs=nnx.Rngs(3))
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    x = rng.normal(size=(2, T, E))
    project = lambda name: np.einsum("BTE,ENH->BTNH", x, params[name]["kernel"]) + params[name]["bias"]
    positions = np.arange(T)
    q, k, v = project("query"), project("key"), project("value")
    q, k = (attention_np.apply_rotary(a, positions, fraction=0.5) for a in (q, k))
    heads, _ = attention_np.scaled_dot_product_attention(q, k, v, is_causal=True)
    expected = np.einsum("BTNH,NHF->BTF", heads, params["out"]["kernel"]) + params["out"]["bias"]
    with jax.default_matmul_precision("highest"):
        got = module(jnp.asarray(x, jnp.float32), is_causal=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_module_refuses_a_head_too_small_to_rotate():
    with pytest.raises(ValueError, match="H \\* fraction must be at least 2; got H=4, fraction=0.25"):
        MultiHeadAttention(2, 8, rotary=True, rotary_fraction=0.25, rngs=nnx.Rngs(0))


def _project(params, x, name):
    return np.einsum("BTE,ENH->BTNH", x, params[name]["kernel"]) + params[name]["bias"]


def test_module_cross_attention_rotates_queries_at_0_to_T_and_keys_at_0_to_S(rng):
    """T = 3 queries over S = 5 keys with the default positions: queries turned at 0..2, keys
    at 0..4 (rotated by hand), then attention and the output projection, in NumPy."""
    E, N, H = 6, 2, 4
    module = MultiHeadAttention(N, E, qkv_features=N * H, rotary=True, decode=False, rngs=nnx.Rngs(4))
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    x_q, x_kv = rng.normal(size=(2, 3, E)), rng.normal(size=(2, 5, E))
    q = rotation_by_hand(_project(params, x_q, "query"), np.arange(3), 10000.0, 1.0)
    k = rotation_by_hand(_project(params, x_kv, "key"), np.arange(5), 10000.0, 1.0)
    heads, _ = attention_np.scaled_dot_product_attention(q, k, _project(params, x_kv, "value"))
    expected = np.einsum("BTNH,NHF->BTF", heads, params["out"]["kernel"]) + params["out"]["bias"]
    with jax.default_matmul_precision("highest"):
        got = module(jnp.asarray(x_q, jnp.float32), jnp.asarray(x_kv, jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_the_decode_cache_holds_each_key_rotated_at_its_position(rng):
    """Outputs depend on positions only through t - s, so a cache shifted by one position
    would decode the same outputs: check what the cache holds, key by key."""
    E, N, H, T = 6, 2, 4, 5
    module = MultiHeadAttention(N, E, qkv_features=N * H, rotary=True, decode=True, rngs=nnx.Rngs(5))
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    x = rng.normal(size=(2, T, E))
    module.init_cache((2, 8, E))
    with jax.default_matmul_precision("highest"):
        module(jnp.asarray(x[:, :3], jnp.float32))                        # a prefill of 3, then two steps
        for t in (3, 4):
            module(jnp.asarray(x[:, t:t + 1], jnp.float32))
    expected = rotation_by_hand(_project(params, x, "key"), np.arange(T), 10000.0, 1.0)
    np.testing.assert_allclose(module.cached_key[...][:, :T], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(module.cached_key[...][:, T:], 0)
    np.testing.assert_allclose(module.cached_value[...][:, :T], _project(params, x, "value"), rtol=1e-5, atol=1e-5)


def test_input_positions_is_flaxs_name_for_positions(rng):
    """Newer Flax passes ``input_positions`` to ``MultiHeadAttention.__call__`` and on to its
    ``attention_fn``: here it is the rotary positions, and reaches a user's attention_fn only
    when given."""
    E, T = 8, 4
    module = MultiHeadAttention(2, E, rotary=True, decode=False, rngs=nnx.Rngs(0))
    x = jnp.asarray(rng.normal(size=(2, T, E)), jnp.float32)
    positions = jnp.array([[3, 4, 5, 6], [0, 2, 4, 6]])
    np.testing.assert_array_equal(module(x, input_positions=positions), module(x, positions=positions))
    assert float(jnp.abs(module(x, positions=positions) - module(x)).max()) > 1e-3
    with pytest.raises(ValueError, match="positions and input_positions are the same argument"):
        module(x, positions=positions, input_positions=positions)
    seen = []

    def attention_fn(query, key, value, **kwargs):
        seen.append(kwargs.get("input_positions"))
        return nnx.dot_product_attention(query, key, value, **{k: v for k, v in kwargs.items()
                                                                if k != "input_positions"})
    plain = MultiHeadAttention(2, E, attention_fn=attention_fn, decode=False, rngs=nnx.Rngs(0))
    plain(x)
    plain(x, input_positions=positions)
    assert seen[0] is None and seen[1] is positions
