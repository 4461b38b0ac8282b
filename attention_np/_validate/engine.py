"""The shape engine: :class:`Shapes` binds letters to sizes and explains a mismatch, and the
checks every mechanism shares (dtypes, masks, biases, scale, parameter dicts)."""

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


def dims(x) -> tuple:
    """``x.shape`` as Python ints; a symbolic size (``jax.export``'s shape polymorphism) stays
    symbolic, so the checks decide what they can (``b == b``) and trace the rest."""
    return tuple(int(d) if isinstance(d, numbers.Integral) else d for d in x.shape)


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
        shape = dims(x)
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
    shape = dims(x)
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


def check_optional_mask(mask, shapes: Shapes, letters: str) -> None:
    """A boolean mask broadcastable to the weights ``letters`` (e.g. "BTS"), when given."""
    if mask is not None:
        check_mask(mask, tuple(shapes[c] for c in letters), letters=letters, has_bias=False)
