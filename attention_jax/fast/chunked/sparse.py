"""Block masks: which blocks of the (query, key) grid a ``mask_mod`` leaves empty, partial or
full, so that :func:`attention_jax.flex_attention` skips the empty ones and never evaluates
the mask in the full ones (the block sparsity of FlexAttention, He et al. 2024, and of
splash attention)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from .blocks import BlockSizes, check_block_sizes, check_size
from .closures import convert_mod

EMPTY, PARTIAL, FULL = 0, 1, 2  # a block's state: no entry attended, some, all


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockMask:
    """A mask evaluated once per block, reusable across layers and calls.

    Attributes:
      states: int8 ``(B|1, N|1, nq, nk)``: :data:`EMPTY`, :data:`PARTIAL` or :data:`FULL` for
        each (query block, key block), per batch row and head (or the same for all).
      shape: ``(B, N, T, S)`` it was made for; ``B``/``N`` None for "the same for all".
      block_sizes: ``(query rows, key rows)`` of a block.
      mask_mod: the ``(b, h, q_idx, kv_idx) -> bool`` it was made from, evaluated per
        element in the partial blocks.
      attended: bool ``(B|1, N|1, S)``, True where some query attends key s; a key no query
        attends is padding, zeroed before the products (NaN stored there is never read).
        None (a hand-made mask): every key is read.
    """

    states: jax.Array
    shape: tuple = dataclasses.field(metadata=dict(static=True))
    block_sizes: tuple = dataclasses.field(metadata=dict(static=True))
    mask_mod: object = dataclasses.field(metadata=dict(static=True))
    attended: jax.Array | None = None

    def sparsity(self):
        """The fraction of blocks skipped (empty), over every batch row and head."""
        return float(jnp.mean(self.states == EMPTY))

    def __repr__(self):
        counts = {name: int(jnp.sum(self.states == value)) for name, value in
                  (("empty", EMPTY), ("partial", PARTIAL), ("full", FULL))}
        return f"BlockMask(shape={self.shape}, block_sizes={self.block_sizes}, blocks={counts})"


def create_block_mask(mask_mod, B, N, T, S, *, block_sizes=None):
    r"""Evaluate ``mask_mod`` once, into a :class:`BlockMask` of empty / partial / full blocks.

    A block of ``qc`` queries and ``kc`` keys is empty when ``mask_mod`` attends none of its
    entries (it is skipped, forward and backward), full when it attends all (the mask is
    never evaluated there) and partial otherwise. Made once per mask and reused across
    layers and calls; the mask is evaluated one row of blocks at a time, so memory is
    O(qc S), not O(T S). The same pass records which keys some query attends
    (``attended``): the others are padding, zeroed by ``flex_attention``.

    As in PyTorch, ``B=None`` (``N=None``) means one mask for every batch row (head): a
    ``mask_mod`` whose result varies along ``b`` (``h``), such as :func:`document_mask` of
    per-row ids, is then a ``ValueError`` that says to pass ``B`` (``N``), never row (head) 0's
    mask silently used for all.

    Args:
      mask_mod: ``(b, h, q_idx, kv_idx) -> bool``, True = attend, on broadcasting index
        arrays (:mod:`attention_np.mods`).
      B, N: batch rows and query heads, or None when the mask is the same for all.
      T, S: query and key lengths.
      block_sizes: ``(qc, kc)``; default 512 x 512 (:class:`~.blocks.BlockSizes`'s
        ``short_causal``), split evenly.

    Returns:
      a :class:`BlockMask` whose ``states`` are ``(B, N, nq, nk)`` (1 for a None B or N),
      ``nq = ceil(T / qc)``, ``nk = ceil(S / kc)``, and ``attended`` ``(B, N, S)``.

    Example: documents of 2 and 2 tokens, causal within each, blocks of 2 x 2: the two
    diagonal blocks are partial (causal inside), the two off the diagonal empty.

    >>> from attention_np.mods import and_masks, causal_mask, document_mask
    >>> ids = jnp.array([[0, 0, 1, 1]])
    >>> mask = create_block_mask(and_masks(causal_mask, document_mask(ids)), 1, None, 4, 4, block_sizes=(2, 2))
    >>> mask.states[0, 0]
    Array([[1, 0],
           [0, 1]], dtype=int8)
    """
    for name, size in (("T", T), ("S", S)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{name} must be a positive int; got {size!r}")
    for name, size in (("B", B), ("N", N)):
        check_size(name, size)
    given_q, given_k = check_block_sizes(block_sizes) or (None, None)
    default_q, default_k = default_blocks(T, S)
    qc, kc = min(given_q or default_q, T), min(given_k or default_k, S)
    on_b, on_h = depends(mask_mod, B, N, T, S)
    for name, size, varies, axis, unit, means in (("B", B, on_b, "b", "batch row", "the batch size"),
                                                  ("N", N, on_h, "h", "head", "the number of query heads")):
        if size is None and varies:
            raise ValueError(
                f"mask_mod depends on the {unit} {axis} (its result varies along {axis}), but {name}=None makes "
                f"one mask for every {unit}, {unit} 0's: pass {name}, {means}"
            )
    # evaluated on the index arrays of _states, with the arrays mask_mod closes over as arguments
    nk = -(-S // kc)
    index = [jnp.zeros(shape, jnp.int32) for shape in ((B or 1, 1, 1, 1), (1, N or 1, 1, 1), (1, 1, qc, 1),
                                                       (1, 1, 1, nk * kc))]
    fn, floats, fixed = convert_mod(mask_mod, *index)
    states, attended = _states(fn, floats + fixed, B or 1, N or 1, T, S, qc, kc)
    return BlockMask(states, (B, N, T, S), (qc, kc), mask_mod, attended)


def depends(mask_mod, B, N, T, S):
    """``(on_b, on_h)``: whether ``mask_mod``'s result varies along the batch row (the head),
    read off its shape on broadcasting index arrays (nothing is computed); a None ``B``
    (``N``) is tried as 2."""
    index = [jax.ShapeDtypeStruct(shape, jnp.int32) for shape in
             ((B or 2, 1, 1, 1), (1, N or 2, 1, 1), (1, 1, T, 1), (1, 1, 1, S))]
    shape = jnp.shape(jax.eval_shape(mask_mod, *index))
    shape = (1,) * (4 - len(shape)) + tuple(shape)
    return shape[0] != 1, shape[1] != 1


@functools.partial(jax.jit, static_argnames=("mask_fn", "B", "N", "T", "S", "qc", "kc"))
def _states(mask_fn, consts, B, N, T, S, qc, kc):
    """``(B, N, nq, nk)`` block states and ``(B, N, S)`` the keys some query attends, of the
    closure-converted ``mask_fn(b, h, q_idx, kv_idx, *consts)`` (:func:`.masks.convert_mod`);
    queries past T are don't-cares, keys past S never attended."""
    nq, nk = -(-T // qc), -(-S // kc)
    b = jnp.arange(B, dtype=jnp.int32).reshape(B, 1, 1, 1)                        # int32 as mask_fn was traced
    h = jnp.arange(N, dtype=jnp.int32).reshape(1, N, 1, 1)
    u = jnp.arange(nk * kc, dtype=jnp.int32).reshape(1, 1, 1, nk * kc)

    def row(attended, i):  # query block i: the keys attended so far and by it, its states (B, N, nk)
        t = i * qc + jnp.arange(qc, dtype=jnp.int32).reshape(1, 1, qc, 1)
        m = jnp.broadcast_to(jnp.asarray(mask_fn(b, h, t, u, *consts), bool) & (u < S), (B, N, qc, nk * kc))
        real = t < T                                                              # (1, 1, qc, 1)
        attended = attended | (m & real).any(axis=2)                              # (B, N, nk * kc)
        m, real = m.reshape(B, N, qc, nk, kc), real[..., None]
        some, every = (m & real).any(axis=(2, 4)), (m | ~real).all(axis=(2, 4))
        return attended, jnp.where(every, FULL, jnp.where(some, PARTIAL, EMPTY)).astype(jnp.int8)

    attended, states = lax.scan(row, jnp.zeros((B, N, nk * kc), bool), jnp.arange(nq, dtype=jnp.int32))
    return jnp.moveaxis(states, 0, 2), attended[..., :S]                         # (B, N, nq, nk), (B, N, S)


def grouped(states, K, G):
    """Block states per key/value head ``(B|1, K|1, nq, nk)`` from those per query head: a
    block is empty (full) for the group when it is for each of its G query heads."""
    b, n = states.shape[:2]
    if n == 1:
        return states
    return union(states.reshape(b, K, G, *states.shape[2:]), axes=(2,))


def union(states, axes):
    """One state for the blocks over ``axes``: empty where all are, full where all are."""
    return jnp.where(states.max(axis=axes) == EMPTY, EMPTY,
                     jnp.where(states.min(axis=axes) == FULL, FULL, PARTIAL)).astype(jnp.int8)


def visits(states, kind):
    """``(indices, count)``: the positions along the last axis of ``states (..., n)`` in state
    ``kind``, first (in order), then the others; a loop over ``indices[:count]`` visits them."""
    hits = states == kind
    order = jnp.argsort(~hits, axis=-1, stable=True).astype(jnp.int32)
    return order, hits.sum(axis=-1).astype(jnp.int32)


def default_blocks(T, S):
    """The blocks of a block mask by default: the CPU-tuned blocks of a sparse (segment ids)
    call, 512 x 512 split evenly (GPU: 512 x 512)."""
    qc, kc = BlockSizes.get_default().blocks(True, T, S, segments=True)
    return min(qc, T), min(kc, S)


def option_states(rows, cfg, nq, nk):
    """Block states ``(B|1, 1, nq, nk)`` of the options of ``chunked_attention`` (causal,
    window, key padding past S, lengths, segment ids), from each block's first and last
    query and key: empty when no entry can be attended, full when every one is. Segment ids
    make a block empty when its queries' and keys' id ranges do not meet (exact for packed,
    sorted ids; a safe over-approximation otherwise) and full when all its ids are one."""
    qc, kc = cfg.query_chunk, cfg.key_chunk
    i, j = jnp.arange(nq).reshape(nq, 1), jnp.arange(nk).reshape(1, nk)
    t0, t1 = i * qc, jnp.minimum((i + 1) * qc, cfg.T) - 1                          # first, last real query
    u0, u1 = j * kc, jnp.minimum((j + 1) * kc, cfg.S) - 1                          # first, last real key
    empty, full = u0 >= cfg.S, (j + 1) * kc <= cfg.S                               # local: the padding past S
    if rows.qpos is not None:  # a shard's own positions (padded with the last real one): their range
        t = rows.qpos[0, 0].reshape(nq, qc)
        t0, t1 = t.min(-1)[:, None], t.max(-1)[:, None]
    if rows.kpos is not None:
        u = rows.kpos[0, 0].reshape(nk, kc)
        u0, u1 = u.min(-1)[None, :], u.max(-1)[None, :]
    if cfg.is_causal:
        empty, full = empty | (u0 > t1), full & (u1 <= t0)
    if cfg.window is not None:
        left, right = cfg.window
        empty = empty | (u0 > t1 + right) | (u1 < t0 - left)
        full = full & (u0 >= t1 - left) & (u1 <= t0 + right)
    if cfg.has_lengths:
        qlen, kvlen = rows.qlen[:, :, None, None], rows.kvlen[:, :, None, None]   # (B, 1, 1, 1)
        empty, full = empty | (u0 >= kvlen) | (t0 >= qlen), full & (u1 < kvlen) & (t1 < qlen)
    if cfg.has_segments:
        B = rows.qseg.shape[0]
        q = rows.qseg.reshape(B, 1, nq, qc)                                       # padded with the last id
        k = rows.kseg.reshape(B, 1, nk, kc)
        qmin, qmax = q.min(-1)[..., None], q.max(-1)[..., None]                   # (B, 1, nq, 1)
        kmin, kmax = k.min(-1)[:, :, None, :], k.max(-1)[:, :, None, :]           # (B, 1, 1, nk)
        empty = empty | (qmax < kmin) | (kmax < qmin)
        full = full & (qmin == qmax) & (kmin == kmax) & (qmin == kmin)
    if cfg.mask_mod is not None:  # the options do not know where a mask_mod attends: no block is known full
        full = False
    states = jnp.where(empty, EMPTY, jnp.where(full, FULL, PARTIAL)).astype(jnp.int8)
    states = states.reshape((1, 1) * (states.ndim == 2) + states.shape)
    return jnp.broadcast_to(states, states.shape[:2] + (nq, nk))  # without causal: the same for every query block
