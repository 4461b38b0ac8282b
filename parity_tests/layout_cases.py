"""The registered parity cases of the serving layouts: packed sequences (``varlen_attention``)
and a paged KV cache (``paged_attention``), in both halves, on prime sizes as in
:mod:`parity_tests.cases`."""

import numpy as np

import attention_jax
import attention_np

from .cases import B, H, K, _both, _with_lse
from .registry import ParityCase, register

# --- varlen_attention: packed sequences of different lengths (cu_seqlens) ------------------------------------
# Three sequences of (queries, keys) = (2, 3), (0, 1), (4, 2): more keys than queries, a sequence
# with no query, more queries than keys (causal from the bottom right: its first two queries see no key).
_VARLEN_CU_Q, _VARLEN_CU_K = np.array([0, 2, 2, 6], np.int32), np.array([0, 3, 4, 6], np.int32)


def _varlen_inputs(rng):
    return (rng.normal(size=(6, 6, H)), rng.normal(size=(6, K, H)), rng.normal(size=(6, K, H)),
            _VARLEN_CU_Q, _VARLEN_CU_K)


register(ParityCase(
    "varlen_attention/causal+window+sinks+lse", "varlen_attention", f"total_q=6 total_k=6 N=6 K={K} H={H}",
    lambda rng: (_varlen_inputs(rng), {"is_causal": True, "local_window_size": (2, 0), "sinks": rng.normal(size=(6,))}),
    _with_lse(attention_np.varlen_attention), _with_lse(attention_jax.varlen_attention),
    differentiable=(0, 1, 2, "sinks"),
))


# --- paged_attention: a KV cache in pages, rows of different lengths, pages out of order ----------------------
# Pool of 5 pages of 2 slots; row 0 holds 5 tokens in pages 3, 0, 4; row 1 holds 2 in page 1 (page 2 unused).
_PAGE_TABLE, _PAGE_LENGTHS = np.array([[3, 0, 4], [1, 2, 2]], np.int32), np.array([5, 2], np.int32)


def _paged_inputs(rng):
    cache = {"key_pages": rng.normal(size=(5, 2, K, H)), "value_pages": rng.normal(size=(5, 2, K, H))}
    return rng.normal(size=(B, 2, 6, H)), cache, _PAGE_TABLE, _PAGE_LENGTHS


register(ParityCase(
    "paged_attention/chunk of 2+window+sinks", "paged_attention", f"B={B} k=2 pages=5x2 N=6 K={K} H={H}",
    lambda rng: (_paged_inputs(rng), {"local_window_size": (3, 0), "sinks": rng.normal(size=(6,))}),
    **_both("paged_attention"), differentiable=(0, 1, "sinks"),
))
