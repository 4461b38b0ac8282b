"""Random attention problems: :class:`Problem`, :func:`make_problem`, :func:`problems` (hypothesis), :func:`qkv`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

# The keyword options of scaled_dot_product_attention a problem may set (dropout_rng travels
# with dropout_rate). A Path's ``supports`` names some of them.
OPTIONS = frozenset({
    "bias", "mask", "is_causal", "query_seq_lengths", "key_value_seq_lengths", "local_window_size",
    "query_segment_ids", "key_value_segment_ids", "logits_soft_cap", "sinks", "dropout_rate", "return_residual",
})
# float16 overflows (65504) once upstream gradients of 1e4 are summed over a few positions:
# that is the dtype's range, not the attention's, so float16 draws up to 1e2
UPSTREAM = {"float64": (1.0, 1e2, 1e4), "float32": (1.0, 1e2, 1e4), "bfloat16": (1.0, 1e2, 1e4),
            "float16": (1.0, 1e2)}


def _dtype_name(dtype) -> str:
    return dtype if isinstance(dtype, str) else jnp.dtype(dtype).name


# --- problems --------------------------------------------------------------------------------------
def qkv(B=2, T=3, S=5, N=6, K=3, H=11, *, dtype="float64", rng=0):
    """``(query (B, T, N, H), key (B, S, K, H), value (B, S, K, H))``, standard normal, drawn in
    that order from ``rng`` (a seed or a ``numpy.random.Generator``) and rounded to ``dtype``.
    The default sizes are primes (N = 6 with K = 3), so a transposed axis cannot pass.

    >>> [x.shape for x in qkv()]
    [(2, 3, 6, 11), (2, 5, 3, 11), (2, 5, 3, 11)]
    """
    rng = np.random.default_rng(rng)
    return tuple(rng.normal(size=shape).astype(jnp.dtype(dtype)) for shape in ((B, T, N, H), (B, S, K, H), (B, S, K, H)))


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """One attention problem: inputs in one dtype, the options and the upstream gradients.

    Attributes:
      query, key, value: ``(B, T, N, H)``, ``(B, S, K, H)``, ``(B, S, K, H)``, one dtype.
      options: keyword arguments of ``scaled_dot_product_attention`` (names in
        :data:`OPTIONS`, plus ``dropout_rng`` with ``dropout_rate``); float arrays among them
        (``bias``, ``sinks``) in the inputs' dtype.
      d_out: the upstream gradient of ``out``, ``(B, T, N, H)``.
      d_lse: the upstream gradient of ``lse``, ``(B, T, N)`` float32 (used with ``return_residual``).
    """

    query: np.ndarray
    key: np.ndarray
    value: np.ndarray
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    d_out: np.ndarray | None = None
    d_lse: np.ndarray | None = None

    @property
    def dtype(self) -> str:
        return _dtype_name(self.query.dtype)

    @property
    def sizes(self) -> dict:
        """``{"B", "T", "S", "N", "K", "H"}``."""
        (B, T, N, H), (S, K) = self.query.shape, self.key.shape[1:3]
        return {"B": B, "T": T, "S": S, "N": N, "K": K, "H": H}

    @property
    def features(self) -> frozenset:
        """The options this problem sets (not None, not False, not a zero dropout rate)."""
        return frozenset(name for name, value in self.options.items()
                         if name != "dropout_rng" and value is not None and value is not False
                         and not (name == "dropout_rate" and value == 0))

    def only(self, names) -> Problem:
        """The same problem without the options not in ``names``."""
        kept = {n: v for n, v in self.options.items() if n in names or (n == "dropout_rng" and "dropout_rate" in names)}
        return dataclasses.replace(self, options=kept)

    def with_options(self, **options) -> Problem:
        """The same problem with these options set (float arrays cast to the inputs' dtype)."""
        dtype = self.query.dtype
        cast = {n: np.asarray(v).astype(dtype) for n, v in options.items() if n in ("bias", "sinks") and v is not None}
        return dataclasses.replace(self, options={**self.options, **options, **cast})

    def mask(self) -> np.ndarray:
        """Every option that rules keys out (mask, causal flag, lengths, window, segment ids) as
        one ``(B, 1 or N, T, S)`` bool mask, written out here rather than taken from the
        library's mask helpers."""
        o, z = self.options, self.sizes
        B, T, S = z["B"], z["T"], z["S"]
        mask = np.ones((B, 1, T, S), bool)
        if o.get("mask") is not None:
            mask = mask & np.asarray(o["mask"], bool)
        t, s = np.arange(T)[:, None], np.arange(S)[None, :]
        if o.get("is_causal"):
            mask = mask & (s <= t)
        if o.get("query_seq_lengths") is not None:
            mask = mask & (t < np.asarray(o["query_seq_lengths"]).reshape(B, 1, 1, 1))
        if o.get("key_value_seq_lengths") is not None:
            mask = mask & (s < np.asarray(o["key_value_seq_lengths"]).reshape(B, 1, 1, 1))
        if o.get("local_window_size") is not None:
            window = o["local_window_size"]
            left, right = (window, window) if isinstance(window, int) else window
            mask = mask & (s >= t - left) & (s <= t + right)
        query_ids, key_ids = o.get("query_segment_ids"), o.get("key_value_segment_ids")
        if query_ids is not None or key_ids is not None:
            query_ids = key_ids if query_ids is None else query_ids
            key_ids = query_ids if key_ids is None else key_ids
            mask = mask & (np.asarray(query_ids)[:, None, :, None] == np.asarray(key_ids)[:, None, None, :])
        return mask

    def __repr__(self):
        sizes = " ".join(f"{k}={v}" for k, v in self.sizes.items())
        return f"Problem({self.dtype}, {sizes}{''.join(', ' + n for n in sorted(self.features))})"


def make_problem(query, key, value, *, upstream=1.0, seed=0, **options) -> Problem:
    """A :class:`Problem` of these inputs and options, with upstream gradients ``d_out`` and
    ``d_lse`` drawn from ``seed``, standard normal times ``upstream``. Float options (``bias``,
    ``sinks``) are cast to the inputs' dtype."""
    unknown = set(options) - OPTIONS - {"dropout_rng"}
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; a problem takes {sorted(OPTIONS)} and dropout_rng")
    dtype = jnp.dtype(np.asarray(query).dtype)
    for name in ("bias", "sinks"):
        if options.get(name) is not None:
            options[name] = np.asarray(options[name]).astype(dtype)
    rng = np.random.default_rng(seed)
    B, T, N, _ = np.shape(query)
    d_out = (rng.normal(size=np.shape(query)) * upstream).astype(dtype)
    d_lse = (rng.normal(size=(B, T, N)) * upstream).astype(np.float32)
    return Problem(np.asarray(query), np.asarray(key), np.asarray(value), options, d_out, d_lse)


def problems(*, options=OPTIONS, always=(), dtypes=("float32", "bfloat16", "float16"), T=(1, 3, 5), S=(1, 4, 6)):
    """A hypothesis strategy of :class:`Problem`: a dtype of ``dtypes``, B in (1, 2), T and S
    from the given choices, K and N / K in (1, 2), H in (2, 4), and each option of ``options``
    (names of :data:`OPTIONS`) set or not, those of ``always`` always:

    - ``mask``: random ``(B, 1, T, S)`` with a query that sees no key, sometimes a batch row
      that sees nothing; ``bias``: ``(B, N, T, S)`` with some ``-inf`` and a query whose every
      logit is ``-inf``; lengths in ``0..T`` and ``0..S``; a window ``(0..2, 0..2)``;
    - segment ids (both arrays): sorted (packed) or not, ids 0..2, the last query in a
      segment (3) that no key has;
    - ``logits_soft_cap`` 1 or 5, ``sinks`` standard normal ``(N,)``, ``dropout_rate`` 0.5,
      ``return_residual``;
    - ``d_out`` up to 1e4 (1e2 in float16) on every position, padding included.

    hypothesis is imported here (it is a test extra): the rest of this module works without it.
    """
    from hypothesis import strategies as st

    unknown = (set(options) | set(always)) - OPTIONS
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; choose from {sorted(OPTIONS)}")
    options, always = frozenset(options) | frozenset(always), frozenset(always)

    @st.composite
    def draw_problem(draw):
        dtype = draw(st.sampled_from(sorted(dtypes)))
        B, T_, S_ = draw(st.sampled_from([1, 2])), draw(st.sampled_from(list(T))), draw(st.sampled_from(list(S)))
        K, G, H = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2])), draw(st.sampled_from([2, 4]))
        N = K * G
        seed = draw(st.integers(0, 2**16))
        rng = np.random.default_rng(seed)
        query, key, value = qkv(B, T_, S_, N, K, H, dtype=dtype, rng=rng)
        chosen = {}
        flag = lambda name: name in always or (name in options and draw(st.booleans()))  # noqa: E731
        if flag("is_causal"):
            chosen["is_causal"] = True
        if flag("mask"):
            mask = rng.random((B, 1, T_, S_)) < draw(st.sampled_from([0.3, 0.7]))
            mask[:, :, rng.integers(T_)] = False                    # a query that sees no key
            if B > 1 and draw(st.booleans()):
                mask[rng.integers(B)] = False                       # a batch row that sees nothing
            chosen["mask"] = mask
        if flag("query_seq_lengths"):
            chosen["query_seq_lengths"] = rng.integers(0, T_ + 1, size=B)       # 0 included
        if flag("key_value_seq_lengths"):
            chosen["key_value_seq_lengths"] = rng.integers(0, S_ + 1, size=B)
        if flag("local_window_size"):
            chosen["local_window_size"] = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        if flag("bias"):
            bias = rng.normal(size=(B, N, T_, S_))
            bias[rng.random((B, N, T_, S_)) < 0.2] = -np.inf        # some keys -inf
            bias[:, :, rng.integers(T_)] = -np.inf                  # a query whose every logit is -inf
            chosen["bias"] = bias
        if {"query_segment_ids", "key_value_segment_ids"} <= options and (
                {"query_segment_ids", "key_value_segment_ids"} & always or draw(st.booleans())):
            query_ids, key_ids = rng.integers(0, 3, size=(B, T_)), rng.integers(0, 3, size=(B, S_))
            if draw(st.booleans()):                                 # packed: sorted ids
                query_ids, key_ids = np.sort(query_ids, axis=1), np.sort(key_ids, axis=1)
            query_ids[:, -1] = 3                                    # a segment no key has: a dead query
            chosen |= {"query_segment_ids": query_ids, "key_value_segment_ids": key_ids}
        if flag("logits_soft_cap"):
            chosen["logits_soft_cap"] = draw(st.sampled_from([1.0, 5.0]))
        if flag("sinks"):
            chosen["sinks"] = rng.normal(size=N)
        if flag("dropout_rate"):
            chosen |= {"dropout_rate": 0.5, "dropout_rng": int(rng.integers(2**31))}
        if flag("return_residual"):
            chosen["return_residual"] = True
        upstream = draw(st.sampled_from(UPSTREAM[dtype]))
        return make_problem(query, key, value, upstream=upstream, seed=seed + 1, **chosen)

    return draw_problem()
