"""``flex_attention`` proved: both halves (the NumPy definition, the blocked JAX path) and the
dense JAX mirror against values computed another way.

- PyTorch's own ``flex_attention`` with the same six mods written in PyTorch;
- ``jax.nn.dot_product_attention`` and ``attention_np.scaled_dot_product_attention`` with the
  equivalent boolean mask, for the mods a mask expresses;
- soft-cap and sinks written out in NumPy here;
- gradients (query, key, value, sinks, a closed-over relative-position table and ALiBi slopes,
  through the log-sum-exp) against ``jax.vjp`` of the dense mirror in float64 and against
  central finite differences of the NumPy definition;
- block skipping: a NaN in a key block that the block mask rules out for a query block never
  reaches it (forward and backward), a block marked full is not masked, and the block states
  equal a count made here;
- block masks per batch row and head: ``create_block_mask`` refuses B=None (N=None) for a
  mask_mod that depends on b (h), and the block mask flex_attention makes itself is per row and
  head (the NumPy definition);
- mods closing over traced int and bool arrays (document ids, a padding mask, an offset) under
  jit(grad), grad(jit) and vmap (the NumPy definition, ``jax.grad`` of the dense mirror);
- NaN in the keys and values no query attends is never read, whatever the blocks, in both
  halves, values and gradients;
- the errors, and a property test over random shapes, masks, mods, sinks and dtypes.

One shape serves most tests (the blocked path compiles once per shape, dtype and mod), with
blocks of 3 x 4 that leave the last query and key blocks part padding.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import attention_jax
import attention_jax.flex
import attention_np
from attention_jax import BlockMask, create_block_mask
from attention_np.mods import (
    alibi,
    and_masks,
    asarray_like,
    causal_mask,
    document_mask,
    prefix_lm_mask,
    relative_position_bias,
    sliding_window_mask,
    soft_cap,
)
from parity_tests import FD_TOLERANCE
from parity_tests.testing import check, check_path, flex_path, problems, qkv

# prime lengths, grouped heads; blocks of 3 x 4: 3 query blocks (the last 2/3 padding), 3 key blocks
B, T, S, N, K, H = 2, 7, 11, 6, 3, 5
BLOCKS = (3, 4)

rng0 = np.random.default_rng(0)
QUERY, KEY, VALUE = qkv(B, T, S, N, K, H, rng=rng0)
SLOPES = 2.0 ** (-8.0 * np.arange(1, N + 1) / N)                  # ALiBi's slopes for N heads
MAX_DISTANCE = 3
TABLE = rng0.normal(size=(N, 2 * MAX_DISTANCE + 1))              # relative-position bias (N, 2D + 1)
CAP = 0.7                                                         # small enough that tanh bends the logits
LEFT, RIGHT = 2, 1
PREFIX = np.array([3, 5])                                         # a prefix length per batch row
Q_IDS = np.array([[0, 0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 7, 2, 2]])  # batch row 1, query 4: id 7, no key has it
KV_IDS = np.array([[0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2], [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2]])

# the mods, made once: the blocked path compiles once per mod object
EVERYTHING = lambda b, h, q_idx, kv_idx: kv_idx >= 0              # every key: every block full
SCORE_MODS = {"alibi": alibi(SLOPES), "soft_cap": soft_cap(CAP),
              "relative_position": relative_position_bias(TABLE, MAX_DISTANCE)}
MASK_MODS = {"sliding_window": sliding_window_mask((LEFT, RIGHT)), "document": document_mask(Q_IDS, KV_IDS),
             "prefix_lm": prefix_lm_mask(PREFIX), "causal": causal_mask}
BLOCK_MASKS = {name: create_block_mask(mod, B, None, T, S, block_sizes=BLOCKS)
               for name, mod in {**MASK_MODS, "everything": EVERYTHING}.items()}


def both_halves(query, key, value, *, mask_name=None, **options):
    """``{name: (out, lse)}`` of the NumPy definition, the dense JAX mirror and the blocked JAX
    path (with the block mask of ``mask_name``, blocks of 3 x 4)."""
    mask_mod = MASK_MODS[mask_name] if mask_name else None
    block_mask = BLOCK_MASKS[mask_name or "everything"]
    return {
        "numpy": attention_np.flex_attention(query, key, value, mask_mod=mask_mod, return_residual=True, **options),
        "jax mirror": attention_jax.flex.flex_attention(query, key, value, mask_mod=mask_mod, return_residual=True,
                                                        **options),
        "jax": attention_jax.flex_attention(query, key, value, block_mask=block_mask, return_residual=True, **options),
    }


# --- against PyTorch's flex_attention ----------------------------------------------------------------
def torch_mods(torch):
    """The six mods again, written in PyTorch: ``{name: (score_mod, mask_mod)}``."""
    slopes, table = torch.tensor(SLOPES), torch.tensor(TABLE)
    prefix, q_ids, kv_ids = torch.tensor(PREFIX), torch.tensor(Q_IDS), torch.tensor(KV_IDS)
    return {
        "alibi": (lambda score, b, h, q, kv: score + slopes[h] * (kv - q), None),
        "soft_cap": (lambda score, b, h, q, kv: CAP * torch.tanh(score / CAP), None),
        "relative_position": (lambda score, b, h, q, kv: score + table[h, torch.clamp(kv - q, -MAX_DISTANCE,
                                                                                        MAX_DISTANCE) + MAX_DISTANCE],
                              None),
        "sliding_window": (None, lambda b, h, q, kv: (kv >= q - LEFT) & (kv <= q + RIGHT)),
        "document": (None, lambda b, h, q, kv: q_ids[b, q] == kv_ids[b, kv]),
        "prefix_lm": (None, lambda b, h, q, kv: (kv < prefix[b]) | (kv <= q)),
    }


@pytest.fixture(scope="module")
def torch_results():
    """PyTorch's ``(out, lse)`` for each mod, float64, in our layout (B, T, N, H) and (B, T, N).
    Eager: without ``torch.compile`` PyTorch runs its unfused reference (and warns, once)."""
    torch = pytest.importorskip("torch")
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    heads_first = lambda x: torch.tensor(x).permute(0, 2, 1, 3)   # (B, L, N, H) -> (B, N, L, H)
    results = {}
    for name, (score_mod, mask_mod) in torch_mods(torch).items():
        block_mask = None if mask_mod is None else flex.create_block_mask(mask_mod, B, None, T, S, device="cpu")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*without torch.compile", category=UserWarning)
            out, aux = flex.flex_attention(heads_first(QUERY), heads_first(KEY), heads_first(VALUE), score_mod=score_mod,
                                           block_mask=block_mask, enable_gqa=True,
                                           return_aux=flex.AuxRequest(lse=True))
        results[name] = out.permute(0, 2, 1, 3).numpy(), aux.lse.permute(0, 2, 1).numpy()
    return results


@pytest.mark.parametrize("name", ["alibi", "soft_cap", "relative_position", "sliding_window", "document", "prefix_lm"])
def test_against_pytorch_flex_attention(name, torch_results):
    options = {"score_mod": SCORE_MODS[name]} if name in SCORE_MODS else {"mask_name": name}
    expected_out, expected_lse = torch_results[name]
    if name == "document":  # the dead query: zeros and -inf in PyTorch too
        assert (expected_out[1, 4] == 0).all() and (expected_lse[1, 4] == -np.inf).all()
    for half, (out, lse) in both_halves(QUERY, KEY, VALUE, **options).items():
        check(out, expected_out, "float64", name=f"{half}: out")
        check(lse, expected_lse, "float64", name=f"{half}: lse")


# --- masks: against jax.nn and the NumPy reference with the boolean mask -------------------------------
def boolean_mask(name):
    """The ``(B, 1, T, S)`` mask of a mask mod, written out here."""
    t, s = np.arange(T)[:, None], np.arange(S)[None, :]
    mask = {
        "causal": np.broadcast_to(s <= t, (B, T, S)),
        "sliding_window": np.broadcast_to((s >= t - LEFT) & (s <= t + RIGHT), (B, T, S)),
        "document": Q_IDS[:, :, None] == KV_IDS[:, None, :],
        "prefix_lm": (s[None] < PREFIX[:, None, None]) | (s <= t)[None],
    }[name]
    return mask[:, None]


@pytest.mark.parametrize("name", ["causal", "sliding_window", "document"])
def test_masks_against_jax_nn(name):
    """jax.nn gives a query that sees no key the mean of the values, we give zeros: the live
    queries are compared, the dead ones must be exactly zero. jax.nn's softmax runs in float32
    whatever the input dtype, so float64 agrees to float32's rounding, 1e-6, not 1e-12."""
    mask = boolean_mask(name)
    expected = np.asarray(jax.nn.dot_product_attention(QUERY, KEY, VALUE, mask=mask))
    live = mask.any(axis=(1, 3))                                  # (B, T)
    assert (name == "document") == (not live.all())               # the document mask has its dead query
    for half, (out, _) in both_halves(QUERY, KEY, VALUE, mask_name=name).items():
        check(out[live], expected[live], "float64", tolerance=1e-6, name=half)
        assert (out[~live] == 0).all(), half


@pytest.mark.parametrize("name", ["document", "prefix_lm"])
def test_masks_against_the_boolean_mask(name):
    """Segment ids (and the prefix LM) equal ``scaled_dot_product_attention(mask=...)``."""
    expected, weights = attention_np.scaled_dot_product_attention(QUERY, KEY, VALUE, mask=boolean_mask(name))
    for half, (out, _) in both_halves(QUERY, KEY, VALUE, mask_name=name).items():
        check(out, expected, "float64", name=half)


# --- soft-cap and sinks, written out ----------------------------------------------------------------------
def written_out(query, key, value, *, cap=None, sinks=None, mask=None):
    """``(out, lse)``: logits, ``cap tanh(x / cap)``, a sink column of zero value, softmax."""
    key, value = np.repeat(key, N // K, axis=2), np.repeat(value, N // K, axis=2)
    logits = np.einsum("btnh,bsnh->bnts", query, key) / np.sqrt(H)
    if cap is not None:
        logits = cap * np.tanh(logits / cap)
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
    if sinks is not None:
        logits = np.concatenate([logits, np.broadcast_to(sinks[None, :, None, None], (B, N, T, 1))], axis=-1)
        value = np.concatenate([value, np.zeros((B, 1, N, H))], axis=1)
    peak = logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits - peak)
    out = np.einsum("bnts,bsnh->btnh", exp / exp.sum(-1, keepdims=True), value)
    return out, (peak + np.log(exp.sum(-1, keepdims=True)))[..., 0].transpose(0, 2, 1)


SINKS = np.array([-1.0, 0.0, 0.5, 1.5, 3.0, 8.0])                # the last sink takes nearly all


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mods", ["soft_cap", "soft_cap+sinks+document"])
def test_soft_cap_and_sinks_written_out(mods, dtype):
    """Float64 within 1e-12, float32 within 1e-5 (docs/design.md section 5); with the
    document mask, the query that sees no key gives zeros and its lse is its sink."""
    options, expected_options, mask_name = {}, {}, None
    if "soft_cap" in mods:
        options["score_mod"], expected_options["cap"] = SCORE_MODS["soft_cap"], CAP
    if "sinks" in mods:
        options["sinks"], expected_options["sinks"] = SINKS.astype(dtype), SINKS
    if "document" in mods:
        mask_name, expected_options["mask"] = "document", boolean_mask("document")
    expected_out, expected_lse = written_out(QUERY, KEY, VALUE, **expected_options)
    q, k, v = (x.astype(dtype) for x in (QUERY, KEY, VALUE))
    with jax.default_matmul_precision("highest" if dtype == np.float32 else None):
        results = both_halves(q, k, v, mask_name=mask_name, **options)
    for half, (out, lse) in results.items():
        assert out.dtype == dtype, half
        check(out, expected_out, dtype, name=f"{half}: out")
        check(lse, expected_lse, dtype, name=f"{half}: lse")
        if mask_name:
            assert (np.asarray(out)[1, 4] == 0).all(), half
            check(lse[1, 4], SINKS, dtype, name=f"{half}: the dead query's lse")


# --- gradients --------------------------------------------------------------------------------------------
def biased(table, slopes):
    """A relative-position table and ALiBi slopes, one score_mod (both arrays closed over)."""
    relative, linear = relative_position_bias(table, MAX_DISTANCE), alibi(slopes)
    return lambda score, b, h, q_idx, kv_idx: linear(relative(score, b, h, q_idx, kv_idx), b, h, q_idx, kv_idx)


DOCUMENT_CAUSAL = and_masks(causal_mask, document_mask(Q_IDS, KV_IDS))
DOCUMENT_CAUSAL_BLOCKS = create_block_mask(DOCUMENT_CAUSAL, B, None, T, S, block_sizes=BLOCKS)
GRAD_SINKS = rng0.normal(size=(N,))
PRIMALS = (QUERY, KEY, VALUE, GRAD_SINKS, TABLE, SLOPES)
PRIMAL_NAMES = ("query", "key", "value", "sinks", "table", "slopes")
COTANGENTS = (rng0.normal(size=(B, T, N, H)), rng0.normal(size=(B, T, N)))  # d_out, d_lse


def flex_loss_parts(fn, block_mask=None):
    """``(query, key, value, sinks, table, slopes) -> (out, lse)`` through ``fn``."""
    def run(query, key, value, sinks, table, slopes):
        masks = {"block_mask": block_mask} if block_mask is not None else {"mask_mod": DOCUMENT_CAUSAL}
        return fn(query, key, value, score_mod=biased(table, slopes), sinks=sinks, return_residual=True, **masks)
    return run


def outputs_and_gradients(fn, primals, cotangents):
    """``(outputs, gradients)`` of ``fn`` by ``jax.vjp``, compiled as one program (the dense
    mirror too: op by op its backward pass takes seconds to dispatch)."""
    @jax.jit
    def run(primals, cotangents):
        outputs, vjp = jax.vjp(fn, *primals)
        return outputs, vjp(cotangents)

    return run(tuple(map(jnp.asarray, primals)), jax.tree.map(jnp.asarray, cotangents))


@pytest.fixture(scope="module")
def blocked_gradients():
    """``jax.vjp`` of the blocked path (document + causal mask, blocks of 3 x 4), float64."""
    return outputs_and_gradients(flex_loss_parts(attention_jax.flex_attention, DOCUMENT_CAUSAL_BLOCKS), PRIMALS,
                                 COTANGENTS)


def test_gradients_against_the_dense_mirror(blocked_gradients):
    """Every gradient, the closed-over table and slopes included, within 1e-12 of ``jax.vjp``
    of the dense mirror: the backward pass through score_mod, sinks and lse is exact."""
    (out, lse), grads = blocked_gradients
    (expected_out, expected_lse), expected_grads = outputs_and_gradients(
        flex_loss_parts(attention_jax.flex.flex_attention), PRIMALS, COTANGENTS)
    check(out, expected_out, "float64")
    check(lse, expected_lse, "float64", name="lse")
    for name, grad, expected in zip(PRIMAL_NAMES, grads, expected_grads):
        assert np.abs(np.asarray(expected)).max() > 1e-2, name    # a gradient that is there to check
        check(grad, expected, "float64", name=name)


def test_gradients_against_finite_differences(blocked_gradients):
    """Central differences of the NumPy definition's loss ``sum(d_out out) + sum(d_lse lse)``
    on four entries of each input: within 1e-6 (the harness's finite-difference tolerance)."""
    _, grads = blocked_gradients
    numpy_run = flex_loss_parts(attention_np.flex_attention)
    loss = lambda primals: sum(float(np.sum(c * o)) for c, o in zip(COTANGENTS, numpy_run(*primals)))
    rng, step = np.random.default_rng(1), 1e-5
    for i, (name, grad) in enumerate(zip(PRIMAL_NAMES, grads)):
        for flat in rng.choice(PRIMALS[i].size, 4, replace=False):
            index = np.unravel_index(flat, PRIMALS[i].shape)
            plus, minus = [list(PRIMALS) for _ in range(2)]
            plus[i], minus[i] = PRIMALS[i].copy(), PRIMALS[i].copy()
            plus[i][index] += step
            minus[i][index] -= step
            expected = (loss(plus) - loss(minus)) / (2 * step)
            check(grad[index], expected, "float64", tolerance=FD_TOLERANCE, name=f"{name}{index}")


# --- block skipping -------------------------------------------------------------------------------------
def test_an_empty_block_is_never_read():
    """Causal blocks of 3 x 4: for query block 0 (queries 0-2) key blocks 1 and 2 are empty, for
    query block 2 (query 6) key block 1 is partial. NaN in the keys and values of key block 1
    (keys 4-7): query block 0's output and query gradient stay finite and equal to the clean
    result, forward and backward, while query 6, which attends key 4, turns NaN. The dense
    mirror, which multiplies the masked weights (zeros) with the NaN values, is NaN everywhere:
    only a block that is skipped can keep query block 0 clean."""
    block_mask = BLOCK_MASKS["causal"]
    states = np.asarray(block_mask.states)[0, 0]
    assert list(states[0]) == [1, 0, 0] and states[2, 1] != 0       # (EMPTY=0, PARTIAL=1, FULL=2)
    key, value = KEY.copy(), VALUE.copy()
    key[:, 4:8], value[:, 4:8] = np.nan, np.nan
    d_out = COTANGENTS[0]

    def blocked(query, key, value):
        out, vjp = jax.vjp(lambda q, k, v: attention_jax.flex_attention(q, k, v, block_mask=block_mask), query, key, value)
        return np.asarray(out), np.asarray(vjp(jnp.asarray(d_out))[0])

    clean_out, clean_d_query = blocked(QUERY, KEY, VALUE)
    out, d_query = blocked(QUERY, key, value)
    assert np.isfinite(out[:, :3]).all() and np.isfinite(d_query[:, :3]).all()
    check(out[:, :3], clean_out[:, :3], "float64")
    check(d_query[:, :3], clean_d_query[:, :3], "float64", name="d_query")
    assert np.isnan(out[:, 6]).all()                               # the NaN is real where it is attended
    dense = np.asarray(attention_jax.flex.flex_attention(QUERY, key, value, mask_mod=causal_mask))
    assert np.isnan(dense).all()


def test_a_full_block_is_not_masked():
    """A hand-made BlockMask over a causal mask_mod: the block above the diagonal (queries 0-2,
    keys 4-7) marked FULL is attended whole, though mask_mod says False there; PARTIAL blocks are
    causal, EMPTY ones skipped. Expected: the element mask these states define, written out."""
    states = np.array([[1, 2, 0],
                       [2, 1, 0],
                       [2, 2, 1]], np.int8)                          # (nq, nk)
    block_mask = BlockMask(jnp.asarray(states[None, None]), (None, None, T, S), BLOCKS, causal_mask)
    t, s = np.arange(T)[:, None], np.arange(S)[None, :]
    element = states[t // BLOCKS[0], s // BLOCKS[1]]
    mask = (element == 2) | ((element == 1) & (s <= t))              # (T, S)
    assert (mask & (s > t)).any()                                    # attended where causal_mask is False
    expected, _ = attention_np.scaled_dot_product_attention(QUERY, KEY, VALUE, mask=mask)
    out = attention_jax.flex_attention(QUERY, KEY, VALUE, block_mask=block_mask)
    check(out, expected, "float64")


def numpy_block_states(mask, qc, kc):
    """``(B, nq, nk)`` block states of an element mask ``(B, T, S)``, counted here: padding
    queries count as neither attending nor not, padding keys are never attended."""
    b, t, s = mask.shape
    nq, nk = -(-t // qc), -(-s // kc)
    padded = np.zeros((b, nq * qc, nk * kc), bool)
    padded[:, :t, :s] = mask
    real = np.zeros((nq * qc, 1), bool)
    real[:t] = True
    states = np.zeros((b, nq, nk), np.int8)
    for i in range(nq):
        for j in range(nk):
            block, rows = padded[:, i * qc:(i + 1) * qc, j * kc:(j + 1) * kc], real[i * qc:(i + 1) * qc]
            some = (block & rows).any(axis=(1, 2))
            every = (block | ~rows).all(axis=(1, 2))
            states[:, i, j] = np.where(every, 2, np.where(some, 1, 0))
    return states


@pytest.mark.parametrize("blocks", [(3, 4), (2, 2), (7, 11), (1, 1)])
def test_block_states_of_documents_and_causal(blocks):
    """``create_block_mask`` of the document + causal mask: the same states (and so the same
    counts of empty, partial and full blocks) as counted in NumPy from the element mask."""
    mask = (Q_IDS[:, :, None] == KV_IDS[:, None, :]) & (np.arange(S)[None, None] <= np.arange(T)[None, :, None])
    block_mask = create_block_mask(DOCUMENT_CAUSAL, B, None, T, S, block_sizes=blocks)
    expected = numpy_block_states(mask, *blocks)
    assert np.asarray(block_mask.states).shape == (B, 1) + expected.shape[1:]
    np.testing.assert_array_equal(np.asarray(block_mask.states)[:, 0], expected)
    counts = {v: int((expected == v).sum()) for v in (0, 1, 2)}
    assert f"'empty': {counts[0]}, 'partial': {counts[1]}, 'full': {counts[2]}" in repr(block_mask)
    assert block_mask.sparsity() == pytest.approx(counts[0] / expected.size)


# --- block masks per batch row and head ---------------------------------------------------------------------
# with one block (the default blocks at these lengths) the block is full for row 0 (one document) and partial
# for row 1 (two); full for head 0 (it sees every key) and partial for the others (causal)
PER_ROW = document_mask(np.array([[0] * T, [0, 0, 0, 1, 1, 1, 1]]), np.array([[0] * S, [0] * 5 + [1] * 6]))
PER_HEAD = lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx) | (h == 0)  # noqa: E731


def test_create_block_mask_refuses_a_none_axis_the_mask_varies_along():
    """B=None (N=None) means one mask for every batch row (head), as in PyTorch: a mask_mod
    that depends on b (h) is refused with what to pass, never evaluated for row (head) 0 alone."""
    with pytest.raises(ValueError, match=r"mask_mod depends on the batch row b .*B=None .*: pass B, the batch size"):
        create_block_mask(PER_ROW, None, None, T, S)
    with pytest.raises(ValueError, match=r"mask_mod depends on the head h .*N=None .*: pass N, the number of query"):
        create_block_mask(PER_HEAD, B, None, T, S)
    assert np.asarray(create_block_mask(PER_ROW, B, None, T, S).states).ravel().tolist() == [2, 1]
    assert np.asarray(create_block_mask(PER_HEAD, None, N, T, S).states).ravel().tolist() == [2] + [1] * (N - 1)


@pytest.mark.parametrize("name", ["per row", "per head"])
def test_own_block_mask_per_batch_row_and_head(name):
    """Without ``block_mask=``, flex_attention makes one per batch row (head) when mask_mod
    depends on b (h): a blocked path that used row 0's (head 0's) full block everywhere would
    attend across row 1's documents (future keys of head 1). Expected: the NumPy definition."""
    mask_mod = {"per row": PER_ROW, "per head": PER_HEAD}[name]
    expected_out, expected_lse = attention_np.flex_attention(QUERY, KEY, VALUE, mask_mod=mask_mod, return_residual=True)
    out, lse = attention_jax.flex_attention(QUERY, KEY, VALUE, mask_mod=mask_mod, return_residual=True)
    check(out, expected_out, "float64")
    check(lse, expected_lse, "float64", name="lse")


# --- mods closing over traced integer and boolean arrays ----------------------------------------------------
TRACED_KEEP = np.ones((B, S), bool)
TRACED_KEEP[0, 9], TRACED_KEEP[1, 2] = False, False                # a padded key per row


def traced_mods(q_ids, kv_ids, keep, offset):
    """A document mask and a key-padding mask over (possibly traced) int ids and a bool array,
    and a score_mod with an int offset: ``score + 0.3 ((kv_idx + offset) mod 3)``."""
    def padding(b, h, q_idx, kv_idx):
        return asarray_like(keep, kv_idx)[b, kv_idx]

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + 0.3 * ((kv_idx + offset) % 3)
    return score_mod, and_masks(document_mask(q_ids, kv_ids), padding)


def traced_loss(fn, blocks):
    """``sum(d_out * out)`` of ``fn`` with :func:`traced_mods`; the blocked path's block mask is
    made inside, from the traced arrays."""
    def loss(query, key, value, q_ids, kv_ids, keep, offset):
        score_mod, mask_mod = traced_mods(q_ids, kv_ids, keep, offset)
        masks = {"mask_mod": mask_mod}
        if blocks:
            masks = {"block_mask": create_block_mask(mask_mod, B, None, T, S, block_sizes=BLOCKS)}
        return jnp.sum(COTANGENTS[0] * fn(query, key, value, score_mod=score_mod, **masks))
    return loss


TRANSFORMS = {
    "jit(grad)": lambda loss: jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))),
    "grad(jit)": lambda loss: jax.value_and_grad(jax.jit(loss), argnums=(0, 1, 2)),
    "vmap(grad)": lambda loss: jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1, 2)),
                                                in_axes=(None, None, None, 0, 0, 0, 0))),
}


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_mods_closing_over_traced_integers(transform):
    """Document ids, a bool padding mask and an int offset passed as arguments of the
    differentiated function (traced), under jit(grad), grad(jit) and vmap over two sets of them:
    the loss equals the NumPy definition's, the gradients ``jax.grad`` of the dense mirror's."""
    sets = [(Q_IDS, KV_IDS, TRACED_KEEP, np.int32(2))]
    if transform == "vmap(grad)":  # a second set: other documents, other padding, another offset
        sets.append((Q_IDS[::-1], KV_IDS[::-1], TRACED_KEEP[::-1], np.int32(1)))
    traced = sets[0] if len(sets) == 1 else tuple(np.stack(arrays) for arrays in zip(*sets))
    loss, grads = TRANSFORMS[transform](traced_loss(attention_jax.flex_attention, blocks=True))(QUERY, KEY, VALUE,
                                                                                                 *traced)
    dense = jax.jit(jax.grad(traced_loss(attention_jax.flex.flex_attention, blocks=False), argnums=(0, 1, 2)))
    for i, arrays in enumerate(sets):
        set_loss, set_grads = (loss, grads) if len(sets) == 1 else jax.tree.map(lambda x: x[i], (loss, grads))
        score_mod, mask_mod = traced_mods(*arrays)
        out = attention_np.flex_attention(QUERY, KEY, VALUE, score_mod=score_mod, mask_mod=mask_mod)
        check(set_loss, np.sum(COTANGENTS[0] * out), "float64", name=f"set {i}: loss")
        for name, grad, expected in zip(PRIMAL_NAMES, set_grads, dense(QUERY, KEY, VALUE, *arrays)):
            check(grad, expected, "float64", name=f"set {i}: {name}")


# --- NaN where no query attends ------------------------------------------------------------------------------
# keys with id 9 belong to no query's document: padding. Key 10 is padding in both rows: with 1 x 1 blocks its
# blocks are empty in both (skipped), with 3 x 4 and 7 x 11 it shares a partial block with attended keys
PAD_KV_IDS = np.array([[0, 0, 9, 0, 1, 1, 9, 2, 2, 2, 9], [0, 0, 1, 9, 1, 1, 2, 2, 2, 2, 9]])
PADDED = document_mask(Q_IDS, PAD_KV_IDS)
NAN_KEY, NAN_VALUE = KEY.copy(), VALUE.copy()
NAN_KEY[PAD_KV_IDS == 9], NAN_VALUE[PAD_KV_IDS == 9] = np.nan, np.nan


def padded_flex(fn, **masks):
    """``(query, key, value) -> (out, lse)`` of ``fn`` with the padding's document mask."""
    return lambda query, key, value: fn(query, key, value, return_residual=True, **masks)


@pytest.fixture(scope="module")
def clean_padding():
    """The NumPy definition's ``(out, lse)`` on clean inputs, and the gradients of the dense
    mirror there (``jax.vjp``), and its ``((out, lse), gradients)`` with NaN in the padding:
    one program for both."""
    expected = attention_np.flex_attention(QUERY, KEY, VALUE, mask_mod=PADDED, return_residual=True)

    @jax.jit
    def mirror(primals, cotangents):
        outputs, vjp = jax.vjp(padded_flex(attention_jax.flex.flex_attention, mask_mod=PADDED), *primals)
        return outputs, vjp(cotangents)

    _, expected_grads = mirror((QUERY, KEY, VALUE), COTANGENTS)
    return expected, expected_grads, mirror((QUERY, NAN_KEY, NAN_VALUE), COTANGENTS)


@pytest.mark.parametrize("blocks", [None, (1, 1), (3, 4), (7, 11)], ids=str)
def test_nan_where_no_query_attends_is_never_read(blocks, clean_padding):
    """NaN stored in the keys and values of the padding (keys no query's mask_mod attends):
    outputs, lse and gradients equal those of clean inputs and are finite, in the NumPy
    definition and the dense mirror (``blocks`` None) and in the blocked path, whether the
    padding's block is skipped (1 x 1) or partial (3 x 4, 7 x 11). Expected: the NumPy
    definition on clean inputs; for the gradients, ``jax.vjp`` of the dense mirror there."""
    (expected_out, expected_lse), expected_grads, mirror_results = clean_padding
    if blocks is None:
        results = {"numpy": (attention_np.flex_attention(QUERY, NAN_KEY, NAN_VALUE, mask_mod=PADDED,
                                                         return_residual=True), None),
                   "jax mirror": mirror_results}
    else:
        block_mask = create_block_mask(PADDED, B, None, T, S, block_sizes=blocks)
        column = np.asarray(block_mask.states)[:, 0, :, 10 // blocks[1]]          # key 10's blocks (B, nq)
        assert (column == 0).all() if blocks == (1, 1) else (column == 1).any()   # (EMPTY=0, PARTIAL=1)
        results = {"jax": outputs_and_gradients(padded_flex(attention_jax.flex_attention, block_mask=block_mask),
                                                (QUERY, NAN_KEY, NAN_VALUE), COTANGENTS)}
    for half, ((out, lse), grads) in results.items():
        check(out, expected_out, "float64", name=f"{half}: out")
        check(lse, expected_lse, "float64", name=f"{half}: lse")
        for name, grad, expected in zip(PRIMAL_NAMES, grads or (), expected_grads):
            check(grad, expected, "float64", name=f"{half}: {name}")


# --- errors ------------------------------------------------------------------------------------------------
FLEX = {"numpy": attention_np.flex_attention, "jax mirror": attention_jax.flex.flex_attention,
        "jax": attention_jax.flex_attention}
ERRORS = {
    "query rank": ({"query": QUERY[0]}, ValueError, r"query must have shape \(B, T, N, H\), one batch axis"),
    "key shape": ({"key": KEY[:, :, :, :4]}, ValueError, r"key must have shape \(B, S, K, H\) with B=2, H=5"),
    "heads": ({"key": np.zeros((B, S, 4, H)), "value": np.zeros((B, S, 4, H))}, ValueError,
              "the number of query heads N=6 must be a multiple of the number of key/value heads K=4"),
    "sinks shape": ({"sinks": np.zeros((1, N))}, ValueError, r"sinks must have shape \(N,\) = \(6,\)"),
    "sinks dtype": ({"sinks": np.zeros(N, np.int32)}, TypeError, "sinks must have a floating dtype"),
    "score_mod": ({"score_mod": 2.0}, TypeError, r"score_mod must be a function \(score, b, h, q_idx, kv_idx\)"),
    "mask_mod": ({"mask_mod": np.ones((T, S), bool)}, TypeError, r"mask_mod must be a function \(b, h, q_idx, kv_idx\)"),
    "both masks": ({"mask_mod": causal_mask, "block_mask": BLOCK_MASKS["sliding_window"]}, ValueError,
                   "pass mask_mod or block_mask"),
    "block mask lengths": ({"block_mask": create_block_mask(causal_mask, None, None, T + 1, S)}, ValueError,
                           r"block_mask was made for \(B, N, T, S\) = \(None, None, 8, 11\); the inputs have "
                           r"\(2, 6, 7, 11\)"),
    "block mask batch": ({"block_mask": create_block_mask(causal_mask, 3, None, T, S)}, ValueError,
                         r"block_mask was made for \(B, N, T, S\) = \(3, None, 7, 11\)"),
}


@pytest.mark.parametrize("half", FLEX)
@pytest.mark.parametrize("case", ERRORS)
def test_errors_name_the_argument(case, half):
    changes, exception, match = ERRORS[case]
    arrays = {"query": QUERY, "key": KEY, "value": VALUE}
    options = {name: value for name, value in changes.items() if name not in arrays}
    arrays.update({name: value for name, value in changes.items() if name in arrays})
    with pytest.raises(exception, match=match):
        FLEX[half](arrays["query"], arrays["key"], arrays["value"], **options)


def test_create_block_mask_errors():
    with pytest.raises(ValueError, match="T must be a positive int; got 0"):
        create_block_mask(causal_mask, None, None, 0, S)
    with pytest.raises(ValueError, match=r"block_sizes must be None or a pair \(query rows, key rows\)"):
        create_block_mask(causal_mask, None, None, T, S, block_sizes=(2, 2, 2))


# --- property: random problems ---------------------------------------------------------------------------
@settings(max_examples=max(2, settings.default.max_examples // 2))  # each example: a new shape, mods, blocks
@given(p=problems(options={"query_segment_ids", "key_value_segment_ids", "is_causal", "local_window_size",
                           "logits_soft_cap", "sinks"}, always={"query_segment_ids", "key_value_segment_ids"},
                  dtypes=("float32", "bfloat16"), T=range(1, 10), S=range(1, 10)),
       blocks=st.tuples(st.integers(1, 4), st.integers(1, 4)))
def test_property_random_problems(p, blocks):
    """Random shapes, document ids (sorted or not) for queries and keys (so some queries see no
    key), causal and/or a window, soft-cap (a score_mod written with ``array_namespace``'s tanh,
    as a user's would be), sinks, blocks of 1..4 x 1..4, upstream gradients of out and lse up to
    1e4, float32 or bfloat16: the blocked path's out, lse and gradients (sinks' included) equal
    the NumPy float64 reference, dead queries zero (:func:`parity_tests.testing.check_path`)."""
    check_path(flex_path(blocks), p.with_options(return_residual=True))
