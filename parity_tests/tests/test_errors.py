"""Bad input: both halves raise the same exception type with the same message (DESIGN.md section 4)."""

import numpy as np
import pytest

import attention_jax
import attention_np

from .conftest import B, H, N, S, T

HALVES = {"numpy": attention_np, "jax": attention_jax}


def _sdpa_args(n=N, k=N, h_key=H, dtype=np.float32):
    z = lambda *shape: np.zeros(shape, dtype)
    return z(B, T, n, H), z(B, S, k, h_key), z(B, S, k, h_key)


def _additive_args(h=H):
    params = {"attn": {"kernel": np.zeros((2 * h, h), np.float32), "bias": np.zeros(h, np.float32)}, "v": np.zeros(h, np.float32)}
    return params, np.zeros((B, h), np.float32), np.zeros((B, S, h), np.float32)


# (function, args, kwargs, exception, exact message)
BAD_INPUTS = {
    "sdpa key feature size": (
        "scaled_dot_product_attention", _sdpa_args(h_key=7), {}, ValueError,
        "key must have shape (B, S, K, H) with B=2, H=11 from query; got (2, 5, 7, 7)",
    ),
    "sdpa query rank": (
        "scaled_dot_product_attention", (np.zeros((B, T, H), np.float32),) + _sdpa_args()[1:], {}, ValueError,
        "query must have shape (B, T, N, H); got (2, 3, 11)",
    ),
    "sdpa heads not divisible": (
        "scaled_dot_product_attention", _sdpa_args(n=7, k=3), {}, ValueError,
        "the number of query heads N=7 must be a multiple of the number of key/value heads K=3",
    ),
    "sdpa int query": (
        "scaled_dot_product_attention", (np.zeros((B, T, N, H), np.int32),) + _sdpa_args()[1:], {}, TypeError,
        "query must have a floating dtype (float16, bfloat16, float32 or float64); got int32",
    ),
    "sdpa float mask": (
        "scaled_dot_product_attention", _sdpa_args(), {"mask": np.ones((T, S), np.float32)}, TypeError,
        "mask must have a boolean dtype (True = attend); to add float values to the logits pass them as bias; got float32",
    ),
    "sdpa mask shape": (
        "scaled_dot_product_attention", _sdpa_args(), {"mask": np.ones((T, 4), bool)}, ValueError,
        "mask must broadcast to shape (B, N, T, S) = (2, 7, 3, 5); got (3, 4)",
    ),
    "sdpa negative scale": (
        "scaled_dot_product_attention", _sdpa_args(), {"scale": -1.0}, ValueError,
        "scale must be a positive finite number; got -1.0",
    ),
    "additive kernel shape": (
        "additive_attention", (_additive_args(4)[0],) + _additive_args()[1:], {}, ValueError,
        "params['attn']['kernel'] must have shape (2H, H) with B=2, S=5, H=11 from encoder_outputs; got (8, 4)".replace("B=2, S=5, ", ""),
    ),
    "additive missing v": (
        "additive_attention", ({"attn": _additive_args()[0]["attn"]},) + _additive_args()[1:], {}, ValueError,
        "params['v'] is missing; expected keys ['attn', 'v']",
    ),
    "additive float mask": (
        "additive_attention", _additive_args(), {"mask": np.ones((B, S), np.float32)}, TypeError,
        "mask must have a boolean dtype (True = attend); got float32",
    ),
}


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_the_same_clear_error(case, half):
    name, args, kwargs, exception, message = BAD_INPUTS[case]
    with pytest.raises(exception) as info:
        getattr(HALVES[half], name)(*args, **kwargs)
    assert str(info.value) == message  # JAX may add a traceback note; the message itself is exact
