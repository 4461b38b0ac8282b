"""The float64 answer of ``attention_np`` on a problem (:func:`reference`) and the one comparison (:func:`check`)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

import attention_np
from attention_np.dropout import dropout_weights

from ..tolerance import TOLERANCES, Tolerance, compare_elements
from .problems import Problem, _dtype_name


# --- the reference ---------------------------------------------------------------------------------
class Expected(NamedTuple):
    """The float64 answer to a :class:`Problem`."""

    out: np.ndarray            # (B, T, N, H)
    lse: np.ndarray            # (B, T, N), -inf for a query that attends nothing and has no sink
    grads: tuple               # (d_query, d_key, d_value) and d_sinks when the problem has sinks
    dead: np.ndarray           # (B, T, N) bool: the queries that see no key


# the options attention_np.scaled_dot_product_attention_vjp takes, once the others are one mask
_NUMPY_VJP_OPTIONS = frozenset({"bias", "mask", "is_causal", "query_seq_lengths", "key_value_seq_lengths",
                                "local_window_size", "query_segment_ids", "key_value_segment_ids"})


def reference(problem: Problem) -> Expected:
    """The float64 answer of ``attention_np`` on the problem's (rounded) inputs.

    ``out`` and ``lse`` are ``attention_np.scaled_dot_product_attention`` with the problem's
    options. The gradients (of ``sum(d_out out) + sum(d_lse lse)``, the latter only with
    ``return_residual``) are ``attention_np.scaled_dot_product_attention_vjp`` with
    :meth:`Problem.mask` when the options are masks and a bias; with a soft-cap, sinks,
    dropout or the residual, the softmax VJP written out here (:func:`_written_out_vjp`).
    """
    f64 = lambda x: None if x is None else np.asarray(x, np.float64)  # noqa: E731
    query, key, value, d_out = (f64(x) for x in (problem.query, problem.key, problem.value, problem.d_out))
    options = {n: (f64(v) if n in ("bias", "sinks") else v) for n, v in problem.options.items()}
    options["return_residual"] = True
    out, weights, lse = attention_np.scaled_dot_product_attention(query, key, value, **options)
    dead = (weights.sum(-1) == 0).transpose(0, 2, 1)                                  # (B, T, N)
    grads = ()
    if d_out is not None:
        if problem.features <= _NUMPY_VJP_OPTIONS:
            grads = attention_np.scaled_dot_product_attention_vjp(query, key, value, d_out, bias=options.get("bias"),
                                                                  mask=problem.mask())
        else:
            grads = _written_out_vjp(problem, weights, lse)
    return Expected(out, lse, tuple(grads), dead)


def _written_out_vjp(problem, weights, lse):
    r"""``(d_query, d_key, d_value[, d_sinks])`` in float64 for every option, given the
    reference's weights ``P (B, N, T, S)`` (before dropout) and ``lse``:

    .. math::
        dV = (D \odot P)^\top dO, \quad dP = D \odot (dO\,V^\top), \quad
        dY = P \odot (dP - \mathrm{rowsum}(dP \odot P) + d\ell), \quad
        dX = dY \odot (1 - \tanh^2(X / c)), \quad dQ = s\,dX\,K, \quad dK = s\,dX^\top Q

    with ``X`` the scaled logits plus bias, ``Y = c tanh(X / c)`` the soft-capped ones, ``D``
    the dropout factors (0 or ``1 / (1 - rate)``), ``dl`` the upstream gradient of ``lse``
    (whose gradient in ``Y`` is ``P``); a sink of weight ``p = e^{sink - lse}`` gets
    ``sum p (dl - rowsum(dP P))``.
    """
    o = problem.options
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    query, key, value, d_out = f64(problem.query), f64(problem.key), f64(problem.value), f64(problem.d_out)
    B, T, N, H = query.shape
    G = N // key.shape[2]
    key, value = np.repeat(key, G, axis=2), np.repeat(value, G, axis=2)               # (B, S, N, H)
    scale = 1.0 / math.sqrt(H)
    factors = np.ones_like(weights)
    if o.get("dropout_rate"):
        factors = dropout_weights(factors, o["dropout_rng"], o["dropout_rate"])
    d_lse = np.zeros((B, N, T, 1))
    if o.get("return_residual") and problem.d_lse is not None:
        d_lse = f64(problem.d_lse).transpose(0, 2, 1)[..., None]
    d_value = np.einsum("bnts,btnh->bsnh", factors * weights, d_out)
    d_weights = np.einsum("btnh,bsnh->bnts", d_out, value) * factors
    row = (d_weights * weights).sum(-1, keepdims=True)                                  # (B, N, T, 1)
    d_logits = weights * (d_weights - row + d_lse)
    if o.get("logits_soft_cap") is not None:
        cap = o["logits_soft_cap"]
        logits = np.einsum("btnh,bsnh->bnts", query, key) * scale
        if o.get("bias") is not None:
            logits = logits + f64(o["bias"])
        d_logits = d_logits * (1.0 - np.tanh(logits / cap) ** 2)
    d_query = np.einsum("bnts,bsnh->btnh", d_logits, key) * scale
    d_key = np.einsum("bnts,btnh->bsnh", d_logits, query) * scale
    group = lambda x: x.reshape(B, x.shape[1], N // G, G, H).sum(3)  # noqa: E731  (B, S, K, H)
    grads = [d_query, group(d_key), group(d_value)]
    if o.get("sinks") is not None:
        sink_weight = np.exp(f64(o["sinks"]).reshape(1, N, 1, 1) - lse.transpose(0, 2, 1)[..., None])
        grads.append((sink_weight * (d_lse - row)).sum(axis=(0, 2, 3)))
    return grads


# --- the comparison --------------------------------------------------------------------------------
def check(actual, expected, dtype, *, scale=0.0, tolerance=None, name="out"):
    """Assert that ``actual`` equals the float64 ``expected`` within the tolerance of ``dtype``.

    The rule is :data:`~parity_tests.tolerance.TOLERANCES`' (docs/design.md section 5), abs or
    rel, on the arrays divided by their scale ``max(1, max |expected|, scale)``: an element
    passes when ``|x - r| <= tol max(1, max |expected|, scale)`` or ``|x - r| <= tol |r|``, so
    an element that cancels to near zero is held to the accuracy of the array's largest ones.
    NaN and inf must sit where ``expected`` has them, and the shapes must be equal.

    Args:
      dtype: the dtype whose tolerance applies (a name or a dtype); ``tolerance`` overrides it.
      scale: a larger scale to measure against (the largest gradient of a problem, for each
        of its gradients: a gradient that is exactly 0 in float64 is a difference of terms
        of that size in a blocked backward pass).
      name: what the message calls it.
    """
    dtype = _dtype_name(dtype)
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {actual.shape}, expected {expected.shape}")
    if tolerance is None:
        tolerance = TOLERANCES[dtype]
    finite = expected[np.isfinite(expected)]
    size = max(1.0, scale, np.abs(finite).max(initial=0.0))
    elements = compare_elements(actual / size, expected / size, Tolerance.abs_or_rel(tolerance))
    if elements.passed:
        return
    lines = []
    for what, where in (("elements beyond the tolerance", elements.outside), ("NaN or inf misplaced", elements.misplaced)):
        if where.any():
            worst = np.unravel_index(np.argmax(np.where(where, elements.error, -1.0)), where.shape)
            index = tuple(int(i) for i in worst)
            lines.append(f"{int(where.sum())} of {where.size} {what}" + (f" {tolerance:g}" if "tolerance" in what else "")
                         + f" (abs error over {size:.3g}, or rel); worst at {index}: {actual[worst]!r}, "
                         f"expected {expected[worst]!r}")
    raise AssertionError(f"{name} ({dtype}): " + "; ".join(lines))
