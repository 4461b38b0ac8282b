"""Bad input: both halves raise the same exception type with the same message (docs/design.md
section 4), naming the argument, the expected shape in docs/design.md's letters with the known
sizes and where they came from, and what was given. Also: both halves offer the same API."""

import copy
import inspect

import jax
import numpy as np
import pytest

import attention_jax
import attention_np

from .conftest import HALVES

B, T, S, N, K, H, E, Aa, Q = 2, 3, 5, 6, 3, 11, 13, 7, 6
f32 = np.float32


def z(*shape, dtype=f32):
    return np.zeros(shape, dtype)


def drop(params, *path):
    """A deep copy of ``params`` without the entry at ``path``."""
    params = copy.deepcopy(params)
    node = params
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return params


def put(params, value, *path):
    """A deep copy of ``params`` with ``value`` at ``path``."""
    params = copy.deepcopy(params)
    node = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return params


_r = np.random.default_rng(0)
gp = attention_np.init_general_params(_r, H)
cp = attention_np.init_concat_params(_r, H, Aa)
sp = attention_np.init_self_attention_params(_r, E, H)
mp = attention_np.init_multi_head_params(_r, E, N, H, num_kv_heads=K)
glp = attention_np.init_global_params(_r, H)
lp = attention_np.init_local_params(_r, H)
lsp = attention_np.init_location_sensitive_params(_r, Q, H, Aa, filters=4, width=3)
ap = attention_np.init_additive_params(_r, H)
s2s = attention_np.init_seq2seq_params(_r, source_vocab=8, target_vocab=9, embed=4, hidden=H)
tep = attention_np.init_transformer_encoder_params(_r, 12, 3, 7)  # E = 12, N = 3 heads, M = 7
tdp = attention_np.init_transformer_decoder_params(_r, 12, 3, 7)


kv = attention_np.init_kv_cache(B, 4, K, H)


def ids(*shape):
    return np.zeros(shape, np.int32)


def ids_from(*values):
    return np.array(values, np.int32)


# (function, args, kwargs, exception, the exact message)
BAD_INPUTS = [
    ("apply_rotary", (z(B, T, N, H), np.arange(T, dtype=np.int32)), {"fraction": 0.1}, ValueError,
     "rotary embeddings rotate pairs of features: H * fraction must be at least 2; got H=11, fraction=0.1"),
    ("apply_rotary", (z(B, T, N, H), np.arange(T + 1, dtype=np.int32)), {}, ValueError,
     "positions must be broadcastable to (B..., T) with T=3 from x; got (4,)"),
    ("apply_rotary", (z(B, T, N, H), np.arange(T, dtype=np.float32)), {}, TypeError,
     "positions must be an integer array broadcastable to (B..., T); got float32"),
    # windows, sequence lengths and dropout
    ("scaled_dot_product_attention", (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H)), {"query_segment_ids": z(B, T)}, TypeError,
     "query_segment_ids must have an integer dtype (one segment id per token); got float32"),
    ("scaled_dot_product_attention", (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H)), {"key_value_segment_ids": ids(B, T)}, ValueError,
     f"key_value_segment_ids must have shape (B..., S) = ({B}, {S}), one id per token; got ({B}, {T})"),
    ("scaled_dot_product_attention", (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H)), {"query_segment_ids": ids(B, T)}, ValueError,
     f"query_segment_ids alone serves both sides only when T == S; got T={T}, S={S}: pass both query_segment_ids "
     "and key_value_segment_ids"),
    ("scaled_dot_product_attention", (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H)), {"logits_soft_cap": 0.0}, ValueError,
     "logits_soft_cap must be None or a finite number > 0; got 0.0"),
    ("scaled_dot_product_attention", (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H)), {"sinks": z(N + 1)}, ValueError,
     f"sinks must have shape (N,) = ({N},), one logit per query head; got ({N + 1},)"),
    ("scaled_dot_product_attention", (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H)), {"sinks": ids(N)}, TypeError,
     "sinks must have a floating dtype (float16, bfloat16, float32 or float64); got int32"),
    ("flex_attention", (z(1, B, T, N, H), z(1, B, S, K, H), z(1, B, S, K, H)), {}, ValueError,
     f"query must have shape (B, T, N, H), one batch axis (the b that score_mod and mask_mod receive); got (1, {B}, {T}, {N}, {H})"),
    ("flex_attention", (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H)), {"score_mod": 1.0}, TypeError,
     "score_mod must be a function (score, b, h, q_idx, kv_idx) -> score or None; got float"),
    ("flex_attention", (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H)), {"sinks": z(N, 1)}, ValueError,
     f"sinks must have shape (N,) = ({N},), one logit per query head; got ({N}, 1)"),
    ("flex_attention", (z(B, T, N, H), z(B, S + 1, K, H), z(B, S, K, H)), {}, ValueError,
     f"value must have shape (B, S, K, H) with B={B}, H={H} from query, S={S + 1}, K={K} from key; got ({B}, {S}, {K}, {H})"),
    ("varlen_attention", (z(T, N, H, dtype=np.int64), z(S, K, H), z(S, K, H), ids_from(0, 1, 3), ids_from(0, 2, 5)), {},
     TypeError, "query must have a floating dtype (float16, bfloat16, float32 or float64); got int64"),
    ("varlen_attention", (z(T, N, H), z(S, K, H), z(S, K, H), ids_from(0, 1, 3), ids_from(0, 5)), {}, ValueError,
     "cu_seqlens_k must have shape (num_seqs + 1,) = (3,) from cu_seqlens_q, the same number of sequences for "
     "queries and keys; got (2,)"),
    ("varlen_attention", (z(T, N, H), z(S, K, H), z(S, K, H), ids_from(1, 2, 3), ids_from(0, 2, 5)), {}, ValueError,
     "cu_seqlens_q must start at 0 (the first sequence's first row); got cu_seqlens_q[0] = 1"),
    ("paged_attention", (z(B, 1, N, H), {"key_pages": z(4, 2, K, H)}, ids(B, 3), ids_from(1, 2)), {}, ValueError,
     "cache is missing ['value_pages']; expected keys ['key_pages', 'value_pages'] (from init_paged_kv_cache)"),
    ("paged_attention", (z(B, 1, N, H), {"key_pages": z(4, 2, K, H), "value_pages": z(4, 2, K, H)}, ids(B, 3),
                         ids_from(1, 7)), {}, ValueError,
     "lengths must be at most max_pages * page_size = 6 (the positions a row's page table holds); got lengths[1] = 7"),
    ("paged_kv_write", ({"key_pages": z(4, 2, K, H), "value_pages": z(4, 2, K, H)}, ids(B, 3), ids(B), z(B, 1, K, H + 1),
                        z(B, 1, K, H)), {}, ValueError,
     f"key must have shape (B, k, K, H) with K={K}, H={H} from cache['key_pages']; got ({B}, 1, {K}, {H + 1})"),
    ("paged_kv_write", ({"key_pages": z(4, 2, K, H), "value_pages": z(4, 2, K, H)}, ids_from(4, 0, 1, 2).reshape(B, 2),
                        ids(B), z(B, 1, K, H), z(B, 1, K, H)), {}, ValueError,
     "page_table must hold page numbers in [0, P) = [0, 4) where a row uses a page; got page_table[0, 0] = 4"),
    ("scaled_dot_product_attention", (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H)), {"local_window_size": -1}, ValueError,
     "local_window_size must be None, an int >= 0 or a pair (left, right) of ints >= 0; got -1"),
    ("scaled_dot_product_attention", (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H)), {"local_window_size": (1, 2, 3)}, ValueError,
     "local_window_size must be None, an int >= 0 or a pair (left, right) of ints >= 0; got (1, 2, 3)"),
    ("scaled_dot_product_attention", (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H)), {"query_seq_lengths": z(B)}, TypeError,
     "query_seq_lengths must have an integer dtype (one length per batch row); got float32"),
    ("scaled_dot_product_attention", (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H)), {"key_value_seq_lengths": ids(B + 1)}, ValueError,
     "key_value_seq_lengths must have shape (B,) = (2,), one length per batch row; got (3,)"),
    ("scaled_dot_product_attention", (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H)), {"dropout_rate": 1.0, "dropout_rng": 0}, ValueError,
     "dropout_rate must be a number in [0, 1); got 1.0"),
    ("scaled_dot_product_attention", (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H)), {"dropout_rate": 0.1}, ValueError,
     "dropout_rate=0.1 needs a dropout_rng (a JAX key, its key_data, or an int)"),
    (
        "dot_scores",
        (z(B, T, H), z(B, S, 7)),
        {},
        ValueError,
        "keys must have shape (B, S, H) with B=2, H=11 from query; got (2, 5, 7)",
    ),
    (
        "dot_scores",
        (z(B, T, H), z(3, S, H)),
        {},
        ValueError,
        "keys must have shape (B, S, H) with B=2, H=11 from query; got (3, 5, 11)",
    ),
    (
        "dot_scores",
        (z(B, T, H, dtype=np.complex64), z(B, S, H)),
        {},
        TypeError,
        "query must have a floating dtype (float16, bfloat16, float32 or float64); got complex64",
    ),
    ("cosine_scores", (z(B, T, H), z(B, S, 7)), {}, ValueError,
     "keys must have shape (B, S, H) with B=2, H=11 from query; got (2, 5, 7)"),
    ("cosine_scores", (z(B, T, H), z(B, S, H)), {"strength": "2"}, TypeError,
     "strength must be a finite real number (int or float); got '2' (str)"),
    ("cosine_scores", (z(B, T, H), z(B, S, H)), {"strength": float("inf")}, ValueError,
     "strength must be a finite real number; got inf"),
    (
        "scaled_dot_scores",
        (z(B, T, H), z(B, S, H)),
        {"scale": "0.5"},
        TypeError,
        "scale must be a finite real number (int or float); got '0.5' (str)",
    ),
    (
        "scaled_dot_scores",
        (z(B, T, H), z(B, S, H)),
        {"scale": float("nan")},
        ValueError,
        "scale must be a finite real number; got nan",
    ),
    (
        "general_scores",
        ({"kernel": z(H, 7)}, z(B, T, H), z(B, S, H)),
        {},
        ValueError,
        "params['kernel'] must have shape (H, H) with H=11 from query; got (11, 7)",
    ),
    (
        "general_scores",
        ({}, z(B, T, H), z(B, S, H)),
        {},
        ValueError,
        "params['kernel'] is missing; expected keys ['kernel']",
    ),
    (
        "concat_scores",
        (put(cp, z(2 * H + 1, Aa), "attn", "kernel"), z(B, T, H), z(B, S, H)),
        {},
        ValueError,
        "params['attn']['kernel'] must have shape (2H, A) with H=11 from query; got (23, 7)",
    ),
    (
        "concat_scores",
        (put(cp, z(Aa + 1), "v"), z(B, T, H), z(B, S, H)),
        {},
        ValueError,
        "params['v'] must have shape (A,) with A=7 from params['attn']['kernel']; got (8,)",
    ),
    (
        "concat_scores",
        (drop(cp, "attn", "bias"), z(B, T, H), z(B, S, H)),
        {},
        ValueError,
        "params['attn']['bias'] is missing; expected keys ['bias', 'kernel']",
    ),
    (
        "soft_attention",
        (z(B, T, S), z(B, 4, H)),
        {},
        ValueError,
        "values must have shape (B, S, H) with B=2, S=5 from scores; got (2, 4, 11)",
    ),
    (
        "soft_attention",
        (z(B, T, S), z(B, S, H)),
        {"mask": np.ones((B, T, S), f32)},
        TypeError,
        "mask must have a boolean dtype (True = attend); got float32",
    ),
    (
        "soft_attention",
        (z(B, T, S), z(B, S, H)),
        {"mask": np.ones((B, 2, S), bool)},
        ValueError,
        "mask must broadcast to shape (B, T, S) = (2, 3, 5); got (2, 2, 5)",
    ),
    (
        "soft_attention",
        (z(B, T, S, dtype=bool), z(B, S, H)),
        {},
        TypeError,
        "scores must have a floating dtype (float16, bfloat16, float32 or float64); got bool",
    ),
    (
        "hard_attention",
        (z(B, T, S), z(B, S, H)),
        {"gumbel_noise": z(B, T, 4)},
        ValueError,
        "gumbel_noise must have shape (B, T, S) with B=2, T=3, S=5 from scores; got (2, 3, 4)",
    ),
    (
        "hard_attention",
        (z(B, T, S, dtype=np.int32), z(B, S, H)),
        {},
        TypeError,
        "scores must have a floating dtype (float16, bfloat16, float32 or float64); got int32",
    ),
    (
        "self_attention",
        (sp, z(B, T, E + 1)),
        {},
        ValueError,
        "params['query']['kernel'] must have shape (E, H) with E=14 from x; got (13, 11)",
    ),
    (
        "self_attention",
        (drop(sp, "value"), z(B, T, E)),
        {},
        ValueError,
        "params['value'] is missing; expected keys ['key', 'query', 'value']",
    ),
    (
        "self_attention",
        (put(sp, z(E, H + 1), "key", "kernel"), z(B, T, E)),
        {},
        ValueError,
        "params['key']['kernel'] must have shape (E, H) with E=13 from x, H=11 from params['query']['kernel']; got (13, 12)",
    ),
    (
        "self_attention",
        (sp, z(B, T, E)),
        {"mask": np.ones((B, T, S), bool)},
        ValueError,
        "mask must broadcast to shape (B, T, S) = (2, 3, 3); got (2, 3, 5)",
    ),
    ("self_attention", (sp, z(T, E)), {}, ValueError, "x must have shape (B, T, E); got (3, 13)"),
    (
        "cross_attention",
        (sp, z(B, T, E), z(B, S, E + 2)),
        {},
        ValueError,
        "context must have shape (B, S, E) with B=2, E=13 from x; got (2, 5, 15)",
    ),
    (
        "cross_attention",
        (sp, z(B, T, E), z(B + 1, S, E)),
        {},
        ValueError,
        "context must have shape (B, S, E) with B=2, E=13 from x; got (3, 5, 13)",
    ),
    (
        "cross_attention",
        (sp, z(B, T, E), z(B, S, E)),
        {"mask": np.ones((B, T, T), bool)},
        ValueError,
        "mask must broadcast to shape (B, T, S) = (2, 3, 5); got (2, 3, 3)",
    ),
    (
        "multi_head_attention",
        (mp, z(B, T, E)),
        {"mask": np.ones((B, N, T, 4), bool)},
        ValueError,
        "mask must broadcast to shape (B, N, T, S) = (2, 6, 3, 3); got (2, 6, 3, 4)",
    ),
    (
        "multi_head_attention",
        (put(mp, z(E, 4, H), "key", "kernel"), z(B, T, E)),
        {},
        ValueError,
        "params['key']['bias'] must have shape (K, H) with K=4 from params['key']['kernel'], H=11 from params['query']['kernel']; got (3, 11)",
    ),
    (
        "multi_head_attention",
        (put(mp, z(N, H + 1, E), "out", "kernel"), z(B, T, E)),
        {},
        ValueError,
        "params['out']['kernel'] must have shape (N, H, F) with N=6, H=11 from params['query']['kernel']; got (6, 12, 13)",
    ),
    (  # out_features F != E is allowed; its bias must follow the kernel
        "multi_head_attention",
        (put(mp, z(N, H, E + 1), "out", "kernel"), z(B, T, E)),
        {},
        ValueError,
        "params['out']['bias'] must have shape (F,) with F=14 from params['out']['kernel']; got (13,)",
    ),
    (  # in_kv_features E_kv != E is allowed; the key/value kernels must follow the key
        "multi_head_attention",
        (mp, z(B, T, E), z(B, S, E + 2)),
        {},
        ValueError,
        "params['key']['kernel'] must have shape (E_kv, K, H) with E_kv=15 from key, H=11 from params['query']['kernel']; got (13, 3, 11)",
    ),
    (  # values of another width than the keys (PyTorch's vdim != kdim): the value kernel follows the value
        "multi_head_attention",
        (mp, z(B, T, E), z(B, S, E), z(B, S, E + 4)),
        {},
        ValueError,
        "params['value']['kernel'] must have shape (E_v, K, H) with E_v=17 from value, K=3 from params['key']['kernel'], H=11 from params['query']['kernel']; got (13, 3, 11)",
    ),
    (  # normalize_qk: query_ln/key_ln are LayerNorm(H) scales
        "multi_head_attention",
        (put(mp, {"scale": z(H + 1)}, "query_ln"), z(B, T, E)),
        {},
        ValueError,
        "params['query_ln']['scale'] must have shape (H,) with H=11 from params['query']['kernel']; got (12,)",
    ),
    (
        "multi_head_attention",
        (put(mp, {}, "key_ln"), z(B, T, E)),
        {},
        ValueError,
        "params['key_ln']['scale'] is missing; expected keys ['scale']",
    ),
    (
        "multi_head_attention",
        (drop(mp, "out"), z(B, T, E)),
        {},
        ValueError,
        "params['out'] is missing; expected keys ['key', 'out', 'query', 'value']",
    ),
    (
        "multi_head_attention",
        (mp, z(B, T, E), z(B, S, E), z(B, S + 1, E)),
        {},
        ValueError,
        "value must have shape (B, S, E_v) with B=2 from query, S=5 from key; got (2, 6, 13)",
    ),
    (  # as Flax: `inputs_k` cannot be None if `inputs_v` is not None
        "multi_head_attention",
        (mp, z(B, T, E), None, z(B, S, E)),
        {},
        ValueError,
        "`key` cannot be None if `value` is not None",
    ),
    (
        "multi_head_attention",
        (mp, z(B, T, E), z(B, S, E, dtype=np.float16)),
        {},
        TypeError,
        "key must have the dtype of query (float32); got float16",
    ),
    (
        "multi_head_attention",
        (mp, z(B, 4, T, E), z(4, B, S, E)),
        {},
        ValueError,
        "key must have shape (B..., S, E_kv) with B...=(2, 4) from query; got (4, 2, 5, 13)",
    ),
    (
        "multi_head_attention",
        (mp, z(B, T, E, dtype=np.int64)),
        {},
        TypeError,
        "query must have a floating dtype (float16, bfloat16, float32 or float64); got int64",
    ),
    (
        "multi_head_attention",
        (mp, z(B, T, E, dtype=np.int32)),
        {},
        TypeError,
        "query must have a floating dtype (float16, bfloat16, float32 or float64); got int32",
    ),
    (
        "global_attention",
        (glp, z(B, H), z(B, S, H)),
        {"score": "cosine"},
        ValueError,
        "score must be one of 'dot', 'general', 'concat', 'location'; got 'cosine'",
    ),
    (
        "global_attention",
        (glp, z(B, H + 1), z(B, S, H)),
        {},
        ValueError,
        "decoder_state must have shape (B, H) with B=2, H=11 from encoder_outputs; got (2, 12)",
    ),
    (
        "global_attention",
        (drop(glp, "combine"), z(B, H), z(B, S, H)),
        {},
        ValueError,
        "params['combine'] is missing; expected keys ['combine', 'score']",
    ),
    (
        "global_attention",
        (put(glp, {"kernel": z(H, S + 1)}, "score"), z(B, H), z(B, S, H)),
        {"score": "location"},
        ValueError,
        "params['score']['kernel'] must have shape (H, S) with H=11, S=5 from encoder_outputs; got (11, 6)",
    ),
    (
        "global_attention",
        (glp, z(B, H), z(B, S, H)),
        {"mask": np.ones((B, S + 1), bool)},
        ValueError,
        "mask must broadcast to shape (B, S) = (2, 5); got (2, 6)",
    ),
    (
        "global_attention",
        (glp, z(B, H), z(B, S, H)),
        {"mask": np.ones((B, S), np.int8)},
        TypeError,
        "mask must have a boolean dtype (True = attend); got int8",
    ),
    (
        "local_attention",
        (lp, z(B, H), z(B, S, H)),
        {"window": 0},
        ValueError,
        "window must be a positive int (the half-width D of the window); got 0",
    ),
    (
        "local_attention",
        (lp, z(B, H), z(B, S, H)),
        {"window": 1.5},
        ValueError,
        "window must be a positive int (the half-width D of the window); got 1.5",
    ),
    (
        "local_attention",
        (drop(lp, "position"), z(B, H), z(B, S, H)),
        {"window": 2},
        ValueError,
        "params['position'] is missing; expected keys ['position']",
    ),
    (
        "local_attention",
        (put(lp, z(H + 1, H), "position", "kernel"), z(B, H), z(B, S, H)),
        {"window": 2},
        ValueError,
        "params['position']['kernel'] must have shape (H, P) with H=11 from encoder_outputs; got (12, 11)",
    ),
    (
        "local_attention",
        (lp, z(B, H), z(B, S, H)),
        {"window": 2, "score": "Dot"},
        ValueError,
        "score must be one of 'dot', 'general', 'concat', 'location'; got 'Dot'",
    ),
    (
        "location_sensitive_attention",
        (put(lsp, z(4, 1, 4), "conv", "kernel"), z(B, Q), z(B, S, H), z(B, S)),
        {},
        ValueError,
        "params['conv']['kernel'] must have an odd width r for 'SAME' padding; got r=4",
    ),
    (
        "location_sensitive_attention",
        (lsp, z(B, Q), z(B, S, H), z(B, S + 1)),
        {},
        ValueError,
        "prev_weights must have shape (B, S) with B=2, S=5 from encoder_outputs; got (2, 6)",
    ),
    (
        "location_sensitive_attention",
        (lsp, z(B, Q + 1), z(B, S, H), z(B, S)),
        {},
        ValueError,
        "params['query']['kernel'] must have shape (Q, A) with Q=7 from query; got (6, 7)",
    ),
    (
        "location_sensitive_attention",
        (put(lsp, z(5, Aa), "location", "kernel"), z(B, Q), z(B, S, H), z(B, S)),
        {},
        ValueError,
        "params['location']['kernel'] must have shape (C, A) with C=4 from params['conv']['kernel'], A=7 from params['query']['kernel']; got (5, 7)",
    ),
    (
        "location_scores",
        ({"kernel": z(H + 1, S)}, z(B, H)),
        {},
        ValueError,
        "params['kernel'] must have shape (H, S) with H=11 from decoder_state; got (12, 5)",
    ),
    (
        "additive_attention",
        (ap, z(B, H), z(B, S, H + 1)),
        {},
        ValueError,
        "hidden must have shape (B, H) with B=2, H=12 from encoder_outputs; got (2, 11)",
    ),
    (
        "additive_attention",
        (ap, z(B + 1, H), z(B, S, H)),
        {},
        ValueError,
        "hidden must have shape (B, H) with B=2, H=11 from encoder_outputs; got (3, 11)",
    ),
    (
        "scaled_dot_product_attention",
        (z(B, T, N, H), z(B, S, K, H), z(B, S + 1, K, H)),
        {},
        ValueError,
        "value must have shape (B, S, K, H) with B=2, H=11 from query, S=5, K=3 from key; got (2, 6, 3, 11)",
    ),
    (
        "scaled_dot_product_attention",
        (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H)),
        {"bias": np.ones((B, N, T, 4), f32)},
        ValueError,
        "bias must broadcast to shape (B, N, T, S) = (2, 6, 3, 5); got (2, 6, 3, 4)",
    ),
    (
        "scaled_dot_product_attention",
        (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H)),
        {"bias": np.ones((B, N, T, S), bool)},
        TypeError,
        "bias must have a floating dtype (float16, bfloat16, float32 or float64); got bool",
    ),
    (
        "scaled_dot_product_attention",
        (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H)),
        {"scale": True},
        TypeError,
        "scale must be a finite real number (int or float); got True (bool)",
    ),
    (
        "scaled_dot_product_attention",
        (z(2, 3, 7, 11), z(2, 5, 7, 7), z(2, 5, 7, 7)),
        {},
        ValueError,
        "key must have shape (B, S, K, H) with B=2, H=11 from query; got (2, 5, 7, 7)",
    ),
    (
        "scaled_dot_product_attention",
        (z(T, H), z(B, S, K, H), z(B, S, K, H)),
        {},
        ValueError,
        "query must have shape (B..., T, N, H); got (3, 11)",
    ),
    (  # batch axes: any number (B...), the same for query, key and value
        "scaled_dot_product_attention",
        (z(B, 4, T, N, H), z(B, 5, S, K, H), z(B, 5, S, K, H)),
        {},
        ValueError,
        "key must have shape (B..., S, K, H) with B...=(2, 4), H=11 from query; got (2, 5, 5, 3, 11)",
    ),
    (  # (T, N, H), no batch axis, as jax.nn: key must then have none either
        "scaled_dot_product_attention",
        (z(T, N, H), z(B, S, K, H), z(B, S, K, H)),
        {},
        ValueError,
        "key must have shape (B..., S, K, H) with B...=(), H=11 from query; got (2, 5, 3, 11)",
    ),
    (
        "scaled_dot_product_attention",
        (z(B, 4, T, N, H), z(B, 4, S, K, H), z(B, 4, S, K, H)),
        {"mask": np.ones((3, 1, 1, S), bool)},
        ValueError,
        "mask must broadcast to shape (B..., N, T, S) = (2, 4, 6, 3, 5); got (3, 1, 1, 5)",
    ),
    (  # mixed dtypes are rejected, as by jax.nn and torch (no silent promotion)
        "scaled_dot_product_attention",
        (z(B, T, N, H), z(B, S, K, H, dtype=np.float16), z(B, S, K, H, dtype=np.float16)),
        {},
        TypeError,
        "key must have the dtype of query (float32); got float16",
    ),
    (
        "scaled_dot_product_attention",
        (z(B, T, N, H, dtype=np.float64), z(B, S, K, H, dtype=np.float64), z(B, S, K, H)),
        {},
        TypeError,
        "value must have the dtype of query (float64); got float32",
    ),
    (
        "scaled_dot_product_attention",
        (z(B, T, N, H), z(B, S, 0, H), z(B, S, 0, H)),
        {},
        ValueError,
        "the number of key/value heads K must be at least 1; got K=0 from key",
    ),
    (  # the caller's dtype, not the int32 JAX converts int64 to when x64 is off
        "scaled_dot_product_attention",
        (z(B, T, N, H, dtype=np.int64), z(B, S, K, H), z(B, S, K, H)),
        {},
        TypeError,
        "query must have a floating dtype (float16, bfloat16, float32 or float64); got int64",
    ),
    (
        "scaled_dot_product_attention",
        (z(B, T, 7, H), z(B, S, K, H), z(B, S, K, H)),
        {},
        ValueError,
        "the number of query heads N=7 must be a multiple of the number of key/value heads K=3",
    ),
    (
        "scaled_dot_product_attention",
        (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H)),
        {"mask": np.ones((T, S), f32)},
        TypeError,
        "mask must have a boolean dtype (True = attend); to add float values (PyTorch's 0 / -inf) to the logits pass them as bias; a 0 / 1 mask from Flax's make_attention_mask or make_causal_mask: pass dtype=bool; got float32",
    ),
    (
        "scaled_dot_product_attention",
        (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H)),
        {"scale": float("-inf")},
        ValueError,
        "scale must be a finite real number; got -inf",
    ),
    (
        "additive_attention",
        (drop(ap, "v"), z(B, H), z(B, S, H)),
        {},
        ValueError,
        "params['v'] is missing; expected keys ['attn', 'v']",
    ),
    (
        "additive_attention",
        (ap, z(B, H), z(B, S, H)),
        {"mask": np.ones((B, S), f32)},
        TypeError,
        "mask must have a boolean dtype (True = attend); got float32",
    ),
    ("additive_attention", ([1.0], z(B, H), z(B, S, H)), {}, TypeError, "params must be a dict; got list"),
    # encoder - attention - decoder
    ("seq2seq_forward", (s2s, ids(B, S), z(B, T)), {}, TypeError, "target_in_ids must have an integer dtype (token ids); got float32"),
    ("seq2seq_forward", (s2s, ids(B, S, 1), ids(B, T)), {}, ValueError, "source_ids must have shape (B, S); got (2, 5, 1)"),
    ("seq2seq_forward", (s2s, ids(B, S), ids(B, T)), {"source_mask": np.ones((B, S + 1), bool)}, ValueError,
     "source_mask must have shape (B, S) with B=2, S=5 from source_ids; got (2, 6)"),
    ("seq2seq_forward", ([1.0], ids(B, S), ids(B, T)), {}, TypeError, "params must be a dict; got list"),
    ("greedy_decode", (s2s, ids(B, 0)), {"bos_id": 0, "max_length": 3}, ValueError,
     "source_ids must hold at least one position (S >= 1) to attend to; got shape (2, 0)"),
    ("greedy_decode", (s2s, ids(B, S)), {"bos_id": 0, "max_length": 2.5}, ValueError, "max_length must be a non-negative int; got 2.5"),
    ("greedy_decode", (s2s, ids(B, S)), {"bos_id": 9, "max_length": 3}, ValueError,
     "bos_id must be an int in [0, 9) (a target token id); got 9"),
    ("greedy_decode", (drop(s2s, "attention"), ids(B, S)), {"bos_id": 0, "max_length": 3}, ValueError,
     "params['attention'] is missing; expected the keys of init_seq2seq_params: "
     "['attention', 'decoder', 'encoder', 'out', 'source_embed', 'target_embed']"),
    ("multi_head_attention", (mp, z(B, T, E)), {"bias": z(B, N, T, T + 1)}, ValueError,
     "bias must broadcast to shape (B, N, T, S) = (2, 6, 3, 3); got (2, 6, 3, 4)"),
    # incremental decoding
    ("multi_head_attention_step", (mp, z(B, 1, E + 1), kv), {}, ValueError,
     "params['query']['kernel'] must have shape (E, N, H) with E=14 from x_new; got (13, 6, 11)"),
    ("multi_head_attention_step", (mp, z(B, 1, E), {**kv, "value": z(B, 4, K, H, dtype=np.float64)}), {}, TypeError,
     "cache['value'] must have the dtype of cache['key'] (float32); got float64"),
    # alignment diagnostics
    ("alignment_diagnostics", (z(3, S),), {"band": float("nan")}, ValueError, "band must be a non-negative number of source positions; got nan"),
    ("alignment_diagnostics", (z(S),), {}, ValueError, "weights must have shape (..., T, S); got (5,)"),
    # the Transformer's layers and position encodings
    ("sinusoidal_positions", (T, 7), {}, ValueError,
     "features must be an even int >= 2 (one sin and one cos per frequency); got 7"),
    ("sinusoidal_positions", (-1, 6), {}, ValueError, "length must be an int >= 0 (the number of positions T); got -1"),
    ("sinusoidal_positions", (T, 6), {"base": 1.0}, ValueError, "base must be a number greater than 1; got 1.0"),
    ("transformer_encoder_layer", (tep, z(B, T, 12, dtype=np.int32)), {}, TypeError,
     "x must have a floating dtype (float16, bfloat16, float32 or float64); got int32"),
    ("transformer_encoder_layer", (tep, z(B, T, 11)), {}, ValueError,
     "params['self_attention']['out']['kernel'] must have shape (N, H, E) with E=11 from x; got (3, 4, 12)"),
    ("transformer_encoder_layer", (drop(tep, "norm_2"), z(B, T, 12)), {}, ValueError,
     "params['norm_2'] is missing; expected keys ['feed_forward', 'norm_1', 'norm_2', 'self_attention']"),
    ("transformer_encoder_layer", (tep, z(B, T, 12)), {"mask": np.ones((B, 1, T, T + 1), bool)}, ValueError,
     "mask must broadcast to shape (B, N, T, T) = (2, 3, 3, 3); got (2, 1, 3, 4)"),
    ("transformer_encoder_layer", (tep, z(B, T, 12)), {"mask": np.ones((B, 1, 1, T), f32)}, TypeError,
     "mask must have a boolean dtype (True = attend); got float32"),
    ("transformer_decoder_layer", (tdp, z(B, T, 12), z(B, S, 11)), {}, ValueError,
     "encoder_outputs must have shape (B, S, E) with B=2, E=12 from x; got (2, 5, 11)"),
    ("transformer_decoder_layer", (tdp, z(B, T, 12), z(B, S, 12, dtype=np.float64)), {}, TypeError,
     "encoder_outputs must have the dtype of x (float32); got float64"),
    ("transformer_decoder_layer", (tdp, z(B, T, 12), z(B, S, 12)), {"encoder_mask": np.ones((B, 1, 1, S + 1), bool)},
     ValueError, "encoder_mask must broadcast to shape (B, N, T, S) = (2, 3, 3, 5); got (2, 1, 1, 6)"),
    ("transformer_decoder_layer", (drop(tdp, "cross_attention"), z(B, T, 12), z(B, S, 12)), {}, ValueError,
     "params['cross_attention'] is missing; expected keys "
     "['cross_attention', 'feed_forward', 'norm_1', 'norm_2', 'norm_3', 'self_attention']"),
]

# The hand-written VJPs are NumPy-only (JAX has jax.vjp): the same table, run on attention_np.
# A VJP validates like its forward function, plus the cotangent (d_out, d_context, d_weights).
NUMPY_ONLY_BAD_INPUTS = [
    ("scaled_dot_product_attention_vjp", (z(2, B, T, N, H), z(2, B, S, K, H), z(2, B, S, K, H), z(2, B, T, N, H)), {}, ValueError,
     "query must have shape (B, T, N, H): the VJPs take exactly one batch axis (reshape the others into B); got (2, 2, 3, 6, 11)"),
    ("multi_head_attention_vjp", (mp, z(T, E), z(S, E), z(S, E), z(T, E)), {}, ValueError,
     "query must have shape (B, T, E): the VJPs take exactly one batch axis (reshape the others into B); got (3, 13)"),
    (
        "scaled_dot_product_attention_vjp",
        (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H), z(B, T, N, H + 1)),
        {},
        ValueError,
        "d_out must have shape (B, T, N, H) with B=2, T=3, N=6, H=11 from query; got (2, 3, 6, 12)",
    ),
    (
        "scaled_dot_product_attention_vjp",
        (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H), z(B, T, N, H, dtype=np.int32)),
        {},
        TypeError,
        "d_out must have a floating dtype (float16, bfloat16, float32 or float64); got int32",
    ),
    (
        "scaled_dot_product_attention_vjp",
        (z(B, T, N, H), z(B, S, K, H), z(B, S + 1, K, H), z(B, T, N, H)),
        {},
        ValueError,
        "value must have shape (B, S, K, H) with B=2, H=11 from query, S=5, K=3 from key; got (2, 6, 3, 11)",
    ),
    (
        "scaled_dot_product_attention_vjp",
        (z(B, T, N, H), z(B, S, K, H), z(B, S, K, H), z(B, T, N, H)),
        {"mask": np.ones((T, S), f32)},
        TypeError,
        "mask must have a boolean dtype (True = attend); to add float values (PyTorch's 0 / -inf) to the logits pass them as bias; a 0 / 1 mask from Flax's make_attention_mask or make_causal_mask: pass dtype=bool; got float32",
    ),
    (
        "additive_attention_vjp",
        (ap, z(B, H), z(B, S, H), z(B, H)),
        {},
        ValueError,
        "d_context must have shape (B, 1, H) with B=2, H=11 from encoder_outputs; got (2, 11)",
    ),
    (
        "additive_attention_vjp",
        (ap, z(B, H), z(B, S, H), z(B, 1, H), z(B, S + 1)),
        {},
        ValueError,
        "d_weights must have shape (B, S) with B=2, S=5 from encoder_outputs; got (2, 6)",
    ),
    (
        "additive_attention_vjp",
        (drop(ap, "v"), z(B, H), z(B, S, H), z(B, 1, H)),
        {},
        ValueError,
        "params['v'] is missing; expected keys ['attn', 'v']",
    ),
    (
        "multi_head_attention_vjp",
        (mp, z(B, T, E), z(B, S, E), z(B, S, E), z(B, T, E + 1)),
        {},
        ValueError,
        "d_out must have shape (B, T, F) with B=2, T=3 from query, F=13 from params['out']['kernel']; got (2, 3, 14)",
    ),
    (
        "multi_head_attention_vjp",
        (mp, z(B, T, E), z(B, S, E), z(B, S + 1, E), z(B, T, E)),
        {},
        ValueError,
        "value must have shape (B, S, E_v) with B=2 from query, S=5 from key; got (2, 6, 13)",
    ),
]


@pytest.mark.parametrize(
    "name, args, kwargs, exception, message",
    NUMPY_ONLY_BAD_INPUTS,
    ids=[f"{i}-{c[0]}" for i, c in enumerate(NUMPY_ONLY_BAD_INPUTS)],
)
def test_vjp_bad_input_raises_a_clear_error(name, args, kwargs, exception, message):
    with pytest.raises(exception) as info:
        getattr(attention_np, name)(*args, **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize(
    "name, args, kwargs, exception, message",
    BAD_INPUTS,
    ids=[f"{i}-{c[0]}" for i, c in enumerate(BAD_INPUTS)],
)
def test_bad_input_raises_the_same_clear_error(name, args, kwargs, exception, message, half):
    with pytest.raises(exception) as info:
        getattr(HALVES[half], name)(*args, **kwargs)
    assert str(info.value) == message  # JAX may add a traceback note; the message itself is exact


X64_OFF_CASES = [case for case in BAD_INPUTS if "int64" in case[4]] + [
    ("soft_attention", (z(B, T, S, dtype=np.int64), z(B, S, H)), {}, TypeError,
     "scores must have a floating dtype (float16, bfloat16, float32 or float64); got int64"),
    ("soft_attention", (z(B, T, S), z(B, S, H)), {"mask": np.ones((B, T, S), np.uint64)}, TypeError,
     "mask must have a boolean dtype (True = attend); got uint64"),
    ("additive_attention", (ap, z(B, H), z(B, S, H, dtype=np.complex128)), {}, TypeError,
     "encoder_outputs must have a floating dtype (float16, bfloat16, float32 or float64); got complex128"),
]


@pytest.mark.parametrize("name, args, kwargs, exception, message", X64_OFF_CASES, ids=[c[0] for c in X64_OFF_CASES])
def test_dtype_errors_name_the_callers_dtype_with_x64_off(name, args, kwargs, exception, message):
    # JAX's default (x64 off) converts int64 NumPy input to int32, uint64 to uint32 and
    # complex128 to complex64 before a jitted function sees it; the message must still
    # name what the caller passed, exactly as the NumPy half does
    assert len(X64_OFF_CASES) >= 5
    with jax.enable_x64(False):
        for half in HALVES.values():
            with pytest.raises(exception) as info:
                getattr(half, name)(*args, **kwargs)
            assert str(info.value) == message


def test_every_public_function_has_bad_input_cases():
    assert len(BAD_INPUTS) >= 40
    mechanisms = {
        n for n in attention_np.__all__
        if not n.startswith("init_") and n not in ("additive_params_from_torch", "multi_head_params_from_torch")
    }
    assert mechanisms <= {c[0] for c in BAD_INPUTS + NUMPY_ONLY_BAD_INPUTS}


@pytest.mark.parametrize("half", HALVES)
def test_hard_attention_takes_noise_or_rng_not_both(half):
    rng = np.random.default_rng(0) if half == "numpy" else jax.random.key(0)
    with pytest.raises(ValueError) as info:
        HALVES[half].hard_attention(z(B, T, S), z(B, S, H), gumbel_noise=z(B, T, S), rng=rng)
    assert str(info.value) == "pass gumbel_noise or rng, not both"


@pytest.mark.parametrize("half", HALVES)
def test_init_rejects_an_unknown_score(half):
    rng = np.random.default_rng(0) if half == "numpy" else jax.random.key(0)
    with pytest.raises(
        ValueError, match="score must be one of 'dot', 'general', 'concat', 'location'; got 'cos'"
    ):
        HALVES[half].init_global_params(rng, H, score="cos")
    with pytest.raises(ValueError, match=r"score='location' needs source_length"):
        HALVES[half].init_global_params(rng, H, score="location")


# --- the two halves offer the same API ------------------------------------------------------------
JAX_ONLY_NAMES = {"ring_attention", "multi_head_params_from_flax", "chunked_attention", "dot_product_attention",
                  "create_block_mask", "BlockMask", "ulysses_attention", "zigzag_permutation"}
# the hand-written backward passes: JAX gets them from jax.vjp
NUMPY_ONLY_NAMES = {"scaled_dot_product_attention_vjp", "additive_attention_vjp", "multi_head_attention_vjp"}
JAX_ONLY_PARAMETERS = {"hard_attention": {"straight_through"}}


def _normalized(signature, drop=()):
    def default(p):
        if p.default is inspect.Parameter.empty:
            return "<required>"
        try:  # np.float32 and jnp.float32 are the same dtype
            return (
                np.dtype(p.default)
                if isinstance(p.default, type) or hasattr(p.default, "dtype")
                else p.default
            )
        except TypeError:
            return p.default

    return [(p.name, p.kind, default(p)) for p in signature.parameters.values() if p.name not in drop]


def test_both_halves_export_the_same_functions():
    assert set(attention_jax.__all__) - JAX_ONLY_NAMES == set(attention_np.__all__) - NUMPY_ONLY_NAMES
    assert NUMPY_ONLY_NAMES <= set(attention_np.__all__)
    assert not NUMPY_ONLY_NAMES & set(attention_jax.__all__)
    for name in set(attention_np.__all__) - NUMPY_ONLY_NAMES:
        assert callable(getattr(attention_jax, name)) and callable(getattr(attention_np, name))


@pytest.mark.parametrize("name", sorted(set(attention_np.__all__) - NUMPY_ONLY_NAMES))
def test_same_signature_in_both_halves(name):
    np_sig = inspect.signature(getattr(attention_np, name))
    jax_sig = inspect.signature(getattr(attention_jax, name))
    assert _normalized(jax_sig, JAX_ONLY_PARAMETERS.get(name, ())) == _normalized(np_sig)


@pytest.mark.parametrize("name", sorted(attention_jax.__all__))
def test_every_public_function_has_a_docstring_with_shapes(name):
    doc = getattr(attention_jax, name).__doc__ or ""
    np_doc = getattr(attention_np, name, None).__doc__ if name in attention_np.__all__ else doc
    assert len(doc) > 40 and len(np_doc or "") > 40
    if not name.startswith("init_") and "from_" not in name:
        for d in (doc, np_doc):
            assert "(B," in d, f"{name}'s docstring gives no shapes"
