"""The checks of ``scaled_dot_product_attention`` (both halves) and of everything built on it:
the arrays, and the options (windows, sequence lengths, dropout)."""

from __future__ import annotations

import math
import numbers

from .engine import (
    BATCH,
    Shapes,
    _dtype_name,
    batch_letters,
    check_bias,
    check_float,
    check_heads,
    check_mask,
    check_same_dtype,
    check_scale,
    dims,
)


def check_sdpa(query, key, value, bias, mask, scale) -> Shapes:
    """Arguments of ``scaled_dot_product_attention``: returns the bound sizes B... (the batch
    axes, any number), B (their product), T, S, N, K, H."""
    shapes = Shapes()
    shapes.check("query", query, (BATCH, "T", "N", "H"))
    shapes.check("key", key, (BATCH, "S", "K", "H"))
    check_same_dtype("key", key, "query", query)
    shapes.check("value", value, (BATCH, "S", "K", "H"))
    check_same_dtype("value", value, "query", query)
    check_heads(shapes)
    batch = shapes[BATCH]
    scores = batch + tuple(shapes[c] for c in "NTS")
    if bias is not None:
        check_bias(bias, scores, letters=batch_letters(batch, "NTS"))
    if mask is not None:
        check_mask(mask, scores, letters=batch_letters(batch, "NTS"), has_bias=True)
    if scale is not None:
        check_scale(scale)
    return shapes


def check_window(local_window_size):
    """``local_window_size``: None, an int w >= 0 (the window ``(w, w)``) or a pair
    ``(left, right)`` of ints >= 0, as in ``jax.nn.dot_product_attention``: query t attends
    keys ``t - left <= s <= t + right``. Returns the pair, or None."""
    if local_window_size is None:
        return None
    pair = (local_window_size, local_window_size) if isinstance(local_window_size, numbers.Integral) else local_window_size
    ok = isinstance(pair, (tuple, list)) and len(pair) == 2 and all(
        isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 0 for w in pair
    )
    if not ok or isinstance(local_window_size, bool):
        raise ValueError(
            "local_window_size must be None, an int >= 0 or a pair (left, right) of ints >= 0; "
            f"got {local_window_size!r}"
        )
    return int(pair[0]), int(pair[1])


def check_seq_lengths(name: str, lengths, shapes: Shapes) -> None:
    """``query_seq_lengths`` / ``key_value_seq_lengths``: an integer array with one length per
    batch row, shape ``(B,)`` (or the caller's batch axes ``B...``)."""
    if lengths is None:
        return
    dtype = _dtype_name(lengths)
    if not dtype.startswith(("int", "uint")):
        raise TypeError(f"{name} must have an integer dtype (one length per batch row); got {dtype}")
    shape = dims(lengths)
    batch = shapes[BATCH]
    if shape not in (tuple(batch), (shapes["B"],)):
        raise ValueError(f"{name} must have shape (B,) = ({shapes['B']},), one length per batch row; got {shape}")


def check_dropout(dropout_rate, dropout_rng) -> float:
    """``dropout_rate`` a number in [0, 1); a ``dropout_rng`` is required when it is > 0.
    Returns the rate as a float."""
    if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, numbers.Real) or not 0 <= dropout_rate < 1:
        raise ValueError(f"dropout_rate must be a number in [0, 1); got {dropout_rate!r}")
    if dropout_rate > 0 and dropout_rng is None:
        raise ValueError(f"dropout_rate={dropout_rate!r} needs a dropout_rng (a JAX key, its key_data, or an int)")
    return float(dropout_rate)


def check_sdpa_options(shapes: Shapes, query_seq_lengths, key_value_seq_lengths, local_window_size,
                       dropout_rate, dropout_rng):
    """The options of ``scaled_dot_product_attention`` beyond the arrays: returns the window
    pair (or None) and the dropout rate."""
    check_seq_lengths("query_seq_lengths", query_seq_lengths, shapes)
    check_seq_lengths("key_value_seq_lengths", key_value_seq_lengths, shapes)
    return check_window(local_window_size), check_dropout(dropout_rate, dropout_rng)


def check_segment_ids(name: str, ids, shapes: Shapes, letter: str) -> None:
    """``query_segment_ids`` / ``key_value_segment_ids``: an integer array ``(B..., T)`` (``S``)."""
    if ids is None:
        return
    dtype = _dtype_name(ids)
    if not dtype.startswith(("int", "uint")):
        raise TypeError(f"{name} must have an integer dtype (one segment id per token); got {dtype}")
    shape = dims(ids)
    expected = tuple(shapes[BATCH]) + (shapes[letter],)
    if shape not in (expected, (shapes["B"], shapes[letter])):
        raise ValueError(f"{name} must have shape (B..., {letter}) = {expected}, one id per token; got {shape}")


def check_soft_cap(logits_soft_cap):
    """``logits_soft_cap``: None or a finite number > 0. Returns it as a float, or None."""
    if logits_soft_cap is None:
        return None
    ok = isinstance(logits_soft_cap, numbers.Real) and not isinstance(logits_soft_cap, bool)
    if not ok or not math.isfinite(logits_soft_cap) or logits_soft_cap <= 0:
        raise ValueError(f"logits_soft_cap must be None or a finite number > 0; got {logits_soft_cap!r}")
    return float(logits_soft_cap)


def check_sinks(sinks, shapes: Shapes) -> None:
    """``sinks``: a float array ``(N,)``, one logit per query head."""
    if sinks is None:
        return
    check_float("sinks", sinks)
    if dims(sinks) != (shapes["N"],):
        raise ValueError(f"sinks must have shape (N,) = ({shapes['N']},), one logit per query head; got {tuple(sinks.shape)}")


def check_sdpa_extras(shapes: Shapes, query_segment_ids, key_value_segment_ids, logits_soft_cap, sinks):
    """Segment ids, the soft-cap and the sinks: returns the soft-cap (a float, or None). One
    segment id array alone serves both sides (self-attention, T = S)."""
    check_segment_ids("query_segment_ids", query_segment_ids, shapes, "T")
    check_segment_ids("key_value_segment_ids", key_value_segment_ids, shapes, "S")
    if (query_segment_ids is None) != (key_value_segment_ids is None) and shapes["T"] != shapes["S"]:
        given = "query_segment_ids" if key_value_segment_ids is None else "key_value_segment_ids"
        raise ValueError(f"{given} alone serves both sides only when T == S; got T={shapes['T']}, S={shapes['S']}: "
                         "pass both query_segment_ids and key_value_segment_ids")
    check_sinks(sinks, shapes)
    return check_soft_cap(logits_soft_cap)
