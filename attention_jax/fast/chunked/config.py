"""What the kernels of :func:`attention_jax.chunked_attention` read, named: the static
:class:`Config`, the :class:`Operands` and per-row :class:`Rows` in the rows layout
(:mod:`.layout`), flex's :class:`Mods`, and the :class:`Residuals` the backward pass needs."""

from typing import NamedTuple

import jax.numpy as jnp


class Config(NamedTuple):
    """The static part of a call: block sizes, true lengths and what needs masking. Built by
    keyword: ``Config(is_causal=True, query_chunk=64, key_chunk=64, T=100, S=100, G=1)``."""

    is_causal: bool
    query_chunk: int
    key_chunk: int
    T: int  # true query length (the arrays are padded to a multiple of query_chunk)
    S: int  # true key length (padded to a multiple of key_chunk)
    G: int  # query heads per key/value head
    window: tuple | None = None  # (left, right): query t sees keys t - left .. t + right
    has_lengths: bool = False  # Rows.qlen/kvlen hold per-row lengths (else T and S)
    has_segments: bool = False  # Rows.qseg/kseg hold per-row segment ids
    dropout_rate: float = 0.0
    broadcast_dropout: bool = False  # one dropout mask for every batch row and head
    compute: object = jnp.float32  # softmax / accumulation dtype (operands may be bf16/f16)
    backward_chunks: tuple | None = None  # (query, key) blocks of the backward pass; None: the forward's
    tile: int | None = None  # without autodiff, the forward as a static grid of tiles this size (kernels.forward_tiles)
    score_mod: object = None  # flex: the closure-converted score_mod(score, b, h, t, s, *consts), or None
    mask_mod: object = None  # flex: the closure-converted mask_mod(b, h, t, s, *consts), or None
    soft_cap: float | None = None  # logits become soft_cap * tanh(logits / soft_cap) after the bias

    @property
    def modifies_logits(self):
        """The logits go through :func:`.logits.modify_logits` (and the backward pass through its VJP)."""
        return self.soft_cap is not None or self.score_mod is not None

    @property
    def may_empty_rows(self):
        """Some query row may attend no key of the first block it visits (more than the causal
        mask and the key padding past S, which always leave key 0): its running max is then
        ``finfo.min``, and the masked entries' ``exp(0) = 1`` must be zeroed."""
        return (self.window is not None or self.has_lengths or self.has_segments or self.score_mod is not None
                or self.mask_mod is not None)


class Operands(NamedTuple):
    """The inputs of the kernels in the rows layout (:func:`.layout.to_rows`): ``q (B, K, Tp, G,
    H)`` scaled, ``k, v (B, K, Sp, H)``, and the caller's ``bias``, ``mask`` as ``(B|1, K|1, Tp|1,
    G|1, Sp|1)`` or None."""

    q: object
    k: object
    v: object
    bias: object = None
    mask: object = None


class Rows(NamedTuple):
    """Per-row arrays the blocks read: the sequence lengths ``qlen, kvlen (B, 1)`` (T and S
    without lengths), ``index (B, K, 2)`` the (b, k) of each row (for the dropout hash and the
    mods under per-head slicing), the dropout rng's ``words (1, 1, 2)`` and the segment ids
    ``qseg (B, 1, Tp)``, ``kseg (B, 1, Sp)`` (or None), and the global positions of the queries
    and keys ``qpos (1, 1, Tp)``, ``kpos (1, 1, Sp)`` when they are not ``0, 1, ...`` (a ring
    device's shard, in any order; None: the local index is the position)."""

    qlen: object
    kvlen: object
    index: object
    words: object
    qseg: object = None
    kseg: object = None
    qpos: object = None
    kpos: object = None


class Mods(NamedTuple):
    """What :func:`attention_jax.flex_attention` adds: the arrays the mods close over
    (``score``: float, differentiated; ``mask``: any), the sink logits in the rows layout
    ``(1, K, G)`` (or None) and the block states ``(B|1, K|1, nq, nk)`` of a
    :class:`~.sparse.BlockMask` (None: the states of the options, :func:`.sparse.option_states`)."""

    score: tuple = ()
    mask: tuple = ()
    sinks: object = None
    states: object = None


class Residuals(NamedTuple):
    """What the forward pass saves for the backward pass: O(T + S), no score block."""

    operands: Operands
    out: object
    lse: object
    rows: Rows
    mods: Mods
