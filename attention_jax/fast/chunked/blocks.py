"""Block sizes of :func:`attention_jax.chunked_attention`: the defaults per backend, and how a
length is split into blocks. Every number here was chosen by ``benchmarks/attention.py`` on
2-core x86 CPUs (float32); the measurements are in ``benchmarks/results/experiments.md``."""

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Upper bounds on the blocks of the two passes, ``(query rows, key rows)``, and the tiles
    of the short causal forward pass.

    ``forward``: non-causal; ``causal``: square, so that blocks above the diagonal are
    skipped; ``short_causal``: causal up to ``short_causal_length``, and with segment ids at
    any length; ``backward`` (five block
    matmuls, not two: smaller blocks pay on CPU), None for the forward's own; ``tile``: the
    causal forward without autodiff as a static grid of fused ``tile``-square tiles when
    ``tile < L <= tile_max_length``, ``H <= tile_max_features`` and at least ``tile_min_rows``
    (batch, head) rows, or None for never.
    """

    forward: tuple = (2048, 1024)
    causal: tuple = (1024, 1024)
    short_causal: tuple = (512, 512)
    short_causal_length: int = 2048
    backward: tuple | None = (512, 512)
    tile: int | None = 256
    tile_max_length: int = 1024
    tile_max_features: int = 64
    tile_min_rows: int = 16

    @classmethod
    def get_default(cls, backend=None):
        """The tuned sizes for ``backend`` (default: JAX's): CPU as measured, GPU 512 x 512
        blocks in both passes and no tiles."""
        if (backend or jax.default_backend()) == "cpu":
            return cls()
        return cls(forward=(512, 512), causal=(512, 512), short_causal=(512, 512), backward=None, tile=None)

    def blocks(self, is_causal, T, S, segments=False):
        """``(query_chunk, key_chunk)`` for this mask and these lengths, split evenly;
        ``segments``: blocks are skipped by their segment ids (or a block mask's states), where
        the smaller causal blocks skip more."""
        if segments or (is_causal and max(T, S) <= self.short_causal_length):
            qc, kc = self.short_causal
        else:
            qc, kc = self.causal if is_causal else self.forward
        return even_block(T, qc), even_block(S, kc)

    def backward_blocks(self, qc, kc):
        """The backward pass's blocks: on each axis the largest divisor of the forward's block
        (so that the padded lengths fit both passes) at most ``backward``, a multiple of 8."""
        if self.backward is None:
            return qc, kc
        return divisor_block(qc, self.backward[0]), divisor_block(kc, self.backward[1])

    def tile_for(self, is_causal, plain, T, S, H, rows):
        """The tile size when the forward pass runs as a static grid of tiles, else None:
        ``plain`` means no bias, mask, lengths, window or dropout; ``rows`` is B * N."""
        use = (self.tile is not None and is_causal and plain and self.tile < max(T, S) <= self.tile_max_length
               and H <= self.tile_max_features and rows >= self.tile_min_rows)
        return self.tile if use else None


def chunk_fields(block_sizes, *, is_causal, T, S, H, rows, segments, plain):
    """The block fields of :class:`~.config.Config` by name: ``block_sizes`` the caller's
    ``(query rows, key rows)`` (checked by :func:`check_block_sizes`), used exactly in both
    passes, an axis given as None the tuned default; or, for ``block_sizes=None``,
    :class:`BlockSizes`' tuned defaults with the backward pass's own blocks and the tiles
    (``rows``: B * N; ``plain``: no option but the causal mask)."""
    sizes = BlockSizes.get_default()
    given_q, given_k = block_sizes or (None, None)
    default_q, default_k = sizes.blocks(is_causal, T, S, segments)
    qc, kc = min(given_q or default_q, T), min(given_k or default_k, S)
    fields = dict(query_chunk=qc, key_chunk=kc)
    if block_sizes is None:
        fields |= dict(backward_chunks=sizes.backward_blocks(qc, kc), tile=sizes.tile_for(is_causal, plain, T, S, H, rows))
    return fields


def even_block(L, block, align=128):
    """The block for length ``L``: as many blocks as ``block`` rows need, of equal size
    rounded up to a multiple of ``align``, so that a length just past a multiple of
    ``block`` is not padded to nearly twice its work (1536 keys: two blocks of 768, not
    1024 padded to 2048). ``block`` when L fits."""
    if L <= block:
        return block
    n = -(-L // block)
    return min(block, -(-L // (n * align)) * align)


def divisor_block(block, most):
    """The largest divisor of ``block`` that is at most ``most`` and a multiple of 8 (at
    least 128 rows), or ``block`` itself when it is at most ``most`` or has none."""
    if block <= most:
        return block
    for n in range(-(-block // most), block // 128 + 1):
        if block % n == 0 and (block // n) % 8 == 0:
            return block // n
    return block


def check_size(name, size):
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"{name} must be a positive int or None; got {size!r}")


def check_block_sizes(block_sizes):
    """``block_sizes``: None, or a pair ``(query rows, key rows)`` of positive ints (None in a
    place: that axis's default). Returns it as a tuple (hashable, a static argument)."""
    if block_sizes is None:
        return None
    if not (isinstance(block_sizes, (tuple, list)) and len(block_sizes) == 2):
        raise ValueError(f"block_sizes must be None or a pair (query rows, key rows); got {block_sizes!r}")
    check_size("block_sizes[0]", block_sizes[0])
    check_size("block_sizes[1]", block_sizes[1])
    return tuple(block_sizes)
