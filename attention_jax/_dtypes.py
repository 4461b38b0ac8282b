"""The precision rule of docs/design.md section 4: compute in float32 (float64 for float64 input)."""

import jax.numpy as jnp

from attention_np._dtypes import compute_dtype  # noqa: F401  (one rule for both halves)


def cast_params(params, dtype):
    """Every array of a nested parameter dict, as ``dtype``."""
    if isinstance(params, dict):
        return {name: cast_params(p, dtype) for name, p in params.items()}
    return jnp.asarray(params).astype(dtype)


def operand_dtype(dtype):
    """The dtype of matmul operands: float16/bfloat16 stay as they are (accumulated in float32
    with ``preferred_element_type``, as Flax and cuDNN), others compute in ``compute_dtype``."""
    dtype = jnp.dtype(dtype)
    return dtype if dtype in (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)) else compute_dtype(dtype)
