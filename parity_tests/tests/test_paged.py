"""The paged KV cache (``init_paged_kv_cache``, ``paged_kv_write``, ``paged_attention``, both
halves, and the JAX fast path ``attention_jax.fast.paged``): every row equals attention run on
its sequence alone.

The expected values come from loops written here: each row's logical keys and values, put
into a shuffled pool position by position (slot ``p % PAGE`` of page ``table[b, p // PAGE]``),
and its mask written out (new token j at position ``lengths[b] - k + j`` sees positions up
to its own, no further back than the window's ``left``), passed to
``scaled_dot_product_attention`` of the NumPy half (float64) or, for gradients, of the JAX
dense mirror. A ragged batch (lengths 1 to 50, pages of 4 positions, a pool of 37 pages,
unused page-table entries -1), grouped heads (N=6, K=3), decoding (k = 1) and chunks
(k = 7, crossing page boundaries), windows, soft-cap, sinks and scale. The JAX functions are
compiled once per option set with traced page tables and lengths and reused across tests.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax
import attention_np
from attention_jax.fast import paged as fast_paged

from .conftest import highest

N, K, H, PAGE, NUM_PAGES, MAX_PAGES = 6, 3, 5, 4, 37, 13    # a row holds up to 52 positions
LENGTHS = {1: [1, 4, 5, 17, 50], 7: [7, 8, 12, 30, 50]}     # per k: a page's first slot, its last, one past it
B = 5
OPTIONS = {  # name: (k, options)
    "decode": (1, dict()),
    "decode_window_sinks": (1, dict(local_window_size=(6, 0), sinks=True, scale=0.7)),
    "chunk": (7, dict()),
    "chunk_window_cap_sinks": (7, dict(local_window_size=(9, 3), logits_soft_cap=2.5, sinks=True)),
}
JAX_PATHS = {"mirror": attention_jax.paged_attention, "fast": fast_paged.paged_attention}


def page_table(lengths, seed=0):
    """Each row's ``ceil(L / PAGE)`` pages, drawn from a shuffled pool (no two rows share one),
    -1 in the entries past them."""
    free = list(np.random.default_rng(seed).permutation(NUM_PAGES))
    table = np.full((len(lengths), MAX_PAGES), -1, np.int32)
    for b, length in enumerate(lengths):
        table[b, :-(-length // PAGE)] = [free.pop() for _ in range(-(-length // PAGE))]
    return table


def sequences(dtype=np.float64, seed=0):
    """Every row's logical keys and values ``(B, MAX_PAGES * PAGE, K, H)`` and the sinks."""
    rng = np.random.default_rng(seed)
    keys, values = rng.normal(size=(2, B, MAX_PAGES * PAGE, K, H))
    return keys.astype(dtype), values.astype(dtype), rng.normal(size=N).astype(dtype)


def fill(table, lengths, keys, values, empty=0.0):
    """The pool: position p of row b at slot ``p % PAGE`` of page ``table[b, p // PAGE]``, one
    position at a time; ``empty`` everywhere else (unused pages, the rest of a last page)."""
    pool = np.full((2, NUM_PAGES, PAGE, K, H), empty, keys.dtype)
    for b, length in enumerate(lengths):
        for p in range(length):
            pool[:, table[b, p // PAGE], p % PAGE] = keys[b, p], values[b, p]
    return {"key_pages": pool[0], "value_pages": pool[1]}


def each_alone(attention, xp, query, sequence, lengths, *, local_window_size=None, **options):
    """``(B, k, N, H)``: ``attention`` (a ``scaled_dot_product_attention``) on each row's
    sequence alone, ``sequence(b, L) -> (key, value)`` each ``(L, K, H)``, its mask written out."""
    k, outs = query.shape[1], []
    for b, length in enumerate(lengths):
        position = length - k + np.arange(k)[:, None]                   # (k, 1) the new tokens
        s = np.arange(length)[None, :]                                   # (1, L)
        mask = s <= position
        if local_window_size is not None:
            mask &= s >= position - local_window_size[0]
        key, value = sequence(b, length)
        out, _ = attention(query[b:b + 1], key[None], value[None], mask=mask, **options)
        outs.append(out[0])
    return xp.stack(outs)


def setup(name, dtype=np.float64, seed=0):
    """``(query, cache, table, lengths, options, keys, values)`` of an option set."""
    k, options = OPTIONS[name]
    keys, values, sinks = sequences(dtype, seed)
    options = dict(options)
    if options.pop("sinks", False):
        options["sinks"] = sinks
    lengths = np.array(LENGTHS[k], np.int32)
    table = page_table(lengths, seed)
    query = np.random.default_rng(seed + 1).normal(size=(B, k, N, H)).astype(dtype)
    return query, fill(table, lengths, keys, values), table, lengths, options, keys, values


def expected(query, keys, values, lengths, options):
    """The float64 NumPy reference, from the logical sequences (no pages at all)."""
    as64 = {name: (np.asarray(v, np.float64) if name == "sinks" else v) for name, v in options.items()}
    return each_alone(attention_np.scaled_dot_product_attention, np, query.astype(np.float64),
                      lambda b, L: (keys[b, :L].astype(np.float64), values[b, :L].astype(np.float64)), lengths, **as64)


@functools.cache
def traced(path, name):
    """A JAX path under ``jax.jit``, page table and lengths (and sinks) traced."""
    options = {n: v for n, v in OPTIONS[name][1].items() if n != "sinks"}
    return jax.jit(lambda query, cache, table, lengths, sinks: JAX_PATHS[path](query, cache, table, lengths,
                                                                              sinks=sinks, **options))


# --- values ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OPTIONS)
def test_numpy_equals_each_sequence_alone(name):
    query, cache, table, lengths, options, keys, values = setup(name)
    out = attention_np.paged_attention(query, cache, table, lengths, **options)
    assert out.shape == query.shape and out.dtype == np.float64
    np.testing.assert_allclose(out, expected(query, keys, values, lengths, options), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", JAX_PATHS)
@pytest.mark.parametrize("name", OPTIONS)
def test_jax_float32_equals_each_sequence_alone(name, path):
    query, cache, table, lengths, options, keys, values = setup(name, np.float32)
    with highest():
        out = traced(path, name)(query, cache, table, lengths, options.get("sinks"))
    assert out.dtype == jnp.float32 and out.shape == query.shape
    np.testing.assert_allclose(np.asarray(out), expected(query, keys, values, lengths, options), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("path", JAX_PATHS)
@pytest.mark.parametrize("name", ["decode_window_sinks", "chunk_window_cap_sinks"])
def test_halves_agree_in_float64(name, path):
    # outside jit: concrete page table and lengths, checked
    query, cache, table, lengths, options, _, _ = setup(name)
    out = JAX_PATHS[path](query, cache, table, lengths, **options)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out), attention_np.paged_attention(query, cache, table, lengths, **options),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", JAX_PATHS)
def test_one_program_serves_every_page_table(path):
    # other pages, other lengths, the same shapes: the compiled program is reused
    name = "chunk_window_cap_sinks"
    query, _, _, _, options, keys, values = setup(name, np.float32, seed=3)
    for seed, lengths in ((4, [50, 7, 9, 16, 33]), (5, [7, 7, 52, 20, 44])):
        lengths = np.array(lengths, np.int32)
        table = page_table(lengths, seed)
        with highest():
            out = traced(path, name)(query, fill(table, lengths, keys, values), table, lengths, options["sinks"])
        np.testing.assert_allclose(np.asarray(out), expected(query, keys, values, lengths, options), rtol=2e-5,
                                   atol=2e-5)
    assert traced(path, name)._cache_size() == 1


# --- writing, then attending -----------------------------------------------------------------
# 24 tokens on pages of 4: chunks that start and end on page boundaries (0-4, 4-5, 5-8, 15-16)
# and inside pages, within one page (4-5) and across one or two boundaries (8-15, 16-24)
CHUNKS = [4, 1, 3, 7, 1, 8]


@pytest.mark.parametrize("path", ["numpy", *JAX_PATHS])
@pytest.mark.parametrize("window", [None, (5, 0)])
def test_writing_then_attending_equals_causal_attention_of_the_contiguous_sequence(path, window):
    # two rows, each a sequence of 24 tokens on scattered pages, written and attended chunk by
    # chunk: the outputs are the causal attention of the whole sequence (scaled_dot_product_attention
    # with is_causal), and the pool holds every token where the page table says
    module, dtype, tol = (attention_np, np.float64, 1e-12) if path == "numpy" else (attention_jax, np.float32, 2e-5)
    rng = np.random.default_rng(6)
    L = sum(CHUNKS)
    query, key, value = (rng.normal(size=(2, L, heads, H)).astype(dtype) for heads in (N, K, K))
    table = rng.permutation(NUM_PAGES)[:2 * MAX_PAGES].reshape(2, MAX_PAGES).astype(np.int32)  # scattered, not shared
    attention = attention_np.paged_attention if path == "numpy" else JAX_PATHS[path]
    write, attend = module.paged_kv_write, functools.partial(attention, local_window_size=window)
    if path != "numpy":
        write, attend = jax.jit(write), jax.jit(attend)
    cache, outs, t = module.init_paged_kv_cache(NUM_PAGES, PAGE, K, H, dtype=dtype), [], 0
    with highest():
        for k in CHUNKS:
            cache = write(cache, table, np.array([t, t], np.int32), key[:, t:t + k], value[:, t:t + k])
            t += k
            outs.append(np.asarray(attend(query[:, t - k:t], cache, table, np.array([t, t], np.int32))))
    window_options = {} if window is None else {"local_window_size": window}
    whole, _ = attention_np.scaled_dot_product_attention(*(x.astype(np.float64) for x in (query, key, value)),
                                                         is_causal=True, **window_options)
    np.testing.assert_allclose(np.concatenate(outs, axis=1), whole, rtol=tol, atol=tol)
    for b in range(2):
        p = np.arange(L)
        np.testing.assert_array_equal(np.asarray(cache["key_pages"])[table[b, p // PAGE], p % PAGE], key[b])
        np.testing.assert_array_equal(np.asarray(cache["value_pages"])[table[b, p // PAGE], p % PAGE], value[b])


def test_write_puts_each_token_where_the_page_table_says():
    # both halves against the test's own loop (fill), ragged starts: rows with 0, 3, 4 and 49
    # tokens get 3 more (within a page, across a boundary, from a boundary, to the last slot)
    keys, values, _ = sequences()
    starts = np.array([0, 3, 4, 49, 20], np.int32)
    lengths = starts + 3
    table = page_table(lengths, seed=7)
    before = fill(table, starts, keys, values)
    rows = np.arange(B)[:, None]
    positions = starts[:, None] + np.arange(3)
    new_key, new_value = keys[rows, positions], values[rows, positions]
    want = fill(table, lengths, keys, values)
    numpy_cache = attention_np.paged_kv_write(before, table, starts, new_key, new_value)
    jax_cache = jax.jit(attention_jax.paged_kv_write)(before, table, starts, new_key, new_value)
    for cache in (numpy_cache, jax_cache):
        for name in ("key_pages", "value_pages"):
            np.testing.assert_array_equal(np.asarray(cache[name]), want[name])
    assert not np.shares_memory(numpy_cache["key_pages"], before["key_pages"])   # a new pool; the old one unchanged
    np.testing.assert_array_equal(before["key_pages"], fill(table, starts, keys, values)["key_pages"])


# --- what is never read ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["decode", "chunk_window_cap_sinks"])
def test_nan_past_a_row_and_in_unused_pages_changes_nothing(name):
    # NaN in every slot no row holds (unused pool pages, the rest of each last page), with a
    # window in the positions before it too, and garbage in the page-table entries past each
    # row's pages: the same outputs, every path
    query, _, table, lengths, options, keys, values = setup(name, np.float32)
    clean = fill(table, lengths, keys, values)
    unseen_keys, unseen_values = keys.copy(), values.copy()
    if "local_window_size" in options:                                   # before the first query's window
        k, left = query.shape[1], options["local_window_size"][0]
        for b, length in enumerate(lengths):
            unseen_keys[b, :max(length - k - left, 0)] = unseen_values[b, :max(length - k - left, 0)] = np.nan
        assert np.isnan(unseen_keys[:, :, 0, 0]).sum() == 14 + 34       # rows of 30 and 50 tokens: L - k - left
    dirty = fill(table, lengths, unseen_keys, unseen_values, empty=np.nan)
    junk = table.copy()
    junk[junk < 0] = np.array([10**6, -7, NUM_PAGES])[np.arange((junk < 0).sum()) % 3]
    assert np.isnan(dirty["key_pages"]).sum() > 100
    np.testing.assert_array_equal(attention_np.paged_attention(query, dirty, junk, lengths, **options),
                                  attention_np.paged_attention(query, clean, table, lengths, **options))
    for path in JAX_PATHS:
        a = traced(path, name)(query, dirty, junk, lengths, options.get("sinks"))
        b = traced(path, name)(query, clean, table, lengths, options.get("sinks"))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path)


def test_a_query_that_sees_no_key_gets_zeros():
    # lengths[b] < k inside jit (unchecked): the queries at negative positions see nothing
    query, cache, table, _, _, _, _ = setup("chunk", np.float32)
    lengths = np.array([3, 7, 8, 1, 0], np.int32)
    for path in JAX_PATHS:
        out = np.asarray(traced(path, "chunk")(query, cache, table, lengths, None))
        for b, length in enumerate(lengths):
            assert not out[b, :max(7 - length, 0)].any() and out[b, max(7 - length, 0):].all(), path


def test_the_fast_path_never_gathers_a_padded_sequence():
    # the mirror gathers (B, max_pages * page_size, K, H); the fast path holds one page a step
    query, cache, table, lengths, options, _, _ = setup("chunk_window_cap_sinks", np.float32)
    padded = re.compile(rf"\[[\d,]*\b{MAX_PAGES * PAGE}\b[\d,]*\]")             # a shape with an axis of 52
    for path, gathers in (("mirror", True), ("fast", False)):
        jaxpr = str(jax.make_jaxpr(traced(path, "chunk_window_cap_sinks"))(query, cache, table, lengths,
                                                                            options["sinks"]))
        assert bool(padded.search(jaxpr)) == gathers, path


@pytest.mark.parametrize("attention", [attention_np.paged_attention, *JAX_PATHS.values()],
                         ids=["numpy", *JAX_PATHS])
def test_empty_batches_and_no_new_tokens(attention):
    # k = 0 (nothing to attend for) and B = 0 (no row): empty outputs, no error
    cache = attention_np.init_paged_kv_cache(5, PAGE, K, H)
    out = attention(np.zeros((2, 0, N, H), np.float32), cache, np.array([[0, 1], [2, -1]]), np.array([5, 2]),
                    local_window_size=(2, 0))
    assert np.asarray(out).shape == (2, 0, N, H)
    out = attention(np.zeros((0, 1, N, H), np.float32), cache, np.zeros((0, 2), int), np.zeros(0, int))
    assert np.asarray(out).shape == (0, 1, N, H)


@pytest.mark.parametrize("path", JAX_PATHS)
@pytest.mark.parametrize("dtype, tol", [(jnp.bfloat16, 2e-2), (jnp.float16, 5e-3)])
def test_half_precision_is_within_its_tolerance(path, dtype, tol):
    query, cache, table, lengths, options, keys, values = setup("chunk_window_cap_sinks")
    half = jax.tree.map(lambda x: jnp.asarray(x, dtype), (query, cache, options["sinks"]))
    out = traced(path, "chunk_window_cap_sinks")(half[0], half[1], table, lengths, half[2])
    assert out.dtype == dtype
    np.testing.assert_allclose(np.asarray(out, np.float64), expected(query, keys, values, lengths, options), rtol=tol,
                               atol=tol)


# --- gradients -------------------------------------------------------------------------------
@functools.cache
def gradients(name, path):
    """``jax.grad`` of ``<out, cot>`` with respect to query, the pages and the sinks: of a path
    (page table and lengths traced), or with ``path=None`` of the dense mirror on each row's
    sequence alone, read from the pages with the test's own index arithmetic."""
    options = {n: v for n, v in OPTIONS[name][1].items() if n != "sinks"}
    lengths = LENGTHS[OPTIONS[name][0]]
    table = page_table(lengths)

    def loss(query, key_pages, value_pages, sinks, cot, table_, lengths_):
        if path is None:
            def sequence(b, L):
                p = np.arange(L)
                return key_pages[table[b, p // PAGE], p % PAGE], value_pages[table[b, p // PAGE], p % PAGE]
            out = each_alone(attention_jax.scaled_dot_product_attention, jnp, query, sequence, lengths, sinks=sinks,
                             **options)
        else:
            out = JAX_PATHS[path](query, {"key_pages": key_pages, "value_pages": value_pages}, table_, lengths_,
                                  sinks=sinks, **options)
        return jnp.sum(out * cot)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))


@pytest.mark.parametrize("path", JAX_PATHS)
@pytest.mark.parametrize("name", ["decode_window_sinks", "chunk_window_cap_sinks"])
def test_gradients_equal_the_dense_mirror_on_each_sequence(name, path):
    query, _, table, lengths, options, keys, values = setup(name, np.float32)
    cache = fill(table, lengths, keys, values, empty=np.nan)                # NaN where no row reads
    cot = np.random.default_rng(8).normal(size=query.shape).astype(np.float32)
    inputs = (query, cache["key_pages"], cache["value_pages"], options["sinks"], cot, table, lengths)
    with highest():
        grads = gradients(name, path)(*inputs)
        want = gradients(name, None)(*inputs)
    for argname, g, e in zip(("query", "key_pages", "value_pages", "sinks"), grads, want, strict=True):
        assert np.isfinite(np.asarray(g)).all(), argname                  # NaN in unread slots: zero gradient
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=2e-5, atol=2e-5, err_msg=argname)
    unread = np.isnan(cache["key_pages"])
    assert not np.asarray(grads[1])[unread].any() and not np.asarray(grads[2])[unread].any()


def test_forward_mode_on_the_fast_path_equals_the_mirror():
    # the fast path's derivatives are the mirror's (a custom_jvp), forward mode too
    query, cache, table, lengths, options, _, _ = setup("decode_window_sinks")
    tangents = jax.tree.map(lambda x: np.random.default_rng(9).normal(size=x.shape), (query, cache))
    outs = [jax.jvp(lambda q, c: path(q, c, table, lengths, **options), (query, cache), tangents)
            for path in JAX_PATHS.values()]
    for got, want in zip(*outs, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-12)


# --- under jit -------------------------------------------------------------------------------
def test_under_jit_a_write_that_does_not_fit_is_dropped():
    # values are not checked under jit: a position past a row's pages, or a page outside the
    # pool, writes nothing (and changes no other page)
    cache = attention_np.init_paged_kv_cache(NUM_PAGES, PAGE, K, H)
    table = np.full((2, 3), 5, np.int32)
    table[1] = [6, NUM_PAGES + 2, -1]
    new = np.ones((2, 3, K, H), np.float32)
    out = jax.jit(attention_jax.paged_kv_write)(cache, table, np.array([10, 2], np.int32), new, new)
    written = np.asarray(out["key_pages"]).any(axis=(2, 3))                 # (P, PAGE)
    want = np.zeros((NUM_PAGES, PAGE), bool)
    want[5, 2:4] = True                                                      # row 0: positions 10, 11 (12 is past)
    want[6, 2:4] = True                                                      # row 1: positions 2, 3 (4 is on page P + 2)
    np.testing.assert_array_equal(written, want)


# --- bad input -------------------------------------------------------------------------------
Q = np.zeros((2, 3, 6, 4))
POOL = {"key_pages": np.zeros((5, 4, 3, 4)), "value_pages": np.zeros((5, 4, 3, 4))}
TABLE, LEN = np.array([[0, 1], [2, -1]]), np.array([5, 3])
KV = np.zeros((2, 3, 3, 4))
BAD_ATTENTION = [
    (dict(query=np.zeros((2, 3, 6))), ValueError, r"query must have shape \(B, k, N, H\); got \(2, 3, 6\)"),
    (dict(query=Q.astype(np.float32)), TypeError, r"cache\['key_pages'\] must have the dtype of query \(float32\); got float64"),
    (dict(cache=[POOL]), TypeError, r"cache must be a dict from init_paged_kv_cache; got list"),
    (dict(cache={"key_pages": POOL["key_pages"]}), ValueError,
     r"cache is missing \['value_pages'\]; expected keys \['key_pages', 'value_pages'\] \(from init_paged_kv_cache\)"),
    (dict(cache={**POOL, "key_pages": np.zeros((5, 4, 3, 5))}), ValueError,
     r"cache\['key_pages'\] must have shape \(P, page_size, K, H\) with H=4 from query; got \(5, 4, 3, 5\)"),
    (dict(cache={**POOL, "value_pages": np.zeros((5, 2, 3, 4))}), ValueError,
     r"cache\['value_pages'\] must have shape \(P, page_size, K, H\) with P=5, page_size=4, K=3 from "
     r"cache\['key_pages'\], H=4 from query; got \(5, 2, 3, 4\)"),
    (dict(cache={k: np.zeros((0, 4, 3, 4)) for k in POOL}), ValueError, r"must hold at least one page"),
    (dict(cache={k: np.zeros((5, 4, 4, 4)) for k in POOL}), ValueError,
     r"the number of query heads N=6 must be a multiple of the number of key/value heads K=4"),
    (dict(page_table=TABLE.astype(np.float32)), TypeError,
     r"page_table must have an integer dtype \(physical page numbers\); got float32"),
    (dict(page_table=np.zeros((3, 2), int)), ValueError,
     r"page_table must have shape \(B, max_pages\) with B=2 from query; got \(3, 2\)"),
    (dict(lengths=np.array([5, 3, 1])), ValueError, r"lengths must have shape \(B,\) with B=2 from query; got \(3,\)"),
    (dict(lengths=LEN.astype(float)), TypeError, r"lengths must have an integer dtype"),
    (dict(lengths=np.array([5, 2])), ValueError,
     r"lengths must be at least k = 3 \(the new tokens are the last k of a row's tokens\); got lengths\[1\] = 2"),
    (dict(lengths=np.array([9, 3])), ValueError,
     r"lengths must be at most max_pages \* page_size = 8 \(the positions a row's page table holds\); got lengths\[0\] = 9"),
    (dict(page_table=np.array([[0, 5], [2, -1]])), ValueError,
     r"page_table must hold page numbers in \[0, P\) = \[0, 5\) where a row uses a page; got page_table\[0, 1\] = 5"),
    (dict(lengths=np.array([5, 5])), ValueError, r"got page_table\[1, 1\] = -1"),
    (dict(sinks=np.zeros(3)), ValueError, r"sinks must have shape \(N,\) = \(6,\), one logit per query head; got \(3,\)"),
    (dict(logits_soft_cap=-1.0), ValueError, r"logits_soft_cap must be None or a finite number > 0; got -1.0"),
    (dict(local_window_size=(1, 2, 3)), ValueError, r"local_window_size must be None, an int >= 0 or a pair"),
    (dict(scale=float("nan")), ValueError, r"scale must be a finite real number; got nan"),
]
BAD_WRITE = [
    (dict(key=KV.astype(np.float32)), TypeError, r"key must have the dtype of cache\['key_pages'\] \(float64\); got float32"),
    (dict(value=np.zeros((2, 2, 3, 4))), ValueError,
     r"value must have shape \(B, k, K, H\) with B=2, k=3 from key, K=3, H=4 from cache\['key_pages'\]; got \(2, 2, 3, 4\)"),
    (dict(key=np.zeros((2, 3, 2, 4)), value=np.zeros((2, 3, 2, 4))), ValueError,
     r"key must have shape \(B, k, K, H\) with K=3, H=4 from cache\['key_pages'\]; got \(2, 3, 2, 4\)"),
    (dict(page_table=np.zeros(2, int)), ValueError, r"page_table must have shape \(B, max_pages\) with B=2 from key; got \(2,\)"),
    (dict(start=np.array([0.0, 1.0])), TypeError,
     r"start must have an integer dtype \(the position of each row's first new token\); got float64"),
    (dict(start=np.array([0, -1])), ValueError, r"start must be >= 0 \(a position in the row\); got start\[1\] = -1"),
    (dict(start=np.array([6, 0])), ValueError,
     r"start must be at most max_pages \* page_size - k = 5 \(a row's 3 new tokens within the 8 positions its page "
     r"table holds\); got start\[0\] = 6"),
    (dict(start=np.array([0, 3])), ValueError,
     r"page_table must hold page numbers in \[0, P\) = \[0, 5\) where a row uses a page; got page_table\[1, 1\] = -1"),
]


@pytest.mark.parametrize("half", [attention_np, attention_jax, fast_paged], ids=["numpy", "jax", "fast"])
@pytest.mark.parametrize("bad, error, message", BAD_ATTENTION,
                         ids=[f"{i}-{next(iter(b))}" for i, (b, _, _) in enumerate(BAD_ATTENTION)])
def test_bad_attention_input_is_named(half, bad, error, message):
    args = dict(query=Q, cache=POOL, page_table=TABLE, lengths=LEN) | bad
    options = {k: args.pop(k) for k in ("sinks", "logits_soft_cap", "local_window_size", "scale") if k in args}
    with pytest.raises(error, match=message):
        half.paged_attention(*args.values(), **options)


@pytest.mark.parametrize("half", [attention_np, attention_jax], ids=["numpy", "jax"])
@pytest.mark.parametrize("bad, error, message", BAD_WRITE, ids=[f"{i}-{next(iter(b))}" for i, (b, _, _) in enumerate(BAD_WRITE)])
def test_bad_write_input_is_named(half, bad, error, message):
    args = dict(cache=POOL, page_table=TABLE, start=np.array([0, 0]), key=KV, value=KV) | bad
    with pytest.raises(error, match=message):
        half.paged_kv_write(*args.values())


@pytest.mark.parametrize("half", [attention_np, attention_jax], ids=["numpy", "jax"])
def test_init_sizes_are_checked(half):
    cache = half.init_paged_kv_cache(3, 2, 1, 4, dtype=np.float64)
    assert {n: (x.shape, x.dtype) for n, x in cache.items()} == {n: ((3, 2, 1, 4), np.float64) for n in POOL}
    with pytest.raises(ValueError, match=r"page_size must be an int >= 1; got 0"):
        half.init_paged_kv_cache(3, 0, 1, 4)


def test_under_jit_shapes_are_checked_and_values_are_not():
    with pytest.raises(ValueError, match=r"lengths must have shape \(B,\) with B=2 from query; got \(3,\)"):
        jax.jit(attention_jax.paged_attention)(Q, POOL, TABLE, np.array([5, 3, 1]))
    out = jax.jit(attention_jax.paged_attention)(Q, POOL, TABLE, np.array([5, 2]))   # lengths < k: no ValueError
    assert out.shape == Q.shape
