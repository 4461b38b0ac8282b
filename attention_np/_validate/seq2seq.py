"""The checks of the encoder - attention - decoder model (``seq2seq.py``)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping

from .engine import Shapes, _dtype_name

# --- encoder - attention - decoder (seq2seq.py) ------------------------------------------------
SEQ2SEQ_ATTENTIONS = ("additive", "dot", "general", "concat", "location_sensitive")
GRU_SPEC = {"input": {"kernel": ("I", "3H"), "bias": ("3H",)}, "hidden": {"kernel": ("H", "3H"), "bias": ("3H",)}}


def check_ids(name: str, ids, letters: str, shapes: Shapes) -> None:
    """Token ids: an integer array of shape ``letters``."""
    dtype = _dtype_name(ids)
    if not (dtype.startswith("int") or dtype.startswith("uint")):
        raise TypeError(f"{name} must have an integer dtype (token ids); got {dtype}")
    shapes.check(name, ids, letters, floating=False)


def check_seq2seq(params, source_ids, target_ids, source_mask, *, target_name="target_in_ids") -> Shapes:
    """Arguments of ``seq2seq_forward`` / ``greedy_decode``: ids ``(B, S)`` and ``(B, T)``,
    an optional bool ``source_mask (B, S)``, and the params of ``init_seq2seq_params``."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict; got {type(params).__name__}")
    shapes = Shapes()
    check_ids("source_ids", source_ids, "BS", shapes)
    if shapes["S"] == 0:
        raise ValueError(f"source_ids must hold at least one position (S >= 1) to attend to; got shape {tuple(source_ids.shape)}")
    if target_ids is not None:
        check_ids(target_name, target_ids, "BT", shapes)
    if source_mask is not None:
        if _dtype_name(source_mask) != "bool":
            raise TypeError(f"source_mask must have a boolean dtype (True = attend); got {_dtype_name(source_mask)}")
        shapes.check("source_mask", source_mask, "BS", floating=False)
    for name in ("source_embed", "target_embed", "encoder", "decoder", "attention", "out"):
        if name not in params:
            raise ValueError(
                f"params[{name!r}] is missing; expected the keys of init_seq2seq_params: "
                "['attention', 'decoder', 'encoder', 'out', 'source_embed', 'target_embed']"
            )
    return shapes


def check_decode_options(bos_id, max_length, vocab) -> None:
    """``greedy_decode``'s static options: ``max_length`` an int >= 0, ``bos_id`` a target id."""
    if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral) or max_length < 0:
        raise ValueError(f"max_length must be a non-negative int; got {max_length!r}")
    if isinstance(bos_id, bool) or not isinstance(bos_id, numbers.Integral) or not 0 <= bos_id < vocab:
        raise ValueError(f"bos_id must be an int in [0, {vocab}) (a target token id); got {bos_id!r}")
