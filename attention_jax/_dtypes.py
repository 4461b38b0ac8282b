"""The precision rule of docs/design.md section 4: compute in float32 (float64 for float64 input)."""

import jax
import jax.numpy as jnp

from attention_np._dtypes import compute_dtype  # noqa: F401  (one rule for both halves)


def cast_params(params, dtype):
    """Every array of a nested parameter dict, as ``dtype``."""
    if isinstance(params, dict):
        return {name: cast_params(p, dtype) for name, p in params.items()}
    return jnp.asarray(params).astype(dtype)


def operand_dtype(dtype):
    """The dtype of the attention matmuls' operands: float16/bfloat16 stay as they are on
    accelerators (accumulated in float32 with ``preferred_element_type``, as Flax and cuDNN),
    others compute in ``compute_dtype``.

    On the CPU backend float16/bfloat16 operands are float32: x86 CPUs without native
    half-precision matmuls convert them anyway, and XLA's converting matmuls made
    forward+backward 1.2-1.4x slower than float32 ones (bfloat16, 8x8x128x64 and
    1x8x1024x128, ``benchmarks/results/experiments.md``). The upcast of q, k, v is exact;
    the weights are then not rounded to half precision before the second matmul."""
    dtype = jnp.dtype(dtype)
    if dtype in (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)):
        return jnp.dtype(jnp.float32) if jax.default_backend() == "cpu" else dtype
    return compute_dtype(dtype)
