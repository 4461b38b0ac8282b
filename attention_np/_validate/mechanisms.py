"""The checks of the tutorial's mechanisms: additive, the score functions, soft and hard,
self and cross, Luong's global and local, location-sensitive attention, and alignment weights."""

from __future__ import annotations

import math
import numbers

from .engine import (
    Shapes,
    check_choice,
    check_float,
    check_mask,
    check_optional_mask,
    check_params,
)

ADDITIVE_SPEC = {"attn": {"kernel": ("2H", "H"), "bias": ("H",)}, "v": ("H",)}


def check_additive(params, hidden, encoder_outputs, mask) -> Shapes:
    """Arguments of ``additive_attention`` (the tutorial's class)."""
    shapes = Shapes()
    shapes.check("encoder_outputs", encoder_outputs, "BSH")
    shapes.check("hidden", hidden, "BH")
    check_params(params, ADDITIVE_SPEC, shapes)
    if mask is not None:
        check_mask(mask, (shapes["B"], shapes["S"]), letters="BS", has_bias=False)
    return shapes


def check_scores(query, keys) -> Shapes:
    """``query (B, T, H)`` and ``keys (B, S, H)`` of the score functions."""
    shapes = Shapes()
    shapes.check("query", query, "BTH")
    shapes.check("keys", keys, "BSH")
    return shapes


GENERAL_SPEC = {"kernel": ("H", "H")}
CONCAT_SPEC = {"attn": {"kernel": ("2H", "A"), "bias": ("A",)}, "v": ("A",)}
LOCATION_SPEC = {"kernel": ("H", "S")}
SCORES = ("dot", "general", "concat", "location")


def check_soft(scores, values, mask) -> Shapes:
    """``scores (B, T, S)``, ``values (B, S, H)`` and a mask broadcastable to ``(B, T, S)``."""
    shapes = Shapes()
    shapes.check("scores", scores, "BTS")
    shapes.check("values", values, "BSH")
    check_optional_mask(mask, shapes, "BTS")
    return shapes


def check_hard(scores, values, mask, gumbel_noise, rng) -> Shapes:
    shapes = check_soft(scores, values, mask)
    if gumbel_noise is not None:
        if rng is not None:
            raise ValueError("pass gumbel_noise or rng, not both")
        shapes.check("gumbel_noise", gumbel_noise, "BTS")
    return shapes


PROJECTION_SPEC = {name: {"kernel": ("E", "H"), "bias": ("H",)} for name in ("query", "key", "value")}


def check_self_attention(params, x, mask) -> Shapes:
    shapes = Shapes()
    shapes.check("x", x, "BTE")
    check_params(params, PROJECTION_SPEC, shapes)
    check_optional_mask(mask, Shapes(B=shapes["B"], T=shapes["T"], S=shapes["T"]), "BTS")
    return shapes


def check_cross_attention(params, x, context, mask) -> Shapes:
    shapes = Shapes()
    shapes.check("x", x, "BTE")
    shapes.check("context", context, "BSE")
    check_params(params, PROJECTION_SPEC, shapes)
    check_optional_mask(mask, shapes, "BTS")
    return shapes


def score_spec(score: str):
    check_choice("score", score, SCORES)
    return {"dot": {}, "general": GENERAL_SPEC, "concat": CONCAT_SPEC, "location": LOCATION_SPEC}[score]


def check_luong(params, decoder_state, encoder_outputs, score, mask) -> Shapes:
    """Arguments of ``global_attention`` and ``local_attention`` (Luong et al. 2015)."""
    spec = {"score": score_spec(score), "combine": {"kernel": ("2H", "H")}}
    shapes = Shapes()
    shapes.check("encoder_outputs", encoder_outputs, "BSH")
    shapes.check("decoder_state", decoder_state, "BH")
    check_params(params, spec, shapes)
    check_optional_mask(mask, shapes, "BS")
    return shapes


def check_local(params, decoder_state, encoder_outputs, window, score, mask) -> Shapes:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int (the half-width D of the window); got {window!r}")
    shapes = check_luong(params, decoder_state, encoder_outputs, score, mask)
    check_params(params, {"position": {"kernel": ("H", "P"), "v": ("P",)}}, shapes)
    return shapes


LOCATION_SENSITIVE_SPEC = {
    "query": {"kernel": ("Q", "A")},
    "keys": {"kernel": ("H", "A")},
    "conv": {"kernel": ("r", 1, "C")},
    "location": {"kernel": ("C", "A")},
    "bias": ("A",),
    "v": ("A",),
}


def check_location_sensitive(params, query, encoder_outputs, prev_weights, mask) -> Shapes:
    """Arguments of ``location_sensitive_attention`` (Chorowski et al. 2015)."""
    shapes = Shapes()
    shapes.check("encoder_outputs", encoder_outputs, "BSH")
    shapes.check("query", query, "BQ")
    shapes.check("prev_weights", prev_weights, "BS")
    check_params(params, LOCATION_SENSITIVE_SPEC, shapes)
    if shapes["r"] % 2 == 0:
        raise ValueError(
            f"params['conv']['kernel'] must have an odd width r for 'SAME' padding; got r={shapes['r']}"
        )
    check_optional_mask(mask, shapes, "BS")
    return shapes


def check_alignment_weights(weights, band) -> None:
    """``alignment_diagnostics``: float weights ``(..., T, S)`` and a band >= 0."""
    check_float("weights", weights)
    if len(weights.shape) < 2:
        raise ValueError(f"weights must have shape (..., T, S); got {tuple(weights.shape)}")
    if isinstance(band, bool) or not isinstance(band, numbers.Real) or not band >= 0 or not math.isfinite(band):
        raise ValueError(f"band must be a non-negative number of source positions; got {band!r}")
