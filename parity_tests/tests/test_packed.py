"""Packed sequences (segment ids), the logits soft-cap, attention sinks and the log-sum-exp
residual, on every path that has them.

The expected values are written out here in NumPy (float64: logits by einsum, capped,
a masked softmax with the sink as one more column of zero value, its log-sum-exp), never
taken from the library's own mask or softmax helpers. Then: every JAX path against them
(float32, matmul precision "highest"); gradients of the blocked path against the dense
mirror (float64) and against finite differences of the NumPy half; the blocks that segment
ids let ``chunked_attention`` skip, counted and proven unread with NaN; the multi-head
function and the NNX module; the error messages. Random packings (segment ids sorted or
not, with soft-caps, sinks and the residual) on every path are the property test of
``test_every_path.py``: segment ids are among the options of ``parity_tests.testing.problems``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention_jax
import attention_jax.nnx
import attention_np
from attention_jax.fast.chunked.config import Config
from attention_jax.fast.chunked.layout import make_rows
from attention_jax.fast.chunked.sparse import EMPTY, FULL, PARTIAL, option_states
from parity_tests import testing
from parity_tests.testing import check, qkv

from .conftest import highest

# Prime sizes, T != S, grouped key/value heads; 19 and 23 are not multiples of the 8 x 8 blocks.
B, T, S, N, K, H = 2, 19, 23, 6, 3, 5
# Sorted ids, one packing per batch row; query segment 3 has no key (its queries are dead),
# and with is_causal queries 10 and 11 of row 1 see no key of segment 5 (keys 12.. only).
QUERY_IDS = np.array([[0] * 7 + [1] * 6 + [3] * 6, [4] * 10 + [5] * 9])       # (B, T)
KEY_IDS = np.array([[0] * 9 + [1] * 8 + [2] * 6, [4] * 12 + [5] * 11])        # (B, S)
KEY_LENGTHS = np.array([20, 17])
WINDOW = (4, 2)


def packed_mask(query_ids, key_ids, *, is_causal=False, key_value_seq_lengths=None, local_window_size=None):
    """``(B, 1, T, S)`` bool: same segment, and the causal / length / window rules, written out."""
    T, S = query_ids.shape[1], key_ids.shape[1]
    mask = query_ids[:, None, :, None] == key_ids[:, None, None, :]
    t, s = np.arange(T)[:, None], np.arange(S)[None, :]
    if is_causal:
        mask = mask & (s <= t)
    if key_value_seq_lengths is not None:
        mask = mask & (s < np.asarray(key_value_seq_lengths)[:, None, None, None])
    if local_window_size is not None:
        left, right = local_window_size
        mask = mask & (s >= t - left) & (s <= t + right)
    return mask


def written_out(query, key, value, mask=None, *, soft_cap=None, sinks=None):
    """``(out (B, T, N, H), weights (B, N, T, S), lse (B, T, N))`` in float64: einsum logits,
    ``c tanh(x / c)``, masked logits -inf, the sink as column S with value 0, softmax, weights
    @ values; ``lse = log(e^sink + sum_attended e^x)``, -inf for a row with neither."""
    query, key, value = (np.asarray(x, np.float64) for x in (query, key, value))
    _, _, n, h = query.shape
    key, value = (np.repeat(x, n // x.shape[2], axis=2) for x in (key, value))
    logits = np.einsum("btnh,bsnh->bnts", query, key) / np.sqrt(h)
    if soft_cap is not None:
        logits = soft_cap * np.tanh(logits / soft_cap)
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
    sink = np.full(logits.shape[:-1] + (1,), -np.inf)
    if sinks is not None:
        sink = np.broadcast_to(np.asarray(sinks, np.float64).reshape(1, n, 1, 1), sink.shape)
    columns = np.concatenate([logits, sink], axis=-1)                              # (B, N, T, S + 1)
    peak = columns.max(axis=-1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    exp = np.exp(columns - peak)
    total = exp.sum(axis=-1, keepdims=True)
    weights = (exp / np.where(total > 0, total, 1.0))[..., :-1]                  # the sink's weight dropped
    out = np.einsum("bnts,bsnh->btnh", weights, value)
    lse = np.where(total > 0, peak + np.log(np.where(total > 0, total, 1.0)), -np.inf)[..., 0]
    return out, weights, lse.transpose(0, 2, 1)


def inputs(seed, dtype=np.float64, T=T, S=S):
    """``(query, key, value, sinks (N,))`` drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    return *qkv(B, T, S, N, K, H, dtype=dtype, rng=rng), rng.normal(size=N).astype(dtype)


# 1. The NumPy half against NumPy written here -------------------------------------------------


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_numpy_segment_ids_are_the_boolean_mask(is_causal):
    """Segment ids give the same numbers as the explicit mask ``ids_q == ids_k`` (self-attention
    with one id array, and cross-attention with two)."""
    q, k, v, _ = inputs(0)
    mask = packed_mask(QUERY_IDS, KEY_IDS)
    got = attention_np.scaled_dot_product_attention(q, k, v, query_segment_ids=QUERY_IDS,
                                                    key_value_segment_ids=KEY_IDS, is_causal=is_causal)
    want = attention_np.scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    q_self = np.concatenate([q, q[:, :S - T]], axis=1)                             # (B, S, N, H): T = S
    got = attention_np.scaled_dot_product_attention(q_self, k, v, key_value_segment_ids=KEY_IDS, is_causal=is_causal)
    want = attention_np.scaled_dot_product_attention(q_self, k, v, mask=packed_mask(KEY_IDS, KEY_IDS),
                                                     is_causal=is_causal)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


OPTIONS = {
    "soft_cap": dict(logits_soft_cap=1.5),
    "sinks": dict(sinks=True),
    "segments+soft_cap+sinks+causal": dict(segments=True, logits_soft_cap=2.0, sinks=True, is_causal=True),
}


@pytest.mark.parametrize("name", OPTIONS)
def test_numpy_against_the_written_out_formula(name):
    """Soft-cap, sinks and the residual of the NumPy half equal the formula above to 1e-12:
    out, weights (which with sinks sum to less than 1) and lse."""
    option = OPTIONS[name]
    q, k, v, sinks = inputs(1)
    sinks = sinks if option.get("sinks") else None
    ids = dict(query_segment_ids=QUERY_IDS, key_value_segment_ids=KEY_IDS) if option.get("segments") else {}
    mask = packed_mask(QUERY_IDS, KEY_IDS, is_causal=option.get("is_causal", False)) if ids else None
    out, weights, lse = attention_np.scaled_dot_product_attention(
        q, k, v, is_causal=option.get("is_causal", False), logits_soft_cap=option.get("logits_soft_cap"),
        sinks=sinks, return_residual=True, **ids)
    expected = written_out(q, k, v, mask, soft_cap=option.get("logits_soft_cap"), sinks=sinks)
    for name, got, want in zip(("out", "weights", "lse"), (out, weights, lse), expected):
        check(got, want, "float64", name=name)
    if sinks is not None:
        assert (weights.sum(-1) < 1).all()


def test_numpy_soft_cap_bounds_the_logits():
    """A huge logit capped at c: two keys with scaled logits 1e6 and 0 under c = 1 weigh
    e^tanh(1e6) : e^0 = e : 1, not one-hot."""
    query = np.array([[[[1e6 * np.sqrt(2), 0.0]]]])               # (1, 1, 1, 2): scale 1 / sqrt(2)
    key = np.array([[[[1.0, 0.0]], [[0.0, 0.0]]]])                # (1, 2, 1, 2)
    value = np.array([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    _, weights = attention_np.scaled_dot_product_attention(query, key, value, logits_soft_cap=1.0)
    check(weights[0, 0, 0], [np.e / (np.e + 1), 1 / (np.e + 1)], "float64", tolerance=1e-15)


def test_numpy_residual_equals_jax_nn():
    """lse equals ``jax.nn.dot_product_attention(..., return_residual=True)``'s residual, laid out
    (B, T, N), on every row that attends some key, to float32 accuracy (jax.nn's softmax runs
    in float32); jax.nn gives a dead row a finite lse of its large negative padding, ours is -inf."""
    q, k, v, _ = inputs(2)
    mask = packed_mask(QUERY_IDS, KEY_IDS, is_causal=True)
    _, _, lse = attention_np.scaled_dot_product_attention(q, k, v, query_segment_ids=QUERY_IDS,
                                                          key_value_segment_ids=KEY_IDS, is_causal=True,
                                                          return_residual=True)
    _, residual = jax.nn.dot_product_attention(q, np.repeat(k, N // K, 2), np.repeat(v, N // K, 2),
                                               mask=mask, return_residual=True)
    live = mask.any(-1)[:, 0][..., None].repeat(N, -1)                            # (B, T, N)
    assert residual.shape == lse.shape == (B, T, N)
    assert (~live).any() and live.any()
    # jax.nn casts the logits to float32 before its softmax and logsumexp, even for float64 input
    check(lse[live], np.asarray(residual)[live], "float64", tolerance=1e-6)
    assert np.isneginf(lse[~live]).all()


# 2. Every JAX path against the NumPy float64 formula, in float32 ---------------------------------


def _out_and_lse(call):
    """A path of :data:`parity_tests.testing.PATHS` (or alike) returning ``(out, lse or None)``."""
    def path(*args, **options):
        result = call(*args, **options)
        return result if options.get("return_residual") else (result, None)
    return path


PATHS = {
    "scaled_dot_product_attention": _out_and_lse(testing.PATHS["scaled_dot_product_attention"].call),
    "chunked_attention 8x8": _out_and_lse(lambda *a, **o: attention_jax.chunked_attention(*a, block_sizes=(8, 8), **o)),
    "chunked_attention default": _out_and_lse(attention_jax.chunked_attention),
    "dot_product_attention None": _out_and_lse(testing.PATHS["dot_product_attention None"].call),
    "dot_product_attention dense": _out_and_lse(lambda *a, **o: attention_jax.dot_product_attention(
        *a, implementation="dense", **o)),
    "dot_product_attention chunked": _out_and_lse(testing.PATHS["dot_product_attention chunked"].call),
}
# segments always with both id arrays (T != S); "sinks": True means the test's random sinks
COMBOS = {
    "segments+causal": dict(segments=True, is_causal=True),
    "segments+soft_cap+sinks, residual": dict(segments=True, logits_soft_cap=2.0, sinks=True, return_residual=True),
    "segments+causal+lengths+window+sinks, residual": dict(
        segments=True, is_causal=True, key_value_seq_lengths=KEY_LENGTHS, local_window_size=WINDOW, sinks=True,
        return_residual=True),
    "residual+soft_cap, no segments": dict(logits_soft_cap=1.0, return_residual=True),
}


def call_options(combo, sinks):
    """The library's keyword arguments for a combo, and the matching written-out mask."""
    options = {name: value for name, value in combo.items() if name not in ("segments", "sinks")}
    if combo.get("sinks"):
        options["sinks"] = sinks
    if combo.get("segments"):
        options |= dict(query_segment_ids=QUERY_IDS, key_value_segment_ids=KEY_IDS)
        mask = packed_mask(QUERY_IDS, KEY_IDS, is_causal=combo.get("is_causal", False),
                           key_value_seq_lengths=combo.get("key_value_seq_lengths"),
                           local_window_size=combo.get("local_window_size"))
    else:
        mask = packed_mask(np.zeros((B, T), int), np.zeros((B, S), int), is_causal=combo.get("is_causal", False))
    return options, mask


@pytest.mark.parametrize("combo", COMBOS)
def test_jax_paths_equal_the_formula(combo):
    """Every path in float32 (matmul precision "highest") within 1e-5 of the float64 formula:
    out, lse (-inf exactly where no key and no sink), dead queries exactly zero."""
    q, k, v, sinks = inputs(3, np.float32)
    options, mask = call_options(COMBOS[combo], sinks)
    out64, _, lse64 = written_out(q, k, v, mask, soft_cap=options.get("logits_soft_cap"), sinks=options.get("sinks"))
    dead = ~mask.any(-1)[:, 0]                                                     # (B, T)
    assert dead.any() == bool(COMBOS[combo].get("segments"))
    for name, path in PATHS.items():
        with highest():
            out, lse = path(q, k, v, **options)
        assert out.dtype == jnp.float32, name
        check(out, out64, "float32", name=name)
        assert (np.asarray(out)[dead] == 0).all(), name
        assert (lse is not None) == bool(options.get("return_residual")), name
        if lse is not None:
            check(lse, lse64, "float32", name=f"{name}: lse")


# 3. Gradients: the blocked path's custom VJP against the dense mirror, and finite differences ----

GRAD_OPTIONS = dict(query_segment_ids=QUERY_IDS, key_value_segment_ids=KEY_IDS, is_causal=True,
                    key_value_seq_lengths=KEY_LENGTHS, local_window_size=WINDOW, logits_soft_cap=2.0,
                    return_residual=True)


def _loss_parts(seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, T, N, H)), rng.normal(size=(B, T, N))


def loss(path, d_out, d_lse):
    """``sum(out * d_out) + sum(lse * d_lse)`` over the rows whose lse is finite."""
    def f(q, k, v, sinks):
        out, lse = path(q, k, v, sinks=sinks, **GRAD_OPTIONS)
        return jnp.sum(out * d_out) + jnp.sum(jnp.where(jnp.isfinite(lse), lse * d_lse, 0.0))
    return f


def numpy_loss(q, k, v, sinks, d_out, d_lse):
    out, _, lse = attention_np.scaled_dot_product_attention(q, k, v, sinks=sinks, **GRAD_OPTIONS)
    return np.sum(out * d_out) + np.sum(np.where(np.isfinite(lse), lse * d_lse, 0.0))


@pytest.fixture(scope="module")
def float64_gradients():
    """Gradients w.r.t. (query, key, value, sinks), float64, of the chunked path (8 x 8 blocks)
    and of the dense mirror, on segments + causal + lengths + window + soft-cap + sinks + lse."""
    q, k, v, sinks = inputs(4)
    d_out, d_lse = _loss_parts(5)
    grads = {name: jax.jit(jax.grad(loss(PATHS[name], d_out, d_lse), argnums=(0, 1, 2, 3)))(q, k, v, sinks)
             for name in ("chunked_attention 8x8", "scaled_dot_product_attention")}
    return (q, k, v, sinks, d_out, d_lse), grads


def test_chunked_gradients_equal_the_mirror(float64_gradients):
    """``jax.grad`` through the chunked path's custom VJP (blocks skipped, single-segment blocks
    unmasked) equals ``jax.grad`` through the dense mirror to 1e-12, for q, k, v and the sinks."""
    _, grads = float64_gradients
    for name, chunked, mirror in zip("qkv", grads["chunked_attention 8x8"], grads["scaled_dot_product_attention"]):
        assert np.isfinite(np.asarray(chunked)).all()
        check(chunked, mirror, "float64", name=name)
    check(grads["chunked_attention 8x8"][3], grads["scaled_dot_product_attention"][3], "float64", name="sinks")
    assert (np.abs(grads["chunked_attention 8x8"][3]) > 1e-3).all()


def test_sink_gradients_equal_finite_differences(float64_gradients):
    """The sinks' gradient equals central differences of the NumPy half's loss (float64)."""
    (q, k, v, sinks, d_out, d_lse), grads = float64_gradients
    eps = 1e-5
    for n in (0, N // 2, N - 1):
        step = np.zeros(N)
        step[n] = eps
        fd = (numpy_loss(q, k, v, sinks + step, d_out, d_lse) - numpy_loss(q, k, v, sinks - step, d_out, d_lse)) / (2 * eps)
        check(grads["chunked_attention 8x8"][3][n], fd, "float64", tolerance=1e-8, name=f"d_sinks[{n}]")


# 4. Block skipping on chunked_attention with segment ids ------------------------------------------

# B = 2, T = S = 32, blocks of 8: row 0 has documents of 8 and 24 tokens (query block 0 meets
# key block 0 alone), row 1 documents of 5, 10 and 17 tokens.
SKIP_IDS = np.array([[0] * 8 + [1] * 24, [0] * 5 + [1] * 10 + [2] * 17])
SKIP_BLOCK = 8


def expected_states(ids, is_causal, block):
    """``(B, nq, nk)`` block states from the element mask, written out: empty when no (query,
    key) entry of the block is attended, full when every one is, partial otherwise."""
    mask = packed_mask(ids, ids, is_causal=is_causal)[:, 0]                       # (B, L, L)
    n = ids.shape[1] // block
    blocks = mask.reshape(ids.shape[0], n, block, n, block).transpose(0, 1, 3, 2, 4)  # (B, nq, nk, qc, kc)
    some, every = blocks.any(axis=(-2, -1)), blocks.all(axis=(-2, -1))
    return np.where(every, FULL, np.where(some, PARTIAL, EMPTY))


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_block_states_of_segment_ids(is_causal):
    """``option_states`` (what the forward and backward loops visit) equals the states counted
    here from the ids and the causal rule: exact for sorted ids."""
    b, L = SKIP_IDS.shape
    cfg = Config(is_causal=is_causal, query_chunk=SKIP_BLOCK, key_chunk=SKIP_BLOCK, T=L, S=L, G=N // K,
                 has_segments=True)
    rows = make_rows(cfg, b, K, query_segment_ids=SKIP_IDS)
    n = L // SKIP_BLOCK
    states = np.asarray(option_states(rows, cfg, n, n))[:, 0]                     # (B, nq, nk)
    expected = expected_states(SKIP_IDS, is_causal, SKIP_BLOCK)
    np.testing.assert_array_equal(states, expected)
    counts = {name: int((expected == kind).sum()) for name, kind in (("empty", EMPTY), ("partial", PARTIAL),
                                                                       ("full", FULL))}
    # by hand, of 16 blocks a row. Row 0: (0, 0) and the 3 x 3 of document 1 full, the other 6 empty
    # (causal: the diagonal partial, the 6 above it and (1..3, 0) empty, (2, 1), (3, 1), (3, 2) full).
    # Row 1 (block 0 holds ids 0 and 1, block 1 ids 1 and 2): 4 empty, 8 partial, (2..3, 2..3) full
    # (causal: 6 above the diagonal and (2, 0), (3, 0) empty, (3, 2) full, the other 7 partial).
    assert counts == ({"empty": 6 + 4, "partial": 0 + 8, "full": 10 + 4} if not is_causal else
                      {"empty": 9 + 8, "partial": 4 + 7, "full": 3 + 1}), counts


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_skipped_blocks_are_never_read(is_causal):
    """NaN in the keys and values of document 1 of row 0 (keys 8..31): the queries of document 0
    (block 0, which meets key block 0 alone) keep finite outputs equal to the NaN-free ones, and
    so do the gradients of their queries and of keys 0..7 when the loss reads only those queries;
    the NaN reaches document 1, as NaN in inputs must."""
    rng = np.random.default_rng(6)
    L = SKIP_IDS.shape[1]
    q, k, v = (rng.normal(size=(1, L, N if i == 0 else K, H)) for i in range(3))
    ids = SKIP_IDS[:1]
    poisoned_k, poisoned_v = k.copy(), v.copy()
    poisoned_k[:, 8:], poisoned_v[:, 8:] = np.nan, np.nan

    @jax.jit
    def run(q, k, v):
        def first_document(q, k, v):
            out = attention_jax.chunked_attention(q, k, v, query_segment_ids=ids, is_causal=is_causal,
                                                  block_sizes=(SKIP_BLOCK, SKIP_BLOCK))
            return jnp.sum(out[:, :8] ** 2), out
        return jax.value_and_grad(first_document, argnums=(0, 1, 2), has_aux=True)(q, k, v)

    (_, clean), clean_grads = run(q, k, v)
    (_, out), grads = run(q, poisoned_k, poisoned_v)
    out = np.asarray(out)
    assert np.isnan(out[:, 8:]).all()
    np.testing.assert_array_equal(out[:, :8], clean[:, :8])
    for name, g, c in zip("qkv", grads, clean_grads):
        np.testing.assert_array_equal(g[:, :8], c[:, :8], err_msg=name)


def test_keys_of_a_segment_no_query_has_are_padding():
    """Keys whose segment id no query has are attended by nobody: padding, as in the dense paths,
    so NaN stored there reaches no output or gradient on the blocked path either (the query ids
    are all 0, keys 4..7 are segment 5, one partial block of 8 x 8)."""
    rng = np.random.default_rng(7)
    q, k, v = (rng.normal(size=(1, 8, 1, 2)) for _ in range(3))
    k[:, 4:], v[:, 4:] = np.nan, np.nan
    ids = dict(query_segment_ids=np.zeros((1, 8), int), key_value_segment_ids=np.array([[0] * 4 + [5] * 4]))
    expected, _ = attention_np.scaled_dot_product_attention(q, k, v, **ids)
    assert np.isfinite(expected).all()
    check(attention_jax.scaled_dot_product_attention(q, k, v, **ids)[0], expected, "float64", name="mirror")
    check(attention_jax.chunked_attention(q, k, v, **ids), expected, "float64", name="chunked")
    check(attention_jax.dot_product_attention(q, k, v, implementation="chunked", **ids), expected, "float64",
          name="dot_product_attention chunked")
    d_query = jax.grad(lambda q: jnp.sum(attention_jax.chunked_attention(q, k, v, **ids)))(q)
    assert np.isfinite(np.asarray(d_query)).all()


# 5. Multi-head attention: the function in both halves, the NNX module -----------------------------

E, F = 4, 3  # model width in, width out
MHA_OPTIONS = dict(query_segment_ids=QUERY_IDS, key_value_segment_ids=KEY_IDS, logits_soft_cap=2.5)


def mha_problem(seed):
    """Float64 params (with sinks and a nonzero output bias), inputs ``x (B, T, E)``, ``kv (B, S, E)``."""
    rng = np.random.default_rng(seed)
    params = attention_np.init_multi_head_params(rng, E, N, H, num_kv_heads=K, out_features=F, dtype=np.float64)
    params = jax.tree.map(lambda a: a + rng.normal(size=a.shape) * 0.5, params)   # nonzero biases
    params["sinks"] = rng.normal(size=N)
    return params, rng.normal(size=(B, T, E)), rng.normal(size=(B, S, E))


def mha_written_out(params, x, kv):
    """Projections by einsum, the NumPy half's scaled_dot_product_attention, the output
    projection; rows whose query has no key of its segment zero."""
    q = np.einsum("bte,enh->btnh", x, params["query"]["kernel"]) + params["query"]["bias"]
    k = np.einsum("bse,ekh->bskh", kv, params["key"]["kernel"]) + params["key"]["bias"]
    v = np.einsum("bse,ekh->bskh", kv, params["value"]["kernel"]) + params["value"]["bias"]
    heads, _ = attention_np.scaled_dot_product_attention(q, k, v, sinks=params["sinks"], **MHA_OPTIONS)
    out = np.einsum("btnh,nhf->btf", heads, params["out"]["kernel"]) + params["out"]["bias"]
    attends = packed_mask(QUERY_IDS, KEY_IDS).any(-1)[:, 0]                       # (B, T)
    return np.where(attends[..., None], out, 0.0), attends


def test_multi_head_attention_both_halves():
    """``multi_head_attention`` with params["sinks"], segment ids and a soft-cap: NumPy and JAX
    (float64) equal each other and the composition written out to 1e-12; a query whose segment
    has no key gets an exactly zero row, not the output bias."""
    params, x, kv = mha_problem(8)
    expected, attends = mha_written_out(params, x, kv)
    assert (~attends).any() and (params["out"]["bias"] != 0).all()
    for half in (attention_np, attention_jax):
        out, weights = half.multi_head_attention(params, x, kv, **MHA_OPTIONS)
        check(out, expected, "float64", name=half.__name__)
        assert (np.asarray(out)[~attends] == 0).all()
        assert (np.asarray(weights).sum(-1) < 1).all()                           # the sinks take a share


@pytest.fixture(scope="module")
def module_and_params():
    """A float64 NNX module with sinks and a soft-cap, its params set to :func:`mha_problem`'s."""
    params, x, kv = mha_problem(9)
    # built abstract (eval_shape: no initialisation run), then every parameter set
    module = nnx.eval_shape(lambda: attention_jax.nnx.MultiHeadAttention(
        N, E, qkv_features=N * H, out_features=F, num_kv_heads=K, use_sinks=True,
        logits_soft_cap=MHA_OPTIONS["logits_soft_cap"], decode=False, param_dtype=jnp.float64, rngs=nnx.Rngs(0)))
    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    nnx.update(module, state)
    return module, x, kv


def test_nnx_module_equals_the_numpy_function(module_and_params):
    """The module (dense and chunked) equals ``attention_np.multi_head_attention`` on its own
    ``nnx.to_pure_dict(nnx.state(module, nnx.Param))`` to 1e-12; queries whose segment has no
    key give exactly zero rows."""
    module, x, kv = module_and_params
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    expected, _ = attention_np.multi_head_attention(params, x, kv, **MHA_OPTIONS)
    _, attends = mha_written_out(params, x, kv)
    ids = {name: MHA_OPTIONS[name] for name in ("query_segment_ids", "key_value_segment_ids")}
    call = nnx.jit(lambda module, implementation: module(x, kv, implementation=implementation, **ids),
                   static_argnums=1)
    for implementation in ("dense", "chunked"):
        out = np.asarray(call(module, implementation))
        check(out, expected, "float64", name=implementation)
        assert (out[~attends] == 0).all()


def test_nnx_sink_gradient_equals_the_function(module_and_params):
    """``nnx.grad`` gives ``sinks`` a finite nonzero gradient equal to ``jax.grad`` of the
    functional ``multi_head_attention`` w.r.t. params["sinks"]."""
    module, x, kv = module_and_params
    ids = {name: MHA_OPTIONS[name] for name in ("query_segment_ids", "key_value_segment_ids")}
    d_out = np.random.default_rng(10).normal(size=(B, T, F))
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x, kv, **ids) * d_out)))(module)
    params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    expected = jax.grad(lambda sinks: jnp.sum(attention_jax.multi_head_attention(
        params | {"sinks": sinks}, x, kv, **MHA_OPTIONS)[0] * d_out))(params["sinks"])
    sink_grad = np.asarray(grads["sinks"][...])
    assert np.isfinite(sink_grad).all() and (np.abs(sink_grad) > 1e-6).all()
    check(sink_grad, expected, "float64", name="d_sinks")


def test_nnx_sinks_init_and_decode_with_segment_ids_is_an_error():
    """``use_sinks=True`` makes a learnable ``sinks`` Param (N,) of zeros; the decode cache keeps no
    segment ids, so passing them while decoding is a ValueError."""
    module = attention_jax.nnx.MultiHeadAttention(2, E, decode=True, use_sinks=True, rngs=nnx.Rngs(0))
    assert isinstance(module.sinks, nnx.Param) and module.sinks.shape == (2,) and (module.sinks[...] == 0).all()
    module.init_cache((1, 4, E))
    with pytest.raises(ValueError, match="query_segment_ids and key_value_segment_ids are not supported with decode"):
        module(np.ones((1, 1, E), np.float32), query_segment_ids=np.zeros((1, 1), np.int32))


# 6. Errors: the messages of attention_np/_validate, on the JAX-only paths ---------------------------

_z = lambda *shape, dtype=np.float32: np.zeros(shape, dtype)  # noqa: E731
ERRORS = [
    (dict(query_segment_ids=_z(B, T)), TypeError,
     "query_segment_ids must have an integer dtype (one segment id per token); got float32"),
    (dict(query_segment_ids=_z(B, T, dtype=np.int32), key_value_segment_ids=_z(B, T, dtype=np.int32)), ValueError,
     f"key_value_segment_ids must have shape (B..., S) = ({B}, {S}), one id per token; got ({B}, {T})"),
    (dict(query_segment_ids=_z(B, 1, T, dtype=np.int32), key_value_segment_ids=_z(B, S, dtype=np.int32)), ValueError,
     f"query_segment_ids must have shape (B..., T) = ({B}, {T}), one id per token; got ({B}, 1, {T})"),
    (dict(key_value_segment_ids=_z(B, S, dtype=np.int32)), ValueError,
     f"key_value_segment_ids alone serves both sides only when T == S; got T={T}, S={S}: pass both "
     "query_segment_ids and key_value_segment_ids"),
    (dict(logits_soft_cap=0.0), ValueError, "logits_soft_cap must be None or a finite number > 0; got 0.0"),
    (dict(logits_soft_cap=-1.0), ValueError, "logits_soft_cap must be None or a finite number > 0; got -1.0"),
    (dict(logits_soft_cap=float("inf")), ValueError, "logits_soft_cap must be None or a finite number > 0; got inf"),
    (dict(logits_soft_cap=True), ValueError, "logits_soft_cap must be None or a finite number > 0; got True"),
    (dict(sinks=_z(N + 1)), ValueError, f"sinks must have shape (N,) = ({N},), one logit per query head; got ({N + 1},)"),
    (dict(sinks=_z(1, N)), ValueError, f"sinks must have shape (N,) = ({N},), one logit per query head; got (1, {N})"),
    (dict(sinks=_z(N, dtype=np.int32)), TypeError,
     "sinks must have a floating dtype (float16, bfloat16, float32 or float64); got int32"),
]
ERROR_PATHS = {
    "chunked_attention": lambda *a, **o: attention_jax.chunked_attention(*a, block_sizes=(8, 8), **o),
    "dot_product_attention dense": lambda *a, **o: attention_jax.dot_product_attention(*a, implementation="dense", **o),
    "dot_product_attention chunked": lambda *a, **o: attention_jax.dot_product_attention(
        *a, implementation="chunked", **o),
    "scaled_dot_product_attention numpy": attention_np.scaled_dot_product_attention,
}


@pytest.mark.parametrize("path", ERROR_PATHS)
@pytest.mark.parametrize("options, error, message", ERRORS,
                         ids=["float ids", "ids of T for S", "ids of rank 3", "kv ids alone, T != S", "cap 0",
                              "cap < 0", "cap inf", "cap bool", "sinks N + 1", "sinks (1, N)", "int sinks"])
def test_bad_options(path, options, error, message):
    q, k, v = _z(B, T, N, H), _z(B, S, K, H), _z(B, S, K, H)
    with pytest.raises(error) as raised:
        ERROR_PATHS[path](q, k, v, **options)
    assert str(raised.value) == message


@pytest.mark.parametrize("cap", [0.0, float("nan"), True])
def test_nnx_bad_soft_cap(cap):
    with pytest.raises(ValueError, match="logits_soft_cap must be None or a finite number > 0"):
        attention_jax.nnx.MultiHeadAttention(2, E, logits_soft_cap=cap, rngs=nnx.Rngs(0))
