"""The masked softmax written for XLA's CPU fusions: what the tuned paths
(:mod:`attention_jax.fast.dense`, :mod:`attention_jax.fast.chunked`) use instead of the plain
:func:`attention_jax._masking.masked_softmax`, with the same numbers (tested equal).

Two tricks, measured in ``benchmarks/results/experiments.md``:

- :func:`softmax_parts` returns the softmax as numerator and row sums, so that the attention
  output divides the ``(T, H)`` product instead of the ``(T, S)`` weights (one pass fewer);
- :func:`replace_masked` applies a mask as a minimum instead of a select, which XLA's CPU
  backend fuses with the matmul before it and the softmax after it.
"""

import jax
import jax.numpy as jnp

from .._dtypes import compute_dtype
from .._masking import _nonzero, _row_max


def softmax_parts(logits, mask=None, *, empty_rows=True):
    """:func:`~attention_jax._masking.masked_softmax` as ``(numerator, denominator)``:
    ``exp(x - max)`` with masked entries exactly 0, and its row sums ``(..., 1)`` (1 for a row
    that sees no key, so that it divides 0 by 1 to 0). ``empty_rows=False`` promises that
    every row has an attended finite logit (no mask, or the causal mask alone, and no bias
    that could be ``-inf``): masked entries are then ``exp(finfo.min - max) = 0`` already,
    and one ``(T, S)`` select and the empty-row guards are saved."""
    logits = logits.astype(compute_dtype(logits.dtype))
    if mask is not None and not empty_rows:
        logits = replace_masked(logits, mask)
    elif mask is not None:
        # replace, not add -inf: masked NaN/inf logits vanish and exp never sees inf - inf
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    empty_rows = empty_rows or logits.shape[-1] == 0
    peak = _row_max(logits) if empty_rows else jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
    unnormalized = jnp.exp(logits - peak)
    if mask is not None and empty_rows:
        unnormalized = jnp.where(mask, unnormalized, 0.0)  # exactly zero, even in all-masked rows
    total = unnormalized.sum(axis=-1, keepdims=True)
    if empty_rows:
        total = _nonzero(total)
    return unnormalized, total


def replace_masked(logits, mask):
    """``where(mask, logits, finfo.min)`` as ``minimum(logits, cap)``, ``cap`` = ``+inf`` where
    attended and ``finfo.min`` where masked: a minimum fuses with its neighbours on CPU, a
    select does not (1.6x faster forward at 8x8x128 causal). The same numbers for every logit
    but NaN: a NaN logit at a masked entry stays NaN where XLA's minimum propagates NaN
    (unfused code, GPUs). Used for the causal mask alone, where only a NaN in key s can make
    one (for queries t < s), and a NaN in that key's value reaches them anyway (``0 * NaN``
    in the weighted sum): docs/design.md, "the causal mask alone"."""
    return _capped(logits, jnp.where(mask, jnp.inf, jnp.finfo(logits.dtype).min))


@jax.custom_jvp
def _capped(logits, cap):
    return jnp.minimum(logits, cap)


@_capped.defjvp
def _capped_jvp(primals, tangents):
    # masked entries get weight exactly 0, so their tangent never reaches the output:
    # passing it through saves the minimum's (T, S) select in the backward pass
    return _capped(*primals), tangents[0]
