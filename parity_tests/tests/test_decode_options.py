"""Decoding with every option equals the causal full pass: the NNX module's cache and
``multi_head_attention_step`` (both halves), fed in random chunkings (one token at a time, k
at a time, ragged prompts prefilled together, then steps), with a sliding window, sinks, a
soft-cap, rotary embeddings, grouped key/value heads and ``normalize_qk``. The windows are
counted in cache positions, as the full pass counts them. The full passes themselves are
checked against NumPy written out here, and a window against its band as a boolean mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

import attention_jax
import attention_np
from attention_jax.nnx import MultiHeadAttention

from .conftest import HALVES, highest

B, L, E, N, H = 2, 7, 8, 4, 2           # two rows of up to 7 tokens; 4 query heads of 2 features
MAX_LEN = 8
TOL = dict(rtol=1e-5, atol=1e-5)        # float32 under "highest" matmuls vs float64 NumPy
# Flax's LayerNorm (normalize_qk) takes the variance as E[x^2] - E[x]^2 in float32, which loses
# digits to cancellation: the module's float32 pass is within 1e-4 of float64 there
LN_TOL = dict(rtol=1e-4, atol=1e-4)
SOFT_CAP = 1.5


def _chunkings(total):
    """Random chunkings of ``total`` tokens: lists of positive sizes that add up to it."""
    return st.lists(st.integers(1, 3), min_size=1, max_size=total).map(lambda sizes: _fit(sizes, total))


def _fit(sizes, total):
    out, left = [], total
    for size in sizes:
        if left == 0:
            break
        out.append(min(size, left))
        left -= out[-1]
    return out + [1] * left


OPTIONS = st.fixed_dictionaries({
    "window": st.sampled_from([None, (0, 0), (1, 0), (2, 0), (3, 1), 2]),  # (left, right) or an int
    "sinks": st.booleans(),
    "soft_cap": st.sampled_from([None, SOFT_CAP]),
    "num_kv_heads": st.sampled_from([1, 2, 4]),
    "normalize_qk": st.booleans(),
})


def _params(rng, opts):
    """Multi-head params with every bias nonzero and, when drawn, norms and sinks."""
    K = opts["num_kv_heads"]
    params = attention_np.init_multi_head_params(rng, E, N, H, num_kv_heads=K, dtype=np.float64)
    params = jax.tree.map(lambda p: p + 0.3 * rng.normal(size=p.shape), params)
    if opts["normalize_qk"]:
        params |= {"query_ln": {"scale": 1 + 0.3 * rng.normal(size=H)}, "key_ln": {"scale": 1 + 0.3 * rng.normal(size=H)}}
    if opts["sinks"]:
        params["sinks"] = rng.normal(size=N)
    return params


def _numpy_full_pass(params, x, opts, *, rotary):
    """The causal pass written out in NumPy, float64: project, normalise, rotate queries and keys
    at ``0..L-1``, attend within the window (with sinks and soft-cap), project out."""
    q = np.einsum("BTE,ENH->BTNH", x, params["query"]["kernel"]) + params["query"]["bias"]
    k = np.einsum("BSE,EKH->BSKH", x, params["key"]["kernel"]) + params["key"]["bias"]
    v = np.einsum("BSE,EKH->BSKH", x, params["value"]["kernel"]) + params["value"]["bias"]
    if opts["normalize_qk"]:
        norm = lambda y, scale: (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-6) * scale
        q, k = norm(q, params["query_ln"]["scale"]), norm(k, params["key_ln"]["scale"])
    if rotary:
        positions = np.arange(x.shape[1])
        q, k = attention_np.apply_rotary(q, positions), attention_np.apply_rotary(k, positions)
    T = x.shape[1]
    t, s = np.arange(T)[:, None], np.arange(T)[None, :]
    left, right = (opts["window"], opts["window"]) if isinstance(opts["window"], int) else opts["window"] or (T, T)
    band = (s <= t) & (s >= t - left) & (s <= t + right)                   # causal, within the window
    heads, _ = attention_np.scaled_dot_product_attention(
        q, k, v, mask=band, sinks=params.get("sinks"), logits_soft_cap=opts["soft_cap"])
    return np.einsum("BTNH,NHE->BTE", heads, params["out"]["kernel"]) + params["out"]["bias"]


def _module(params, opts, *, rotary):
    module = MultiHeadAttention(N, E, num_kv_heads=opts["num_kv_heads"], normalize_qk=opts["normalize_qk"],
                                use_sinks=opts["sinks"], logits_soft_cap=opts["soft_cap"], rotary=rotary,
                                decode=False, rngs=nnx.Rngs(0))
    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params))
    nnx.update(module, state)
    return module


def _init_cache(module, page_size, rng):
    """The contiguous cache, or pages of ``page_size`` in a shuffled page table."""
    if page_size is None:
        return module.init_cache((B, MAX_LEN, E))
    module.init_cache((B, MAX_LEN, E), page_size=page_size)
    table = module.page_table[...]
    module.page_table[...] = jnp.asarray(rng.permutation(table.size).reshape(table.shape), jnp.int32)


@given(opts=OPTIONS, rotary=st.booleans(), chunks=_chunkings(L), prompts=st.tuples(st.integers(1, L), st.integers(1, L)),
       page_size=st.sampled_from([None, 1, 3, 4]))
def test_the_module_decodes_every_option_as_its_causal_full_pass(opts, rotary, chunks, prompts, page_size):
    """Row by row: a chunked decode of row 0 alone, then both rows' prompts prefilled together
    (ragged, ``query_seq_lengths``) and the rest one token a step; each equals the full pass,
    from the contiguous cache or from pages in a shuffled page table."""
    rng = np.random.default_rng(len(chunks) + 10 * prompts[0] + 100 * prompts[1])
    params = _params(rng, opts)
    x = rng.normal(size=(B, L, E))
    expected = _numpy_full_pass(params, x, opts, rotary=rotary)
    module = _module(params, opts, rotary=rotary)
    x32 = jnp.asarray(x, jnp.float32)
    with highest():
        full = module(x32, is_causal=True, local_window_size=opts["window"])
        np.testing.assert_allclose(full, expected, **(LN_TOL if opts["normalize_qk"] else TOL))
        expected = np.asarray(full)  # the module's own float32 pass: decoding must reproduce it
        # 1. one sequence in the drawn chunking
        _init_cache(module, page_size, rng)
        outs, t = [], 0
        for c in chunks:
            outs.append(module(x32[:, t:t + c], decode=True, local_window_size=opts["window"]))
            t += c
        np.testing.assert_allclose(jnp.concatenate(outs, axis=1), expected, **TOL)
        # 2. ragged prompts prefilled together, then one token a step, each row from its own length
        _init_cache(module, page_size, rng)
        lengths = np.asarray(prompts)
        prefill = module(x32[:, :max(prompts)], decode=True, query_seq_lengths=jnp.asarray(lengths),
                         local_window_size=opts["window"])
        for b, n in enumerate(prompts):
            np.testing.assert_allclose(prefill[b, :n], expected[b, :n], **TOL)
        for step in range(L - min(prompts)):
            at = np.minimum(lengths + step, L - 1)                         # rows that are done repeat their last token
            token = x32[np.arange(B), at][:, None]
            live = (lengths + step < L).astype(np.int32)
            out = module(token, decode=True, query_seq_lengths=jnp.asarray(live), local_window_size=opts["window"])
            for b in np.flatnonzero(live):
                np.testing.assert_allclose(out[b, 0], expected[b, at[b]], **TOL)


@given(opts=OPTIONS, chunks=_chunkings(L))
@pytest.mark.parametrize("half", HALVES)
def test_the_cached_step_with_every_option_is_the_causal_full_pass(half, opts, chunks):
    """``multi_head_attention_step`` in the drawn chunking equals ``multi_head_attention``'s
    causal pass with the same window, sinks and soft-cap (float64: 1e-12), and that pass equals
    NumPy written out."""
    rng = np.random.default_rng(len(chunks))
    params = _params(rng, opts)
    x = rng.normal(size=(B, L, E))
    expected, _ = attention_np.multi_head_attention(params, x, is_causal=True, local_window_size=opts["window"],
                                                    logits_soft_cap=opts["soft_cap"])
    np.testing.assert_allclose(expected, _numpy_full_pass(params, x, opts, rotary=False), rtol=1e-12, atol=1e-12)
    module = HALVES[half]
    as_half = (lambda tree: tree) if half == "numpy" else (lambda tree: jax.tree.map(jnp.asarray, tree))
    cache = module.init_kv_cache(B, MAX_LEN, opts["num_kv_heads"], H, dtype=np.float64)
    outs, t = [], 0
    for c in chunks:
        out, _, cache = module.multi_head_attention_step(as_half(params), as_half(x[:, t:t + c]), cache,
                                                         local_window_size=opts["window"],
                                                         logits_soft_cap=opts["soft_cap"])
        outs.append(np.asarray(out))
        t += c
    np.testing.assert_allclose(np.concatenate(outs, axis=1), expected, rtol=1e-12, atol=1e-12)


@given(window=st.tuples(st.integers(0, 4), st.integers(0, 4)), is_causal=st.booleans())
@pytest.mark.parametrize("half", HALVES)
def test_a_window_is_its_band_written_out_as_a_mask(half, window, is_causal):
    """``local_window_size`` equals the same call with the band ``t - left <= s <= t + right``
    as a boolean mask, for ``multi_head_attention`` (T != S) and the module."""
    rng = np.random.default_rng(sum(window))
    params = _params(rng, {"num_kv_heads": 2, "normalize_qk": False, "sinks": False})
    T, S = 4, 6
    xq, xkv = rng.normal(size=(B, T, E)), rng.normal(size=(B, S, E))
    t, s = np.arange(T)[:, None], np.arange(S)[None, :]
    band = (s >= t - window[0]) & (s <= t + window[1])
    module = HALVES[half]
    if half == "jax":
        params, xq, xkv = jax.tree.map(jnp.asarray, (params, xq, xkv))
    out, weights = module.multi_head_attention(params, xq, xkv, local_window_size=window, is_causal=is_causal)
    expected, expected_weights = module.multi_head_attention(params, xq, xkv, mask=band, is_causal=is_causal)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-12, atol=1e-12)
    if half == "jax":
        layer = _module(jax.tree.map(np.asarray, params), {"num_kv_heads": 2, "normalize_qk": False, "sinks": False,
                                                           "soft_cap": None}, rotary=False)
        xq32, xkv32 = jnp.asarray(xq, jnp.float32), jnp.asarray(xkv, jnp.float32)
        with highest():
            np.testing.assert_allclose(layer(xq32, xkv32, local_window_size=window, is_causal=is_causal),
                                       layer(xq32, xkv32, mask=band, is_causal=is_causal), **TOL)


def test_decoding_refuses_what_the_cache_cannot_honour():
    module = MultiHeadAttention(N, E, decode=True, rngs=nnx.Rngs(0))
    module.init_cache((B, MAX_LEN, E))
    x = jnp.ones((B, 2, E))
    ids = jnp.zeros((B, 2), jnp.int32)
    with pytest.raises(ValueError, match="segment_ids are not supported with decode"):
        module(x, query_segment_ids=ids, key_value_segment_ids=ids)
    with pytest.raises(ValueError, match="key_value_seq_lengths is not supported with decode"):
        module(x, key_value_seq_lengths=jnp.full((B,), 2))
    with pytest.raises(ValueError, match="local_window_size must be None, an int >= 0 or a pair"):
        module(x, local_window_size=(-1, 0))
    with pytest.raises(ValueError, match="local_window_size must be None"):
        attention_jax.multi_head_attention_step(
            attention_np.init_multi_head_params(np.random.default_rng(0), E, N, H), np.ones((B, 1, E), np.float32),
            attention_np.init_kv_cache(B, MAX_LEN, N, H), local_window_size=(1, 2, 3))


def test_a_paged_cache_refuses_what_the_paged_kernel_cannot_take():
    rng = np.random.default_rng(0)
    opts = {"num_kv_heads": N, "normalize_qk": False, "sinks": False, "soft_cap": None, "window": None}
    module = _module(_params(rng, opts), opts, rotary=False)
    _init_cache(module, 4, rng)
    x = jnp.ones((B, 1, E), jnp.float32)
    for options, name in ((dict(mask=jnp.ones((B, 1, 1, MAX_LEN), bool)), "mask"),
                          (dict(bias=jnp.zeros((B, 1, 1, MAX_LEN))), "bias"), (dict(sow_weights=True), "sow_weights")):
        with pytest.raises(ValueError, match=f"a paged cache decodes with the paged kernel, which takes no {name}"):
            module(x, decode=True, **options)
