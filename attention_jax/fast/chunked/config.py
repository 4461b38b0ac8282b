"""The static and the per-row parts of a :func:`attention_jax.chunked_attention` call, named."""

from typing import NamedTuple

import jax.numpy as jnp


class Config(NamedTuple):
    """The static part of a call: block sizes, true lengths and what needs masking."""

    is_causal: bool
    query_chunk: int
    key_chunk: int
    T: int  # true query length (the arrays are padded to a multiple of query_chunk)
    S: int  # true key length (padded to a multiple of key_chunk)
    G: int  # query heads per key/value head
    window: tuple | None = None  # (left, right): query t sees keys t - left .. t + right
    lengths: bool = False  # per-row query/key lengths are given (every block is masked)
    dropout_rate: float = 0.0
    broadcast_dropout: bool = False  # one dropout mask for every batch row and head
    compute: object = jnp.float32  # softmax / accumulation dtype (operands may be bf16/f16)
    backward_chunks: tuple | None = None  # (query, key) blocks of the backward pass; None: the forward's
    tiles: int | None = None  # without autodiff, the forward as a static grid of tiles this size (kernels.forward_tiles)
    score_mod: object = None  # flex: the closure-converted score_mod(score, b, h, t, s, *consts), or None
    mask_mod: object = None  # flex: the closure-converted mask_mod(b, h, t, s, *consts), or None
    sparse: bool = False  # the blocks visited are read from block states (.sparse), not from the ranges of .masks
    segments: bool = False  # per-row segment ids are given: the states come from them (.sparse.option_states)
    soft_cap: float | None = None  # logits become soft_cap * tanh(logits / soft_cap) after the bias

    @property
    def banded(self):
        """Every block needs the iota mask (windows, lengths): no block is known to be full."""
        return self.window is not None or self.lengths


class Rows(NamedTuple):
    """Per-row arrays the blocks read: the sequence lengths ``qlen, kvlen (B, 1)`` (T and S
    without lengths), ``index (B, K, 2)`` the (b, k) of each row (for the dropout hash and the
    mods under per-head slicing), the dropout rng's ``words (1, 1, 2)`` and the segment ids
    ``qseg (B, 1, Tp)``, ``kseg (B, 1, Sp)`` (or None)."""

    qlen: object
    kvlen: object
    index: object
    words: object
    qseg: object = None
    kseg: object = None


class Mods(NamedTuple):
    """What :func:`attention_jax.flex_attention` adds: the arrays the mods close over
    (``score``: float, differentiated; ``mask``: any), the sink logits in the rows layout
    ``(1, K, G)`` (or None) and the block states ``(B|1, K|1, nq, nk)`` of
    :mod:`.sparse` (or None)."""

    score: tuple = ()
    mask: tuple = ()
    sinks: object = None
    states: object = None


class Residuals(NamedTuple):
    """What the forward pass saves for the backward pass: O(T + S), no score block."""

    q: object
    k: object
    v: object
    bias: object
    mask: object
    out: object
    lse: object
    rows: Rows
    mods: Mods
