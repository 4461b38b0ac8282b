"""``flex_attention``: attention you program with a ``score_mod`` and a ``mask_mod``, computed
block by block in :func:`attention_jax.chunked_attention`'s kernels, skipping the blocks a
:class:`~.sparse.BlockMask` rules out, forward and backward."""

import functools

import jax
import jax.numpy as jnp

from attention_np._validate import check_flex
from attention_np.mods import noop_mask

from ..._dtypes import compute_dtype
from ..._jit import jit, logits_scale, reverse_mode_only, split_scale
from ...flex import flex_attention as dense_flex_attention
from .closures import convert_mod
from .config import Config, Mods
from .layout import from_rows, make_rows, to_rows
from .sparse import create_block_mask, depends, grouped
from .vjp import _flash_bwd, _flash_fwd  # flex binds score_mod's integer arrays around them (_flash)


def flex_attention(query, key, value, *, score_mod=None, mask_mod=None, block_mask=None, scale=None,
                   sinks=None, return_residual=False):
    r"""Scaled dot-product attention with a ``score_mod`` on the logits and a ``mask_mod`` for
    the mask, and optional attention sinks, in O(T + S) memory, forward and backward.

    .. math::
        x_{bhts} = \mathrm{score\_mod}\big(\mathrm{scale}\; q_{bht} \cdot k_{bhs},\; b, h, t, s\big), \qquad
        o_{bht} = \frac{\sum_s [\mathrm{mask\_mod}(b, h, t, s)]\, e^{x_{bhts}} v_{bhs}}
                       {e^{\sigma_h} + \sum_s [\mathrm{mask\_mod}(b, h, t, s)]\, e^{x_{bhts}}}

    The signatures of PyTorch's FlexAttention (He et al. 2024); the numbers of
    :func:`attention_np.flex_attention`, the readable definition (and of its mirror
    :func:`attention_jax.flex.flex_attention`). Computed with the online softmax of
    FlashAttention-2 (Dao 2023) over the blocks of a :class:`BlockMask`: empty blocks are
    skipped in both passes, full blocks never evaluate ``mask_mod``, partial blocks evaluate
    it per element. The backward pass recomputes each block from the saved log-sum-exp and
    goes through ``score_mod`` by its VJP, so gradients reach the float arrays a mod closes
    over (an ALiBi slope, a relative-position table). A mod may close over traced arrays of
    any dtype (document ids or an offset passed to a jitted, differentiated or vmapped step):
    they become arguments of the compiled function, the float ones differentiated. Keys that
    ``mask_mod`` hides from every query (of the G query heads a key/value head serves) are
    padding, zeroed before the products: NaN stored there reaches no output and no gradient,
    whatever the blocks, as in the dense definition. Sinks (Xiao et al. 2024; gpt-oss) are
    per-head logits that join each row's normaliser with no value; they get gradients.

    The mods are traced once on scalars and vectorized over each block (``jax.vmap``), so a
    mod written with array operators serves both halves (:mod:`attention_np.mods` has the
    common ones; one that needs ``tanh`` or ``where`` takes them from
    :func:`attention_np.mods.array_namespace`). A mod must be a pure function of its
    arguments and of the arrays it closes over. Reverse-mode autodiff only (a
    ``jax.custom_vjp``).

    Shapes: B batch (one axis: the ``b`` the mods receive), T query length, S key length,
    N query heads, K key/value heads (N % K == 0), H features per head.

    Args:
      query: ``(B, T, N, H)``.
      key, value: ``(B, S, K, H)``, the dtype of ``query``.
      score_mod: optional ``(score, b, h, q_idx, kv_idx) -> score`` on the scaled logits.
      mask_mod: optional ``(b, h, q_idx, kv_idx) -> bool``, True = attend. Without a
        ``block_mask``, one is made on each call (:func:`create_block_mask`, the default
        blocks); make it once and pass ``block_mask`` to reuse it across layers and calls.
      block_mask: optional :class:`BlockMask` from :func:`create_block_mask`, for these
        B, N, T, S (or None B/N); its blocks are the blocks of both passes.
      scale: multiplies the logits before ``score_mod``; default ``1 / sqrt(H)``; a 0-d
        float array is traced (a learnable temperature).
      sinks: optional float ``(N,)``, one sink logit per query head.
      return_residual: also return ``lse (B, T, N)``, the log-sum-exp of the modified,
        masked logits and the sink (``jax.nn.dot_product_attention``'s residual), ``-inf``
        for a query that attends no key and has no sink, in the compute dtype and
        differentiable (``jax.nn``'s: the inputs' dtype, no gradient).

    Returns:
      ``out (B, T, N, H)`` in the dtype of ``query`` (zeros for a query that attends no
      key), or ``(out, lse)``.

    Example: a causal mask and soft-capped logits, against the NumPy definition.

    >>> import numpy as np, attention_np
    >>> from attention_np.mods import causal_mask, soft_cap
    >>> x = np.random.default_rng(0).normal(size=(1, 6, 2, 4)).astype(np.float32)
    >>> out = flex_attention(x, x, x, score_mod=soft_cap(5.0), mask_mod=causal_mask)
    >>> expected = attention_np.flex_attention(x, x, x, score_mod=soft_cap(5.0), mask_mod=causal_mask)
    >>> bool(np.abs(np.asarray(out) - expected).max() < 1e-6)
    True
    """
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    shapes = check_flex(query, key, value, score_mod, mask_mod, block_mask, scale, sinks)
    B, T, N, H, S, K = (shapes[c] for c in "BTNHSK")
    if T == 0 or S == 0:  # nothing to block: the dense definition's empty arrays, or zeros
        return dense_flex_attention(query, key, value, score_mod=score_mod, mask_mod=mask_mod, block_mask=block_mask,
                                    scale=scale, sinks=sinks, return_residual=return_residual)
    if block_mask is None:
        on_b, on_h = depends(mask_mod, B, N, T, S) if mask_mod is not None else (False, False)
        block_mask = create_block_mask(mask_mod or noop_mask, B if on_b else None, N if on_h else None, T, S)
    compute = compute_dtype(query.dtype)
    index = jnp.zeros((), jnp.int32)
    score_fn, score_consts, score_fixed = convert_mod(score_mod, jnp.zeros((), compute), index, index, index, index)
    every_key = block_mask.mask_mod is noop_mask
    mask_fn, mask_floats, mask_fixed = convert_mod(None if every_key else block_mask.mask_mod, index, index, index,
                                                   index)
    attended = None if every_key else block_mask.attended
    scale, scale_value = split_scale(scale)
    with reverse_mode_only("flex_attention", "attention_jax.flex.flex_attention"):
        return _flex_attention(query, key, value, block_mask.states, attended, score_consts, score_fixed,
                               mask_floats + mask_fixed, sinks, scale_value, score_fn=score_fn, mask_fn=mask_fn,
                               scale=scale, block_sizes=block_mask.block_sizes, return_residual=bool(return_residual))


@jit(static_argnames=("score_fn", "mask_fn", "scale", "block_sizes", "return_residual"))
def _flex_attention(query, key, value, states, attended, score_consts, score_fixed, mask_consts, sinks, scale_value, *,
                    score_fn, mask_fn, scale, block_sizes, return_residual):
    """:func:`flex_attention` compiled: keys no query attends zeroed, the rows layout of
    :mod:`.attention`, then the kernels."""
    B, T, N, H = query.shape
    S, K = key.shape[1], key.shape[2]
    dtype, compute = query.dtype, compute_dtype(query.dtype)
    qc, kc = block_sizes
    cfg = Config(is_causal=False, query_chunk=qc, key_chunk=kc, T=T, S=S, G=N // K, compute=compute,
                 score_mod=score_fn, mask_mod=mask_fn)
    key, value = _zero_unattended(key, value, attended, N // K)                     # (B, S, K, H)
    ops = to_rows(query.astype(compute) * logits_scale(scale, scale_value, H, compute), key, value, None, None, cfg)
    rows = make_rows(cfg, B, K)
    sinks = None if sinks is None else jnp.asarray(sinks).astype(compute).reshape(1, K, N // K)
    mods = Mods(tuple(score_consts), tuple(mask_consts), sinks, grouped(states, K, N // K))
    out, lse = from_rows(*_flash(ops, rows, mods, tuple(score_fixed), cfg), T)   # (B, T, N, H), (B, T, N)
    return (out.astype(dtype), lse) if return_residual else out.astype(dtype)


def _zero_unattended(key, value, attended, G):
    """``key``, ``value (B, S, K, H)`` with the keys no query of the key/value head's G query heads
    attends set to 0 (``attended (B|1, N|1, S)`` of the block mask; None: every key is kept):
    padding, zeroed before the products as in the dense paths, so NaN or inf stored there
    reaches no output and no gradient, whether its block is partial or skipped."""
    if attended is None:
        return key, value
    b, n, S = attended.shape
    if n != 1:  # a key of a grouped head is kept when any of its query heads attends it
        attended = attended.reshape(b, n // G, G, S).any(axis=2)                   # (B|1, K, S)
    keep = attended.transpose(0, 2, 1)[..., None]                                 # (B|1, S, K|1, 1)
    return jnp.where(keep, key, 0), jnp.where(keep, value, 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(ops, rows, mods, fixed, cfg):
    """:func:`.vjp.flash` with ``score_mod``'s integer and boolean arrays (``fixed``) as arguments:
    ``cfg`` is static, so a ``score_mod`` there that closed over them would hold the tracers of
    the trace that made it, dead by the time the backward pass runs (under ``jit(grad)``,
    ``grad(jit)``, ``vmap``). Forward and backward each bind the ``fixed`` they are given."""
    return _flash_fwd(ops, rows, mods, _bind(cfg, fixed))[0]


def _flash_forward(ops, rows, mods, fixed, cfg):
    outputs, residuals = _flash_fwd(ops, rows, mods, _bind(cfg, fixed))
    return outputs, (residuals, fixed)


def _flash_backward(cfg, saved, cotangents):
    residuals, fixed = saved
    dops, drows, dmods = _flash_bwd(_bind(cfg, fixed), residuals, cotangents)
    return dops, drows, dmods, tuple(None for _ in fixed)  # integers and booleans: no cotangent


_flash.defvjp(_flash_forward, _flash_backward)


def _bind(cfg, fixed):
    """``cfg`` whose ``score_mod`` takes ``fixed`` after the float arrays the kernels pass it."""
    if not fixed:
        return cfg
    score_mod = cfg.score_mod
    return cfg._replace(score_mod=lambda *args: score_mod(*args, *fixed))
