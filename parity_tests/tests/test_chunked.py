"""chunked_attention: the same numbers as scaled_dot_product_attention, and its gradients,
in O(T + S) memory (checked from XLA's compiled memory analysis, not from timings)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax
import attention_np
from attention_jax import chunked_attention

from .conftest import highest

# (B, T, S, N, K, H, query rows, key rows of block_sizes): prime sizes, lengths that are not
# multiples of the chunks, a single chunk, chunks longer than the sequence, T != S.
SHAPES = {
    "gqa, ragged chunks": (2, 7, 11, 6, 3, 5, 3, 4),
    "mha, T != S": (2, 13, 5, 3, 3, 4, 5, 2),
    "one chunk": (1, 9, 9, 2, 1, 3, 16, 16),
    "square chunks": (1, 16, 16, 2, 2, 4, 4, 4),
    "defaults": (2, 37, 29, 2, 1, 8, None, None),
    # blocks of >= 256 x 256 logits run one (batch, key/value head) at a time
    "one head at a time": (2, 300, 290, 4, 2, 8, 256, 256),
}
OPTIONS = {
    "plain": {},
    "causal": {"is_causal": True},
    "mask": {"mask": True},
    "bias": {"bias": True},
    "all": {"mask": True, "bias": True, "is_causal": True, "scale": 0.3},
}


def inputs(rng, shape, option, dtype):
    B, T, S, N, K, H, qc, kc = shape
    q, k, v = (rng.normal(size=s).astype(dtype) for s in ((B, T, N, H), (B, S, K, H), (B, S, K, H)))
    kwargs = {key: val for key, val in option.items() if key in ("is_causal", "scale")}
    if option.get("mask"):
        mask = rng.random((B, 1, T, S)) < 0.6
        mask[0, 0, 1] = False  # a fully masked query: zeros, in value and gradient
        kwargs["mask"] = mask
    if option.get("bias"):
        kwargs["bias"] = rng.normal(size=(1, N, T, S)).astype(dtype)
    return (q, k, v), kwargs, {"block_sizes": (qc, kc)}


CASES = [pytest.param(s, o, np.float32, 1e-5, id=f"{s}-{o}-float32") for s in SHAPES for o in OPTIONS] + [
    pytest.param(s, "all", np.float64, 1e-12, id=f"{s}-all-float64") for s in SHAPES
]


@pytest.mark.parametrize("shape, option, dtype, tol", CASES)
def test_matches_sdpa_values_and_gradients(shape, option, dtype, tol, rng):
    (q, k, v), kwargs, chunks = inputs(rng, SHAPES[shape], OPTIONS[option], dtype)
    bias = kwargs.pop("bias", None)
    cotangent = rng.normal(size=q.shape).astype(dtype)

    def chunked(q, k, v, bias):
        return chunked_attention(q, k, v, bias=bias, **kwargs, **chunks)

    def reference(q, k, v, bias):
        return attention_jax.scaled_dot_product_attention(q, k, v, bias=bias, **kwargs)[0]

    @jax.jit  # one program a case: the outputs and both VJPs
    def outputs_and_gradients(q, k, v, bias):
        (_, chunked_vjp), (_, reference_vjp) = jax.vjp(chunked, q, k, v, bias), jax.vjp(reference, q, k, v, bias)
        return chunked(q, k, v, bias), reference(q, k, v, bias), chunked_vjp(cotangent), reference_vjp(cotangent)

    with highest():
        ours, expected, our_grads, expected_grads = outputs_and_gradients(q, k, v, bias)
    np.testing.assert_allclose(ours, expected, rtol=tol, atol=tol)
    assert (bias is None) == (our_grads[3] is None)
    for got, want in zip(our_grads, expected_grads):
        if want is not None:
            assert got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_fully_masked_query_gives_zero_output_and_gradients(rng):
    (q, k, v), kwargs, chunks = inputs(rng, SHAPES["gqa, ragged chunks"], OPTIONS["mask"], np.float32)
    out = chunked_attention(q, k, v, **kwargs, **chunks)
    assert np.all(np.asarray(out)[0, 1] == 0)
    grads = jax.grad(lambda q, k, v: chunked_attention(q, k, v, **kwargs, **chunks)[0, 1].sum(), argnums=(0, 1, 2))(q, k, v)
    for g in grads:
        assert np.all(np.asarray(g) == 0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs(dtype, rng):
    (q, k, v), kwargs, chunks = inputs(rng, SHAPES["gqa, ragged chunks"], OPTIONS["all"], np.float32)
    low = [jnp.asarray(x, dtype) for x in (q, k, v)]
    out = chunked_attention(*low, **kwargs, **chunks)
    expected = attention_jax.scaled_dot_product_attention(*low, **kwargs)[0]
    assert out.dtype == dtype
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(expected, np.float32), atol={jnp.bfloat16: 2e-2, jnp.float16: 5e-3}[dtype])


@pytest.mark.parametrize("bad, message", [
    ({"block_sizes": (0, None)}, "block_sizes[0] must be a positive int or None; got 0"),
    ({"block_sizes": 8}, "block_sizes must be None or a pair (query rows, key rows); got 8"),
    ({"block_sizes": (None, 2.5)}, "block_sizes[1] must be a positive int or None; got 2.5"),
    ({"mask": np.ones((3, 5), np.float32)}, "mask must have a boolean dtype (True = attend); to add float values (PyTorch's 0 / -inf) to the logits pass them as bias; a 0 / 1 mask from Flax's make_attention_mask or make_causal_mask: pass dtype=bool; got float32"),
])
def test_bad_input(bad, message):
    q = np.zeros((2, 3, 2, 4), np.float32)
    k = np.zeros((2, 5, 2, 4), np.float32)
    with pytest.raises((ValueError, TypeError)) as info:
        chunked_attention(q, k, k, **bad)
    assert str(info.value) == message


def _temp_bytes(fn, L):
    x = jax.ShapeDtypeStruct((1, L, 1, 64), jnp.float32)
    forward = jax.jit(fn).lower(x, x, x).compile().memory_analysis().temp_size_in_bytes
    grad = jax.jit(jax.grad(lambda q, k, v: fn(q, k, v).sum(), argnums=(0, 1, 2)))
    backward = grad.lower(x, x, x).compile().memory_analysis().temp_size_in_bytes
    return forward, backward


def test_memory_grows_linearly_not_quadratically():
    # one (L, L) float32 matrix is 64 MiB at L=4096 and 256 MiB at L=8192; chunked attention's
    # scratch must stay far below that and grow by about the O(L) arrays only
    small = _temp_bytes(lambda q, k, v: chunked_attention(q, k, v), 4096)
    large = _temp_bytes(lambda q, k, v: chunked_attention(q, k, v), 8192)
    MiB = 2**20
    for s, l in zip(small, large):
        assert l < 64 * MiB, f"scratch {l / MiB:.0f} MiB at L=8192"
        assert l - s < 16 * MiB, f"scratch grew {(l - s) / MiB:.0f} MiB from L=4096 to 8192"
    # the reference materialises the weights in its backward pass: the check can tell them apart
    reference = _temp_bytes(lambda q, k, v: attention_jax.scaled_dot_product_attention(q, k, v)[0], 4096)
    assert reference[1] >= 64 * MiB


@pytest.mark.parametrize("args, kwargs", [
    ((np.zeros((2, 3, 2, 4), np.float32), np.zeros((2, 5, 2, 4), np.float16), np.zeros((2, 5, 2, 4), np.float16)), {}),
    ((np.zeros((2, 4, 3, 2, 4), np.float32), np.zeros((2, 5, 5, 2, 4), np.float32), np.zeros((2, 5, 5, 2, 4), np.float32)), {}),
    ((np.zeros((3, 4), np.float32), np.zeros((2, 5, 2, 4), np.float32), np.zeros((2, 5, 2, 4), np.float32)), {}),
    ((np.zeros((2, 3, 2, 4), np.float32), np.zeros((2, 5, 0, 4), np.float32), np.zeros((2, 5, 0, 4), np.float32)), {}),
    ((np.zeros((2, 3, 2, 4), np.float32), np.zeros((2, 5, 2, 4), np.float32), np.zeros((2, 5, 2, 4), np.float32)), {"scale": float("inf")}),
    ((np.zeros((2, 3, 2, 4), np.float32), np.zeros((2, 5, 2, 4), np.float32), np.zeros((2, 5, 2, 4), np.float32)), {"scale": "1"}),
], ids=["mixed dtypes", "batch axes", "rank", "K=0", "inf scale", "str scale"])
def test_bad_input_raises_what_the_dense_path_raises(args, kwargs):
    import attention_np

    with pytest.raises((ValueError, TypeError)) as expected:
        attention_np.scaled_dot_product_attention(*args, **kwargs)
    with pytest.raises(expected.type) as info:
        chunked_attention(*args, **kwargs)
    assert str(info.value) == str(expected.value)


@pytest.mark.parametrize("T, S", [(0, 5), (3, 0), (0, 0)])
def test_zero_lengths_give_empty_or_zero_output(T, S, rng):
    q, k = rng.normal(size=(2, T, 2, 4)), rng.normal(size=(2, S, 1, 4))
    out = chunked_attention(q, k, k, block_sizes=(2, 2))
    assert out.shape == (2, T, 2, 4)
    np.testing.assert_array_equal(out, np.zeros((2, T, 2, 4)))  # jax.nn and torch: zeros for S = 0 too
    np.testing.assert_array_equal(jax.grad(lambda q: chunked_attention(q, k, k).sum())(q), np.zeros_like(q))


def test_per_head_mask_within_a_key_value_group_matches_dense_values(rng):
    # head 0 of a group attends key 4, head 1 does not: the key is not padding for the
    # group (documented), so it must still give the dense path's numbers on clean input
    q, k, v = rng.normal(size=(1, 3, 2, 4)), rng.normal(size=(1, 5, 1, 4)), rng.normal(size=(1, 5, 1, 4))
    mask = np.ones((1, 2, 3, 5), bool)
    mask[0, 1, :, 4] = False
    expected = attention_jax.scaled_dot_product_attention(q, k, v, mask=mask)[0]
    np.testing.assert_allclose(chunked_attention(q, k, v, mask=mask, block_sizes=(None, 2)), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("L, causal", [(1100, True), (2048, True), (2560, True), (1536, False)])
def test_default_blocks_match_numpy(L, causal, rng):
    """The default CPU blocks against the NumPy half, values and gradients: causal 384 x 384
    at L = 1100 (three blocks, the last one padded, blocks skipped), 512 x 512 at L = 2048,
    896 x 896 at L = 2560 (three blocks of at most 1024, the backward pass in 448 x 448);
    non-causal 1536 x 768 (the backward pass in 512 x 384)."""
    import attention_np
    from attention_np.backward import scaled_dot_product_attention_vjp

    q, k, v, c = (rng.normal(size=(1, L, 2, 8)) for _ in range(4))
    expected, _ = attention_np.scaled_dot_product_attention(q, k, v, is_causal=causal)
    out, vjp = jax.vjp(lambda q, k, v: chunked_attention(q, k, v, is_causal=causal), *(jnp.asarray(x) for x in (q, k, v)))
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)
    expected_grads = scaled_dot_product_attention_vjp(q, k, v, c, is_causal=causal)
    for got, want in zip(vjp(jnp.asarray(c)), expected_grads[:3]):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("B, T, S, N, K, H", [(2, 512, 512, 8, 8, 16), (1, 300, 600, 16, 4, 8), (1, 1000, 700, 16, 16, 8)])
def test_causal_tiles_match_numpy(B, T, S, N, K, H, rng):
    """Causal, 256 < L <= 1024, at least 16 (batch, head) rows, H <= 64: on CPU the output
    without autodiff comes from the static grid of 256 x 256 tiles, under ``jax.vjp`` from
    the block loop (which also returns the log-sum-exp). Both against the NumPy half, with
    ragged last tiles, T != S both ways and grouped heads."""
    import attention_np
    from attention_jax.fast.chunked import BlockSizes

    if jax.default_backend() != "cpu":
        pytest.skip("the tiles are the CPU backend's rule")
    assert BlockSizes.get_default().tile_for(True, True, T, S, H, B * N) == 256
    q, k, v = (rng.normal(size=s) for s in ((B, T, N, H), (B, S, K, H), (B, S, K, H)))
    expected, _ = attention_np.scaled_dot_product_attention(q, k, v, is_causal=True)
    tiles = jax.jit(lambda q, k, v: chunked_attention(q, k, v, is_causal=True))(q, k, v)
    loop, _ = jax.vjp(lambda q, k, v: chunked_attention(q, k, v, is_causal=True), q, k, v)
    np.testing.assert_allclose(tiles, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(loop, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
def test_default_blocks_pad_less_than_128_rows_a_block(causal):
    """The default blocks split a length into equal blocks (rounded up to 128 rows), so
    the padding is under 128 rows a block (not up to a whole block: 1536 keys padded to
    2048); the backward pass's blocks divide the forward's, so one padding fits both."""
    from attention_jax.fast.chunked import BlockSizes

    sizes = BlockSizes.get_default("cpu")
    for L in range(1, 9000, 37):
        qc, kc = (min(c, L) for c in sizes.blocks(causal, L, L))
        for c in (qc, kc):
            assert -(-L // c) * c - L < 128 * -(-L // c), (L, c)
        bq, bk = sizes.backward_blocks(qc, kc)
        assert qc % bq == 0 and kc % bk == 0, (L, qc, kc, bq, bk)


# Block edges exactly where the masks change, fixed rather than drawn, each against the NumPy
# half with the mask written out: (T, S, query_chunk, key_chunk, options). An off-by-one in the
# block states (.sparse.option_states) or the block ranges (.masks) skips a block holding one
# attended entry, or takes a block as full that is not.
BOUNDARIES = {
    # causal, 4 x 4 blocks: each diagonal block starts on the diagonal (its first key is its first query)
    "causal, diagonal on the block edges": (12, 12, 4, 4, dict(is_causal=True)),
    # causal, keys in blocks of 3: key block [3, 6) starts at the last query of block [0, 4)
    "causal, first key is the last query": (12, 12, 4, 3, dict(is_causal=True)),
    # window (1, 0): query 4 sees key 3, the last key of block [0, 4) and the only one it holds for that block
    "window, last key of a block is the left edge": (12, 12, 4, 4, dict(local_window_size=(1, 0))),
    # window (0, 1): query 3 sees key 4, the first key of block [4, 8)
    "window, first key of a block is the right edge": (12, 12, 4, 4, dict(local_window_size=(0, 1))),
    # window (3, 3): block [4, 8) x [4, 8) is exactly full; (2, 3): the same block is not
    "window, a block exactly full": (12, 12, 4, 4, dict(local_window_size=(3, 3))),
    "window, a block one key short of full": (12, 12, 4, 4, dict(local_window_size=(2, 3))),
    # key lengths on a block edge (4) and one past it (5); query lengths on an edge
    "lengths on the block edges": (12, 12, 4, 4, dict(key_value_seq_lengths=np.array([4, 5]),
                                                      query_seq_lengths=np.array([8, 12]))),
    # segment boundaries on block edges (row 0) and one past them (row 1), causal
    "segments on the block edges": (12, 12, 4, 4, dict(is_causal=True, segments=np.array(
        [[0] * 4 + [1] * 4 + [2] * 4, [0] * 5 + [1] * 4 + [2] * 3]))),
}


def _written_out_mask(T, S, options):
    """The options of BOUNDARIES as one boolean ``(B, 1, T, S)`` mask, built here."""
    t, s = np.arange(T)[:, None], np.arange(S)[None, :]
    mask = np.ones((2, 1, T, S), bool)
    if options.get("is_causal"):
        mask &= s <= t
    if "local_window_size" in options:
        left, right = options["local_window_size"]
        mask &= (s >= t - left) & (s <= t + right)
    if "key_value_seq_lengths" in options:
        mask &= np.arange(S) < options["key_value_seq_lengths"][:, None, None, None]
        mask &= np.arange(T)[:, None] < options["query_seq_lengths"][:, None, None, None]
    if "segments" in options:
        ids = options["segments"]
        mask &= ids[:, None, :, None] == ids[:, None, None, :]
    return mask


@pytest.mark.parametrize("case, sparse", [pytest.param(case, sparse, id=f"{case}-{'states' if sparse else 'ranges'}")
                                          for case in BOUNDARIES for sparse in (False, True)
                                          if sparse or "segments" not in BOUNDARIES[case][4]])
def test_block_edges_where_the_masks_change(case, sparse, rng):
    """Each case on both of chunked's ways to choose blocks: the loop ranges of ``.masks``, and
    (given segment ids, here one segment when the case has none) the block states of ``.sparse``."""
    from attention_np.backward import scaled_dot_product_attention_vjp

    T, S, qc, kc, options = BOUNDARIES[case]
    q, k, v, d_out = (rng.normal(size=(2, n, 2, 4)) for n in (T, S, S, T))
    mask = _written_out_mask(T, S, options)
    expected, _ = attention_np.scaled_dot_product_attention(q, k, v, mask=mask)
    expected_grads = scaled_dot_product_attention_vjp(q, k, v, d_out, mask=mask)
    options = dict(options)
    ids = options.pop("segments", np.zeros((2, T), np.int32) if sparse else None)
    if ids is not None:
        options |= dict(query_segment_ids=ids, key_value_segment_ids=ids)

    @jax.jit
    def run(q, k, v, d_out):
        out, vjp = jax.vjp(lambda q, k, v: chunked_attention(q, k, v, block_sizes=(qc, kc),
                                                             **options), q, k, v)
        return out, vjp(d_out)

    out, grads = run(q, k, v, d_out)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, expected_grads[:3]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("is_causal", [False, True])
def test_gradients_through_the_lse_and_the_sinks_equal_the_mirror(is_causal, rng):
    """``return_residual=True`` and ``sinks``: the gradients of a loss on both the output and
    the log-sum-exp, in query, key, value and the sinks, through the custom VJP (blocks of
    3 x 4, ragged), equal ``jax.grad`` of the dense mirror, float64; and they are not zero."""
    q, k, v = (rng.normal(size=s) for s in ((2, 7, 4, 5), (2, 9, 2, 5), (2, 9, 2, 5)))
    sinks, d_out, d_lse = rng.normal(size=4), rng.normal(size=(2, 7, 4, 5)), rng.normal(size=(2, 7, 4))

    def chunked(q, k, v, sinks):
        return chunked_attention(q, k, v, sinks=sinks, is_causal=is_causal, return_residual=True,
                                 block_sizes=(3, 4))

    def mirror(q, k, v, sinks):
        out, _, lse = attention_jax.scaled_dot_product_attention(q, k, v, sinks=sinks, is_causal=is_causal,
                                                                 return_residual=True)
        return out, lse

    def loss(path):
        return lambda *args: (lambda out, lse: jnp.sum(out * d_out) + jnp.sum(lse * d_lse))(*path(*args))

    got = jax.jit(jax.grad(loss(chunked), argnums=(0, 1, 2, 3)))(q, k, v, sinks)
    want = jax.jit(jax.grad(loss(mirror), argnums=(0, 1, 2, 3)))(q, k, v, sinks)
    for name, g, w in zip(("query", "key", "value", "sinks"), got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12, err_msg=name)
        assert np.abs(np.asarray(g)).max() > 1e-3, name
    # the lse's own part of the query gradient is there: the loss without it differs
    without = jax.grad(lambda q: jnp.sum(chunked(q, k, v, sinks)[0] * d_out))(q)
    assert np.abs(np.asarray(got[0]) - np.asarray(without)).max() > 1e-3
