"""The precision rule of DESIGN.md section 4: compute in float32 (float64 for float64 input)."""

import jax.numpy as jnp

from attention_np._dtypes import compute_dtype  # noqa: F401  (one rule for both halves)


def cast_params(params, dtype):
    """Every array of a nested parameter dict, as ``dtype``."""
    if isinstance(params, dict):
        return {name: cast_params(p, dtype) for name, p in params.items()}
    return jnp.asarray(params).astype(dtype)
