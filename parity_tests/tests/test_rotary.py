"""Rotary position embeddings: both halves against the rotation written out pair by pair in
float64, against Hugging Face's rotary embeddings transcribed (linear, Llama 3.1 and YaRN
scaling; GPT-J's interleaved pairs), the relative-position property, partial rotation, errors,
and the module (decoding token by token equals the full causal pass)."""

import functools
import math
import re

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


# --- Hugging Face's rotary embeddings, transcribed from transformers' modeling_rope_utils.py
# (_compute_*_parameters: the inverse frequencies and the attention factor) and the models'
# application (LlamaRotaryEmbedding + rotate_half; GPT-J's rotate_every_two), written as
# transformers writes them, in float64, on our layout (B, T, N, H).

def hf_default_parameters(base, dim):
    inv_freq = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float64) / dim))
    return inv_freq, 1.0


def hf_linear_scaling_parameters(base, dim, rope_scaling):
    inv_freq, attention_factor = hf_default_parameters(base, dim)
    inv_freq /= rope_scaling["factor"]
    return inv_freq, attention_factor


def hf_llama3_parameters(base, dim, rope_scaling):
    inv_freq, attention_factor = hf_default_parameters(base, dim)
    factor = rope_scaling["factor"]
    low_freq_factor = rope_scaling["low_freq_factor"]
    high_freq_factor = rope_scaling["high_freq_factor"]
    old_context_len = rope_scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    inv_freq_llama = np.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)
    return inv_freq_llama, attention_factor


def hf_yarn_parameters(base, dim, rope_scaling):
    factor = rope_scaling["factor"]
    attention_factor = rope_scaling.get("attention_factor")
    mscale = rope_scaling.get("mscale")
    mscale_all_dim = rope_scaling.get("mscale_all_dim")
    original_max_position_embeddings = rope_scaling["original_max_position_embeddings"]

    def get_mscale(scale, mscale=1):
        if scale <= 1:
            return 1.0
        return 0.1 * mscale * math.log(scale) + 1.0

    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
        else:
            attention_factor = get_mscale(factor)
    beta_fast = rope_scaling.get("beta_fast") or 32
    beta_slow = rope_scaling.get("beta_slow") or 1

    def find_correction_dim(num_rotations, dim, base, max_position_embeddings):
        return (dim * math.log(max_position_embeddings / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    def find_correction_range(low_rot, high_rot, dim, base, max_position_embeddings, truncate):
        low = find_correction_dim(low_rot, dim, base, max_position_embeddings)
        high = find_correction_dim(high_rot, dim, base, max_position_embeddings)
        if truncate:
            low = math.floor(low)
            high = math.ceil(high)
        return max(low, 0), min(high, dim - 1)

    def linear_ramp_factor(min, max, dim):  # noqa: A002 (transformers' names)
        if min == max:
            max += 0.001  # noqa: A001
        linear_func = (np.arange(dim, dtype=np.float64) - min) / (max - min)
        return np.clip(linear_func, 0, 1)

    pos_freqs = base ** (np.arange(0, dim, 2).astype(np.float64) / dim)
    inv_freq_extrapolation = 1.0 / pos_freqs
    inv_freq_interpolation = 1.0 / (factor * pos_freqs)
    truncate = rope_scaling.get("truncate", True)
    low, high = find_correction_range(beta_fast, beta_slow, dim, base, original_max_position_embeddings, truncate)
    inv_freq_extrapolation_factor = 1 - linear_ramp_factor(low, high, dim // 2)
    inv_freq = (inv_freq_interpolation * (1 - inv_freq_extrapolation_factor)
                + inv_freq_extrapolation * inv_freq_extrapolation_factor)
    return inv_freq, attention_factor


HF_ROPE_INIT_FUNCTIONS = {"default": lambda base, dim, _: hf_default_parameters(base, dim),
                          "linear": hf_linear_scaling_parameters, "llama3": hf_llama3_parameters,
                          "yarn": hf_yarn_parameters}


def hf_rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return np.concatenate((-x2, x1), axis=-1)


def hf_rotate_every_two(x):
    x1 = x[:, :, :, ::2]
    x2 = x[:, :, :, 1::2]
    x = np.stack((-x2, x1), axis=-1)
    return x.reshape(*x.shape[:-2], -1)                                              # flatten(-2)


def hf_rotary(x, position_ids, *, base, partial_rotary_factor, rope_scaling, interleaved):
    """x (B, T, N, H), position_ids (B, T): the rotary part rotated, the rest passed, as the
    models do (``q_rot, q_pass = q[..., :rotary_dim], q[..., rotary_dim:]``)."""
    dim = int(x.shape[-1] * partial_rotary_factor)
    rope_type = (rope_scaling or {}).get("rope_type", "default")
    inv_freq, attention_scaling = HF_ROPE_INIT_FUNCTIONS[rope_type](base, dim, rope_scaling)
    freqs = position_ids[..., None].astype(np.float64) * inv_freq                  # (B, T, dim/2)
    x_rot, x_pass = x[..., :dim], x[..., dim:]
    if interleaved:  # GPT-J: sin and cos of each pair repeated side by side
        sin = np.repeat(np.sin(freqs)[:, :, None, :] * attention_scaling, 2, 3)
        cos = np.repeat(np.cos(freqs)[:, :, None, :] * attention_scaling, 2, 3)
        x_rot = (x_rot * cos) + (hf_rotate_every_two(x_rot) * sin)
    else:            # LlamaRotaryEmbedding.forward, apply_rotary_pos_emb(unsqueeze_dim=2)
        emb = np.concatenate((freqs, freqs), axis=-1)
        cos = np.cos(emb) * attention_scaling
        sin = np.sin(emb) * attention_scaling
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
        x_rot = (x_rot * cos) + (hf_rotate_half(x_rot) * sin)
    return np.concatenate((x_rot, x_pass), axis=-1)


SCALINGS = {
    "none": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 512},
    "yarn": {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 512},
    "yarn_gpt_oss": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                     "original_max_position_embeddings": 512},
    "yarn_deepseek": {"rope_type": "yarn", "factor": 40.0, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0,
                      "mscale_all_dim": 0.707, "original_max_position_embeddings": 512},
    "yarn_attention_factor": {"rope_type": "yarn", "factor": 4.0, "attention_factor": 0.8, "beta_fast": 8,
                              "beta_slow": 2, "original_max_position_embeddings": 256},
}


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("fraction", [1.0, 0.75])
@pytest.mark.parametrize("scaling", SCALINGS)
def test_equals_hugging_faces_rotary_embeddings(half, scaling, fraction, interleaved, rng):
    """H = 16 (8 pairs; 6 with fraction 0.75): the contexts put some pairs below YaRN's ramp,
    some on it and some above, and some wavelengths in each of Llama 3.1's three bands."""
    x = rng.normal(size=(2, 5, 3, 16))
    positions = np.array([[0, 1, 7, 100, 1000], [5, 6, 64, 511, 777]])                # per batch row
    expected = hf_rotary(x, positions, base=10000.0, partial_rotary_factor=fraction,
                         rope_scaling=SCALINGS[scaling], interleaved=interleaved)
    got = HALVES[half].apply_rotary(x, positions, fraction=fraction, scaling=SCALINGS[scaling],
                                    interleaved=interleaved)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12, atol=1e-12)


def test_the_scalings_change_what_they_should():
    """The reference is not vacuous: each scaling gives other frequencies than plain RoPE;
    YaRN keeps the fastest pair, divides the slowest by the factor and scales cos and sin."""
    plain, _ = hf_default_parameters(10000.0, 16)
    for name in ("linear", "llama3", "yarn", "yarn_gpt_oss"):
        theta, _ = attention_np.rotary.rotary_frequencies(16, 10000.0, SCALINGS[name])
        assert np.abs(theta - plain).max() > 1e-3, name
    theta, attention_factor = attention_np.rotary.rotary_frequencies(16, 10000.0, SCALINGS["yarn"])
    assert theta[0] == plain[0] and theta[-1] == pytest.approx(plain[-1] / 16, rel=1e-15)
    assert attention_factor == pytest.approx(0.1 * math.log(16) + 1)
    ramp = (theta / plain - 1) / (1 / 16 - 1)                     # 0 kept .. 1 divided by the factor
    np.testing.assert_allclose(ramp, [0, 0.25, 0.5, 0.75, 1, 1, 1, 1], atol=1e-12)  # low floor(0.8), high ceil(3.8)
    theta, _ = attention_np.rotary.rotary_frequencies(16, 10000.0, SCALINGS["llama3"])
    assert theta[0] == plain[0] and theta[-1] == plain[-1] / 8 and plain[3] / 8 < theta[3] < plain[3]


@pytest.mark.parametrize("half", HALVES)
def test_default_rope_type_and_the_older_key_name(half, rng):
    x, positions = rng.normal(size=(2, 5, 3, 8)), np.arange(5)
    rotate = HALVES[half].apply_rotary
    plain = np.asarray(rotate(x, positions))
    np.testing.assert_array_equal(np.asarray(rotate(x, positions, scaling={"rope_type": "default"})), plain)
    np.testing.assert_array_equal(np.asarray(rotate(x, positions, scaling={"rope_type": "default", "rope_theta": 1e4,
                                                                           "partial_rotary_factor": 1.0})), plain)
    np.testing.assert_array_equal(np.asarray(rotate(x, positions, scaling={"type": "linear", "factor": 2.0})),
                                  np.asarray(rotate(x, positions, scaling={"rope_type": "linear", "factor": 2.0})))


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("scaling", ["none", "yarn"])
def test_interleaved_scores_depend_only_on_the_distance(half, scaling, rng):
    q, k = rng.normal(size=(1, 1, 1, 8)), rng.normal(size=(1, 1, 1, 8))

    def score(t, s):
        rotate = functools.partial(HALVES[half].apply_rotary, interleaved=True, scaling=SCALINGS[scaling])
        return float(np.sum(np.asarray(rotate(q, np.array([t]))) * np.asarray(rotate(k, np.array([s])))))

    for t, s in [(3, 1), (10, 2)]:
        assert score(t, s) == pytest.approx(score(t + 100, s + 100), rel=1e-9, abs=1e-9)


def test_interleaved_is_the_half_layout_on_permuted_features(rng):
    """Pairs (2i, 2i + 1) turned interleaved equal pairs (i, i + R/2) turned as halves, once
    the features are permuted into the half layout."""
    x, positions = rng.normal(size=(2, 5, 3, 8)), np.arange(5)
    to_halves = np.r_[0:8:2, 1:8:2]                                                   # 0 2 4 6 1 3 5 7
    interleaved = attention_np.apply_rotary(x, positions, interleaved=True, scaling=SCALINGS["yarn"])
    halves = attention_np.apply_rotary(x[..., to_halves], positions, scaling=SCALINGS["yarn"])
    np.testing.assert_allclose(interleaved[..., to_halves], halves, rtol=1e-12, atol=1e-12)


def test_yarn_in_float32_and_under_jit(rng):
    x = rng.normal(size=(2, 6, 2, 16))
    positions = np.arange(6)[None, :] + np.array([[0], [400]])
    options = dict(scaling=SCALINGS["yarn_gpt_oss"], interleaved=True, fraction=0.75)
    expected = attention_np.apply_rotary(x, positions, **options)
    x32 = jnp.asarray(x, jnp.float32)
    for rotate in (attention_jax.apply_rotary, jax.jit(lambda x, p: attention_jax.apply_rotary(x, p, **options))):
        got = rotate(x32, jnp.asarray(positions), **({} if rotate is not attention_jax.apply_rotary else options))
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got, np.float64), expected, atol=1e-5 * 4, rtol=1e-5)


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("kwargs, error, message", [
    ({"scaling": {"rope_type": "dynamic", "factor": 2.0}}, ValueError,
     "scaling['rope_type'] must be one of 'default', 'linear', 'llama3', 'yarn'; got 'dynamic'"),
    ({"scaling": {"factor": 2.0}}, ValueError, "scaling needs the key 'rope_type'"),
    ({"scaling": {"rope_type": "llama3", "factor": 8.0}}, ValueError,
     "scaling with rope_type 'llama3' needs the key 'low_freq_factor'; got the keys 'rope_type', 'factor'"),
    ({"scaling": {"rope_type": "yarn", "factor": 8.0}}, ValueError,
     "scaling with rope_type 'yarn' needs the key 'original_max_position_embeddings'"),
    ({"scaling": {"rope_type": "linear", "factor": 2.0, "beta_fast": 32}}, ValueError,
     "scaling with rope_type 'linear' takes 'factor'; got the key 'beta_fast'"),
    ({"scaling": {"rope_type": "linear", "factor": -2.0}}, ValueError,
     "scaling['factor'] must be a positive number; got -2.0"),
    ({"scaling": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64, "truncate": 0}},
     ValueError, "scaling['truncate'] must be True or False; got 0"),
    ({"scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
                  "original_max_position_embeddings": 64}}, ValueError,
     "scaling['low_freq_factor'] must be less than scaling['high_freq_factor']; got 4.0 and 1.0"),
    ({"scaling": {"rope_type": "default", "rope_theta": 500000.0}}, ValueError,
     "scaling['rope_theta'] is 500000.0 but base is 10000.0: pass base=scaling['rope_theta']"),
    ({"scaling": [("rope_type", "linear"), ("factor", 2.0)]}, TypeError,
     "scaling must be a dict of Hugging Face rope parameters"),
    ({"interleaved": 1}, TypeError, "interleaved must be True or False; got 1"),
])
def test_scaling_errors_name_the_key(half, kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        HALVES[half].apply_rotary(np.zeros((1, 2, 1, 4)), np.arange(2), **kwargs)


def test_module_with_scaling_and_interleaved_rotates_after_the_projection(rng):
    """The module's rotary_scaling and rotary_interleaved reach the rotation: its output equals
    the functional attention on queries and keys rotated by Hugging Face's transcription."""
    E, T, N, H = 6, 5, 2, 8
    scaling = SCALINGS["yarn_gpt_oss"]
    module = MultiHeadAttention(N, E, qkv_features=N * H, rotary=True, rotary_scaling=scaling,
                                rotary_interleaved=True, decode=False, rngs=nnx.Rngs(3))
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    x = rng.normal(size=(2, T, E))
    positions = np.broadcast_to(np.arange(T) * 300, (2, T))
    hf = functools.partial(hf_rotary, base=10000.0, partial_rotary_factor=1.0, rope_scaling=scaling, interleaved=True)
    q, k = hf(_project(params, x, "query"), positions), hf(_project(params, x, "key"), positions)
    heads, _ = attention_np.scaled_dot_product_attention(q, k, _project(params, x, "value"), is_causal=True)
    expected = np.einsum("BTNH,NHF->BTF", heads, params["out"]["kernel"]) + params["out"]["bias"]
    with jax.default_matmul_precision("highest"):
        got = module(jnp.asarray(x, jnp.float32), is_causal=True, positions=jnp.asarray(positions))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    hash(nnx.graphdef(module))                                  # the scaling is static: the graph hashes


@pytest.mark.parametrize("scaling", ["llama3", "yarn"])
def test_module_with_scaling_decodes_as_its_full_causal_pass(scaling, rng):
    E, T = 8, 6
    module = MultiHeadAttention(2, E, qkv_features=16, num_kv_heads=1, rotary=True, rotary_scaling=SCALINGS[scaling],
                                rotary_interleaved=True, decode=False, rngs=nnx.Rngs(0))
    x = jnp.asarray(rng.normal(size=(2, T, E)), jnp.float32)
    with jax.default_matmul_precision("highest"):
        full = module(x, is_causal=True)
        module.init_cache(x.shape)
        steps = [module(x[:, :2], decode=True)] + [module(x[:, t:t + 1], decode=True) for t in range(2, T)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)


def test_module_refuses_rotary_options_without_rotary_and_a_bad_scaling():
    with pytest.raises(ValueError, match="rotary_scaling and rotary_interleaved .* need rotary=True"):
        MultiHeadAttention(2, 8, rotary_scaling={"rope_type": "linear", "factor": 2.0}, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rotary_scaling and rotary_interleaved .* need rotary=True"):
        MultiHeadAttention(2, 8, rotary_interleaved=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="scaling with rope_type 'yarn' needs the key 'factor'"):
        MultiHeadAttention(2, 8, rotary=True, rotary_scaling={"rope_type": "yarn"}, rngs=nnx.Rngs(0))
