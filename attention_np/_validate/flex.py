"""The checks of ``flex_attention`` (both halves): the arrays as ``scaled_dot_product_attention``,
one batch axis (the ``b`` a mod receives), the mods, the sinks and a block mask's shape."""

from __future__ import annotations

from .dot_product import check_sdpa, check_sinks
from .engine import Shapes


def check_flex(query, key, value, score_mod, mask_mod, block_mask, scale, sinks) -> Shapes:
    """Arguments of ``flex_attention``: returns the bound sizes B, T, S, N, K, H."""
    if getattr(query, "ndim", None) != 4:
        raise ValueError(
            "query must have shape (B, T, N, H), one batch axis (the b that score_mod and mask_mod "
            f"receive); got {tuple(getattr(query, 'shape', ()))}"
        )
    shapes = check_sdpa(query, key, value, None, None, scale)
    for name, mod in (("score_mod", score_mod), ("mask_mod", mask_mod)):
        if mod is not None and not callable(mod):
            raise TypeError(f"{name} must be a function {_SIGNATURES[name]} or None; got {type(mod).__name__}")
    if block_mask is not None:
        check_block_mask(block_mask, shapes)
        if mask_mod is not None and mask_mod is not block_mask.mask_mod:
            raise ValueError("pass mask_mod or block_mask (which carries its own mask_mod), not both")
    check_sinks(sinks, shapes)
    return shapes


def check_block_mask(block_mask, shapes: Shapes) -> None:
    """A block mask made for these lengths, and for this batch and these heads (or for all)."""
    B, N, T, S = block_mask.shape
    expected = (shapes["B"], shapes["N"], shapes["T"], shapes["S"])
    ok = T == expected[2] and S == expected[3] and B in (None, expected[0]) and N in (None, expected[1])
    if not ok:
        raise ValueError(
            f"block_mask was made for (B, N, T, S) = {block_mask.shape}; the inputs have {expected} "
            "(None in B or N: the same for every batch row or head)"
        )


_SIGNATURES = {"score_mod": "(score, b, h, q_idx, kv_idx) -> score", "mask_mod": "(b, h, q_idx, kv_idx) -> bool"}
