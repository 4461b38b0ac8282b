"""The checks of ``multi_head_attention`` (its Flax-layout params) and of incremental decoding
(``multi_head_attention_step`` and its cache)."""

from __future__ import annotations

from collections.abc import Mapping

from .engine import (
    BATCH,
    Shapes,
    _dtype_name,
    batch_letters,
    check_bias,
    check_heads,
    check_mask,
    check_params,
    check_same_dtype,
)

MULTI_HEAD_SPEC = {  # multi_head_attention_step's (kv_cache.py): self-attention, every bias given
    "query": {"kernel": ("E", "N", "H"), "bias": ("N", "H")},
    "key": {"kernel": ("E", "K", "H"), "bias": ("K", "H")},
    "value": {"kernel": ("E", "K", "H"), "bias": ("K", "H")},
    "out": {"kernel": ("N", "H", "E"), "bias": ("E",)},
}

# multi_head_attention's parameters, flax.nnx.MultiHeadAttention's names and shapes: E_kv is the
# key inputs' width (Flax's in_kv_features), E_v the value inputs' (Flax: E_kv too; PyTorch's
# vdim may differ from its kdim), F the output's (out_features). Each layer's (kernel, bias); a
# bias may be absent or None (Flax's use_bias=False: no bias).
MULTI_HEAD_LAYERS = {
    "query": (("E", "N", "H"), ("N", "H")),
    "key": (("E_kv", "K", "H"), ("K", "H")),
    "value": (("E_v", "K", "H"), ("K", "H")),
    "out": (("N", "H", "F"), ("F",)),
}
# Flax's normalize_qk=True: LayerNorm(H, use_bias=False) of q and of k; optional, absent or None
# when normalize_qk=False.
MULTI_HEAD_NORMS = {"query_ln": {"scale": ("H",)}, "key_ln": {"scale": ("H",)}}


def multi_head_used(params) -> dict:
    """The entries of a checked multi-head params dict that ``multi_head_attention`` uses: the
    four layers' kernels, the biases that are given (not None), and ``query_ln``/``key_ln``
    and ``sinks`` when given (not None). Anything else (a Flax state's other entries) is left out."""
    used = {}
    for name in MULTI_HEAD_LAYERS:
        layer = params[name]
        used[name] = {"kernel": layer["kernel"]} | ({} if layer.get("bias") is None else {"bias": layer["bias"]})
    for name in MULTI_HEAD_NORMS:
        if params.get(name) is not None:
            used[name] = {"scale": params[name]["scale"]}
    if params.get("sinks") is not None:  # attention sinks, one logit per head
        used["sinks"] = params["sinks"]
    return used


def check_multi_head_params(params, shapes: Shapes) -> None:
    """The params of ``multi_head_attention`` against ``MULTI_HEAD_LAYERS`` and
    ``MULTI_HEAD_NORMS``: the kernels are required, the biases and norms optional."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict; got {type(params).__name__}")
    spec = {}
    for name, (kernel, bias) in MULTI_HEAD_LAYERS.items():
        layer = params.get(name)
        no_bias = isinstance(layer, Mapping) and layer.get("bias") is None
        spec[name] = {"kernel": kernel} if no_bias else {"kernel": kernel, "bias": bias}
    check_params(params, spec, shapes)
    check_params(params, {name: sub for name, sub in MULTI_HEAD_NORMS.items() if params.get(name) is not None}, shapes)


def check_multi_head(params, query, key, value, mask, bias=None) -> Shapes:
    """Arguments of ``multi_head_attention`` (after ``key``/``value`` took their defaults):
    ``query (B..., T, E)``, ``key (B..., S, E_kv)``, ``value (B..., S, E_v)``, any number of
    batch axes; the params of ``MULTI_HEAD_LAYERS`` (biases optional) and ``MULTI_HEAD_NORMS``
    (optional); mask and bias broadcastable to ``(B..., N, T, S)``. Binds B..., B, T, S, E,
    E_kv, E_v, N, K, H and F."""
    shapes = Shapes()
    shapes.check("query", query, (BATCH, "T", "E"))
    shapes.check("key", key, (BATCH, "S", "E_kv"))
    check_same_dtype("key", key, "query", query)
    shapes.check("value", value, (BATCH, "S", "E_v"))
    check_same_dtype("value", value, "query", query)
    check_multi_head_params(params, shapes)
    check_heads(shapes)
    batch = shapes[BATCH]
    target = batch + tuple(shapes[c] for c in "NTS")
    if bias is not None:
        check_bias(bias, target, letters=batch_letters(batch, "NTS"))
    if mask is not None:
        check_mask(mask, target, letters=batch_letters(batch, "NTS"), has_bias=bias is not None)
    return shapes


# --- incremental decoding (kv_cache.py) ------------------------------------------------------------
def check_kv_cache_step(params, x_new, cache) -> Shapes:
    """Arguments of ``multi_head_attention_step``: ``x_new (B, k, E)`` with k >= 1, the
    multi-head params, and a cache ``{"key", "value": (B, L, K, H), "length": (B,) int}``."""
    shapes = Shapes()
    shapes.check("x_new", x_new, ("B", "k", "E"))
    if shapes["k"] == 0:
        raise ValueError(f"x_new must hold at least one new token (k >= 1); got shape {tuple(x_new.shape)}")
    check_params(params, MULTI_HEAD_SPEC, shapes)
    check_heads(shapes)
    check_params(params, {name: sub for name, sub in MULTI_HEAD_NORMS.items() if params.get(name) is not None}, shapes)
    if not isinstance(cache, Mapping):
        raise TypeError(f"cache must be a dict from init_kv_cache; got {type(cache).__name__}")
    missing = {"key", "value", "length"} - set(cache)
    if missing:
        raise ValueError(f"cache is missing {sorted(missing)}; expected keys ['key', 'length', 'value'] (from init_kv_cache)")
    shapes.check("cache['key']", cache["key"], ("B", "L", "K", "H"))
    shapes.check("cache['value']", cache["value"], ("B", "L", "K", "H"))
    check_same_dtype("cache['value']", cache["value"], "cache['key']", cache["key"])
    length_dtype = _dtype_name(cache["length"])
    if not length_dtype.startswith(("int", "uint")):
        raise TypeError(f"cache['length'] must have an integer dtype; got {length_dtype}")
    shapes.check("cache['length']", cache["length"], ("B",), floating=False)
    return shapes
