"""The registered parity cases: every public mechanism of both halves, on prime sizes.

Prime sizes (B=2, T=3, S=5, N=7 or N=6 with K=3, H=11) so that a transposed axis cannot
pass. Each builder returns float64 NumPy inputs; the harness casts them per dtype.
"""

import attention_jax
import attention_np

from .harness import ParityCase, register

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
