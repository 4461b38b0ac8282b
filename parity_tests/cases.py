"""The registered parity cases: every public mechanism of both halves, on prime sizes.

Prime sizes (B=2, T=3, S=5, N=7 or N=6 with K=3, H=11) so that a transposed axis cannot
pass. Each builder returns float64 NumPy inputs; the harness casts them per dtype.
"""

import dataclasses
import functools

import numpy as np

import attention_jax
import attention_np
from attention_np.mods import alibi, and_masks, causal_mask, document_mask, soft_cap

from .registry import REGISTRY, ParityCase, register

B, T, S, N, K, H = 2, 3, 5, 7, 3, 11


def _both(name):
    return {"numpy_fn": getattr(attention_np, name), "jax_fn": getattr(attention_jax, name)}


# --- scaled dot-product attention ---------------------------------------------------------
def _sdpa_inputs(rng, n=N, k=N):
    return rng.normal(size=(B, T, n, H)), rng.normal(size=(B, S, k, H)), rng.normal(size=(B, S, k, H))


def _sdpa(variant, shapes, build):
    register(ParityCase(f"scaled_dot_product_attention/{variant}", "scaled_dot_product_attention", shapes, build, **_both("scaled_dot_product_attention")))


_SDPA = f"B={B} T={T} S={S} N={N} H={H}"
_GQA = f"B={B} T={T} S={S} N=6 K={K} H={H}"
_sdpa("plain", _SDPA, lambda rng: (_sdpa_inputs(rng), {}))
_sdpa("causal", _SDPA, lambda rng: (_sdpa_inputs(rng), {"is_causal": True}))
_sdpa("mask", _SDPA, lambda rng: (_sdpa_inputs(rng), {"mask": rng.random((B, 1, T, S)) < 0.6}))
_sdpa("bias+scale", _SDPA, lambda rng: (_sdpa_inputs(rng), {"bias": rng.normal(size=(1, N, T, S)), "scale": 0.3}))
_sdpa("gqa", _GQA, lambda rng: (_sdpa_inputs(rng, 6, K), {}))


def _all_options(rng):
    mask = rng.random((B, 6, T, S)) < 0.7
    mask[1, :, 0, :] = False  # one query with every key masked: zero weights and output
    return _sdpa_inputs(rng, 6, K), {"mask": mask, "bias": rng.normal(size=(B, 1, T, S)), "is_causal": True}


_sdpa("gqa+mask+bias+causal", _GQA, _all_options)


# --- additive attention (the tutorial's class) ---------------------------------------------
def _additive_inputs(rng, h=H):
    params = {
        "attn": {"kernel": rng.normal(size=(2 * h, h)) / h**0.5, "bias": rng.normal(size=(h,))},
        "v": rng.random(h),
    }
    return params, rng.normal(size=(B, h)), rng.normal(size=(B, S, h))


register(ParityCase("additive_attention/plain", "additive_attention", f"B={B} S={S} H={H}", lambda rng: (_additive_inputs(rng), {}), **_both("additive_attention")))
register(ParityCase(
    "additive_attention/mask", "additive_attention", f"B={B} S={S} H={H}",
    lambda rng: (_additive_inputs(rng), {"mask": rng.random((B, S)) < 0.6}), **_both("additive_attention"),
))


# --- score functions ---------------------------------------------------------------------------
E, A = 13, 7
_QK = f"B={B} T={T} S={S} H={H}"


def _query_keys(rng):
    return rng.normal(size=(B, T, H)), rng.normal(size=(B, S, H))


def _concat_params(rng, h=H, a=A):
    return {"attn": {"kernel": rng.normal(size=(2 * h, a)) / h**0.5, "bias": rng.normal(size=(a,))}, "v": rng.normal(size=(a,))}


def _case(mechanism, variant, shapes, build):
    register(ParityCase(f"{mechanism}/{variant}", mechanism, shapes, build, **_both(mechanism)))


_case("dot_scores", "plain", _QK, lambda rng: (_query_keys(rng), {}))
_case("scaled_dot_scores", "plain", _QK, lambda rng: (_query_keys(rng), {}))
_case("scaled_dot_scores", "scale", _QK, lambda rng: (_query_keys(rng), {"scale": 0.7}))
_case("general_scores", "plain", _QK, lambda rng: (({"kernel": rng.normal(size=(H, H)) / H**0.5}, *_query_keys(rng)), {}))
_case("concat_scores", "plain", f"{_QK} A={A}", lambda rng: ((_concat_params(rng), *_query_keys(rng)), {}))


# --- soft and hard attention --------------------------------------------------------------------
def _scores_values(rng):
    return rng.normal(size=(B, T, S)) * 2, rng.normal(size=(B, S, H))


def _mask_bts(rng):
    mask = rng.random((B, T, S)) < 0.6
    mask[0, 1] = False  # one query with nothing to attend to
    return mask


_SV = f"B={B} T={T} S={S} H={H}"
_case("soft_attention", "plain", _SV, lambda rng: (_scores_values(rng), {}))
_case("soft_attention", "mask", _SV, lambda rng: (_scores_values(rng), {"mask": _mask_bts(rng)}))
_case("hard_attention", "argmax", _SV, lambda rng: (_scores_values(rng), {}))
_case("hard_attention", "gumbel+mask", _SV, lambda rng: (_scores_values(rng), {"mask": _mask_bts(rng), "gumbel_noise": rng.gumbel(size=(B, T, S))}))


# --- self, cross and multi-head attention -------------------------------------------------------
def _projections(rng):
    return {n: {"kernel": rng.normal(size=(E, H)) / E**0.5, "bias": rng.normal(size=(H,))} for n in ("query", "key", "value")}


_case("self_attention", "plain", f"B={B} T={T} E={E} H={H}", lambda rng: ((_projections(rng), rng.normal(size=(B, T, E))), {}))
_case("self_attention", "causal+mask", f"B={B} T={T} E={E} H={H}", lambda rng: ((_projections(rng), rng.normal(size=(B, T, E))), {"is_causal": True, "mask": rng.random((B, 1, T)) < 0.7}))
_case("cross_attention", "plain", f"B={B} T={T} S={S} E={E} H={H}", lambda rng: ((_projections(rng), rng.normal(size=(B, T, E)), rng.normal(size=(B, S, E))), {}))
_case("cross_attention", "mask", f"B={B} T={T} S={S} E={E} H={H}", lambda rng: ((_projections(rng), rng.normal(size=(B, T, E)), rng.normal(size=(B, S, E))), {"mask": _mask_bts(rng)}))


def _multi_head_params(rng, n, k):
    def dense(in_shape, out_shape):
        return {"kernel": rng.normal(size=in_shape + out_shape) / np.prod(in_shape) ** 0.5, "bias": rng.normal(size=out_shape)}

    return {"query": dense((E,), (n, H)), "key": dense((E,), (k, H)), "value": dense((E,), (k, H)), "out": dense((n, H), (E,))}


_case("multi_head_attention", "self", f"B={B} T={T} E={E} N={N} H={H}", lambda rng: ((_multi_head_params(rng, N, N), rng.normal(size=(B, T, E))), {}))
_case("multi_head_attention", "cross+gqa+mask", f"B={B} T={T} S={S} E={E} N=6 K={K} H={H}", lambda rng: (
    (_multi_head_params(rng, 6, K), rng.normal(size=(B, T, E)), rng.normal(size=(B, S, E))), {"mask": rng.random((B, 1, T, S)) < 0.7}))
_case("multi_head_attention", "self+gqa+causal", f"B={B} T={T} E={E} N=6 K={K} H={H}", lambda rng: ((_multi_head_params(rng, 6, K), rng.normal(size=(B, T, E))), {"is_causal": True}))


# --- Luong global and local attention; location-based scores --------------------------------------
def _luong_params(rng, score, local=False):
    score_params = {
        "dot": {},
        "general": {"kernel": rng.normal(size=(H, H)) / H**0.5},
        "concat": _concat_params(rng, H, H),
        "location": {"kernel": rng.normal(size=(H, S)) / H**0.5},
    }[score]
    params = {"score": score_params, "combine": {"kernel": rng.normal(size=(2 * H, H)) / (2 * H) ** 0.5}}
    if local:
        params["position"] = {"kernel": rng.normal(size=(H, A)) / H**0.5, "v": rng.normal(size=(A,))}
    return params


def _luong_inputs(rng, score, local=False, mask=False):
    kwargs = {"score": score}
    if local:
        kwargs["window"] = 2
    if mask:
        m = rng.random((B, S)) < 0.7
        m[1] = False  # a batch element with nothing to attend to
        kwargs["mask"] = m
    return (_luong_params(rng, score, local), rng.normal(size=(B, H)), rng.normal(size=(B, S, H))), kwargs


for _score in ("dot", "general", "concat", "location"):
    _case("global_attention", _score, f"B={B} S={S} H={H}", lambda rng, s=_score: _luong_inputs(rng, s))
    _case("local_attention", f"{_score} D=2", f"B={B} S={S} H={H} A={A}", lambda rng, s=_score: _luong_inputs(rng, s, local=True))
_case("global_attention", "general+mask", f"B={B} S={S} H={H}", lambda rng: _luong_inputs(rng, "general", mask=True))
_case("local_attention", "concat+mask D=2", f"B={B} S={S} H={H} A={A}", lambda rng: _luong_inputs(rng, "concat", local=True, mask=True))
_case("location_scores", "plain", f"B={B} S={S} H={H}", lambda rng: (({"kernel": rng.normal(size=(H, S))}, rng.normal(size=(B, H))), {}))


# --- location-sensitive attention (Chorowski) -------------------------------------------------------
def _location_sensitive_inputs(rng, mask=False):
    Q, C, r = 6, 4, 3
    params = {
        "query": {"kernel": rng.normal(size=(Q, A)) / Q**0.5},
        "keys": {"kernel": rng.normal(size=(H, A)) / H**0.5},
        "conv": {"kernel": rng.normal(size=(r, 1, C))},
        "location": {"kernel": rng.normal(size=(C, A)) / C**0.5},
        "bias": rng.normal(size=(A,)),
        "v": rng.normal(size=(A,)),
    }
    prev = rng.random((B, S))
    kwargs = {"mask": _mask_bts(rng)[:, 0]} if mask else {}
    return (params, rng.normal(size=(B, Q)), rng.normal(size=(B, S, H)), prev / prev.sum(-1, keepdims=True)), kwargs


_case("location_sensitive_attention", "plain", f"B={B} S={S} H={H} Q=6 A={A} C=4 r=3", lambda rng: _location_sensitive_inputs(rng))
_case("location_sensitive_attention", "mask", f"B={B} S={S} H={H} Q=6 A={A} C=4 r=3", lambda rng: _location_sensitive_inputs(rng, mask=True))


# --- chunked attention (JAX only): against the NumPy reference's output -----------------------------
def _sdpa_out(*args, block_sizes=None, **kwargs):
    return attention_np.scaled_dot_product_attention(*args, **kwargs)[0]


def _chunked(variant, shapes, build):
    register(ParityCase(f"chunked_attention/{variant}", "chunked_attention", shapes, build, _sdpa_out, attention_jax.chunked_attention, halves=("jax",)))


_chunked("plain q2 k2", _SDPA, lambda rng: (_sdpa_inputs(rng), {"block_sizes": (2, 2)}))
def _chunked_all_options(rng):
    args, kwargs = _all_options(rng)
    return args, {**kwargs, "block_sizes": (2, 3)}


_chunked("gqa+mask+bias+causal q2 k3", _GQA, _chunked_all_options)


# --- encoder - attention - decoder (seq2seq) -----------------------------------------------------------
V_SRC, V_TGT, D_EMB, H_S2S = 11, 7, 5, 6
_S2S = f"B={B} S={S} T={T} V={V_TGT} D={D_EMB} H={H_S2S}"


def _seq2seq_inputs(rng, attention, with_target=True):
    """float64 params, ids, and a padded batch: row 1 holds 3 real tokens of S."""
    params = attention_np.init_seq2seq_params(
        rng, source_vocab=V_SRC, target_vocab=V_TGT, embed=D_EMB, hidden=H_S2S, attention=attention, dtype=np.float64
    )
    source_ids = rng.integers(0, V_SRC, (B, S))
    source_mask = np.ones((B, S), bool)
    source_mask[1, 3:] = False
    if with_target:
        return (params, source_ids, rng.integers(0, V_TGT, (B, T))), {"source_mask": source_mask}
    return (params, source_ids), {"source_mask": source_mask, "bos_id": 0, "max_length": T + 1}


def _decoded(decode):
    """``greedy_decode`` with the ids as floats in the weights' dtype, so the harness compares
    them exactly (an id that differs is off by >= 1, beyond every tolerance)."""

    def run(*args, **kwargs):
        ids, weights = decode(*args, **kwargs)
        return ids.astype(weights.dtype), weights  # NumPy or JAX arrays alike (traceable)

    return run


for _attention in ("additive", "dot", "general", "concat", "location_sensitive"):
    _case("seq2seq_forward", f"{_attention}+padding", _S2S, lambda rng, a=_attention: _seq2seq_inputs(rng, a))
    register(ParityCase(
        f"greedy_decode/{_attention}+padding", "greedy_decode", f"{_S2S} max_length={T + 1}",
        lambda rng, a=_attention: _seq2seq_inputs(rng, a, with_target=False),
        _decoded(attention_np.greedy_decode), _decoded(attention_jax.greedy_decode),
        dtypes=("float64", "float32"),  # argmax ids in low precision may legitimately differ
    ))


# --- gradients: a backward row for every mechanism -----------------------------------------------
# jax.vjp of the JAX half against the hand-written NumPy VJPs (attention_np/backward.py) where
# one exists, against central finite differences of the NumPy float64 forward otherwise. Every
# floating positional argument (inputs and params dicts) is differentiated; masks, noise and
# options are not.
def _sdpa_vjp(args, kwargs, cotangent):
    kwargs = {k: v for k, v in kwargs.items() if k != "block_sizes"}  # chunked_attention's
    d_out = cotangent[0] if isinstance(cotangent, tuple) else cotangent  # chunked returns out alone
    return attention_np.scaled_dot_product_attention_vjp(*args, d_out, **kwargs)


def _additive_vjp(args, kwargs, cotangent):
    d_context, d_weights = cotangent
    return attention_np.additive_attention_vjp(*args, d_context, d_weights, **kwargs)


def _multi_head_vjp(args, kwargs, cotangent):
    params, query, key, value = (*args, None, None)[:4]
    key = query if key is None else key        # the defaults of multi_head_attention
    value = key if value is None else value
    d_params, d_query, d_key, d_value = attention_np.multi_head_attention_vjp(params, query, key, value, cotangent[0], **kwargs)
    if len(args) == 2:  # self-attention: query, key and value are one argument
        return d_params, d_query + d_key + d_value
    if len(args) == 3:  # value defaulted to key
        return d_params, d_query, d_key + d_value
    return d_params, d_query, d_key, d_value


_NUMPY_VJPS = {  # mechanism: (NumPy VJP, the outputs it takes a cotangent for)
    "scaled_dot_product_attention": (_sdpa_vjp, (0,)),  # out, not weights
    "chunked_attention": (_sdpa_vjp, None),
    "additive_attention": (_additive_vjp, None),  # context and weights
    "multi_head_attention": (_multi_head_vjp, (0,)),
}
_FINITE_DIFFERENCES = (
    "dot_scores", "scaled_dot_scores", "general_scores", "concat_scores", "soft_attention", "hard_attention",
    "self_attention", "cross_attention", "global_attention", "local_attention", "location_scores",
    "location_sensitive_attention", "seq2seq_forward",  # seq2seq: w.r.t. params (the ids are integers)
)


# finite differences cost two forward calls an element; seq2seq unrolls GRUs over every step
_FD_SAMPLES = {"seq2seq_forward": 8}


def _floating_arguments(case):
    def leaves(x):
        return [leaf for v in x.values() for leaf in leaves(v)] if isinstance(x, dict) else [x]

    args, _ = case.build(np.random.default_rng(case.seed))
    return tuple(i for i, a in enumerate(args) if all(np.asarray(leaf).dtype.kind == "f" for leaf in leaves(a)))


for _name, _registered in list(REGISTRY.items()):
    if _registered.mechanism in _NUMPY_VJPS or _registered.mechanism in _FINITE_DIFFERENCES:
        _vjp, _outputs = _NUMPY_VJPS.get(_registered.mechanism, (None, None))
        REGISTRY[_name] = dataclasses.replace(
            _registered, differentiable=_floating_arguments(_registered), numpy_vjp=_vjp, cotangent_outputs=_outputs,
            fd_samples=_FD_SAMPLES.get(_registered.mechanism, _registered.fd_samples),
        )


# --- incremental decoding: three chunks through the KV cache ---------------------------------------------
def _stepped(module):
    """Chunks of 2, 1 and 2 tokens through ``multi_head_attention_step``: every output, the
    weights of the last chunk, and the final cache's keys and values."""

    def run(params, x, max_length):
        K, H = params["key"]["kernel"].shape[1:]
        cache = module.init_kv_cache(x.shape[0], max_length, K, H, dtype=x.dtype)
        outs = []
        for start, stop in ((0, 2), (2, 3), (3, 5)):
            out, weights, cache = module.multi_head_attention_step(params, x[:, start:stop], cache)
            outs.append(out)
        return outs, weights, cache["key"], cache["value"]

    return run


register(ParityCase(
    "multi_head_attention_step/gqa 2+1+2", "multi_head_attention_step", f"B={B} k=2,1,2 L=7 E={E} N=6 K={K} H={H}",
    lambda rng: ((_multi_head_params(rng, 6, K), rng.normal(size=(B, 5, E)), 7), {}),
    _stepped(attention_np), _stepped(attention_jax),
))


# --- windows, sequence lengths, dropout and dot_product_attention ----------------------------------------
# Forward rows only: the NumPy VJPs do not take these options (registered after the loop that adds them).
def _windowed(rng):
    args = _sdpa_inputs(rng, 6, K)
    return args, {"local_window_size": (1, 2), "query_seq_lengths": np.array([T, 2]),
                  "key_value_seq_lengths": np.array([S, 3]), "is_causal": True}


def _dropped(rng):
    return _sdpa_inputs(rng, 6, K), {"dropout_rate": 0.3, "dropout_rng": 7, "bias": rng.normal(size=(1, 6, T, S))}


_sdpa("window+lengths+causal", _GQA, _windowed)
_sdpa("dropout 0.3", _GQA, _dropped)
_chunked("window+lengths+causal q2 k3", _GQA, lambda rng: (_windowed(rng)[0], {**_windowed(rng)[1], "block_sizes": (2, 3)}))
_chunked("dropout 0.3 q2 k2", _GQA, lambda rng: (_dropped(rng)[0], {**_dropped(rng)[1], "block_sizes": (2, 2)}))


def _reference_out(*args, implementation=None, **kwargs):
    return attention_np.scaled_dot_product_attention(*args, **kwargs)[0]


for _impl in (None, "dense", "chunked"):
    register(ParityCase(
        f"dot_product_attention/{_impl or 'auto'} window+lengths+dropout", "dot_product_attention", _GQA,
        lambda rng, _impl=_impl: (_sdpa_inputs(rng, 6, K), {**_windowed(rng)[1], "dropout_rate": 0.2, "dropout_rng": 3,
                                                             "implementation": _impl}),
        _reference_out, attention_jax.dot_product_attention, halves=("jax",),
    ))


# --- flex_attention: mods, block masks, sinks and the log-sum-exp -------------------------------------------
# Gradients by finite differences of the NumPy float64 forward (it has no hand-written VJP).
_FLEX_Q_IDS = np.array([[0, 0, 1], [2, 0, 0]])             # batch row 1, query 0: no key of document 2
_FLEX_KV_IDS = np.array([[0, 0, 1, 1, 1], [0, 0, 0, 1, 1]])
_FLEX_DOCUMENTS = and_masks(causal_mask, document_mask(_FLEX_Q_IDS, _FLEX_KV_IDS))


@functools.cache  # built on first use: importing parity_tests runs no JAX computation
def _flex_blocks():
    """Blocks of 2 x 2: the blocked path's loops run, the last block of each axis is part padding."""
    return attention_jax.create_block_mask(_FLEX_DOCUMENTS, B, None, T, S, block_sizes=(2, 2))


_FLEX_SOFT_CAP = soft_cap(1.0)
_FLEX_ALIBI = alibi(2.0 ** -np.arange(1, 7))


def _with_lse(flex_attention):
    """``(out, lse)`` with the log-sum-exp (float32 in the softmax) in the output's dtype, as
    the report compares each row in one dtype."""

    def run(*args, **kwargs):
        out, lse = flex_attention(*args, return_residual=True, **kwargs)
        return out, lse.astype(out.dtype)

    return run


register(ParityCase(
    "flex_attention/documents+causal+soft-cap blocks 2x2", "flex_attention", f"{_GQA} blocks=2x2",
    lambda rng: (_sdpa_inputs(rng, 6, K), {"score_mod": _FLEX_SOFT_CAP, "block_mask": _flex_blocks()}),
    **_both("flex_attention"), differentiable=(0, 1, 2),
))
register(ParityCase(
    "flex_attention/alibi+sinks+lse", "flex_attention", _GQA,
    lambda rng: (_sdpa_inputs(rng, 6, K), {"score_mod": _FLEX_ALIBI, "sinks": rng.normal(size=(6,))}),
    _with_lse(attention_np.flex_attention), _with_lse(attention_jax.flex_attention),
    differentiable=(0, 1, 2, "sinks"),
))
