"""Variable-length packed attention (``varlen_attention``, both halves): every packed batch
equals attention run on each sequence alone.

The expected values come from a loop written here: each sequence sliced out with the
cumulative lengths, its bottom-right causal mask and window written out (query i stands at
key position ``i + S_b - T_b``), and ``scaled_dot_product_attention`` of the NumPy half
(float64) or, for gradients, of the JAX dense mirror. One ragged packing serves every test:
lengths 0, 1 and up to 97, queries without keys, keys without queries, more queries than
keys and fewer; grouped heads (N=6, K=3). The JAX functions are compiled once per option set
with traced ``cu_seqlens`` and reused across tests (other packings of the same totals run on
the same program); then the block mask that lets the flex path skip other sequences'
blocks, NaN in keys no query sees, the empty edge cases and every bad input's message.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax
import attention_np
from attention_jax.fast.chunked.sparse import EMPTY, FULL
from attention_jax.fast.varlen import pack, packed_block_mask, packed_mask_mod
from attention_np.mods import soft_cap

from .conftest import highest

N, K, H = 6, 3, 5
# (queries, keys) per sequence: equal, no query, one and one, more queries than keys (the
# first 8 see no key when causal), fewer (with a window (5, 0) keys 0 and 1 are seen by no
# query), queries without keys, one and one
LENGTHS_Q = [3, 0, 1, 97, 2, 5, 1]
LENGTHS_K = [3, 4, 1, 89, 9, 0, 1]
CU_Q = np.concatenate([[0], np.cumsum(LENGTHS_Q)]).astype(np.int32)   # total_q = 109
CU_K = np.concatenate([[0], np.cumsum(LENGTHS_K)]).astype(np.int32)   # total_k = 107
TOTAL_Q, TOTAL_K = int(CU_Q[-1]), int(CU_K[-1])
ALIGNED = "aligned"  # an option set run on cu_seqlens_k = cu_seqlens_q (the very object), key rows total_q

OPTIONS = {  # name: options, and the path the JAX half takes
    "plain": dict(),                                                                  # chunked, segment ids
    "causal_scale": dict(is_causal=True, scale=0.7),                                  # flex
    "causal_window_cap_sinks": dict(is_causal=True, local_window_size=(5, 0), logits_soft_cap=3.0, sinks=True),  # flex
    "window_sinks": dict(local_window_size=4, sinks=True),                            # flex, two-sided window
    ALIGNED: dict(is_causal=True, local_window_size=(5, 2), logits_soft_cap=2.0),     # chunked, causal + window
}


def data(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    rows = max(TOTAL_Q, TOTAL_K)
    query = rng.normal(size=(TOTAL_Q, N, H))
    key, value = rng.normal(size=(rows, K, H)), rng.normal(size=(rows, K, H))
    sinks = rng.normal(size=N)
    return tuple(x.astype(dtype) for x in (query, key, value, sinks))


def setup(name, dtype=np.float64, seed=0):
    """``(query, key, value, cu_q, cu_k, options)`` of an option set, its sinks filled in."""
    query, key, value, sinks = data(dtype, seed)
    options = dict(OPTIONS[name])
    if options.pop("sinks", False):
        options["sinks"] = sinks
    cu_k, total_k = (CU_Q, TOTAL_Q) if name == ALIGNED else (CU_K, TOTAL_K)
    return query, key[:total_k], value[:total_k], CU_Q, cu_k, options


def bottom_right_mask(T, S, is_causal=False, local_window_size=None):
    """``(T, S)`` bool: query i stands at key position ``i + S - T`` (FlashAttention's alignment)."""
    i, j = np.arange(T)[:, None], np.arange(S)[None, :]
    position = i + S - T
    mask = np.ones((T, S), bool)
    if is_causal:
        mask &= j <= position
    if local_window_size is not None:
        left, right = (local_window_size, local_window_size) if isinstance(local_window_size, int) else local_window_size
        mask &= (j >= position - left) & (j <= position + right)
    return mask


def each_alone(attention, xp, query, key, value, cu_q, cu_k, *, is_causal=False, local_window_size=None, **options):
    """``(out, lse)``: ``attention`` (a ``scaled_dot_product_attention``) on each sequence's slice."""
    outs, lses = [], []
    for b in range(len(cu_q) - 1):
        (q0, q1), (k0, k1) = (int(cu_q[b]), int(cu_q[b + 1])), (int(cu_k[b]), int(cu_k[b + 1]))
        mask = bottom_right_mask(q1 - q0, k1 - k0, is_causal, local_window_size)
        out, _, lse = attention(query[None, q0:q1], key[None, k0:k1], value[None, k0:k1], mask=mask,
                                return_residual=True, **options)
        outs.append(out[0])
        lses.append(lse[0])
    return xp.concatenate(outs), xp.concatenate(lses)


def assert_lse_close(actual, expected, tol):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    np.testing.assert_array_equal(np.isneginf(actual), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=tol, atol=tol)


@functools.cache
def traced(name):
    """``varlen_attention`` of option set ``name`` under ``jax.jit``, ``cu_seqlens`` traced (and
    for ``ALIGNED`` passed once, for both): one compilation per option set and dtype."""
    options = {k: v for k, v in OPTIONS[name].items() if k != "sinks"}
    if name == ALIGNED:
        return jax.jit(lambda q, k, v, cu, sinks: attention_jax.varlen_attention(
            q, k, v, cu, cu, sinks=sinks, return_residual=True, **options))
    return jax.jit(lambda q, k, v, cu_q, cu_k, sinks: attention_jax.varlen_attention(
        q, k, v, cu_q, cu_k, sinks=sinks, return_residual=True, **options))


def run_traced(name, query, key, value, cu_q, cu_k, sinks=None):
    if name == ALIGNED:
        return traced(name)(query, key, value, jnp.asarray(cu_q), sinks)
    return traced(name)(query, key, value, jnp.asarray(cu_q), jnp.asarray(cu_k), sinks)


# --- values ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OPTIONS)
def test_numpy_equals_each_sequence_alone(name):
    query, key, value, cu_q, cu_k, options = setup(name)
    out, lse = attention_np.varlen_attention(query, key, value, cu_q, cu_k, return_residual=True, **options)
    expected_out, expected_lse = each_alone(attention_np.scaled_dot_product_attention, np, query, key, value,
                                            cu_q, cu_k, **options)
    assert out.shape == (TOTAL_Q, N, H) and out.dtype == np.float64 and lse.shape == (TOTAL_Q, N)
    np.testing.assert_allclose(out, expected_out, rtol=1e-12, atol=1e-12)
    assert_lse_close(lse, expected_lse, 1e-12)
    # a query of a sequence without keys: a zero output, and lse -inf unless it has a sink
    no_key = np.repeat(np.array(LENGTHS_K) == 0, LENGTHS_Q) if name != ALIGNED else np.zeros(TOTAL_Q, bool)
    assert not out[no_key].any()
    if "sinks" not in options:
        assert np.isneginf(lse[no_key]).all()
    plain = attention_np.varlen_attention(query, key, value, cu_q, cu_k, **options)
    assert isinstance(plain, np.ndarray) and np.array_equal(plain, out)


@pytest.mark.parametrize("name", OPTIONS)
def test_jax_float32_equals_each_sequence_alone(name):
    query, key, value, cu_q, cu_k, options = setup(name, np.float32)
    expected_out, expected_lse = each_alone(attention_np.scaled_dot_product_attention, np,
                                            *(x.astype(np.float64) for x in (query, key, value)), cu_q, cu_k,
                                            **{k: (v.astype(np.float64) if k == "sinks" else v)
                                               for k, v in options.items()})
    with highest():
        out, lse = run_traced(name, query, key, value, cu_q, cu_k, options.get("sinks"))
    assert out.dtype == jnp.float32 and out.shape == (TOTAL_Q, N, H) and lse.shape == (TOTAL_Q, N)
    np.testing.assert_allclose(np.asarray(out), expected_out, rtol=2e-5, atol=2e-5)
    assert_lse_close(lse, expected_lse, 2e-5)


@pytest.mark.parametrize("name", ["causal_window_cap_sinks", ALIGNED])
def test_halves_agree_in_float64(name):
    # outside jit, concrete cu_seqlens (checked, and for ALIGNED found equal by value: the chunked path)
    query, key, value, cu_q, cu_k, options = setup(name)
    expected = attention_np.varlen_attention(query, key, value, cu_q, cu_k.copy(), return_residual=True, **options)
    out, lse = attention_jax.varlen_attention(query, key, value, cu_q, cu_k.copy(), return_residual=True, **options)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out), expected[0], rtol=1e-12, atol=1e-12)
    assert_lse_close(lse, expected[1], 1e-12)


def test_one_program_serves_every_packing():
    # the same totals and number of sequences, other lengths: the compiled program is reused
    name = "causal_window_cap_sinks"
    query, key, value, _, _, options = setup(name, np.float32, seed=1)
    for lengths_q, lengths_k in (([10, 20, 30, 40, 9, 0, 0], [0, 50, 5, 45, 7, 0, 0]),
                                 ([109, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 101])):
        cu_q, cu_k = (np.concatenate([[0], np.cumsum(x)]).astype(np.int32) for x in (lengths_q, lengths_k))
        expected_out, expected_lse = each_alone(attention_np.scaled_dot_product_attention, np,
                                                *(x.astype(np.float64) for x in (query, key, value)), cu_q, cu_k,
                                                **{**options, "sinks": options["sinks"].astype(np.float64)})
        with highest():
            out, lse = run_traced(name, query, key, value, cu_q, cu_k, options["sinks"])
        np.testing.assert_allclose(np.asarray(out), expected_out, rtol=2e-5, atol=2e-5)
        assert_lse_close(lse, expected_lse, 2e-5)
    assert traced(name)._cache_size() == 1


# --- gradients -------------------------------------------------------------------------------
@functools.cache
def gradients(name, reference):
    """``jax.grad`` of ``<out, cot_out> + <lse, cot_lse>`` (finite lse) with respect to query, key,
    value and sinks: of ``varlen_attention`` (traced cu_seqlens), or with ``reference`` of the
    per-sequence loop of the dense mirror (concrete cu_seqlens, static slices)."""
    options = {k: v for k, v in OPTIONS[name].items() if k != "sinks"}
    cu_q, cu_k = setup(name)[3:5]

    def loss(query, key, value, sinks, cot_out, cot_lse, cu_seqlens_q, cu_seqlens_k):
        if reference:
            out, lse = each_alone(attention_jax.scaled_dot_product_attention, jnp, query, key, value, cu_q, cu_k,
                                  sinks=sinks, **options)
        else:  # ALIGNED: one array for both, as a caller with equal lengths passes it (the chunked path)
            cu_seqlens_k = cu_seqlens_q if name == ALIGNED else cu_seqlens_k
            out, lse = attention_jax.varlen_attention(query, key, value, cu_seqlens_q, cu_seqlens_k, sinks=sinks,
                                                      return_residual=True, **options)
        return jnp.sum(out * cot_out) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0) * cot_lse)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))


def gradient_inputs(name, seed=2):
    query, key, value, cu_q, cu_k, _ = setup(name, np.float32)
    rng = np.random.default_rng(seed)
    cot_out = rng.normal(size=query.shape).astype(np.float32)
    cot_lse = rng.normal(size=(TOTAL_Q, N)).astype(np.float32)
    sinks = data(np.float32)[3]
    return query, key, value, sinks, cot_out, cot_lse, cu_q, cu_k


@pytest.mark.parametrize("name", ["plain", "causal_window_cap_sinks", ALIGNED])
def test_gradients_equal_the_dense_mirror_on_each_sequence(name):
    # plain: chunked with segment ids; causal_window_cap_sinks: flex; ALIGNED: chunked, causal + window
    inputs = gradient_inputs(name)
    with highest():
        grads = gradients(name, False)(*inputs)
        expected = gradients(name, True)(*inputs)
    for argname, g, e in zip(("query", "key", "value", "sinks"), grads, expected, strict=True):
        assert np.isfinite(np.asarray(g)).all(), argname
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=2e-5, atol=2e-5, err_msg=argname)


def test_causality_by_gradients():
    # d out[t] / d key[s] is zero unless key s is in query t's sequence, at or before its position
    # (and inside its window): one query row's cotangent at a time, through the compiled gradient
    name = "causal_window_cap_sinks"
    query, key, value, sinks, _, _, cu_q, cu_k = gradient_inputs(name)
    rows = {4 + 8: "sees key 0 of its sequence", 4 + 3: "sees none (more queries than keys)", 108: "one query, one key"}
    for t in rows:
        b = int(np.searchsorted(CU_Q, t, side="right") - 1)
        cot_out = np.zeros(query.shape, np.float32)
        cot_out[t] = 1.0
        _, d_key, d_value, _ = gradients(name, False)(query, key, value, sinks, cot_out, np.zeros((TOTAL_Q, N), np.float32),
                                                      cu_q, cu_k)
        seen = np.zeros(TOTAL_K, bool)
        T, S = LENGTHS_Q[b], LENGTHS_K[b]
        seen[CU_K[b]:CU_K[b + 1]] = bottom_right_mask(T, S, True, (5, 0))[t - CU_Q[b]]
        assert not np.asarray(d_key)[~seen].any() and not np.asarray(d_value)[~seen].any(), rows[t]
        assert np.asarray(d_value)[seen].any() == seen.any(), rows[t]


def test_forward_mode_is_refused_by_name():
    query, key, value, cu_q, cu_k, _ = setup("plain", np.float32)
    with pytest.raises(TypeError, match="varlen_attention does not support forward-mode autodiff"):
        jax.jvp(lambda q: attention_jax.varlen_attention(q, key, value, cu_q, cu_k), (query,), (query,))


# --- blocks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["causal_scale", "causal_window_cap_sinks", "window_sinks"])
def test_block_mask_is_sound_and_skips_other_sequences(name):
    # with 8 x 8 blocks: an empty block holds no attended entry, a full block only attended ones,
    # every block that is not empty meets some sequence's (queries, keys) rectangle, and
    # `attended` is exactly the keys some query sees
    query, key, value, cu_q, cu_k, options = setup(name)
    window = options.get("local_window_size")
    window = (window, window) if isinstance(window, int) else window
    packing = pack(cu_q, cu_k, TOTAL_Q, TOTAL_K)
    block_mask = packed_block_mask(packing, options.get("is_causal", False), window, block_sizes=(8, 8))
    dense = np.zeros((TOTAL_Q, TOTAL_K), bool)
    rectangles = np.zeros((TOTAL_Q, TOTAL_K), bool)
    for b in range(len(LENGTHS_Q)):
        rows, cols = slice(CU_Q[b], CU_Q[b + 1]), slice(CU_K[b], CU_K[b + 1])
        dense[rows, cols] = bottom_right_mask(LENGTHS_Q[b], LENGTHS_K[b], options.get("is_causal", False), window)
        rectangles[rows, cols] = True
    mod = packed_mask_mod(packing, options.get("is_causal", False), window)
    evaluated = np.asarray(mod(0, 0, jnp.arange(TOTAL_Q)[:, None], jnp.arange(TOTAL_K)[None, :]))
    np.testing.assert_array_equal(evaluated, dense)
    nq, nk = -(-TOTAL_Q // 8), -(-TOTAL_K // 8)
    pad = lambda x: np.pad(x, [(0, nq * 8 - TOTAL_Q), (0, nk * 8 - TOTAL_K)]).reshape(nq, 8, nk, 8)
    some, every = pad(dense).any(axis=(1, 3)), pad(dense).all(axis=(1, 3))
    touches = pad(rectangles).any(axis=(1, 3))
    states = np.asarray(block_mask.states[0, 0])
    assert not some[states == EMPTY].any() and every[states == FULL].all()
    assert not ((states != EMPTY) & ~touches).any()
    assert (states == EMPTY).mean() > 0.5                                 # most of the 14 x 14 blocks skipped
    np.testing.assert_array_equal(np.asarray(block_mask.attended[0, 0]), dense.any(axis=0))


def test_small_blocks_give_the_same_values_and_gradients():
    # the flex path with 8 x 8 blocks (most skipped), against the per-sequence dense mirror
    name = "causal_window_cap_sinks"
    query, key, value, sinks, cot_out, cot_lse, cu_q, cu_k = gradient_inputs(name)

    def loss(query, key, value, sinks):
        block_mask = packed_block_mask(pack(cu_q, cu_k, TOTAL_Q, TOTAL_K), True, (5, 0), block_sizes=(8, 8))
        out, lse = attention_jax.flex_attention(query[None], key[None], value[None], block_mask=block_mask,
                                                score_mod=soft_cap(3.0), sinks=sinks,
                                                return_residual=True)
        return jnp.sum(out[0] * cot_out) + jnp.sum(jnp.where(jnp.isfinite(lse[0]), lse[0], 0.0) * cot_lse)

    with highest():
        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(query, key, value, sinks)
        expected = gradients(name, True)(query, key, value, sinks, cot_out, cot_lse, cu_q, cu_k)
    for argname, g, e in zip(("query", "key", "value", "sinks"), grads, expected, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=2e-5, atol=2e-5, err_msg=argname)


@pytest.mark.parametrize("name", ["plain", "causal_window_cap_sinks"])
def test_keys_no_query_sees_are_never_read(name):
    # NaN in the keys of the sequence without queries, and (window (5, 0)) in the keys left of
    # the window of sequence 4's first query: nothing changes, on either half
    query, key, value, cu_q, cu_k, options = setup(name, np.float32)
    poisoned_key, poisoned_value = key.copy(), value.copy()
    unseen = list(range(CU_K[1], CU_K[2]))                                # sequence 1: 4 keys, no query
    if options.get("local_window_size") == (5, 0):                       # sequence 4: p_0 = 7, keys 0, 1 unseen
        unseen += [CU_K[4], CU_K[4] + 1]
    poisoned_key[unseen], poisoned_value[unseen] = np.nan, np.nan
    numpy_clean = attention_np.varlen_attention(query, key, value, cu_q, cu_k, return_residual=True, **options)
    numpy_dirty = attention_np.varlen_attention(query, poisoned_key, poisoned_value, cu_q, cu_k, return_residual=True,
                                                **options)
    jax_clean = run_traced(name, query, key, value, cu_q, cu_k, options.get("sinks"))
    jax_dirty = run_traced(name, query, poisoned_key, poisoned_value, cu_q, cu_k, options.get("sinks"))
    for clean, dirty in zip(numpy_clean + jax_clean, numpy_dirty + jax_dirty, strict=True):  # out, lse of each half
        np.testing.assert_array_equal(np.asarray(clean), np.asarray(dirty))


def test_rows_outside_cu_seqlens_under_jit_get_zeros():
    # inside jit the values are not checked: rows past cu_seqlens_q[-1] belong to no sequence
    name = "plain"
    query, key, value, cu_q, cu_k, _ = setup(name, np.float32)
    short_q = cu_q.copy()
    short_q[-1] -= 1                                                        # the last query row is left out
    out, lse = run_traced(name, query, key, value, short_q, cu_k)
    assert not np.asarray(out)[-1].any() and np.isneginf(np.asarray(lse)[-1]).all()
    full = run_traced(name, query, key, value, cu_q, cu_k)[0]
    np.testing.assert_array_equal(np.asarray(out)[:-1], np.asarray(full)[:-1])


@pytest.mark.parametrize("half", [attention_np, attention_jax], ids=["numpy", "jax"])
def test_empty_batches(half):
    rng = np.random.default_rng(3)
    sinks = rng.normal(size=N)
    # no query rows at all; queries with no key rows at all (zeros, lse = the sink)
    out = half.varlen_attention(np.zeros((0, N, H)), rng.normal(size=(4, K, H)), rng.normal(size=(4, K, H)),
                                np.array([0, 0, 0]), np.array([0, 1, 4]), is_causal=True)
    assert out.shape == (0, N, H)
    out, lse = half.varlen_attention(rng.normal(size=(3, N, H)), np.zeros((0, K, H)), np.zeros((0, K, H)),
                                     np.array([0, 3]), np.array([0, 0]), is_causal=True, sinks=sinks,
                                     return_residual=True)
    assert not np.asarray(out).any()
    np.testing.assert_allclose(np.asarray(lse), np.broadcast_to(sinks, (3, N)), rtol=1e-12)
    # no sequence at all
    out = half.varlen_attention(np.zeros((0, N, H)), np.zeros((0, K, H)), np.zeros((0, K, H)), np.array([0]),
                                np.array([0]))
    assert out.shape == (0, N, H)


# --- bad input -------------------------------------------------------------------------------
Q, KV = np.zeros((5, 6, 4)), np.zeros((7, 3, 4))
CU_Q_OK, CU_K_OK = np.array([0, 2, 5]), np.array([0, 3, 7])
BAD = [
    (dict(query=np.zeros((1, 5, 6, 4))), ValueError, r"query must have shape \(total_q, N, H\); got \(1, 5, 6, 4\)"),
    (dict(key=np.zeros((7, 3, 5))), ValueError,
     r"key must have shape \(total_k, K, H\) with H=4 from query; got \(7, 3, 5\)"),
    (dict(value=np.zeros((6, 3, 4))), ValueError,
     r"value must have shape \(total_k, K, H\) with total_k=7, K=3 from key, H=4 from query; got \(6, 3, 4\)"),
    (dict(value=np.zeros((7, 3, 4), np.float32)), TypeError, r"value must have the dtype of query \(float64\); got float32"),
    (dict(key=np.zeros((7, 4, 4)), value=np.zeros((7, 4, 4))), ValueError,
     r"the number of query heads N=6 must be a multiple of the number of key/value heads K=4"),
    (dict(query=np.zeros((5, 6, 4), np.int32)), TypeError, r"query must have a floating dtype"),
    (dict(cu_seqlens_q=np.array([0.0, 2.0, 5.0])), TypeError,
     r"cu_seqlens_q must have an integer dtype \(cumulative sequence lengths, from 0\); got float64"),
    (dict(cu_seqlens_k=np.array([[0, 3, 7]])), ValueError,
     r"cu_seqlens_k must have shape \(num_seqs \+ 1,\): sequence b's rows are cu_seqlens_k\[b\]:cu_seqlens_k\[b \+ 1\]; got \(1, 3\)"),
    (dict(cu_seqlens_q=np.zeros(0, int)), ValueError, r"cu_seqlens_q must have shape \(num_seqs \+ 1,\).*; got \(0,\)"),
    (dict(cu_seqlens_k=np.array([0, 7])), ValueError,
     r"cu_seqlens_k must have shape \(num_seqs \+ 1,\) = \(3,\) from cu_seqlens_q, the same number of sequences "
     r"for queries and keys; got \(2,\)"),
    (dict(cu_seqlens_q=np.array([1, 2, 5])), ValueError,
     r"cu_seqlens_q must start at 0 \(the first sequence's first row\); got cu_seqlens_q\[0\] = 1"),
    (dict(cu_seqlens_k=np.array([0, 8, 7])), ValueError,
     r"cu_seqlens_k must be non-decreasing \(sequence b's rows are cu_seqlens_k\[b\]:cu_seqlens_k\[b \+ 1\]\); "
     r"got cu_seqlens_k\[2\] = 7 < cu_seqlens_k\[1\] = 8"),
    (dict(cu_seqlens_q=np.array([0, 2, 4])), ValueError,
     r"cu_seqlens_q must end at total_q = 5, the number of packed rows; got cu_seqlens_q\[-1\] = 4"),
    (dict(cu_seqlens_k=np.array([0, 3, 8])), ValueError,
     r"cu_seqlens_k must end at total_k = 7, the number of packed rows; got cu_seqlens_k\[-1\] = 8"),
    (dict(sinks=np.zeros(3)), ValueError, r"sinks must have shape \(N,\) = \(6,\), one logit per query head; got \(3,\)"),
    (dict(logits_soft_cap=0.0), ValueError, r"logits_soft_cap must be None or a finite number > 0; got 0.0"),
    (dict(local_window_size=(-1, 0)), ValueError, r"local_window_size must be None, an int >= 0 or a pair"),
    (dict(scale=float("inf")), ValueError, r"scale must be a finite real number; got inf"),
]


@pytest.mark.parametrize("half", [attention_np, attention_jax], ids=["numpy", "jax"])
@pytest.mark.parametrize("bad, error, message", BAD, ids=[f"{i}-{next(iter(b))}" for i, (b, _, _) in enumerate(BAD)])
def test_bad_input_is_named(half, bad, error, message):
    args = dict(query=Q, key=KV, value=KV, cu_seqlens_q=CU_Q_OK, cu_seqlens_k=CU_K_OK) | bad
    options = {k: args.pop(k) for k in ("sinks", "logits_soft_cap", "local_window_size", "scale") if k in args}
    with pytest.raises(error, match=message):
        half.varlen_attention(*args.values(), **options)


def test_under_jit_shapes_are_checked_and_values_are_not():
    # shapes are known while tracing: the same errors; traced values cannot be read: no error
    with pytest.raises(ValueError, match=r"cu_seqlens_k must have shape \(num_seqs \+ 1,\) = \(3,\) from cu_seqlens_q"):
        jax.jit(attention_jax.varlen_attention)(Q, KV, KV, CU_Q_OK, np.array([0, 7]))
    out = jax.jit(attention_jax.varlen_attention)(Q, KV, KV, np.array([1, 2, 5]), CU_K_OK)  # no ValueError
    assert out.shape == Q.shape
