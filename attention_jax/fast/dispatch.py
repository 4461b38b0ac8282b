"""``dot_product_attention``: ``jax.nn.dot_product_attention``'s signature, the fastest correct path.

Which path runs (``implementation=None``), decided from static facts at trace time:

1. ``"cudnn"`` (``jax.nn.dot_product_attention(implementation="cudnn")``) on a GPU backend
   when all of cuDNN's constraints hold *and* its answer equals ours: float16/bfloat16
   inputs, ``H <= 128`` and ``H % 8 == 0``, no ``mask``, no ``key_value_seq_lengths``
   (a query could then have no key, where cuDNN returns the mean of the values and we
   return zeros), no dropout, a window only with ``is_causal`` (cuDNN supports only a left
   window), and no traced ``scale``.
2. ``"dense"`` (:func:`attention_jax.fast.dense.dense_attention`, the numbers of
   :func:`scaled_dot_product_attention` tuned for XLA's CPU fusions) when ``T * S <= 2**16`` (L <= 256):
   at those lengths XLA's CPU backend runs the dense path as one fused kernel, which beats
   the blockwise loop (``benchmarks/results/training/attention.md``: 8x8x128x64, 3.9 ms
   dense vs 8.7 ms chunked forward; 16.8 vs 31.3 ms at 8x8x256x64).
3. ``"chunked"`` (:func:`chunked_attention`) otherwise: past L = 256 the fused kernel falls
   behind (51.6 vs 21.9 ms at 4x8x384x64), from L = 512 on the chunked path is 2-3.6x faster
   than the dense path forward on CPU, and it needs O(T + S) memory. With the causal mask
   alone up to L = 1024 (H <= 64, at least 16 batch rows x heads) its forward pass without
   autodiff runs as a static grid of fused 256 x 256 tiles instead of its block loop.

``implementation="xla"``, ``jax.nn.dot_product_attention``'s name for its plain (non-cuDNN)
path, is accepted as ``jax.nn`` accepts it and runs the dense path (``"dense"``), so code
written for ``jax.nn`` runs unchanged.

Forward-mode autodiff (``jax.jvp``) needs ``implementation="dense"`` at long lengths: the
chunked path is reverse-mode only.
"""

import jax
import jax.numpy as jnp

from attention_np._validate import check_choice, check_window, is_scalar_array

from ..dot_product import scaled_dot_product_attention
from .chunked import chunked_attention
from .dense import dense_attention

IMPLEMENTATIONS = (None, "dense", "chunked", "cudnn", "xla")  # "xla": jax.nn's name for the dense path
DENSE_MAX_SCORES = 2**16  # T * S up to which the dense path runs (L <= 256)


def choose_implementation(query, key, *, bias=None, mask=None, is_causal=False, scale=None,
                          key_value_seq_lengths=None, local_window_size=None, dropout_rate=0.0,
                          backend=None, extras=False):
    """The path ``dot_product_attention(..., implementation=None)`` takes: ``"cudnn"``,
    ``"dense"`` or ``"chunked"`` (the rule in this module's docstring). ``query (B..., T, N, H)``,
    ``key (B..., S, K, H)``; ``backend`` defaults to ``jax.default_backend()``; ``extras``:
    segment ids, a soft-cap, sinks or the residual are asked for (never cuDNN)."""
    backend = jax.default_backend() if backend is None else backend
    T, H = query.shape[-3], query.shape[-1]
    S = key.shape[-3]
    window = check_window(local_window_size)
    cudnn_ok = (
        backend == "gpu" and not extras
        and jnp.dtype(query.dtype) in (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))
        and H <= 128 and H % 8 == 0
        and mask is None and key_value_seq_lengths is None and dropout_rate == 0
        and (window is None or is_causal)
        and not (scale is not None and is_scalar_array(scale) and not isinstance(scale, (int, float)))
    )
    if cudnn_ok:
        return "cudnn"
    return "dense" if T * S <= DENSE_MAX_SCORES else "chunked"


def dot_product_attention(
    query, key, value, bias=None, mask=None, *, scale=None, is_causal=False,
    query_seq_lengths=None, key_value_seq_lengths=None, local_window_size=None,
    dropout_rate=0.0, dropout_rng=None, implementation=None, broadcast_dropout=False,
    query_segment_ids=None, key_value_segment_ids=None, logits_soft_cap=None, sinks=None, return_residual=False,
):
    r"""Scaled dot-product attention with ``jax.nn.dot_product_attention``'s signature, plus dropout,
    segment ids, soft-capping and sinks.

    .. math::
        \mathrm{out} = \mathrm{dropout}\Big(\mathrm{softmax}\big(\mathrm{scale} \cdot Q K^\top + \text{bias}\big)\Big) V

    Vaswani et al. 2017, eq. (1); grouped-query heads (Ainslie et al. 2023); sliding windows
    (Beltagy et al. 2020); the chunked path after Rabe & Staats 2021 and Dao 2023. Same
    semantics as ``jax.nn.dot_product_attention`` on every query that has a key to attend
    to; a query with none gets a zero output (``jax.nn``: the mean of the values), on every
    path but cuDNN, which the automatic rule never picks when that could happen.

    Shapes: B batch (any number of axes, or none), T query length, S key length, N query
    heads, K key/value heads (N % K == 0), H features per head.

    Args:
      query: ``(B, T, N, H)``. key, value: ``(B, S, K, H)``, the dtype of ``query``.
      bias: optional float, broadcastable to ``(B, N, T, S)``.
      mask: optional bool, broadcastable to ``(B, N, T, S)``, True = attend.
      scale: a number (static) or a 0-d float array (traced); default ``1 / sqrt(H)``.
      is_causal: query t attends keys ``s <= t``.
      query_seq_lengths, key_value_seq_lengths: optional int ``(B,)``.
      local_window_size: optional ``(left, right)`` or an int: keys ``t - left <= s <= t + right``.
      dropout_rate: probability of dropping an attention weight; ``dropout_rng`` a JAX key
        (or its ``key_data``, or an int). The keep-mask is the same on every path
        (:mod:`attention_jax.dropout`).
      implementation: None (the rule of :mod:`attention_jax.fast.dispatch`), ``"dense"``,
        ``"chunked"`` or ``"cudnn"``; ``"xla"`` (``jax.nn``'s name for its plain path) is
        ``"dense"``.
      broadcast_dropout: one dropout mask for every batch row and head (Flax's modules).
      query_segment_ids, key_value_segment_ids: optional int ``(B, T)``, ``(B, S)``: a query
        attends only keys of its own segment (packed sequences); the chunked path skips the
        blocks where no id meets.
      logits_soft_cap: optional c > 0: logits ``c * tanh(logits / c)`` after the bias (Gemma 2).
      sinks: optional float ``(N,)``, per-head sink logits (attention sinks).
      return_residual: also return ``lse (B, T, N)``, the log-sum-exp of the attended logits
        and the sink (``-inf`` for a query that attends nothing and has no sink), in float32
        for float16/bfloat16 inputs (the compute dtype) and differentiable; ``jax.nn``'s is in
        the inputs' dtype and carries no gradient (docs/design.md, the API convention).

    These five run on the dense or the chunked path, never on cuDNN; ``"dense"`` with any of
    the first four is the mirror (:func:`scaled_dot_product_attention`: the tuned dense path
    does not have them).

    Returns:
      ``out``: ``(B, T, N, H)`` in the dtype of ``query``; ``(out, lse)`` with ``return_residual``.
    """
    check_choice("implementation", implementation, IMPLEMENTATIONS)
    if implementation == "xla":  # jax.nn's plain XLA path: ours is the dense path
        implementation = "dense"
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    extras = dict(query_segment_ids=query_segment_ids, key_value_segment_ids=key_value_segment_ids,
                  logits_soft_cap=logits_soft_cap, sinks=sinks)
    extra = any(x is not None for x in extras.values())
    if implementation is None:
        implementation = choose_implementation(
            query, key, bias=bias, mask=mask, is_causal=is_causal, scale=scale,
            key_value_seq_lengths=key_value_seq_lengths, local_window_size=local_window_size,
            dropout_rate=dropout_rate, extras=extra or return_residual,
        )
    options = dict(bias=bias, mask=mask, is_causal=is_causal, scale=scale, query_seq_lengths=query_seq_lengths,
                   key_value_seq_lengths=key_value_seq_lengths, local_window_size=local_window_size,
                   dropout_rate=dropout_rate, dropout_rng=dropout_rng, broadcast_dropout=broadcast_dropout)
    if implementation == "dense" and extra:
        out, _, *lse = scaled_dot_product_attention(query, key, value, **options, **extras,
                                                    return_residual=return_residual)
        return (out, *lse) if return_residual else out
    if implementation == "dense":
        out, _, *lse = dense_attention(query, key, value, **options, return_residual=return_residual)
        return (out, *lse) if return_residual else out
    if implementation == "chunked":
        return chunked_attention(query, key, value, **options, **extras, return_residual=return_residual)
    if extra or return_residual:
        raise ValueError("implementation='cudnn' has no segment ids, soft-cap, sinks or residual here; "
                         "use 'dense' or 'chunked'")
    if dropout_rate:
        raise ValueError("implementation='cudnn' has no attention dropout; use 'dense' or 'chunked'")
    return jax.nn.dot_product_attention(
        query, key, value, bias, mask, scale=scale, is_causal=is_causal, query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths, local_window_size=local_window_size, implementation="cudnn",
    )
