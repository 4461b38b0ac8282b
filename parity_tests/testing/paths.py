"""The JAX paths of the suite and what each supports (:data:`PATHS`), and running one on a problem (:func:`check_path`)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import attention_jax
from attention_jax.fast.dense import dense_attention
from attention_np.mods import (
    and_masks,
    array_namespace,
    asarray_like,
    causal_mask,
    document_mask,
    sliding_window_mask,
)

from .expected import check, reference
from .problems import OPTIONS, Problem


# --- the paths -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Path:
    """One attention path: how to call it and which options it supports.

    Attributes:
      call: ``(query, key, value, **options) -> out``, or ``(out, lse)`` with
        ``return_residual`` (``dot_product_attention``'s convention).
      supports: the names of :data:`OPTIONS` it takes; any other is refused when passed.
      refusal: the exceptions it refuses an option with (whose message names the option).
    """

    call: Callable
    supports: frozenset
    refusal: tuple = (TypeError, ValueError)


def _path(path):
    """A :class:`Path`, or the entry of :data:`PATHS` of that name."""
    if isinstance(path, Path):
        return path
    if path not in PATHS:
        raise ValueError(f"no path {path!r} in PATHS; it has {', '.join(map(repr, PATHS))}")
    return PATHS[path]


def expect_supported(path: Path | str, options) -> bool:
    """Whether ``path`` supports every one of ``options`` (option names, or a :class:`Problem`).

    >>> expect_supported("dense_attention (tuned)", {"is_causal", "bias"})
    True
    >>> expect_supported("dense_attention (tuned)", {"is_causal", "sinks"})
    False
    """
    path = _path(path)
    options = options.features if isinstance(options, Problem) else frozenset(options)
    return options <= path.supports


def _mirror(query, key, value, **options):
    """The line-by-line mirror of the NumPy half, without its weights."""
    out, _, *lse = attention_jax.scaled_dot_product_attention(query, key, value, **options)
    return (out, *lse) if options.get("return_residual") else out


def _tuned_dense(query, key, value, **options):
    out, _, *lse = dense_attention(query, key, value, **options)
    return (out, *lse) if options.get("return_residual") else out


def flex_mods(query, key, options):
    """``(score_mod, mask_mod, rest)``: the options of ``scaled_dot_product_attention`` as
    flex mods (bias and soft-cap as a score_mod; mask, causal, lengths, window and segment ids
    as one mask_mod; None where there is none) and the options left to pass on."""
    o = dict(options)
    B, T, N, _ = query.shape
    S = key.shape[1]
    bias, cap = o.pop("bias", None), o.pop("logits_soft_cap", None)
    masks = []
    if o.pop("is_causal", False):
        masks.append(causal_mask)
    if (window := o.pop("local_window_size", None)) is not None:
        masks.append(sliding_window_mask(window))
    if (mask := o.pop("mask", None)) is not None:
        mask = np.broadcast_to(np.asarray(mask, bool), (B, N, T, S))
        masks.append(lambda b, h, q_idx, kv_idx: asarray_like(mask, kv_idx)[b, h, q_idx, kv_idx])
    query_lengths, key_lengths = o.pop("query_seq_lengths", None), o.pop("key_value_seq_lengths", None)
    if query_lengths is not None:
        masks.append(lambda b, h, q_idx, kv_idx: q_idx < asarray_like(query_lengths, q_idx)[b])
    if key_lengths is not None:
        masks.append(lambda b, h, q_idx, kv_idx: kv_idx < asarray_like(key_lengths, kv_idx)[b])
    query_ids, key_ids = o.pop("query_segment_ids", None), o.pop("key_value_segment_ids", None)
    if query_ids is not None or key_ids is not None:
        masks.append(document_mask(key_ids if query_ids is None else query_ids, key_ids))
    score_mod = None
    if bias is not None or cap is not None:
        if bias is not None:
            bias = np.broadcast_to(bias, (B, N, T, S))

        def score_mod(score, b, h, q_idx, kv_idx):
            if bias is not None:
                score = score + asarray_like(bias, kv_idx)[b, h, q_idx, kv_idx]
            if cap is not None:
                score = cap * array_namespace(score).tanh(score / cap)
            return score
    return score_mod, (and_masks(*masks) if masks else None), o


def flex_path(block_sizes) -> Path:
    """``attention_jax.flex_attention`` (the blocked path) as a :class:`Path`: the options
    turned into mods by :func:`flex_mods`, its block mask made with ``block_sizes``; it has no
    dropout."""
    def call(query, key, value, **options):
        score_mod, mask_mod, rest = flex_mods(query, key, options)
        B, T, N, _ = query.shape
        block_mask = None
        if mask_mod is not None:
            block_mask = attention_jax.create_block_mask(mask_mod, B, N, T, key.shape[1], block_sizes=block_sizes)
        return attention_jax.flex_attention(query, key, value, score_mod=score_mod, block_mask=block_mask, **rest)
    return Path(call, OPTIONS - {"dropout_rate"})


_ALL = OPTIONS
_NO_EXTRAS = OPTIONS - {"query_segment_ids", "key_value_segment_ids", "logits_soft_cap", "sinks"}
PATHS = {
    "scaled_dot_product_attention": Path(_mirror, _ALL),
    "dense_attention (tuned)": Path(_tuned_dense, _NO_EXTRAS),
    # implementation=None: at the lengths of problems() it picks "dense" on every backend (H < 8
    # rules cuDNN out), so an entry for implementation="dense" would compile the same program
    "dot_product_attention None": Path(attention_jax.dot_product_attention, _ALL),
    "dot_product_attention chunked": Path(
        lambda *a, **o: attention_jax.dot_product_attention(*a, implementation="chunked", **o), _ALL),
    # blocks of 2 x 3: the loops run, and the last block of each axis is partly padding
    "chunked_attention 2x3 blocks": Path(
        lambda *a, **o: attention_jax.chunked_attention(*a, block_sizes=(2, 3), **o), _ALL),
    "flex_attention 2x3 blocks": flex_path((2, 3)),
}
"""Every JAX path the suite's property tests run, by name."""


def run(path: Path | str, problem: Problem, *, gradients=True):
    """``(out, lse or None, gradients)`` of ``path`` on the problem's inputs: the forward pass
    and ``jax.vjp`` under ``d_out`` (and ``d_lse``), of (query, key, value[, sinks]), compiled
    as one program at matmul precision "highest"."""
    path = _path(path)
    options = dict(problem.options)
    sinks = options.pop("sinks", None)
    residual = bool(options.get("return_residual"))
    primals = [jnp.asarray(x) for x in (problem.query, problem.key, problem.value)]
    primals += [] if sinks is None else [jnp.asarray(sinks)]

    def forward(query, key, value, *sinks):
        result = path.call(query, key, value, **options, **({"sinks": sinks[0]} if sinks else {}))
        return tuple(result) if residual else (result,)

    @jax.jit
    def forward_and_backward(primals, d_out, d_lse):
        if not gradients:
            return forward(*primals), ()
        outputs, vjp = jax.vjp(forward, *primals)
        cotangents = (d_out.astype(outputs[0].dtype),) + ((d_lse.astype(outputs[1].dtype),) if residual else ())
        return outputs, vjp(cotangents)

    B, T, N, _ = problem.query.shape
    d_out = problem.d_out if problem.d_out is not None else np.zeros(problem.query.shape, problem.query.dtype)
    d_lse = problem.d_lse if problem.d_lse is not None else np.zeros((B, T, N), np.float32)
    with jax.default_matmul_precision("highest"):
        outputs, grads = forward_and_backward(primals, jnp.asarray(d_out), jnp.asarray(d_lse))
    return outputs[0], (outputs[1] if residual else None), grads


def check_path(path: Path | str, problem: Problem, *, gradients=True):
    """Run ``path`` on ``problem`` and check it against :func:`reference`.

    Options the path does not support (:func:`expect_supported`) must be refused: calling it
    with them raises one of ``path.refusal`` whose message names one of them; then the
    problem without them is checked. Checked: finite outputs, lse and gradients; dead queries
    an exactly zero output and query gradient (and lse ``-inf``, or the sink's logit); out, lse
    and each gradient within :func:`check`'s tolerance of the dtype, the gradients measured
    against the largest of them."""
    name = path if isinstance(path, str) else getattr(path.call, "__name__", "path")
    path = _path(path)
    unsupported = problem.features - path.supports
    if unsupported:
        named = unsupported | ({"dropout_rng"} if "dropout_rate" in unsupported else set())
        try:
            run(path, problem, gradients=False)
        except path.refusal as error:
            if not re.search("|".join(sorted(named)), str(error)):
                raise AssertionError(f"{name} refused {sorted(unsupported)} with a message that names none of them: "
                                     f"{error}") from error
        else:
            raise AssertionError(f"{name} accepted {sorted(unsupported)}, which its Path does not list in supports")
        problem = problem.only(path.supports)
    gradients = gradients and problem.d_out is not None
    out, lse, grads = run(path, problem, gradients=gradients)
    expected = reference(problem)
    dtype, dead = problem.dtype, expected.dead
    assert out.dtype == problem.query.dtype, f"{name}: out is {out.dtype}, the inputs {problem.query.dtype}"
    out = np.asarray(out, np.float64)
    assert np.isfinite(out).all(), f"{name}: non-finite output"
    assert (out[dead] == 0).all(), f"{name}: a dead query's output is not zero"
    check(out, expected.out, dtype, name=f"{name}: out")
    if lse is not None:  # in the compute dtype: float32 for float16 and bfloat16 inputs
        assert lse.dtype == (np.float64 if dtype == "float64" else np.float32), f"{name}: lse is {lse.dtype}"
        lse = np.asarray(lse, np.float64)
        assert not np.isnan(lse).any(), f"{name}: NaN in lse"
        # a dead query's lse is its sink's logit exactly, or -inf
        assert (lse[dead] == expected.lse[dead]).all(), f"{name}: a dead query's lse is not -inf or its sink"
        check(lse, expected.lse, dtype, name=f"{name}: lse")
    if not gradients:
        return
    names = ("d_query", "d_key", "d_value", "d_sinks")
    grads = [np.asarray(g, np.float64) for g in grads]
    for grad_name, grad in zip(names, grads):
        assert np.isfinite(grad).all(), f"{name}: non-finite {grad_name}"
    assert (grads[0][dead] == 0).all(), f"{name}: a dead query's gradient is not zero"
    # each gradient relative to the largest of query, key and value's: where the softmax has
    # one key, d_key is exactly 0 as a difference of terms as large as d_value, which a float32
    # FlashAttention backward (D = rowsum(dO * O)) rounds to about eps * |d_value|
    scale = max(np.abs(e).max(initial=0.0) for e in expected.grads[:3])
    for grad_name, grad, want in zip(names, grads, expected.grads):
        check(grad, want, dtype, scale=scale, name=f"{name}: {grad_name}")
