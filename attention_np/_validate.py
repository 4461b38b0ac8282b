"""Shape and dtype validation shared by both halves.

Pure Python on ``.shape`` and ``.dtype``: no array math, so the JAX half calls the very
same checks while it traces a function (they cost nothing at run time) and both halves
raise the same exception type with the same message by construction.

Shapes are written with docs/design.md's letters::

    B batch, T query length, S key/value length, N query heads, K key/value heads,
    H features per head, E model width (multi-head attention: E_kv the key/value
    inputs' width, F the output's).

A :class:`Shapes` object binds letters to sizes as arguments are checked, and remembers
which argument each size came from, so a mismatch reads e.g.::

    key must have shape (B, S, K, H) with B=2, H=11 from query; got (2, 5, 3, 7)
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")

# A shape token is a letter ("H") or a multiple of one ("2H"); anything else is a literal.
_TOKEN = re.compile(r"^(\d*)([A-Za-z]\w*)$")
# "B..." (first token only): any number of leading batch axes, zero included, as Flax's
# ``batch_sizes...``; it also binds "B" to their product, the batch of the folded arrays.
BATCH = "B..."


def _fmt(letters) -> str:
    return "(" + ", ".join(str(t) for t in letters) + ("," if len(letters) == 1 else "") + ")"


def batch_letters(batch, letters: str) -> tuple:
    """``letters`` with the batch written "B" for one batch axis, "B..." for any other number."""
    return ("B" if len(batch) == 1 else BATCH,) + tuple(letters)


def _dtype_name(x) -> str:
    return str(getattr(x, "dtype", type(x).__name__))


def check_float(name: str, x) -> None:
    """``TypeError`` unless ``x`` has one of the floating dtypes of docs/design.md section 4."""
    if _dtype_name(x) not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64); "
            f"got {_dtype_name(x)}"
        )


class Shapes:
    """Binds shape letters to sizes while checking arguments, for messages that explain.

    Only ``.shape`` and ``.dtype`` are read, so any array type works (here NumPy):

    >>> import numpy as np
    >>> shapes = Shapes()
    >>> shapes.check("query", np.zeros((2, 3, 7, 11)), "BTNH")    # binds B, T, N, H
    >>> shapes["H"]
    11
    >>> shapes.check("key", np.zeros((2, 5, 3, 11)), "BSKH")      # checks B, H; binds S, K
    >>> shapes.check("value", np.zeros((2, 5, 3, 7)), "BSKH")
    Traceback (most recent call last):
      ...
    ValueError: value must have shape (B, S, K, H) with B=2, H=11 from query, S=5, K=3 from key; got (2, 5, 3, 7)
    """

    def __init__(self, **known: int):
        self.sizes: dict[str, int] = {}
        self.origin: dict[str, str] = {}
        for letter, size in known.items():
            self.sizes[letter] = size
            self.origin[letter] = "the arguments"

    def __getitem__(self, letter: str) -> int:
        return self.sizes[letter]

    def _expected(self, token: str):
        m = _TOKEN.match(token)
        if m is None:
            return int(token)
        factor, letter = m.groups()
        if letter not in self.sizes:
            return None
        return int(factor or 1) * self.sizes[letter]

    def check(self, name: str, x, letters, *, floating: bool = True) -> None:
        """Check ``x.shape`` against ``letters`` (a string of single letters, or a tuple of
        tokens such as ``("2H", "H")`` or ``("B...", "T", "E")``), then bind the letters
        seen for the first time."""
        tokens = tuple(str(t) for t in letters)
        if floating:
            check_float(name, x)
        shape = tuple(int(d) for d in x.shape)
        batched = tokens[:1] == (BATCH,)
        core = tokens[1:] if batched else tokens
        n_lead = len(shape) - len(core) if batched else 0  # leading batch axes
        lead, rest = shape[: max(n_lead, 0)], shape[max(n_lead, 0) :]
        bad = n_lead < 0 or len(rest) != len(core) or any(
            (want := self._expected(t)) is not None and want != got for t, got in zip(core, rest)
        )
        if batched and BATCH in self.sizes:
            bad = bad or lead != self.sizes[BATCH]
        if bad:
            raise ValueError(f"{name} must have shape {self.describe(tokens)}; got {shape}")
        if batched and BATCH not in self.sizes:
            self.sizes[BATCH], self.sizes["B"] = lead, math.prod(lead)
            self.origin[BATCH] = self.origin["B"] = name
        tokens, shape = core, rest
        for token, size in zip(tokens, shape):
            m = _TOKEN.match(token)
            if m and not m.group(1) and token not in self.sizes:  # a letter ("H", "E_kv"), not a multiple ("2H")
                self.sizes[token] = size
                self.origin[token] = name

    def describe(self, tokens) -> str:
        """``(B, S, K, H) with B=2, H=11 from query``: the known sizes, grouped by source.
        Batch axes read "B" when there is one of them (``B=2``), else "B..." (``B...=(2, 4)``)."""
        if tokens[:1] == (BATCH,) and len(self.sizes.get(BATCH, ())) == 1:
            tokens = ("B",) + tokens[1:]
        by_origin: dict[str, list[str]] = {}
        for token in tokens:
            m = _TOKEN.match(token)
            if token == BATCH and BATCH in self.sizes:
                group = by_origin.setdefault(self.origin[BATCH], [])
                group.append(f"{BATCH}={self.sizes[BATCH]}")
            elif m and m.group(2) in self.sizes:
                letter = m.group(2)
                entry = f"{letter}={self.sizes[letter]}"
                group = by_origin.setdefault(self.origin[letter], [])
                if entry not in group:
                    group.append(entry)
        known = ", ".join(", ".join(v) + f" from {k}" for k, v in by_origin.items())
        return _fmt(tokens) + (f" with {known}" if known else "")


def check_heads(shapes: Shapes) -> None:
    """Grouped-query attention needs every key/value head to serve the same number of query heads."""
    n, k = shapes["N"], shapes["K"]
    if k == 0:
        raise ValueError(f"the number of key/value heads K must be at least 1; got K=0 from {shapes.origin['K']}")
    if n % k:
        raise ValueError(
            f"the number of query heads N={n} must be a multiple of the number of "
            f"key/value heads K={k}"
        )


def check_mask(mask, target, *, letters: str, has_bias: bool) -> None:
    """A mask is boolean (True = attend) and broadcasts to the scores' shape ``target``."""
    check_mask_dtype(mask, has_bias=has_bias)
    check_broadcast("mask", mask, target, letters)


def check_mask_dtype(mask, *, has_bias: bool) -> None:
    """A mask is boolean (True = attend): a float mask (PyTorch's 0 / -inf, or Flax's 1 / 0)
    is refused rather than guessed at; ``has_bias`` adds where float values belong."""
    if _dtype_name(mask) != "bool":
        hint = ("; to add float values (PyTorch's 0 / -inf) to the logits pass them as bias; a 0 / 1 mask from "
                "Flax's make_attention_mask or make_causal_mask: pass dtype=bool") if has_bias else ""
        raise TypeError(f"mask must have a boolean dtype (True = attend){hint}; got {_dtype_name(mask)}")


def check_bias(bias, target, *, letters: str) -> None:
    """A bias is a float array broadcastable to the scores' shape ``target``."""
    check_float("bias", bias)
    check_broadcast("bias", bias, target, letters)


def check_broadcast(name: str, x, target, letters: str) -> None:
    shape = tuple(int(d) for d in x.shape)
    ok = len(shape) <= len(target) and all(
        s in (1, t) for s, t in zip(reversed(shape), reversed(target))
    )
    if not ok:
        raise ValueError(
            f"{name} must broadcast to shape {_fmt(tuple(letters))} = {tuple(target)}; got {shape}"
        )


def is_scalar_array(x) -> bool:
    """A 0-d array with a floating dtype (NumPy, JAX, or a JAX tracer): a scale that may be
    traced (a learnable temperature)."""
    return hasattr(x, "shape") and hasattr(x, "dtype") and tuple(x.shape) == () and _dtype_name(x) in FLOAT_DTYPES


def check_scale(scale) -> None:
    """``scale`` is a finite real number of any sign, zero included (as in ``jax.nn`` and
    PyTorch): a Python or NumPy int or float, not a bool; or a 0-d float array (in JAX, a
    traced scalar such as a learnable temperature: its finiteness is then not checked)."""
    if is_scalar_array(scale) and not isinstance(scale, numbers.Real):
        return
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a finite real number (int or float); got {scale!r} ({type(scale).__name__})")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be a finite real number; got {scale!r}")


def check_same_dtype(name: str, x, reference: str, ref) -> None:
    """Arrays that attention combines share one dtype (as ``jax.nn`` and PyTorch require):
    mixed input is a ``TypeError``, never a silent promotion."""
    if _dtype_name(x) != _dtype_name(ref):
        raise TypeError(f"{name} must have the dtype of {reference} ({_dtype_name(ref)}); got {_dtype_name(x)}")


def check_key_value(key, value) -> None:
    """``value`` defaults to ``key``; passing it without ``key`` is ambiguous (Flax's rule)."""
    if key is None and value is not None:
        raise ValueError("`key` cannot be None if `value` is not None")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_params(params, spec: Mapping, shapes: Shapes, path: str = "params") -> None:
    """Check a nested parameter dict against ``spec``: the same nesting, leaves as shape tokens.

    Missing keys are a ``ValueError`` naming the full path; extra keys are allowed (a Flax
    state may carry more than a mechanism reads).
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"{path} must be a dict; got {type(params).__name__}")
    for key, sub in spec.items():
        where = f"{path}[{key!r}]"
        if key not in params:
            raise ValueError(f"{where} is missing; expected keys {sorted(spec)}")
        if isinstance(sub, Mapping):
            check_params(params[key], sub, shapes, where)
        else:
            leaf = params[key]
            if not hasattr(leaf, "shape"):
                raise TypeError(f"{where} must be an array; got {type(leaf).__name__}")
            shapes.check(where, leaf, sub)


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
    shape = tuple(int(d) for d in lengths.shape)
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


def check_optional_mask(mask, shapes: Shapes, letters: str) -> None:
    """A boolean mask broadcastable to the weights ``letters`` (e.g. "BTS"), when given."""
    if mask is not None:
        check_mask(mask, tuple(shapes[c] for c in letters), letters=letters, has_bias=False)


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
    when given (not None). Anything else (a Flax state's other entries) is left out."""
    used = {}
    for name in MULTI_HEAD_LAYERS:
        layer = params[name]
        used[name] = {"kernel": layer["kernel"]} | ({} if layer.get("bias") is None else {"bias": layer["bias"]})
    for name in MULTI_HEAD_NORMS:
        if params.get(name) is not None:
            used[name] = {"scale": params[name]["scale"]}
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


def check_decode_options(bos_id, max_len, vocab) -> None:
    """``greedy_decode``'s static options: ``max_len`` an int >= 0, ``bos_id`` a target id."""
    if isinstance(max_len, bool) or not isinstance(max_len, numbers.Integral) or max_len < 0:
        raise ValueError(f"max_len must be a non-negative int; got {max_len!r}")
    if isinstance(bos_id, bool) or not isinstance(bos_id, numbers.Integral) or not 0 <= bos_id < vocab:
        raise ValueError(f"bos_id must be an int in [0, {vocab}) (a target token id); got {bos_id!r}")


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
    normalized = [name for name in ("query_ln", "key_ln") if params.get(name) is not None]
    if normalized:  # it would silently skip the normalisation: say so instead
        raise ValueError(
            f"multi_head_attention_step: params has {normalized} (normalize_qk), which the cached step "
            "does not apply; use attention_jax.nnx.MultiHeadAttention(decode=True) for such a model"
        )
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


def check_alignment_weights(weights, band) -> None:
    """``alignment_diagnostics``: float weights ``(..., T, S)`` and a band >= 0."""
    check_float("weights", weights)
    if len(weights.shape) < 2:
        raise ValueError(f"weights must have shape (..., T, S); got {tuple(weights.shape)}")
    if isinstance(band, bool) or not isinstance(band, numbers.Real) or not band >= 0 or not math.isfinite(band):
        raise ValueError(f"band must be a non-negative number of source positions; got {band!r}")
